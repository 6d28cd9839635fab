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

import contextlib
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import torch

from core import atomic
from core.errors import ToolError
# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

class CheckpointError(ToolError):
    """A checkpoint that cannot be read, or is refused because reading it could run code."""


def load_checkpoint(path: str | os.PathLike, map_location="cpu", trust: bool = False):
    """Read a checkpoint as data: torch's weights-only unpickler (tensors and plain python
    values), which is all this project's checkpoints and torchvision's state dicts need.

    A pickle that needs more (arbitrary python objects, e.g. an ``argparse.Namespace`` kept by
    another codebase, or code planted in a downloaded file) is refused with CheckpointError,
    unless ``trust`` (the scripts' ``--trust-checkpoint``, for that file) allows the full
    unpickler, which runs whatever the file asks it to."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        if needs is None:          # a damaged or non-torch file, not a refused one
            detail = next((ln.split("error:")[-1].strip() for ln in str(e).splitlines() if "error:" in ln), "")
            raise CheckpointError(f"{path}: not a readable checkpoint ({detail or str(e).splitlines()[0]})") from None
        if not trust:
            raise CheckpointError(
                f"{path}: refused: reading it needs the full unpickler (for {needs.group(1)}), which can run code "
                f"stored in the file. This project's checkpoints and torchvision state dicts never need it; if you "
                f"trust where the file comes from, pass --trust-checkpoint") from None
    except (RuntimeError, EOFError, ValueError) as e:   # not a torch file, truncated, damaged zip
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'empty'})") from None
    print(f"[checkpoint] {path}: --trust-checkpoint: unpickling fully", file=sys.stderr)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def backbone_weights(obj, source: str | os.PathLike = "checkpoint") -> tuple[dict, dict]:
    """(backbone state dict, info) of a loaded checkpoint. info: {"kind": "pretrain" | "finetune"
    | "state_dict", and for this project's checkpoints backbone_name, dataset, epoch, step, norm,
    "checkpoint": the whole dict}. CheckpointError naming `source` for anything else."""
    if isinstance(obj, dict) and obj.get("kind") in ("pretrain", "finetune"):
        sd = obj.get("backbone") or obj.get("model")
        if not isinstance(sd, dict):
            raise CheckpointError(f"{source}: a {obj['kind']} checkpoint without 'backbone' or 'model' weights")
        norm = obj.get("norm") or (obj.get("mac") or {}).get("norm") or (obj.get("config") or {}).get("norm")
        return sd, {"kind": obj["kind"], "backbone_name": obj.get("backbone_name"), "dataset": obj.get("dataset"),
                    "epoch": obj.get("epoch"), "step": obj.get("step"), "norm": norm, "checkpoint": obj}
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "backbone"):      # common wrappers of foreign checkpoints
            if isinstance(obj.get(key), dict) and any(torch.is_tensor(v) for v in obj[key].values()):
                return obj[key], {"kind": "state_dict"}
        if obj and any(torch.is_tensor(v) for v in obj.values()):
            return obj, {"kind": "state_dict"}
    raise CheckpointError(f"{source}: not a state dict or checkpoint ({type(obj).__name__}); expected this "
                          f"project's checkpoint or a torchvision-format state dict")


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


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def autocast_ctx(device):
    """bf16 autocast on CUDA, nothing on CPU (same policy as train.engine)."""
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_batches(index, split: int, part: str, geometry: dict, num_clips: int, batch_size: int,
                 workers: int, limit: int | None = None):
    """(dataset, loader) over `part` of `split`: EvalClips, `num_clips` clips per video."""
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
