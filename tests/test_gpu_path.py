"""The CUDA path's fixes, seen on CPU (issue 18): what a GPU step would synchronise, static shapes
of evaluation batches, DDP failing loudly instead of hanging, DDP bandwidth savings that change no
result, resume refusals, checkpoints written once per storage, mask statistics counted at yield
time.

How a CPU test sees a GPU sync: the "meta" device stands for the GPU. A meta tensor has shapes but
no data, so reading one (``.item()``, ``.tolist()``, ``int()``, ``bool()``, ``.cpu()``) is exactly
what would be a device-to-host sync on CUDA, and building one from host data (``torch.tensor(...,
device=)``, a blocking ``.to(device)``) is what would be a stalling host-to-device copy.
``SyncCounter`` patches those entry points, counts them per training step and lets the real loop
(``train.loop.fit``), the real MAC transform and the real pretraining step run on meta tensors.
"""
from __future__ import annotations

import datetime
import errno
import os
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from preprocess.cache import MaskParams, open_cache, write_cache_from_arrays
from tests.test_pretrain import synthetic_video, tiny_args, tiny_cache  # noqa: F401 (fixture)
from train import loop
from train.data import EvalClips, PretrainClips, make_loader
from train.mac import MACTransform
from train.mac_model import MACModel, pretext_loss
from train.pretrain import PretrainConfig, make_step, mac_config, main as pretrain_main, pretext_accuracy
from train.utils.checkpoint import load_checkpoint, save_checkpoint
from train.utils.distributed import Dist
from train.utils.log import read_metrics

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# the sync counter


class SyncCounter:
    """Count reads of meta tensors ("reads": device -> host syncs on CUDA) and host data turned
    into meta tensors without ``non_blocking`` ("h2d": stalling host -> device copies), and
    torch.cuda.synchronize calls, attributed to the step that ``mark()`` last opened."""

    READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")

    def __init__(self, monkeypatch):
        self.events: list[tuple[int, str, str]] = []
        self.step = -1
        mp = monkeypatch
        for name in self.READS:
            mp.setattr(torch.Tensor, name, self._read(name, getattr(torch.Tensor, name)))
        real_to = torch.Tensor.to

        def to(t, *args, **kwargs):
            device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
            if device is not None and torch.device(device).type == "meta" and t.device.type == "cpu" \
                    and not non_blocking:
                self.record("h2d", "Tensor.to")
            if device is not None and torch.device(device).type == "cpu" and t.device.type == "meta":
                self.record("read", "Tensor.to(cpu)")
                return torch.zeros(t.shape, dtype=kwargs.get("dtype") or t.dtype)
            return real_to(t, *args, **kwargs)

        mp.setattr(torch.Tensor, "to", to)
        for fn in ("tensor", "as_tensor"):
            real = getattr(torch, fn)

            def make(data, *args, _real=real, _fn=fn, **kwargs):
                on_device = torch.is_tensor(data) and data.device.type == "meta"      # no copy
                if kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "meta" \
                        and not on_device:
                    self.record("h2d", f"torch.{_fn}")
                return _real(data, *args, **kwargs)

            mp.setattr(torch, fn, make)
        mp.setattr(torch.cuda, "synchronize", lambda *a, **k: self.record("read", "cuda.synchronize"))
        real_autocast = torch.autocast

        class Autocast(real_autocast):            # autocast has no meta device: off, as on CPU
            def __init__(self, device_type, *a, **k):
                if device_type == "meta":
                    device_type, k = "cpu", {**k, "enabled": False}
                super().__init__(device_type, *a, **k)

        mp.setattr(torch, "autocast", Autocast)

    def _read(self, name, real):
        def read(t, *args, **kwargs):
            if t.device.type != "meta":
                return real(t, *args, **kwargs)
            self.record("read", name)
            host = torch.zeros(t.shape, dtype=t.dtype)
            return host if name == "cpu" else getattr(host, name)(*args, **kwargs)
        return read

    def record(self, kind: str, what: str) -> None:
        self.events.append((self.step, kind, what))

    def mark(self) -> None:
        self.step += 1

    def per_step(self, kind: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for s, k, w in self.events:
            if k == kind:
                out.setdefault(s, []).append(w)
        return out


def test_sync_counter_sees_what_would_sync(monkeypatch):
    c = SyncCounter(monkeypatch)
    c.mark()
    x = torch.zeros(3, device="meta")
    int(x.sum()), x.tolist(), bool(x.any())                    # three reads
    torch.randperm(4).to("meta")                               # a blocking copy
    torch.randperm(4).to("meta", non_blocking=True)            # fine
    torch.tensor([1.0, 2.0], device="meta")                    # host data -> device
    assert c.per_step("read") == {0: ["__int__", "tolist", "__bool__"]}
    assert c.per_step("h2d") == {0: ["Tensor.to", "torch.tensor"]}


class _NoSaver:
    """CheckpointSaver stand-in: a meta model has no bytes to write."""

    def __init__(self, *a, **k):
        self.saves = 0

    def save(self, *a, **k) -> float:
        self.saves += 1
        return 0.0

    def wait(self) -> None:
        pass

    close = wait


@pytest.mark.parametrize("method,loss,symmetric", [("mac-sc", "mse", True), ("mac-sc", "ce", False),
                                                    ("mac-s", "ce", False)])
def test_a_training_step_syncs_once(tiny_cache, tmp_path, monkeypatch, method, loss, symmetric):
    """The real loop, MAC transform and pretraining step with the model on the stand-in device:
    every step reads the device once (the non-finite guard's values), plus once per metrics
    window; no step copies host data to the device synchronously (the shuffle-BN permutations,
    the queue pointer, the MSE presets, the alphas of the transform)."""
    monkeypatch.setattr(loop, "CheckpointSaver", _NoSaver)
    cfg = PretrainConfig(cache_dir=str(tiny_cache), frames=4, crop=16, scales=(16, 20), backbone="r2plus1d_10",
                         batch_size=4, queue_size=8, method=method, loss=loss, symmetric=symmetric, workers=0,
                         log_every=2, epochs=2, progress=False, eval_every=0)
    mcfg = mac_config(cfg)
    loader = make_loader(PretrainClips(open_cache(tiny_cache, "ucf101", masks=MaskParams()), 1, "all", mcfg),
                         cfg.batch_size, 0, shuffle=True, seed=0)
    steps = len(loader)
    assert steps == 3                   # B4: the shuffle-BN path (2 sub-batches of 2 keys)
    d = Dist(device=torch.device("meta"))
    torch.manual_seed(0)
    model = MACModel(cfg.backbone, mcfg.num_classes if loss == "ce" else cfg.n, contrastive=method == "mac-sc",
                     proj_dim=8, queue_size=cfg.queue_size).to("meta")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [100])
    counter = SyncCounter(monkeypatch)
    step = make_step(model, cfg, d, cl=False)

    def counted_step(b, s):
        counter.mark()
        return step(b, s)

    task = loop.Task("pretrain", prepare=MACTransform(mcfg, "meta"), step=counted_step, checkpoint=dict)
    loop.fit(cfg=cfg, d=d, model=model, params=params, opt=opt, sched=sched, loader=loader, steps_per_epoch=steps,
             run_dir=tmp_path, task=task, state=loop.State())
    reads, h2d = counter.per_step("read"), counter.per_step("h2d")
    # step 0 builds the per-device constants once; an epoch's last step also ends the epoch
    for s in (1, 3, 4):
        window = (s + 1) % cfg.log_every == 0
        assert reads.get(s) == ["tolist"] * (2 if window else 1), (s, reads.get(s))
        assert not h2d.get(s), (s, h2d.get(s))
    if method == "mac-sc":
        assert model.queue_pointer == (2 * steps * cfg.batch_size * (2 if symmetric else 1)) % cfg.queue_size


def test_the_transform_copies_asynchronously(tiny_cache, monkeypatch):
    """MACTransform (on the prefetch stream on CUDA): every host-to-device copy is non-blocking,
    so the host never waits for the side stream; the first call builds the cached constants."""
    cfg = PretrainConfig(cache_dir=str(tiny_cache), frames=4, crop=16, scales=(16, 20), backbone="r2plus1d_10",
                         batch_size=4)
    loader = make_loader(PretrainClips(open_cache(tiny_cache, "ucf101", masks=MaskParams()), 1, "train",
                                       mac_config(cfg)), 4, 0, shuffle=True, seed=0)
    tf = MACTransform(mac_config(cfg), "meta")
    batches = [b for _, b in zip(range(2), loader)]
    counter = SyncCounter(monkeypatch)
    for b in batches:
        counter.mark()
        out = tf(b)
    assert out["query"].device.type == "meta" and out["key"].shape == out["query"].shape
    assert not counter.per_step("read")
    assert not counter.per_step("h2d").get(1), counter.per_step("h2d")


# --------------------------------------------------------------------------------------------
# static shapes


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory) -> Path:
    """12 videos: split 1 tests groups 1-3 (6 videos: a full batch of 4 and a partial one of 2)."""
    root = tmp_path_factory.mktemp("eval_cache")
    vids = []
    for ci, c in enumerate(("MoveLeft", "MoveRight")):
        for g in range(1, 7):
            vids.append((f"{c}/v_{c}_g{g:02d}_c01.avi", ci, (2 if g <= 3 else 1, 1, 1),
                         synthetic_video(12, ci * 100 + g, 1 if ci == 0 else -1), 25.0))
    write_cache_from_arrays(root, "ucf101", ("MoveLeft", "MoveRight"), vids, videos_per_shard=8)
    return root


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_pretext_evaluation_batches_are_static_and_count_every_video_once(eval_cache, loss):
    cfg = PretrainConfig(cache_dir=str(eval_cache), frames=4, crop=16, scales=(16, 20), backbone="r2plus1d_10",
                         batch_size=4, method="mac-s", loss=loss, workers=0)
    ecfg = mac_config(cfg).__class__(**{**mac_config(cfg).to_dict(), "key_view": False})
    index = open_cache(eval_cache, "ucf101", masks=MaskParams())
    loader = make_loader(PretrainClips(index, 1, "test", ecfg), 4, 0, shuffle=False, persistent_workers=False)
    tf = MACTransform(ecfg, "cpu")
    torch.manual_seed(0)
    model = MACModel("r2plus1d_10", 16 if loss == "ce" else 2)
    shapes = []
    real = model.backbone.forward_features
    model.backbone.forward_features = lambda x: (shapes.append(x.shape[0]), real(x))[1]
    out = pretext_accuracy(model, loader, tf, cfg, Dist())
    assert shapes == [4, 4], shapes                             # the last batch (2 videos) padded to 4

    # the same figures without padding, clip by clip
    model.eval()
    rows = []
    with torch.no_grad():
        for batch in loader:
            b = tf(batch)
            loss_, c, seg = pretext_loss(model.classify(b["query"]), b, cfg.loss, cfg.k, cfg.n, reduction="none")
            rows += [(float(ci), float(li)) for ci, li in zip(c, loss_)]
    assert out["test_videos"] == len(rows) == 6
    assert out["test_acc"] == pytest.approx(np.mean([r[0] for r in rows]), abs=1e-9)
    assert out["test_loss"] == pytest.approx(np.mean([r[1] for r in rows]), rel=1e-5)


def test_finetune_validation_batches_are_static(eval_cache):
    from core import flags
    from train.finetune import FinetuneConfig, validate
    from train.mac import eval_transform
    from train.models import build_backbone

    cfg = flags.parse(FinetuneConfig, ["--cache-dir", str(eval_cache), "--init", "random", "--frames", "4",
                                       "--crop", "16", "--scales", "16", "20", "--batch-size", "4",
                                       "--norm", "kinetics"])
    index = open_cache(eval_cache, "ucf101")
    ds = EvalClips(index, 1, "test", num_clips=1, frames=4, stride=2, short_side=18, crop=16)
    loader = make_loader(ds, 4, 0, shuffle=False, persistent_workers=False)
    torch.manual_seed(0)
    model = build_backbone("r2plus1d_10", num_classes=2)
    shapes = []
    model.register_forward_pre_hook(lambda m, inp: shapes.append(inp[0].shape[0]))
    out = validate(model, loader, cfg, Dist())
    assert shapes == [4, 4] and out["val_videos"] == 6
    model.eval()
    correct, losses = [], []
    with torch.no_grad():
        for batch in loader:
            b = eval_transform(batch, cfg.norm, "cpu")
            logits = model(b["clips"].flatten(0, 1))
            correct += (logits.argmax(1) == b["label"]).float().tolist()
            losses += torch.nn.functional.cross_entropy(logits, b["label"], reduction="none").tolist()
    assert out["val_acc"] == pytest.approx(np.mean(correct), abs=1e-9)
    assert out["val_loss"] == pytest.approx(np.mean(losses), rel=1e-5)


@pytest.mark.slow
def test_compiled_training_builds_static_graphs_only(tiny_cache, tmp_path, monkeypatch):
    """--compile on MAC-SC with an evaluation whose last batch is partial: the query encoder at B
    (training), the key encoder's shuffle-BN half at B/2 and the query encoder in eval mode at B
    (the partial batch padded): three graphs, none with a symbolic batch dimension, none rebuilt
    in the second epoch. Finetuning: training and validation at B, two graphs. (A recording
    backend stands in for inductor: the graphs are dynamo's either way.)"""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append([inp for inp in example_inputs if isinstance(inp, torch.SymInt)
                       or (torch.is_tensor(inp) and any(isinstance(s, torch.SymInt) for s in inp.shape))])
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: real_compile(fn, **{**kw, "backend": backend}))
    torch._dynamo.reset()
    try:
        pretrain_main(tiny_args(tiny_cache, "--epochs", "2", "--eval-every", "1", "--compile",
                                "--run-dir", str(tmp_path / "run")))
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 3, len(graphs)
    assert not any(graphs), graphs                                     # no symbolic shapes
    ep = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["test_videos"] for r in ep] == [2, 2] and all(r["eval_time"] > 0 for r in ep)

    from train.finetune import main as finetune_main
    graphs.clear()
    try:
        res = finetune_main(["--cache-dir", str(tiny_cache), "--init", "random", "--backbone", "r2plus1d_10",
                             "--frames", "4", "--crop", "16", "--scales", "16", "20", "--batch-size", "4",
                             "--workers", "0", "--no-progress", "--epochs", "2", "--val-every", "1", "--compile",
                             "--run-dir", str(tmp_path / "ft")])
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 2 and not any(graphs), graphs
    assert res["best_val"]["val_acc"] >= 0


# --------------------------------------------------------------------------------------------
# DDP on a real 2-process gloo group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, args: tuple, timeout: float = 180.0) -> None:
    """Run fn(rank, *args) on 2 processes; fail (and kill them) if they are not done in time:
    the proof that no rank hangs."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.time() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.time() > deadline:
                raise AssertionError(f"the ranks did not finish within {timeout:.0f} s: one hangs")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def _init(rank: int, port: int) -> Dist:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(minutes=10))
    return Dist(rank, 2, rank, torch.device("cpu"), True)


class _Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(3, generator=g), "y": torch.randn(1, generator=g)}


def _fit_tiny(d: Dist, run_dir: Path, epochs: int, drift_rank: int | None = None) -> dict:
    """The real loop on a linear regression under DDP (2 steps an epoch per rank). `drift_rank`:
    that rank's parameters leave the others' at the start of epoch 1 (nothing in DDP would)."""
    from train.utils.distributed import wrap_ddp

    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    ddp = wrap_ddp(model, d)
    cfg = PretrainConfig(epochs=epochs, batch_size=2, workers=0, log_every=1, save_every=0, progress=False,
                         stop_signals=())
    loader = make_loader(_Points(), 2, 0, shuffle=True, distributed=True, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [100])

    def epoch_start(epoch: int, start_batch: int) -> None:
        if d.rank == drift_rank and epoch == 1:
            with torch.no_grad():
                model.weight.add_(1.0)

    task = loop.Task("finetune", prepare=lambda b: b, checkpoint=dict, epoch_start=epoch_start,
                     step=lambda b, s: {"loss": ((ddp(b["x"]) - b["y"]) ** 2).mean()})
    return loop.fit(cfg=cfg, d=d, model=model, params=list(model.parameters()), opt=opt, sched=sched,
                    loader=loader, steps_per_epoch=len(loader), run_dir=run_dir, task=task, state=loop.State(),
                    log=lambda *a: None)


def _outcome(fn) -> str:
    try:
        fn()
        return "returned"
    except Exception as e:     # noqa: BLE001 - the test compares what each rank raised
        return f"{type(e).__name__}: {e}"


def _failure_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    import train.utils.checkpoint as ckpt

    d = _init(rank, port)
    try:
        res = {}
        # the non-finite guard under DDP: values and the all-reduced verdict read back together
        from train.utils.guards import check_finite
        reads, names = [], ("item", "tolist", "__bool__", "__float__", "__int__")
        originals = {n: getattr(torch.Tensor, n) for n in names}
        for n, real_read in originals.items():
            setattr(torch.Tensor, n, lambda t, *a, _r=real_read, _n=n, **k: (reads.append(_n), _r(t, *a, **k))[1])
        try:
            check_finite({"loss": torch.tensor(1.0), "grad_norm": torch.tensor(2.0)}, 0, 0, d)
        finally:
            for n, real_read in originals.items():
                setattr(torch.Tensor, n, real_read)
        res["guard_reads"] = reads
        bad = torch.tensor(float("nan") if rank == 1 else 1.0)
        res["guard_other_rank"] = _outcome(lambda: check_finite({"loss": bad}, 0, 5, d))
        real = ckpt.save_checkpoint

        def full_disk(obj, path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        # a background checkpoint write fails on rank 0: noticed at the next save (epoch 1) ...
        ckpt.save_checkpoint = full_disk
        res["write_mid_run"] = _outcome(lambda: _fit_tiny(d, Path(out) / "a", epochs=2))
        # ... or, for the last checkpoint, when the loop ends
        res["write_last"] = _outcome(lambda: _fit_tiny(d, Path(out) / "b", epochs=1))
        ckpt.save_checkpoint = real

        # rank 0 cannot append to metrics.jsonl mid-epoch (its second record)
        from train.utils.log import MetricsLog
        real_write, calls = MetricsLog.write, []

        def write(self, **rec):
            calls.append(rec.get("kind"))
            if rank == 0 and len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            return real_write(self, **rec)

        MetricsLog.write = write
        res["metrics_write"] = _outcome(lambda: _fit_tiny(d, Path(out) / "m", epochs=2))
        MetricsLog.write = real_write

        res["param_hash"] = _outcome(lambda: _fit_tiny(d, Path(out) / "c", epochs=2, drift_rank=1))
        res["done"] = True
        torch.save(res, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_failure_on_one_rank_stops_every_rank_with_its_message(tmp_path):
    """Rank 0's failed background checkpoint write (noticed at the next save, or at the end), its
    failed metrics.jsonl append, a parameter mismatch between ranks, a non-finite loss on one
    rank: every rank exits with the message (within the test's timeout) instead of waiting in a
    collective until the process group's 30-minute timeout. The guard reads the device once."""
    _spawn(_failure_worker, (_free_port(), str(tmp_path)))
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    for key in ("write_mid_run", "write_last"):
        assert r0[key].startswith("OSError: [Errno 28]"), r0[key]
        assert r1[key].startswith("RankFailed: rank 0 failed"), r1[key]
        assert "No space left on device" in r1[key] and "--resume" in r1[key]
    assert "saving a checkpoint" in r1["write_mid_run"] and "writing the last checkpoint" in r1["write_last"]
    assert r0["metrics_write"].startswith("OSError: [Errno 28]"), r0["metrics_write"]
    assert r1["metrics_write"].startswith("RankFailed: rank 0 failed writing metrics.jsonl"), r1["metrics_write"]
    for r in (r0, r1):
        assert r["param_hash"].startswith("RuntimeError: ranks disagree on the parameters"), r["param_hash"]
        assert r["guard_reads"] == ["tolist"]                     # one device read, DDP or not
    assert r0["guard_other_rank"].startswith("NonFiniteLossError: non-finite loss on another rank at epoch 0 step 5")
    assert r1["guard_other_rank"].startswith("NonFiniteLossError: non-finite loss or gradient at epoch 0 step 5")


def _mac_cfg(**kw) -> PretrainConfig:
    return PretrainConfig(**{"frames": 4, "crop": 16, "scales": (16,), "backbone": "r2plus1d_10", "batch_size": 2,
                             "queue_size": 8, "method": "mac-sc", "bf16": False, **kw})


def _mac_batch(g: torch.Generator) -> dict:
    return {"query": torch.randn(2, 3, 4, 16, 16, generator=g), "key": torch.randn(2, 3, 4, 16, 16, generator=g),
            "label": torch.randint(0, 16, (2,), generator=g), "alpha_idx": torch.randint(0, 4, (2, 2), generator=g),
            "alpha_target": torch.rand(2, 2, generator=g)}


def _bandwidth_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from train.utils.distributed import broadcast_buffers, wrap_ddp

    d = _init(rank, port)
    try:
        cfg = _mac_cfg()
        res = {}
        for name, wrap in (("old", lambda m: DistributedDataParallel(m, broadcast_buffers=True)),
                           ("new", lambda m: wrap_ddp(m, d))):
            torch.manual_seed(0)
            model = MACModel(cfg.backbone, 16, contrastive=True, proj_dim=8, queue_size=cfg.queue_size,
                             shuffle_bn_groups=1)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
            step = make_step(wrap(model), cfg, d, cl=False)
            g = torch.Generator().manual_seed(100 + rank)            # each rank its own clips
            torch.manual_seed(7)
            for s in range(3):
                terms = step(_mac_batch(g), s)
                opt.zero_grad()
                terms["loss"].backward()
                opt.step()
            raw = {k: v.clone() for k, v in model.state_dict().items()}
            broadcast_buffers(model, d)                              # the loop's realignment
            res[name] = {"raw": raw, "aligned": {k: v.clone() for k, v in model.state_dict().items()}}

        # the key clips' all-gather: bf16 under a bf16 autocast, against the fp32 gather
        torch.manual_seed(0)
        m = MACModel(cfg.backbone, 16, contrastive=True, proj_dim=8, queue_size=8, shuffle_bn_groups=1)
        x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(rank))
        sent = []
        import train.mac_model as mm
        real_gather = mm.concat_all_gather
        mm.concat_all_gather = lambda t: (sent.append(t.dtype), real_gather(t))[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m.gather_bf16 = False
            k_fp32 = m.encode_keys(x, 5)
            m.gather_bf16 = True
            k_bf16 = m.encode_keys(x, 5)
        mm.concat_all_gather = real_gather
        k_plain = m.encode_keys(x, 5)                                # no autocast: fp32 everywhere
        res["keys"] = {"fp32": k_fp32, "bf16": k_bf16, "plain": k_plain, "sent": sent}
        torch.save(res, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_without_buffer_broadcast_and_with_bf16_key_gather_gives_the_old_results(tmp_path):
    """broadcast_buffers=False (the queue is identical on every rank by construction; the BN
    statistics are realigned by the loop before any evaluation or save) trains exactly as DDP's
    per-forward broadcast did: rank 0's model bit for bit, every rank's after the realignment.
    Under a bf16 autocast the key clips go through the all-gather in bf16 and give the same keys
    bit for bit (the stem's conv casts them to bf16 either way)."""
    _spawn(_bandwidth_worker, (_free_port(), str(tmp_path)))
    r = [torch.load(tmp_path / f"{i}.pt") for i in (0, 1)]
    old0, new0 = r[0]["old"]["raw"], r[0]["new"]["raw"]
    assert set(old0) == set(new0)
    assert [k for k in old0 if not torch.equal(old0[k], new0[k])] == []
    for i in (0, 1):
        old, new = r[i]["old"]["aligned"], r[i]["new"]["aligned"]
        assert [k for k in old if not torch.equal(old[k], new[k])] == [], i
        assert [k for k in old if not torch.equal(old[k], r[0]["new"]["aligned"][k])] == []
    # without the broadcast, rank 1's own BN statistics differ until the realignment
    assert any(not torch.equal(r[1]["new"]["raw"][k], new0[k]) for k in new0 if "running_mean" in k)
    for i in (0, 1):
        k = r[i]["keys"]
        assert k["sent"][0] == torch.float32 and k["sent"][2] == torch.bfloat16   # clips, then keys, then clips
        assert torch.equal(k["fp32"], k["bf16"])
        assert not torch.equal(k["bf16"], k["plain"])                            # the autocast was on


# --------------------------------------------------------------------------------------------
# resume and checkpoints


def test_a_mid_epoch_resume_at_another_world_size_is_refused(tiny_cache, tmp_path, capsys):
    from core import errors as cli

    run = tmp_path / "mid"
    pretrain_main(tiny_args(tiny_cache, "--epochs", "2", "--max-steps", "1", "--run-dir", str(run)))
    ck = load_checkpoint(run / "last.pt")
    assert ck["batch"] == 1 and ck["world_size"] == 1
    ck.update(world_size=2, global_batch=8)                        # as a 2-process run writes it
    save_checkpoint(ck, run / "last.pt")
    args = tiny_args(tiny_cache, "--epochs", "2", "--run-dir", str(run), "--resume")
    assert cli.run(pretrain_main, "pretrain.py", args) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mid-epoch checkpoint (epoch 0 batch 1) of 2 process(es); this run has 1" in err[0]
    assert "torchrun --nproc_per_node 2" in err[0]
    ck.update(world_size=1, global_batch=8)                        # one process at --batch-size 8
    save_checkpoint(ck, run / "last.pt")
    assert cli.run(pretrain_main, "pretrain.py", args) == cli.EXIT_USAGE
    assert "at --batch-size 8 per process; this run has --batch-size 4" in capsys.readouterr().err

    edge = tmp_path / "edge"                                        # an epoch boundary: any world size
    pretrain_main(tiny_args(tiny_cache, "--epochs", "1", "--run-dir", str(edge)))
    ck = load_checkpoint(edge / "last.pt")
    assert ck["batch"] == 0
    ck.update(world_size=2, global_batch=8)
    save_checkpoint(ck, edge / "last.pt")
    res = pretrain_main(tiny_args(tiny_cache, "--epochs", "2", "--run-dir", str(edge), "--resume"))
    assert res["step"] == 4


def test_a_checkpoint_writes_each_storage_once(tiny_cache, tmp_path):
    """The backbone and queue entries are the model's own tensors: the host snapshot keeps them
    shared, so the file holds each storage once (and loads shared)."""
    res = pretrain_main(tiny_args(tiny_cache, "--epochs", "1", "--max-steps", "1", "--run-dir", str(tmp_path / "r")))
    path = res["checkpoint"]
    ck = load_checkpoint(path)
    ptr = lambda t: t.untyped_storage().data_ptr()                 # noqa: E731
    assert all(ptr(v) == ptr(ck["model"]["backbone." + k]) for k, v in ck["backbone"].items())
    assert ptr(ck["moco"]["queue"]) == ptr(ck["model"]["queue"]) and ck["moco"]["ptr"] == 4

    def tensors(o):
        if torch.is_tensor(o):
            yield o
        elif isinstance(o, dict):
            for v in o.values():
                yield from tensors(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                yield from tensors(v)

    every = list(tensors(ck))
    distinct = {ptr(t): t.untyped_storage().nbytes() for t in every}
    records = [n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]
    assert len(records) == len(distinct) < len(every)
    backbone = sum(t.untyped_storage().nbytes() for t in ck["backbone"].values())
    size = path.stat().st_size
    assert sum(distinct.values()) <= size < sum(distinct.values()) + 2**20
    copied_per_entry = sum(t.untyped_storage().nbytes() for t in every)          # what the old snapshot wrote
    assert copied_per_entry - sum(distinct.values()) >= backbone > size / 5


# --------------------------------------------------------------------------------------------
# mask statistics at yield time


def test_prefetch_commits_an_observation_when_its_batch_is_yielded(monkeypatch):
    monkeypatch.setattr(loop.PrefetchLoader, "lookahead_on_cpu", True)
    data = torch.arange(10)
    prepared, committed = [], []

    def inspect(b):
        prepared.append(int(b[0]))
        return lambda: committed.append(int(b[0]))

    pf = loop.PrefetchLoader(torch.utils.data.DataLoader(data, batch_size=2), torch.device("cpu"),
                             prepare=lambda b: b, inspect=inspect)
    it = pf.start()
    got = [next(it), next(it)]
    assert [int(b[0]) for b in got] == [0, 2]
    assert prepared == [0, 2, 4] and committed == [0, 2]          # batch 4 is prepared, not yet counted
    assert [int(b[0]) for b in it] == [4, 6, 8] and committed == [0, 2, 4, 6, 8]


def test_mask_statistics_of_a_mid_epoch_checkpoint_count_each_batch_once(tiny_cache, tmp_path, monkeypatch):
    """One-ahead preparation (CUDA's order, forced on CPU): a checkpoint after step 1 holds one
    batch's statistics, and the resumed epoch reports what the uninterrupted one reports."""
    monkeypatch.setattr(loop.PrefetchLoader, "lookahead_on_cpu", True)
    args = tiny_args(tiny_cache, "--epochs", "1", "--seed", "2")
    stopped = tmp_path / "stopped"
    pretrain_main([*args, "--max-steps", "1", "--run-dir", str(stopped)])
    ck = load_checkpoint(stopped / "last.pt")
    assert ck["batch"] == 1 and sum(ck["mask_stats"]["n"].values()) == 4
    pretrain_main([*args, "--run-dir", str(stopped), "--resume"])
    pretrain_main([*args, "--run-dir", str(tmp_path / "full")])
    last = {}
    for name in ("stopped", "full"):
        ep = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["kind"] == "epoch"][-1]
        last[name] = {k: v for k, v in ep.items() if k.startswith("mask_mean_s")}
        assert sum(load_checkpoint(tmp_path / name / "last.pt")["mask_stats"]["n"].values()) == 8
    assert last["stopped"] and last["stopped"] == pytest.approx(last["full"], rel=1e-12)


def test_the_step_benchmark_measures_the_masks_as_pretraining_does(tiny_cache):
    from benchmarks import bench_train_step as BT
    from train.pretrain import MaskStats

    cfg = flags_parse(tiny_args(tiny_cache, "--method", "mac-s"))
    batch = BT.first_batch(cfg)
    step = BT.MacStep(cfg, "cpu", batch)
    step()
    ref = MaskStats()
    ref.observe(batch)()
    assert step.stats.means() == ref.means() and step.mask_n == ref.n


def flags_parse(argv):
    from core import flags
    return flags.parse(PretrainConfig, argv)

