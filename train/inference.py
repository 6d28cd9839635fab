"""Reading checkpoints and running models over clips: the library under evaluate.py,
retrieve.py and finetune.py's --init (and the trainers' --resume), in one place.

  - ``load_checkpoint``: checkpoints are data, read with torch's weights-only unpickler; a file
    that needs more is refused unless the user trusts it (``--trust-checkpoint``).
  - ``backbone_weights``: the backbone state dict of any supported file (this project's
    pretraining or finetuning checkpoints, a torchvision-format state dict, or a dict wrapping one
    under "state_dict" / "model" / "backbone") and what the file says about itself.
  - the evaluation plumbing: the clip geometry and cache a checkpoint was trained with, the
    10-clip loader, ``run_clips``, the output folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from core import atomic
from core.errors import ToolError
from train.utils.checkpoint import CheckpointError, backbone_weights, load_checkpoint  # noqa: F401
from train.utils.distributed import autocast_for as autocast_ctx, resolve_device  # noqa: F401
# --------------------------------------------------------------------------------------------
# Evaluation plumbing: geometry, cache, loader, forward passes
# --------------------------------------------------------------------------------------------

def default_short_side(crop: int) -> int:
    """The test short side for a crop: 128 for the paper's 112 (ratio 8/7), scaled otherwise."""
    return int(round(int(crop) * 128 / 112))


def checkpoint_config(ckpt: dict) -> dict:
    """The resolved run config stored in a checkpoint ({} for foreign checkpoints)."""
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    return dict(cfg) if isinstance(cfg, dict) else {}


def clip_geometry(cfg: dict, frames=None, stride=None, crop=None, short_side=None) -> dict:
    """Test clip geometry: explicit values win, then the checkpoint's config, then the paper's
    (16 frames, stride 2, crop 112, short side 128 * crop / 112)."""
    def pick(explicit, keys, default):
        if explicit is not None:
            return int(explicit)
        for k in keys:
            if cfg.get(k) is not None:
                return int(cfg[k])
        return int(default)

    frames = pick(frames, ("frames", "T", "clip_len", "num_frames"), 16)
    stride = pick(stride, ("stride", "eval_stride"), 2)
    crop = pick(crop, ("crop", "crop_size"), 112)
    short_side = int(short_side) if short_side is not None else default_short_side(crop)
    return {"frames": frames, "stride": stride, "crop": crop, "short_side": short_side}


def open_checkpoint_cache(ckpt: dict, cache_dir=None, dataset: str | None = None):
    """open_cache with the decode parameters the checkpoint was trained on (DecodeParams()
    when it does not say), for `dataset` (default: the checkpoint's)."""
    from preprocess.cache import CacheError, DecodeParams, open_cache

    cfg = checkpoint_config(ckpt)
    dataset = dataset or ckpt.get("dataset") or cfg.get("dataset")
    if not dataset:
        raise SystemExit("the checkpoint does not name its dataset: pass --dataset")
    cache_dir = cache_dir or cfg.get("cache_dir") or "data_cache"
    decode = DecodeParams()
    info = ckpt.get("cache") or {}
    if isinstance(info.get("decode"), dict) and (dataset == (ckpt.get("dataset") or cfg.get("dataset"))):
        decode = DecodeParams(**info["decode"])
    try:
        return open_cache(cache_dir, dataset, decode=decode, masks=None)
    except CacheError as e:
        raise SystemExit(f"cannot open the {dataset} cache: {e}") from None


def has_split_lists(index, split: int) -> bool:
    """Whether the cached dataset assigns videos to the train/test parts of `split` (a folder
    dataset without ``splits/`` assigns none: every video is unlabelled for the protocol)."""
    return bool((index.splits[:, int(split) - 1] != 0).any())


def require_split_lists(index, split: int, what: str) -> None:
    """ToolError unless `split` has train/test lists: `what` (finetuning, evaluation, retrieval)
    needs labelled, disjoint train and test videos."""
    if not has_split_lists(index, split):
        raise ToolError(
            f"the {index.dataset} cache has no split lists for split {split}: {what} needs labelled train and "
            f"test videos. For a folder dataset add <data-root>/splits/trainlist0{split}.txt and "
            f"testlist0{split}.txt (UCF101's format: one <class>/<video> per line) and rerun "
            f"preprocess/extract_masks.py (it re-reads the lists; no video is decoded again). Pretraining needs "
            f"no labels: train/pretrain.py uses every video")


def eval_batches(index, split: int, part: str, geometry: dict, num_clips: int, batch_size: int,
                 workers: int, limit: int | None = None, what: str = "evaluation"):
    """(dataset, loader) over `part` of `split`: EvalClips, `num_clips` clips per video."""
    if part != "all":
        require_split_lists(index, split, what)
    from torch.utils.data import Subset

    from train.data import EvalClips, make_loader

    ds = EvalClips(index, split, part, num_clips=num_clips, frames=geometry["frames"], stride=geometry["stride"],
                   short_side=geometry["short_side"], crop=geometry["crop"])
    if len(ds) == 0:
        raise SystemExit(f"{index.dataset} split {split} has no '{part}' videos")
    data = ds if not limit else Subset(ds, list(range(min(int(limit), len(ds)))))
    loader = make_loader(data, batch_size=batch_size, workers=workers, shuffle=False, drop_last=False,
                         persistent_workers=False)
    return ds, loader


def pad_batch(x, size: int):
    """x [n, ...] with n <= size, padded with zero rows to [size, ...]: an evaluation's last batch
    then has the shape of the others, so a compiled (static-shape) model runs its graph instead of
    compiling another. In eval mode every row's output depends on that row only (BN uses its
    running statistics), so ``model(pad_batch(x, B))[:n]`` equals ``model(x)``."""
    n = x.shape[0]
    if n >= size:
        return x
    return torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])


def run_clips(model, loader, device, norm: str, fn=None, progress: str | None = None):
    """Run `fn(model, clips [b,3,T,S,S]) -> [b, D]` (default: the model's logits) over every clip.

    Returns (outputs float32 [V, N, D], videos int64 [V], labels int64 [V]) in loader order."""
    import torch

    from train.mac import eval_transform

    fn = fn or (lambda m, x: m(x))
    outs, vids, labs = [], [], []
    model.eval()
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=progress, leave=False, dynamic_ncols=True, disable=not sys.stderr.isatty())
    with torch.inference_mode():
        for batch in it:
            b = eval_transform(batch, norm=norm, device=device)
            x = b["clips"]                                    # [B,N,3,T,S,S]
            B, N = x.shape[:2]
            with autocast_ctx(device):
                y = fn(model, x.reshape(B * N, *x.shape[2:]))
            outs.append(y.float().reshape(B, N, -1).cpu())
            vids.append(batch["video"].cpu())
            labs.append(batch["label"].cpu())
    return (torch.cat(outs).numpy(), torch.cat(vids).numpy().astype(np.int64),
            torch.cat(labs).numpy().astype(np.int64))


@torch.no_grad()
def estimate_bn_statistics(model, clips, max_batches: int) -> int:
    """Replace every BatchNorm's running mean/variance by their averages over ``clips`` (an
    iterable of float clip batches [B, 3, T, S, S] on the model's device), the first
    ``max_batches`` of them; returns the number used.

    Why: a randomly initialised backbone used as a fixed feature map (the linear probe and the
    retrieval of a random init) would otherwise run in eval mode with untrained statistics (mean
    0, variance 1), so every layer's output drifts in scale and the random-features baseline is
    handicapped for a reason that has nothing to do with features. Each BN layer is reset and put
    in cumulative mode (momentum None: the plain average over the batches), the forward passes
    run in train mode without gradients, and afterwards every module's mode and momentum are
    restored: the weights are untouched."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or max_batches <= 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for x in clips:
            if n >= max_batches:
                break
            model(x)
            n += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    return n


def write_json(path: Path, obj) -> None:
    atomic.write_json(path, obj)


def default_out_dir(checkpoint: Path, stage: str) -> Path:
    """runs/<ds>/<id>/finetune/best.pt -> runs/<ds>/<id>/<stage>; finetune_random -> <stage>_random."""
    parent = checkpoint.resolve().parent
    name = parent.name
    for prefix in ("finetune", "pretrain"):
        if name.startswith(prefix):
            return parent.parent / (stage + name[len(prefix):])
    return parent / stage
