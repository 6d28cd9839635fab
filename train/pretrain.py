"""MAC self-supervised pretraining (docs/method.md sections 2-3): MAC-S / MAC-SC, CE or MSE objectives.

    python train/pretrain.py --dataset ucf101 --lambda 30 --m 0.5 --method mac-sc --n 2 --k 4 --backbone r2plus1d_18 --epochs 300
    torchrun --nproc_per_node 8 train/pretrain.py ...       # --batch-size is per process
    python train/pretrain.py --dataset demo --frames 8 --crop 64 --batch-size 4 --epochs 2 --workers 0   # CPU smoke
    python train/pretrain.py --config configs/demo/pretrain.json --mask-set gt   # masks imported by import_masks.py

This script builds the data, the model (train/mac_model.py: MACModel, shuffle BN, the losses)
and the optimiser, and hands train/loop.py's `fit` what is its own: the MAC transform, the step,
the pretext evaluation and chance warning, its checkpoint fields.

Rerunning the same command with --resume continues from <run-dir>/last.pt (everything restored:
model, optimizer, scheduler, MoCo queue+pointer, every rank's RNG, epoch, the batch reached within
it, step). Samples are a pure function of (seed, epoch, item) and the global RNGs are reseeded
from (seed, epoch, rank) at each epoch start, so a run killed at any point and resumed ends where
the uninterrupted run ends: bit-for-bit on CPU (tested); on CUDA add --deterministic, else cuDNN
autotuning and atomic-add kernels make any two runs, resumed or not, differ in the last bits.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):   # run as `python train/pretrain.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.cache import (NAME_PATTERN, CacheError, DecodeParams, MaskParams, open_cache, read_stats, stats_means,
                              valid_mask_set_name)
from core.errors import UsageError, exit_with
from core.flags import flag, format_config
from train.options import FrameSetFlags, OptimFlags, RunFlags, SystemFlags, ValidationFlags
from train.utils.distributed import Dist, autocast, compile_static, configure_backends, gather_unique, maybe_sync_bn, persistent_compile_cache, setup_distributed, teardown_distributed, use_channels_last, wrap_ddp
from train.utils.log import prepare_run_dir
from train.utils.optim import make_optimizer
from train.utils.random import derive_seed, seed_everything
from core import flags
from train import loop
from train.inference import has_split_lists, pad_batch
from train.data import PretrainClips, make_loader, validation_split
from train.mac import MASK_MODES, MASK_SOURCES, MASK_VARIANTS, ColourJitter, MACConfig, MACTransform
from train.mac_model import MACModel, compute_losses, pretext_chance, pretext_loss  # noqa: F401 (re-exported)
from train.models import BACKBONES, backbone_state_dict, parse_backbone



@dataclass(frozen=True)
class PretrainConfig(FrameSetFlags, OptimFlags, SystemFlags, RunFlags, ValidationFlags):
    """pretrain.py's flags: the shared groups (train/options.py) plus the masks, the MAC sample,
    the model and objective, and the pretext evaluation."""

    # data: which cached frames / mask set (preprocess/extract_masks.py builds them)
    split: int = flag(1, "official split whose part is used", lo=1, hi=3)
    part: str = flag("train", "videos to pretrain on", choices=("train", "all"))
    lam: int = flag(30, "masks: threshold lambda (Algorithm 1)", name="--lambda", lo=0, hi=255, note="the paper's: 10, 30, 60")
    m: float = flag(0.5, "masks: weight of the old background (Algorithm 1)", lo=0, hi=1, note="the paper's: 0.1, 0.5, 1")
    mask_source: str = flag("clip", "clip: Algorithm 1 on each augmented clip (the reference exactly; measured "
                            "faster than reading mask sets); cache: the per-stride mask sets", choices=MASK_SOURCES)
    mask_mode: str = flag("soft", "masks: soft (stretched differences, the reference) | hard (255)",
                          choices=MASK_MODES)
    dilate: bool = flag(True, "masks: the reference's 2x2 dilation")
    mask_set: str = flag("", "masks: a named mask set imported with preprocess/import_masks.py (e.g. boxes of "
                         "detections, Table 3), read at the clip's frames and cropped/resized with them, used as "
                         "stored; replaces the frame-difference masks ('' = none)")
    mask_variant: str = flag("foreground", "what the blend attenuates: foreground (the method) | controls: none "
                             "(no mask: every alpha tuple gives the same input), full-frame (a pretext without "
                             "motion), displaced (the masks moved by half the crop: same statistics, off the objects)",
                             choices=MASK_VARIANTS)
    # the MAC sample
    method: str = flag("mac-sc", "mac-s: alpha classification; mac-sc: + MoCo v2", choices=("mac-s", "mac-sc"))
    n: int = flag(2, "temporal segments (MAC-2 / MAC-4)", lo=1, note="the paper's: 2, 4")
    k: int = flag(4, "alpha values per segment", lo=2, note="the paper's: 2..6")
    loss: str = flag("ce", "ce over k^n classes | mse (preset alphas) | mse-n (alphas ~ U(0,1])",
                     choices=("ce", "mse", "mse-n"))
    reverse: bool = flag(False, "attenuate the background instead of the foreground")
    blend_space: str = flag("normalised", "blend after mean/std normalisation (reference) or on pixels",
                            choices=("normalised", "pixel"))
    frames: int = flag(16, "frames per clip", lo=1)
    strides: tuple = flag((1, 2, 3, 4), "temporal strides drawn uniformly", lo=1)
    scales: tuple = flag((112, 128, 144), "short-side scales drawn uniformly", lo=16)
    crop: int = flag(112, "crop size", lo=8)
    flip_p: float = flag(0.5, "horizontal flip probability", lo=0, hi=1)
    colour_jitter: bool = flag(True, "brightness/contrast/hue/saturation jitter (p 0.8 each)")
    greyscale: bool = flag(True, "greyscale p 0.2")
    norm: str = flag("imagenet", "mean/std constants (the reference's MAC configs: imagenet)",
                     choices=("imagenet", "kinetics"))
    # model / objective
    backbone: str = flag("r2plus1d_18", f"backbone: {', '.join(BACKBONES)}; a _w<width> suffix narrows it "
                         "(e.g. r2plus1d_10_w32, the CPU demo's)")
    dropout: float = flag(0.5, "dropout before the pretext head", lo=0, hi=1, hi_open=True)
    proj_hidden: int = flag(512, "MoCo projection MLP hidden width", lo=1)
    proj_dim: int = flag(128, "MoCo embedding size", lo=1)
    queue_size: int = flag(65536, "MoCo queue length (divisible by the global batch)", lo=1)
    moco_momentum: float = flag(0.999, "key encoder EMA momentum", lo=0, hi=1)
    temperature: float = flag(0.2, "InfoNCE temperature", lo=0, lo_open=True)
    cls_weight: float = flag(1.0, "weight of the pretext (alpha) loss", lo=0)
    con_weight: float = flag(0.5, "weight of the contrastive loss", lo=0)
    symmetric: bool = flag(False, "symmetric InfoNCE (both views as query; 2x the compute)")
    shuffle_bn_groups: int = flag(2, "single-process shuffle-BN: key sub-batches (1 = off)", lo=1)
    # pretext evaluation on held-out videos
    eval_every: int = flag(10, "epochs between held-out pretext accuracies: on the validation split, or on "
                           "the test split when none is held out; on the test split at the end (0 = never)",
                           lo=0, note='0 = never')
    eval_limit: int = flag(0, "max held-out videos for each pretext accuracy (0 = all)", lo=0, note='0 = all')


    def check(self) -> None:
        """Combinations of flags (each flag's own range is checked from its field)."""
        try:
            parse_backbone(self.backbone)
        except ValueError as e:
            raise UsageError("--backbone", self.backbone, str(e)) from None
        if self.frames % self.n:
            raise UsageError("--frames", self.frames, f"must be a multiple of --n {self.n} (equal segments)")
        if self.crop > min(self.scales):
            raise UsageError("--crop", self.crop, f"must be <= the smallest of --scales ({min(self.scales)})")
        if self.mask_set:
            if not valid_mask_set_name(self.mask_set):
                raise UsageError("--mask-set", self.mask_set, f"must be a mask set name ({NAME_PATTERN}), as given to "
                                                              f"import_masks.py --name")
            if self.mask_source != "clip":
                raise UsageError("--mask-source", self.mask_source, "does not combine with --mask-set (the named "
                                                                    "set's masks replace the frame-difference masks)")
            if self.mask_mode != "soft" or not self.dilate:
                raise UsageError("--mask-mode" if self.mask_mode != "soft" else "--dilate",
                                 self.mask_mode if self.mask_mode != "soft" else "false",
                                 "applies to frame-difference masks only: a --mask-set's masks are used as stored")
        if self.method == "mac-s" and self.cls_weight == 0:
            raise UsageError("--cls-weight", 0, "leaves MAC-S with no loss (MoCo v2 alone is --method mac-sc "
                                                "--cls-weight 0 --mask-variant none)")
        if self.method == "mac-sc":
            check_queue(self, world=1)


def check_queue(cfg: PretrainConfig, world: int) -> None:
    """The MoCo queue holds whole batches of keys (the ring buffer never splits one)."""
    gb = cfg.batch_size * world * (2 if cfg.symmetric else 1)
    if cfg.queue_size % gb:
        raise UsageError("--queue-size", cfg.queue_size,
                         f"must be divisible by the keys enqueued per step ({cfg.batch_size} per process x {world} "
                         f"process(es){' x 2 (symmetric)' if cfg.symmetric else ''} = {gb}); e.g. --queue-size "
                         f"{max(gb, cfg.queue_size // gb * gb)}")


def mac_config(cfg: PretrainConfig) -> MACConfig:
    """The sample's config: every MACConfig field that is a flag of the same name is copied (so a
    new sample flag needs no edit here); only the two that are spelled differently on the command
    line are translated: the colour switches -> ColourJitter, --method -> the MoCo key view."""
    cj = cfg.colour_jitter
    colour = ColourJitter(p_brightness=0.8 * cj, p_contrast=0.8 * cj, p_hue_saturation=0.8 * cj,
                          p_greyscale=0.2 * cfg.greyscale)
    same = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(MACConfig) if hasattr(cfg, f.name)}
    return MACConfig(**same, colour=colour, key_view=cfg.method == "mac-sc")


def default_run_id(cfg: PretrainConfig) -> str:
    rid = f"{cfg.method}-{cfg.n}_k{cfg.k}_{cfg.backbone}_lam{cfg.lam}_m{cfg.m:g}"
    if cfg.loss != "ce":
        rid += f"_{cfg.loss}"
    if cfg.mask_mode != "soft" or not cfg.dilate:
        rid += f"_{cfg.mask_mode}{'' if cfg.dilate else '_nodilate'}"
    if cfg.mask_source != "clip":
        rid += f"_masks-{cfg.mask_source}"
    if cfg.mask_set:
        rid += f"_maskset-{cfg.mask_set}"
    return rid + ("_reverse" if cfg.reverse else "") + ("_sym" if cfg.symmetric else "")


# ------------------------------------------------------------------------------------------
# Diagnostics: is the pretext above chance?
# ------------------------------------------------------------------------------------------

def at_chance(acc: float, chance: float | None, samples: int) -> bool:
    """True when `acc` over `samples` clips is not above guessing by 3 binomial standard errors."""
    if chance is None or samples <= 0:
        return False
    return acc <= chance + 3.0 * (chance * (1.0 - chance) / samples) ** 0.5


def chance_warning(cfg, epoch: int, step: int, acc: float, samples: int, mask_means: dict[int, float],
                   cache_means: dict[int, float] | None = None) -> str:
    """The message printed when the pretext is still at chance after a quarter of the pretraining;
    `cache_means`: the mean per-clip mask value per stride that extract_masks.py measured on the
    whole dataset for this (lambda, m) (its statistics), when the cache has them."""
    chance, _ = pretext_chance(cfg)
    cover = ", ".join(f"stride {s}: {v:.3f}" for s, v in sorted(mask_means.items())) or "not measured"
    if cache_means:
        cover += (" (the cache's statistics for the whole dataset, before augmentation: "
                  + ", ".join(f"stride {s}: {v:.3f}" for s, v in sorted(cache_means.items())) + ")")
    return (f"WARNING: after a quarter of the pretraining (epoch {epoch + 1}/{cfg.epochs}, step {step}) the pretext "
            f"accuracy is {acc:.3f} over {samples} clips, indistinguishable from chance ({chance:.3f} for "
            f"{cfg.k}^{cfg.n} alpha tuples). Likely causes:\n"
            f"  - mask coverage: the mean mask value of the training samples is {cover} (the reference's per-clip "
            f"masks on real footage: 0.02-0.11 at stride 4); masks that weak hide the attenuation. Look at "
            f"`extract_masks.py --list`; try --mask-mode hard (the full 1 - alpha on every moving pixel);\n"
            f"  - lambda: --lambda {cfg.lam} keeps only differences above {cfg.lam} grey levels; low-contrast footage "
            f"needs a lower one (the paper: 10, 30, 60);\n"
            f"  - strides: consecutive frames differ little (--strides {' '.join(map(str, cfg.strides))}); larger "
            f"strides give larger differences;\n"
            f"  - optimisation: a short budget with SGD can sit on the initial plateau (--optimizer adamw, or "
            f"another --lr); more alpha classes (--k {cfg.k}) make the task harder.")


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------

def check_config(cfg: PretrainConfig, world: int) -> None:
    """What depends on the world size (the rest was checked when the config was made)."""
    if cfg.method == "mac-sc":
        check_queue(cfg, world)


@torch.no_grad()
def pretext_accuracy(model: MACModel, loader, tf: MACTransform, cfg, d: Dist, limit: int = 0,
                     cl: bool = False, prefix: str = "test") -> dict:
    """Pretext accuracy/loss on held-out videos (fixed draws: epoch 0 of the eval dataset), as
    ``<prefix>_acc``, ``<prefix>_loss``, ``<prefix>_acc_seg<j>`` and ``<prefix>_videos``.

    Every batch reaches the encoder at --batch-size clips (the last one padded, ``pad_batch``): a
    compiled encoder keeps one static graph. Each video counts once: the per-clip rows (correct,
    per-segment correct, loss) are deduplicated across ranks (DistributedSampler repeats a few
    videos to even the ranks out), accuracy and loss alike. One device read at the end."""
    model.eval()
    vids, rows = [], []
    for i, batch in enumerate(loader):
        if limit and i * cfg.batch_size * d.world_size >= limit:
            break
        b = tf(batch)
        n = b["query"].shape[0]
        x = pad_batch(b["query"], cfg.batch_size)
        x = x.contiguous(memory_format=torch.channels_last_3d) if cl else x
        with autocast(d, cfg.bf16):
            head = model.classify(x)[:n]
        loss, c, seg = pretext_loss(head, b, cfg.loss, cfg.k, cfg.n, reduction="none")
        rows.append(torch.cat([c[:, None].float(), seg.float(), loss[:, None].float()], 1))
        vids.append(batch["video"])
    model.train()
    width = 2 + cfg.n                                 # correct, the n segments' correct, loss
    rows_t = torch.cat(rows).cpu() if rows else torch.zeros(0, width)
    _, r = gather_unique(torch.cat(vids).tolist() if vids else [], rows_t.tolist(), d)
    n = len(r)
    cols = [sum(x[j] for x in r) / max(n, 1) for j in range(width)]
    out = {f"{prefix}_acc": cols[0], f"{prefix}_videos": n, f"{prefix}_loss": cols[-1]}
    out.update({f"{prefix}_acc_seg{j}": cols[1 + j] for j in range(cfg.n)})
    return out


class MaskStats:
    """The mean mask value of the epoch's training samples, per stride (a diagnostic: the chance
    warning quotes it, the epoch records log it as mask_mean_s<stride>).

    ``observe(cpu_batch)`` measures a batch on the host, on every 4th row and column (the mean of
    a whole B64 16x112 batch costs ~15 ms a step, the subsample 1/16 of it, for a figure that
    needs two digits), and returns the update, which the loop's PrefetchLoader applies when it
    hands that batch to the step: a checkpoint holds exactly the batches trained on, although on
    CUDA the next batch is prepared (and observed) one step ahead."""

    def __init__(self) -> None:
        self.sum: dict[int, float] = {}
        self.n: dict[int, int] = {}

    def observe(self, batch: dict):
        strides = batch["clip"][:, 1].tolist()
        means = batch["masks"][..., ::4, ::4].flatten(1).float().mean(1).tolist()
        return lambda: self.add(strides, means)

    def add(self, strides, means) -> None:
        for s_, m_ in zip(strides, means):
            self.sum[s_] = self.sum.get(s_, 0.0) + m_ / 255.0
            self.n[s_] = self.n.get(s_, 0) + 1

    def means(self) -> dict[int, float]:
        return {s_: self.sum[s_] / self.n[s_] for s_ in sorted(self.sum)}

    def clear(self) -> None:
        self.sum.clear(), self.n.clear()

    def state(self) -> dict:
        return {"sum": dict(self.sum), "n": dict(self.n)}

    def load(self, st: dict | None) -> None:
        self.sum.update((st or {}).get("sum", {}))
        self.n.update((st or {}).get("n", {}))


def make_step(ddp, cfg: PretrainConfig, d: Dist, cl: bool):
    """The pretraining step the loop calls, ``step(device batch, global step) -> terms``: the
    (DDP-wrapped) MACModel forward under the autocast rule, fp32 losses (compute_losses). The
    benchmarks time this function."""
    def step(b: dict, step_: int) -> dict:
        xq, xk = b["query"], b.get("key")
        if cl:
            xq = xq.contiguous(memory_format=torch.channels_last_3d)
            xk = None if xk is None else xk.contiguous(memory_format=torch.channels_last_3d)
        with autocast(d, cfg.bf16):
            out = ddp(xq, xk, shuffle_seed=derive_seed(cfg.seed, step_, 1), symmetric=cfg.symmetric)
        return compute_losses(out, b, cfg)           # fp32 losses outside autocast
    return step


def compile_encoders(model: MACModel) -> None:
    """--compile: the encoders' bodies only (state-dict names stay unprefixed), static shapes."""
    model.backbone.forward_features = compile_static(model.backbone.forward_features)
    if model.contrastive:
        model.backbone_k.forward_features = compile_static(model.backbone_k.forward_features)


def main(argv=None) -> dict:
    cfg = flags.parse(PretrainConfig, argv, __doc__, "pretrain.py")
    d = setup_distributed(cfg.device)
    ok = False
    try:
        result = train(cfg, d)
        ok = True
        return result
    finally:
        teardown_distributed(d, ok)


def train(cfg: PretrainConfig, d: Dist) -> dict:
    log = print if d.is_main else (lambda *a, **k: None)
    check_config(cfg, d.world_size)
    run_dir = Path(cfg.run_dir or Path("runs") / cfg.dataset / (cfg.run_id or default_run_id(cfg)) / "pretrain")
    log(f"[pretrain] config:\n{format_config(cfg)}\n  world_size = {d.world_size}, global batch = "
        f"{cfg.batch_size * d.world_size}, device = {d.device}, run_dir = {run_dir}")
    configure_backends(d, cfg.deterministic)

    # data: the frame set and, for --mask-source cache, the mask sets of (lambda, m) at every
    # stride the clips are drawn with; for --mask-set, the named (imported) set
    decode = DecodeParams(cfg.short_side, cfg.jpeg_quality)
    masks = MaskParams(cfg.lam, cfg.m)
    strides = tuple(sorted(set(cfg.strides))) if cfg.mask_source == "cache" and not cfg.mask_set else ()
    try:
        index = open_cache(cfg.cache_dir, cfg.dataset, decode, masks, strides, mask_set=cfg.mask_set)
    except CacheError as e:
        msg = str(e)
        if "extract_masks.py" not in msg and "import_masks.py" not in msg:    # the fix must always be on screen
            from preprocess.cache import extract_command
            msg += f"\nBuild it with:\n  {extract_command(cfg.dataset, cfg.cache_dir, decode, masks, strides)}"
        if d.is_main:
            print(f"[pretrain] cannot open the cache: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    mcfg = mac_config(cfg)
    part = cfg.part
    if part == "train" and not has_split_lists(index, cfg.split):
        part = "all"             # pretraining needs no labels: a folder without splits/ is all pretraining data
        log(f"[pretrain] the {cfg.dataset} cache has no split lists: pretraining on all {len(index.names)} videos "
            f"(labels are never used; finetuning and evaluation need <data-root>/splits/)")
    train_ds = PretrainClips(index, cfg.split, part, mcfg, mask_set=cfg.mask_set)
    val_videos = None
    if cfg.val_fraction > 0 and part == "train":
        # the validation videos are unseen by pretraining, as the test videos are (labels are never
        # read here; the carve is finetune.py's, from the same split, fraction and seed)
        train_ds.videos, val_videos = validation_split(index, cfg.split, cfg.val_fraction, cfg.val_seed)
        log(f"[pretrain] validation split held out: {len(val_videos)} videos (fraction {cfg.val_fraction:g}, "
            f"seed {cfg.val_seed}); {len(train_ds.videos)} pretraining videos")
    loader = make_loader(train_ds, cfg.batch_size, cfg.workers, shuffle=True, distributed=d.distributed,
                         seed=cfg.seed)
    steps_per_epoch = min(len(loader), cfg.steps_per_epoch or len(loader))
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(train_ds)} training videos < one global batch "
                         f"({cfg.batch_size} x {d.world_size}); lower --batch-size")
    eval_cfg = dataclasses.replace(mcfg, key_view=False)
    eval_loader = None
    val_loader = None
    if cfg.eval_every and len(index.subset(cfg.split, "test")):
        eval_ds = PretrainClips(index, cfg.split, "test", eval_cfg, mask_set=cfg.mask_set)
        eval_loader = make_loader(eval_ds, cfg.batch_size, min(cfg.workers, 2), shuffle=False,
                                  distributed=d.distributed, seed=cfg.seed, persistent_workers=False)
    if cfg.eval_every and val_videos is not None and len(val_videos):
        # the learning curve is read on the validation videos; the test split once, at the end
        val_ds = PretrainClips(index, cfg.split, "train", eval_cfg, mask_set=cfg.mask_set)
        val_ds.videos = val_videos
        val_loader = make_loader(val_ds, cfg.batch_size, min(cfg.workers, 2), shuffle=False,
                                 distributed=d.distributed, seed=cfg.seed, persistent_workers=False)
    tf, eval_tf = MACTransform(mcfg, d.device), MACTransform(eval_cfg, d.device)

    # model (same init on every rank; DDP also broadcasts rank 0's)
    seed_everything(cfg.seed)
    n_out = mcfg.num_classes if cfg.loss == "ce" else cfg.n
    model = MACModel(cfg.backbone, n_out, cfg.dropout, cfg.method == "mac-sc", cfg.proj_hidden, cfg.proj_dim,
                     cfg.queue_size, cfg.moco_momentum, cfg.temperature,
                     cfg.shuffle_bn_groups if not d.distributed else 1, cfg.seed).to(d.device)
    if cfg.sync_bn and d.distributed:       # query side only: the key encoder keeps shuffle BN
        model.backbone = maybe_sync_bn(model.backbone, d, True)
    cl = use_channels_last(d, cfg.channels_last)
    if cl:
        model = model.to(memory_format=torch.channels_last_3d)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.lr_gamma)

    if (run_dir / "last.pt").exists() and not cfg.resume:   # before touching the run dir
        raise SystemExit(f"{run_dir / 'last.pt'} exists: pass --resume to continue that run, "
                         "or choose another --run-dir")
    run_dir = prepare_run_dir(run_dir, cfg, d, {"global_batch": cfg.batch_size * d.world_size,
                                                   "num_classes": n_out, "mac": mcfg.to_dict()})
    chance, chance_seg = pretext_chance(cfg)
    quarter = max(1, round(cfg.epochs / 4))     # the epoch after which a pretext at chance is reported
    stats = MaskStats()                         # mean mask value of the epoch's samples, per stride

    def end_epoch(e: loop.EpochEnd) -> loop.EpochResult:
        res = loop.EpochResult(metrics={"chance": chance, "chance_seg": chance_seg,
                                        **{f"mask_mean_s{s_}": v for s_, v in stats.means().items()}})
        last = e.epoch + 1 == cfg.epochs
        held_out = eval_loader is not None or val_loader is not None
        if not e.partial and held_out and ((e.epoch + 1) % cfg.eval_every == 0 or last):
            # With a validation split the periodic curve is read there, and the test split only at
            # the last epoch (reported, never chosen on); without one, on the test split as before.
            t_eval = time.perf_counter()
            if val_loader is not None:
                res.metrics.update(pretext_accuracy(model, val_loader, eval_tf, cfg, d, cfg.eval_limit, cl, "val"))
            if eval_loader is not None and (last or val_loader is None):
                res.metrics.update(pretext_accuracy(model, eval_loader, eval_tf, cfg, d, cfg.eval_limit, cl))
            res.record["eval_time"] = round(time.perf_counter() - t_eval, 4)
        if e.epoch + 1 == quarter and not e.partial:
            samples = e.steps_done * cfg.batch_size * d.world_size
            if at_chance(e.metrics["acc"], chance, samples):
                res.warnings.append(chance_warning(cfg, e.epoch, e.step, e.metrics["acc"], samples, stats.means(),
                                                  stats_means(read_stats(index.root, masks))))
        return res

    def checkpoint() -> dict:
        return {"backbone_name": cfg.backbone, "backbone": backbone_state_dict(model.backbone),
                "moco": ({"queue": model.queue, "ptr": model.queue_pointer} if model.contrastive else None),
                "dataset": cfg.dataset, "split": cfg.split, "mac": mcfg.to_dict(), "num_classes": n_out,
                "cache": {"manifest_hash": index.manifest_hash, "decode": dataclasses.asdict(decode),
                          "masks": dataclasses.asdict(masks), "strides": list(strides), "mask_set": cfg.mask_set},
                "norm": cfg.norm, "mask_stats": stats.state()}

    def restore(ck: dict) -> None:              # a mid-epoch checkpoint keeps the epoch's mask statistics
        stats.load(ck.get("mask_stats"))

    def epoch_start(epoch: int, start_batch: int) -> None:
        if not start_batch:
            stats.clear()

    task = loop.Task("pretrain", prepare=tf, step=lambda b, s_: step(b, s_), checkpoint=checkpoint,
                     end_epoch=end_epoch, inspect=stats.observe, restore=restore, epoch_start=epoch_start,
                     log_skip=("chance", "mask_"))
    last = run_dir / "last.pt"
    state = loop.resume(last, model, opt, sched, cfg, d, log, task) if cfg.resume and last.exists() else loop.State()
    if cfg.compile:   # compile the encoders' bodies only: state-dict names stay unprefixed
        persistent_compile_cache(cfg.cache_dir)
        compile_encoders(model)
    ddp = wrap_ddp(model, d)
    step = make_step(ddp, cfg, d, cl)
    log(f"[pretrain] pretext: {mcfg.num_classes if cfg.loss == 'ce' else cfg.n} outputs "
        f"({cfg.loss}, k {cfg.k}, n {cfg.n}); guessing scores {chance:.4g} per clip, {chance_seg:.4g} per segment")
    out = loop.fit(cfg=cfg, d=d, model=model, params=params, opt=opt, sched=sched, loader=loader,
                   steps_per_epoch=steps_per_epoch, run_dir=run_dir, task=task, state=state, log=log)
    return {"run_dir": run_dir, "checkpoint": last, **out}


def console() -> None:
    """The ``mac-pretrain`` console command (pyproject.toml): the same as ``python train/pretrain.py``."""
    exit_with(main, "pretrain.py")


if __name__ == "__main__":
    console()
