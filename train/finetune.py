"""Supervised finetuning on a labelled split (docs/method.md section 5): the downstream half of MAC.

    python train/finetune.py --dataset ucf101 --split 1 --init runs/ucf101/<run-id>/pretrain/last.pt
    python train/finetune.py --dataset hmdb51 --split 1 --init random --backbone r2plus1d_18
    python train/finetune.py --dataset ucf101 --init path/to/torchvision_state_dict.pth --backbone r3d_18
    torchrun --nproc_per_node 8 train/finetune.py ...       # --batch-size is per process
    python train/finetune.py --dataset demo --init random --frames 8 --crop 64 --batch-size 4 --epochs 2 --workers 0

--init loads a backbone strictly (any missing / unexpected / mis-shaped key is an error, and the
report is printed and saved); the classifier is always new (dataset's classes). Frames only, no
masks. The authors' recipe is the default: stride-2 16-frame clips, scale {112,128,144}, flip
p 0.35, light colour jitter p 0.2, crop 112, SGD lr 0.01 momentum 0.9 wd 5e-4, 150 epochs,
steps at 60 and 120. Every --val-every epochs the centre clip of each test video is classified
(a cheap clip accuracy; train/evaluate.py does the 10-clip protocol); best.pt keeps the best.

Run dir (default): beside the pretraining stage, runs/<ds>/<run-id>/finetune (+ "_random" for
--init random, + "_<dataset>" when it differs from the pretraining dataset, + "_split<N>" for
splits 2, 3). The checkpoint records dataset, split, classes and train_videos, which
train/evaluate.py uses to refuse testing on training videos. Resume as in pretrain.py.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):   # run as `python train/finetune.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.cache import CacheError, DecodeParams, open_cache
from core.errors import UsageError, exit_with
from core.flags import flag, format_config, redefault
from train.options import FrameSetFlags, OptimFlags, RunFlags, SystemFlags, ValidationFlags
from train.utils.checkpoint import load_checkpoint
from train.utils.distributed import Dist, autocast, compile_static, configure_backends, gather_unique, maybe_sync_bn, persistent_compile_cache, setup_distributed, teardown_distributed, use_channels_last, wrap_ddp
from train.utils.log import prepare_run_dir
from train.utils.optim import make_optimizer
from train.utils.random import seed_everything
from core import flags
from train import loop
from train.data import EvalClips, LabelledClips, label_subset, make_loader, validation_split, video_groups
from train.inference import backbone_weights, estimate_bn_statistics, pad_batch, require_split_lists
from train.mac import ClipConfig, ColourJitter, clip_transform, eval_transform
from train.models import BACKBONES, backbone_state_dict, build_backbone, load_backbone, parse_backbone



@dataclass(frozen=True)
class FinetuneConfig(FrameSetFlags, OptimFlags, SystemFlags, RunFlags, ValidationFlags):
    """finetune.py's flags: the shared groups (train/options.py, with the finetuning recipe's
    defaults where it differs) plus the initialisation, the clips and the validation."""

    epochs: int = redefault(OptimFlags, "epochs", 150)
    weight_decay: float = redefault(OptimFlags, "weight_decay", 5e-4)
    milestones: tuple = redefault(OptimFlags, "milestones", (60, 120))
    clip_grad: float = redefault(OptimFlags, "clip_grad", 0.0, "gradient norm clip (0 = off, the recipe)")
    save_every: int = redefault(RunFlags, "save_every", 0, "epochs between kept epoch_XXXX.pt (0 = only last/best)")
    split: int = flag(1, "official split (train part: training, test part: validation)", lo=1, hi=3)
    init: str = flag("", "random | a pretrain/finetune checkpoint | a torchvision state dict (.pth)")
    init_strict: bool = flag(True, "require an exact backbone key/shape match")
    trust_checkpoint: bool = flag(False, "allow full unpickling of --init (can run code stored in the file; "
                                  "only for files you trust)")
    backbone: str = flag("", "default: the --init checkpoint's, else r2plus1d_18")
    # clips (ClipConfig)
    frames: int = flag(16, "frames per clip", lo=1)
    stride: int = flag(2, "temporal stride", lo=1)
    scales: tuple = flag((112, 128, 144), "short-side scales drawn uniformly", lo=16)
    crop: int = flag(112, "crop size", lo=8)
    flip_p: float = flag(0.35, "horizontal flip probability", lo=0, hi=1)
    colour_jitter: bool = flag(True, "light colour jitter (p 0.2)")
    norm: str = flag("auto", "mean/std constants; auto: the --init checkpoint's (MAC pretraining: imagenet), "
                     "else kinetics (torchvision's video models)", choices=("auto", "imagenet", "kinetics"))
    dropout: float = flag(0.5, "dropout before the classifier", lo=0, hi=1, hi_open=True)
    freeze_backbone: bool = flag(False, "linear probe: train only the classifier on frozen backbone features "
                                 "(BN statistics frozen too)")
    bn_estimate: int = flag(20, "linear probe of a random init: estimate the frozen backbone's BN statistics on this "
                            "many batches of training clips first (0 = keep the untrained mean 0 / variance 1)", lo=0)
    label_fraction: float = flag(1.0, "train on a seeded, class-balanced fraction of the train labels (0 < F <= 1)", lo=0, hi=1, lo_open=True)
    # validation (centre clips of held-out videos)
    val_every: int = flag(5, "epochs between centre-clip validations (0 = only at the end); on the validation "
                          "split with --val-fraction, else on the test split (monitoring only)", lo=0)
    val_short_side: int = flag(0, "validation short side (0: 128 * crop / 112)", lo=0)
    val_limit: int = flag(0, "max validation videos (0 = all)", lo=0)

    def check(self) -> None:
        """Combinations of flags and the --init file (each flag's own range is checked from its field)."""
        if self.init and self.init != "random" and not Path(self.init).is_file():
            raise UsageError("--init", self.init, "no such file (a checkpoint, a state dict .pth, or random)")
        if self.backbone:
            try:
                parse_backbone(self.backbone)
            except ValueError as e:
                raise UsageError("--backbone", self.backbone, str(e)) from None
        if self.crop > min(self.scales):
            raise UsageError("--crop", self.crop, f"must be <= the smallest of --scales ({min(self.scales)})")


def read_init(init: str, trust: bool = False) -> tuple[dict | None, dict]:
    """(state dict, info) of --init: ours (pretrain/finetune checkpoints), a torchvision-format
    state dict, or a dict wrapping one under "state_dict"/"model"."""
    if init == "random":
        return None, {"kind": "random"}
    path = Path(init)
    if not path.exists():
        raise UsageError("--init", init, "no such file (a checkpoint, a state dict .pth, or random)")
    sd, info = backbone_weights(load_checkpoint(path, trust=trust), path)   # data only, unless --trust-checkpoint
    info.pop("checkpoint", None)
    return sd, {"path": str(path.resolve()), **info}


def train_mode(model: nn.Module, freeze_backbone: bool) -> None:
    """model.train(); with a frozen backbone only the classifier trains (its dropout on), the
    backbone stays in eval mode so its BN statistics never move."""
    model.train(not freeze_backbone)
    if freeze_backbone:
        model.fc.train()


def default_run_dir(cfg: FinetuneConfig, info: dict) -> Path:
    stage = ("linear" if cfg.freeze_backbone else "finetune") + ("_random" if info["kind"] == "random" else "")
    if cfg.label_fraction < 1.0:
        stage += f"_labels{cfg.label_fraction:g}"
    p = Path(info.get("path", ""))
    if info["kind"] in ("pretrain", "finetune") and p.parent.name.startswith(("pretrain", "finetune")):
        root, root_ds = p.parent.parent, info.get("dataset")       # beside the pretraining stage
    else:
        rid = cfg.run_id or ("random_" + (cfg.backbone or "r2plus1d_18") if info["kind"] == "random" else p.stem)
        root, root_ds = Path("runs") / cfg.dataset / rid, cfg.dataset
    if cfg.dataset != root_ds:
        stage += f"_{cfg.dataset}"
    return root / (stage + (f"_split{cfg.split}" if cfg.split != 1 else ""))


@torch.no_grad()
def validate(model: nn.Module, loader, cfg: FinetuneConfig, d: Dist, cl: bool = False) -> dict:
    """Clip accuracy of the centre clip of each test video (deduplicated across ranks). Every batch
    reaches the model at --batch-size clips (the last one padded: one static graph under
    --compile); one device read at the end."""
    model.eval()
    vids, rows = [], []
    for i, batch in enumerate(loader):
        if cfg.val_limit and i * cfg.batch_size * d.world_size >= cfg.val_limit:
            break
        b = eval_transform(batch, cfg.norm, d.device)
        x = b["clips"].flatten(0, 1)                           # [B, 1, 3, T, S, S] -> [B, 3, T, S, S]
        n = x.shape[0]
        x = pad_batch(x, cfg.batch_size)
        x = x.contiguous(memory_format=torch.channels_last_3d) if cl else x
        with autocast(d, cfg.bf16):
            logits = model(x)[:n].float()
        rows.append(torch.stack([(logits.argmax(1) == b["label"]).float(),
                                 F.cross_entropy(logits, b["label"], reduction="none")], 1))
        vids += batch["video"].tolist()
    train_mode(model, cfg.freeze_backbone)
    _, vals = gather_unique(vids, [tuple(r) for r in torch.cat(rows).tolist()] if rows else [], d)
    n = max(len(vals), 1)
    return {"val_acc": sum(v[0] for v in vals) / n, "val_loss": sum(v[1] for v in vals) / n,
            "val_videos": len(vals)}


def main(argv=None) -> dict:
    cfg = flags.parse(FinetuneConfig, argv, __doc__, "finetune.py")
    d = setup_distributed(cfg.device)
    ok = False
    try:
        result = train(cfg, d)
        ok = True
        return result
    finally:
        teardown_distributed(d, ok)


def train(cfg: FinetuneConfig, d: Dist) -> dict:
    log = print if d.is_main else (lambda *a, **k: None)
    if not cfg.init:
        raise SystemExit("pass --init random, --init <pretrain checkpoint> or --init <state dict .pth>")
    sd, info = read_init(cfg.init, cfg.trust_checkpoint)
    if cfg.norm == "auto":   # a backbone is finetuned with the normalisation it was pretrained with
        cfg = dataclasses.replace(cfg, norm=info.get("norm") or "kinetics")
        log(f"[finetune] normalisation: {cfg.norm} ("
            + ("that of the --init checkpoint" if info.get("norm") else
               "the default without a pretraining normalisation: torchvision's video models") + ")")
    backbone = cfg.backbone or info.get("backbone_name") or "r2plus1d_18"
    try:
        parse_backbone(backbone)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg, info)
    log(f"[finetune] config:\n{format_config(cfg)}\n  backbone = {backbone}, world_size = {d.world_size}, "
        f"global batch = {cfg.batch_size * d.world_size}, device = {d.device}, run_dir = {run_dir}")
    configure_backends(d, cfg.deterministic)

    decode = DecodeParams(cfg.short_side, cfg.jpeg_quality)
    try:
        index = open_cache(cfg.cache_dir, cfg.dataset, decode, None)   # frames only
    except CacheError as e:
        if d.is_main:
            print(f"[finetune] cannot open the cache: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    require_split_lists(index, cfg.split, "finetuning")
    ccfg = ClipConfig(frames=cfg.frames, stride=cfg.stride, scales=cfg.scales, crop=cfg.crop, flip_p=cfg.flip_p,
                      colour=ColourJitter.light() if cfg.colour_jitter else ColourJitter.off(),
                      norm=cfg.norm, seed=cfg.seed)
    train_ds = LabelledClips(index, cfg.split, "train", ccfg)
    val_split = "test"
    if cfg.val_fraction > 0:          # every choice on the validation split; test is read once, by evaluate.py
        train_ds.videos, val_videos = validation_split(index, cfg.split, cfg.val_fraction, cfg.val_seed)
        val_split = "val"
        log(f"[finetune] validation split: {len(val_videos)} videos of {len(set(video_groups(index.names[val_videos])))} "
            f"training groups held out (fraction {cfg.val_fraction:g}, seed {cfg.val_seed}); "
            f"{len(train_ds.videos)} training videos")
    if cfg.label_fraction < 1.0:
        full = len(train_ds)
        train_ds.videos = label_subset(train_ds.videos, index.labels, cfg.label_fraction, cfg.seed)
        log(f"[finetune] label fraction {cfg.label_fraction:g}: {len(train_ds)} of {full} training videos "
            f"(seed {cfg.seed}, per class: {np.bincount(index.labels[train_ds.videos], minlength=len(index.classes)).tolist()})")
    loader = make_loader(train_ds, cfg.batch_size, cfg.workers, shuffle=True, distributed=d.distributed,
                         seed=cfg.seed)
    steps_per_epoch = min(len(loader), cfg.steps_per_epoch or len(loader))
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(train_ds)} training videos < one global batch; lower --batch-size")
    val_ds = EvalClips(index, cfg.split, "test", num_clips=1, frames=cfg.frames, stride=cfg.stride,
                       short_side=cfg.val_short_side or round(cfg.crop * 128 / 112), crop=cfg.crop)
    if val_split == "val":
        val_ds.videos = val_videos
    val_loader = make_loader(val_ds, cfg.batch_size, min(cfg.workers, 4), shuffle=False,
                             distributed=d.distributed, seed=cfg.seed, persistent_workers=False)
    train_videos = [str(x) for x in index.names[train_ds.videos]]

    # model: torchvision-named backbone + new fc; dropout as a pre-hook on fc keeps the state
    # dict exactly torchvision's, so evaluate/retrieve load it with build_backbone + strict
    seed_everything(cfg.seed)
    model = build_backbone(backbone, num_classes=len(index.classes))
    if cfg.dropout:
        rate = cfg.dropout
        model.fc.register_forward_pre_hook(lambda mod, inp: (F.dropout(inp[0], rate, mod.training),))
    if sd is not None:
        try:
            report = load_backbone(model, sd, strict=cfg.init_strict)
        except Exception as e:
            raise SystemExit(f"[finetune] --init {cfg.init} does not fit the {backbone} backbone "
                             f"(choose it with --backbone {'|'.join(BACKBONES)}):\n{e}") from None
        info["report"] = {"loaded": len(report.loaded), "missing": report.missing,
                          "unexpected": report.unexpected, "mismatched": [list(map(str, m)) for m in report.mismatched],
                          "dropped": report.dropped, "ignored": len(report.ignored)}
        log(f"[finetune] init from {cfg.init} ({info['kind']}):\n{report.summary()}")
    if cfg.freeze_backbone:      # linear probe: only fc learns; the backbone is a fixed feature map
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("fc."))
    model = model.to(d.device)
    if cfg.freeze_backbone and sd is None and cfg.bn_estimate:
        # random features with statistics of the training clips, not mean 0 / variance 1 (a resumed
        # run then loads the same estimate from its checkpoint)
        bn_loader = make_loader(train_ds, cfg.batch_size, min(cfg.workers, 1), shuffle=True, seed=cfg.seed + 1,
                                persistent_workers=False)
        used = estimate_bn_statistics(model, (clip_transform(b, ccfg, d.device)["clips"] for b in bn_loader),
                                      cfg.bn_estimate)
        info["bn_estimate_batches"] = used
        log(f"[finetune] random init: BN statistics estimated on {used} batches of training clips")
    model = maybe_sync_bn(model, d, cfg.sync_bn and not cfg.freeze_backbone)
    cl = use_channels_last(d, cfg.channels_last)
    if cl:
        model = model.to(memory_format=torch.channels_last_3d)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.lr_gamma)

    if (run_dir / "last.pt").exists() and not cfg.resume:   # before touching the run dir
        raise SystemExit(f"{run_dir / 'last.pt'} exists: pass --resume to continue that run, "
                         "or choose another --run-dir")
    run_dir = prepare_run_dir(run_dir, cfg, d, {"backbone": backbone, "init": info,
                                                   "global_batch": cfg.batch_size * d.world_size})
    best = {"val_acc": -1.0, "epoch": None}

    def step(b: dict, step_: int) -> dict:
        x = b["clips"].contiguous(memory_format=torch.channels_last_3d) if cl else b["clips"]
        with autocast(d, cfg.bf16):
            logits = ddp(x)
        loss = F.cross_entropy(logits.float(), b["label"])
        return {"loss": loss, "acc": (logits.argmax(1) == b["label"]).float().mean()}

    def end_epoch(e: loop.EpochEnd) -> loop.EpochResult:
        res = loop.EpochResult()
        if e.partial or e.epoch + 1 == cfg.epochs or (cfg.val_every and (e.epoch + 1) % cfg.val_every == 0):
            res.metrics.update(validate(model, val_loader, cfg, d, cl))
            res.record["val_split"] = val_split
            if res.metrics["val_acc"] > best["val_acc"]:
                best.update(val_acc=res.metrics["val_acc"], epoch=e.epoch)
                res.is_best = True
        res.record["best_val_acc"] = best["val_acc"]
        return res

    def checkpoint() -> dict:
        return {"backbone_name": backbone, "backbone": backbone_state_dict(model), "moco": None,
                "dataset": cfg.dataset, "split": cfg.split, "classes": list(index.classes),
                "train_videos": train_videos, "val_videos": [str(x) for x in index.names[val_ds.videos]],
                "val_split": val_split, "init": info,
                "cache": {"manifest_hash": index.manifest_hash, "decode": dataclasses.asdict(decode), "masks": None},
                "best": dict(best)}

    task = loop.Task("finetune", prepare=lambda batch: clip_transform(batch, ccfg, d.device), step=step,
                     checkpoint=checkpoint, end_epoch=end_epoch, restore=lambda ck: best.update(ck["best"]),
                     train_mode=lambda: train_mode(model, cfg.freeze_backbone), final=lambda: {"best": best})
    last = run_dir / "last.pt"
    state = loop.resume(last, model, opt, sched, cfg, d, log, task) if cfg.resume and last.exists() else loop.State()
    if cfg.compile:
        persistent_compile_cache(cfg.cache_dir)
        compile_static(model)  # in place: state-dict names stay unprefixed
    ddp = wrap_ddp(model, d)
    out = loop.fit(cfg=cfg, d=d, model=model, params=params, opt=opt, sched=sched, loader=loader,
                   steps_per_epoch=steps_per_epoch, run_dir=run_dir, task=task, state=state, log=log)
    return {"run_dir": run_dir, "checkpoint": last, "best": run_dir / "best.pt", **out, "best_val": best,
            "init": info}


def console() -> None:
    """The ``mac-finetune`` console command (pyproject.toml): the same as ``python train/finetune.py``."""
    exit_with(main, "finetune.py")


if __name__ == "__main__":
    console()
