"""The mask/MAC preview of train/visualize.py: the trainer's own samples of cached videos (frames,
masks, MAC clips) for several mask sets (lambda x m, named sets) and strides side by side.

Owns: the sample settings (``SAMPLE_FIELDS``, ``read_pretrain_config``, ``sample_configs``),
``Previewer`` (builds each ``Sample`` with train.data.PretrainClips and train.mac.MACTransform, so
the picture is what the network receives, not a re-implementation), the blocks and titles of the
preview, and the report's picture (``preview_training_samples``). Drawing and files are
train/vis/drawing.py's; this module reads the cache and never writes it, and never trains.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.checks import check_range
from core.errors import ToolError, UsageError
from train.vis.drawing import Block, Row, _shown, auto_tile, find_video, write_figure

# --------------------------------------------------------------------------------------------
# Preview: the MAC samples of the trainer, for one or several mask sets
# --------------------------------------------------------------------------------------------

def _segment_cuts(T: int, n: int, shown: np.ndarray) -> tuple[tuple, dict]:
    """(tile indices where a segment starts, {tile index: segment}) for the shown frames."""
    seg_of = (np.arange(T) * n) // T
    first = {}
    for j, t in enumerate(shown):
        first.setdefault(int(seg_of[t]), j)
    cuts = tuple(j for s, j in first.items() if j > 0)
    return cuts, {j: s for s, j in first.items()}


def _fmt_alpha(a: float) -> str:
    return f"{a:.3g}"


def video_stem(name: str) -> str:
    return Path(str(name)).stem


#: PretrainConfig fields that shape a sample (the preview's flags copy pretrain.py's for these).
SAMPLE_FIELDS = ("dataset", "cache_dir", "split", "short_side", "jpeg_quality", "mask_source", "mask_mode", "dilate",
                 "n", "k", "loss", "reverse", "blend_space", "frames", "strides", "scales", "crop", "flip_p",
                 "colour_jitter", "greyscale", "norm", "seed")


def read_pretrain_config(path: str | os.PathLike) -> dict:
    """PretrainConfig field values from a run's ``pretrain/config.json`` ({"config": {field:
    value}}) or from a preset file of pretrain.py's flags (``configs/<preset>/pretrain.json``)."""
    from train.pretrain import PretrainConfig

    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError("--pretrain-config", path, (e.strerror or "cannot be read").lower()) from None
    except ValueError as e:
        raise UsageError("--pretrain-config", path, f"not valid JSON ({e})") from None
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        cfg = data["config"]
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
    from core.flags import read_config_file
    parsed = read_config_file(path, PretrainConfig, "pretrain.py")
    return {dest: (tuple(v) if isinstance(v, list) else v) for dest, (_, _, v) in parsed.items() if dest in names}


def sample_configs(base: dict, lams: Sequence[int], ms: Sequence[float], named: Sequence[str] = ()) -> list:
    """One validated PretrainConfig per mask set: every lambda x m (frame-difference masks), then
    every named (imported) mask set in `named` (preprocess/import_masks.py), from `base` values."""
    from train.pretrain import PretrainConfig

    if lams:
        check_range("--lambda", list(lams), lo=0, hi=255)
    if ms:
        check_range("--m", list(ms), lo=0, hi=1)
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    vals = {k: v for k, v in base.items() if k in names}
    if named and "mask_set" not in names:
        raise UsageError("--mask-set", list(named), "this checkout has no named mask sets (preprocess/import_masks.py)")
    plain = {"mask_set": ""} if "mask_set" in names else {}
    out, seen = [], set()
    for lam in lams:
        for m in ms:
            if (int(lam), float(m)) in seen:
                continue
            seen.add((int(lam), float(m)))
            out.append(PretrainConfig(**{**vals, **plain, "lam": int(lam), "m": float(m)}))
    for name in dict.fromkeys(named):
        out.append(PretrainConfig(**{**vals, "mask_set": str(name)}))
    return out


def set_key(cfg) -> tuple:
    """How a mask set is named in the pictures: (lambda, m), or ("set", NAME) for a named set."""
    name = getattr(cfg, "mask_set", "")
    return ("set", name) if name else (cfg.lam, cfg.m)


@dataclass
class Sample:
    """One previewed clip: what the trainer builds for item `item` of `part` at `epoch`, for
    every mask set (the draws are the same for all of them)."""

    video: int
    name: str
    label: int
    class_name: str
    item: int
    part: str
    epoch: int
    stride: int
    start: int
    indices: np.ndarray
    spatial: np.ndarray            # y0, x0, box size, out, flip
    alpha: np.ndarray
    alpha_label: int
    frames: np.ndarray             # uint8 [T, S, S, 3]: the jittered clip, unblended
    masks: dict                    # (lam, m) -> uint8 [T, S, S]
    blended: dict                  # (lam, m) -> uint8 [T, S, S, 3]: the query, normalisation undone
    query: dict                    # (lam, m) -> float32 [3, T, S, S]: the query itself


def _display(x, norm: str) -> np.ndarray:
    """A normalised clip [3, T, S, S] back to uint8 pixels [T, S, S, 3] (x * std + mean)."""
    import torch

    from train.mac import NORMS

    nm = NORMS[norm]
    mean = torch.tensor(nm.mean, dtype=x.dtype).view(3, 1, 1, 1)
    std = torch.tensor(nm.std, dtype=x.dtype).view(3, 1, 1, 1)
    px = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return px.permute(1, 2, 3, 0).contiguous().numpy()


class Previewer:
    """Builds `Sample`s with the trainer's own dataset and transform (train.data.PretrainClips,
    train.mac.MACTransform) for several mask sets of one cache."""

    def __init__(self, cfgs: Sequence, split: int, part: str, cache_dir: str | None = None):
        from preprocess.cache import CacheError, DecodeParams, MaskParams, open_cache

        from train.pretrain import mac_config

        self.cfgs = list(cfgs)
        c0 = self.cfgs[0]
        self.split, self.part = int(split), str(part)
        self.cache_dir = cache_dir or c0.cache_dir
        decode = DecodeParams(c0.short_side, c0.jpeg_quality)
        self.sets = []
        for c in self.cfgs:
            mp = MaskParams(c.lam, c.m)
            named = getattr(c, "mask_set", "")
            strides = tuple(sorted(set(c.strides))) if c.mask_source == "cache" and not named else ()
            try:
                index = (open_cache(self.cache_dir, c.dataset, decode, mp, strides, mask_set=named) if named
                         else open_cache(self.cache_dir, c.dataset, decode, mp, strides))
            except CacheError as e:
                raise ToolError(f"cannot open the cache: {e}") from None
            self.sets.append((set_key(c), index, dataclasses.replace(mac_config(c), key_view=False), named))
        self.index = self.sets[0][1]
        self.mcfg = self.sets[0][2]
        self._ds: dict = {}

    def dataset(self, set_no: int, strides: tuple, part: str):
        from train.data import PretrainClips

        key = (set_no, strides, part)
        if key not in self._ds:
            _, index, mcfg, named = self.sets[set_no]
            kw = {"mask_set": named} if named else {}
            self._ds[key] = PretrainClips(index, self.split, part, dataclasses.replace(mcfg, strides=strides), **kw)
        return self._ds[key]

    def find(self, name: str) -> int:
        """The video index of a name: the cache's full name, its file name or its stem."""
        return find_video(self.index, name)

    def first_items(self, num: int, epoch: int) -> list[int]:
        """Video indices of the first `num` items of the epoch's shuffled order (make_loader's
        EpochSampler: the start of the trainer's first batch)."""
        from train.data import EpochSampler

        ds = self.dataset(0, tuple(self.mcfg.strides), self.part)
        if len(ds) == 0:
            raise ToolError(f"{self.index.dataset} split {self.split} has no '{self.part}' videos")
        sampler = EpochSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=self.mcfg.seed, drop_last=False)
        sampler.set_epoch(epoch)
        return [int(ds.videos[i]) for i in list(iter(sampler))[:num]]

    def sample(self, video: int, epoch: int = 0, stride: int | None = None) -> Sample:
        """The sample of `video` (its item in `part`; videos outside it: their item among all
        videos) with the stride drawn as the trainer draws it, or restricted to `stride`."""
        import torch
        from torch.utils.data import default_collate

        from train.mac import MACTransform

        strides = tuple(self.mcfg.strides) if stride is None else (int(stride),)
        part = self.part
        ds = self.dataset(0, strides, part)
        pos = np.flatnonzero(ds.videos == video)
        if not len(pos):
            part = "all"
            ds = self.dataset(0, strides, part)
            pos = np.flatnonzero(ds.videos == video)
        item = int(pos[0])
        masks, blended, query, first = {}, {}, {}, None
        for set_no, (key, _, mcfg, _) in enumerate(self.sets):
            d = self.dataset(set_no, strides, part)
            d.set_epoch(epoch)
            batch = default_collate([d[item]])
            tf = MACTransform(dataclasses.replace(mcfg, strides=strides), "cpu")
            with torch.no_grad():
                q = tf.query(batch["frames"], batch["masks"], batch["alpha"], batch["jitter"])[0]
            if first is None:
                first = batch
                with torch.no_grad():
                    frames = _display(tf.key(batch["frames"], batch["jitter"])[0], mcfg.norm)
            elif not torch.equal(batch["frames"], first["frames"]):      # the draws never depend on the masks
                raise RuntimeError("the mask sets drew different clips: a bug in the sample code")
            masks[key] = batch["masks"][0].numpy()
            blended[key] = _display(q, mcfg.norm)
            query[key] = q.numpy()
        start, stride_ = (int(v) for v in first["clip"][0])
        from train.mac import sample_clip_indices

        n = int(self.index.n_frames[video])
        lab = int(self.index.labels[video])
        return Sample(video=int(video), name=str(self.index.names[video]), label=lab,
                      class_name=str(self.index.classes[lab]), item=item, part=part, epoch=int(epoch),
                      stride=stride_, start=start, indices=sample_clip_indices(n, self.mcfg.frames, stride_, start),
                      spatial=first["spatial"][0].numpy(), alpha=first["alpha"][0].numpy(),
                      alpha_label=int(first["label"][0]), frames=frames, masks=masks, blended=blended, query=query)


def _set_label(key) -> str:
    if key[0] == "set":
        return f"set {key[1]}"
    lam, m = key
    return f"\u03bb {lam}, m {m:g}"


def sample_block(s: Sample, mcfg, max_frames: int = 16, header_prefix: str = "") -> Block:
    """The rows of one sample: frames, then mask and MAC clip per mask set."""
    T = len(s.frames)
    shown = _shown(T, max_frames)
    cuts, seg_at = _segment_cuts(T, len(s.alpha), shown)
    idx = s.indices
    frames_txt = (f"{int(idx[0])}..{int(idx[-1])}" if len(set(np.diff(idx).tolist())) <= 1
                  else ", ".join(map(str, idx.tolist())))
    y0, x0, size, out, flip = (int(v) for v in s.spatial)
    alphas = ", ".join(_fmt_alpha(a) for a in s.alpha)
    pretext = (f"pretext label {s.alpha_label} of {mcfg.k ** mcfg.n} (k {mcfg.k}, n {mcfg.n})" if s.alpha_label >= 0
               else "alphas drawn from U(0, 1] (mse-n)")
    header = (f"{header_prefix}stride {s.stride}: frames {frames_txt} | alphas ({alphas}) -> {pretext} | "
              f"crop {size} px at ({y0}, {x0}) -> {out}{', flipped' if flip else ''}")
    rows = [Row("frames\n(augmented)", s.frames[shown], {j: f"#{int(idx[t])}" for j, t in enumerate(shown)})]
    for key in s.masks:
        mk = s.masks[key]
        rows.append(Row(f"mask\n{_set_label(key)}\nmean {mk.mean() / 255:.3f}", mk[shown]))
        rows.append(Row(f"MAC\n{_set_label(key)}\nlabel {s.alpha_label}" if s.alpha_label >= 0
                        else f"MAC\n{_set_label(key)}", s.blended[key][shown],
                        {j: f"\u03b1 {_fmt_alpha(float(s.alpha[seg]))}" for j, seg in seg_at.items()}))
    return Block(header, rows, cuts)


def preview_title(pv: Previewer, s: Sample | None, mcfg, what: str, epoch: int) -> str:
    mode = mcfg.mask_source
    src = ("masks: Algorithm 1 on each augmented clip (--mask-source clip)" if mode == "clip"
           else "masks: the cached per-stride mask sets (--mask-source cache)")
    named = [n for *_, n in pv.sets if n]
    if named and len(named) == len(pv.sets):
        src = "masks: the named (imported) mask sets, cropped and resized with the frames"
    elif named:
        src += "; named sets: imported masks, cropped and resized with the frames"
    blend = ("MAC rows: the network's input, normalisation undone (blended after normalising: the foreground "
             "fades toward the mean colour)" if mcfg.blend_space == "normalised"
             else "MAC rows: the network's input, normalisation undone (blended on pixels: toward black)")
    head = f"{pv.index.dataset}: {what}"
    if s is not None:
        head = f"{pv.index.dataset}: {s.name}, class {s.class_name} ({s.label}) | {what}"
    return (f"{head}\nseed {mcfg.seed}, epoch {epoch}, {mcfg.frames} frames, crop {mcfg.crop}, "
            f"{mcfg.mask_mode}{' dilated' if mcfg.dilate else ''} masks{', reverse' if mcfg.reverse else ''}; "
            f"{src}; {blend}")


def preview_samples(pv: Previewer, videos: Sequence[int], epoch: int = 0, strides: Sequence[int] | None = None,
                    drawn: bool = False) -> list:
    """[(video, [Sample per stride])]; `drawn`: one sample per video, the trainer's own stride."""
    out = []
    for v in videos:
        if drawn:
            out.append((v, [pv.sample(v, epoch)]))
        else:
            out.append((v, [pv.sample(v, epoch, s) for s in (strides or pv.mcfg.strides)]))
    return out


def write_previews(pv: Previewer, videos: Sequence[int], out_dir: Path, epoch: int = 0,
                   strides: Sequence[int] | None = None, drawn: bool = False, gif: bool = False,
                   tile: int | None = None, max_frames: int = 16, filename: str | None = None,
                   palette: bool = False) -> list[Path]:
    """Write the preview PNGs (GIFs): one per video, or with `drawn` one for all; returns the paths."""
    mcfg = pv.mcfg
    tile = tile or auto_tile(mcfg.crop)
    written: list[Path] = []
    samples = preview_samples(pv, videos, epoch, strides, drawn)
    if drawn:
        blocks = []
        for _, (s,) in samples:
            prefix = f"{video_stem(s.name)} ({s.class_name}), item {s.item} of {s.part}: "
            blocks.append(sample_block(s, mcfg, max_frames, prefix))
        what = (f"the trainer's samples (split {pv.split} {pv.part}, each as drawn in pretraining epoch {epoch})")
        title = preview_title(pv, None, mcfg, what, epoch)
        written += write_figure(title, blocks, out_dir / (filename or f"preview_drawn_epoch{epoch}.png"), tile, gif,
                                palette)
        return written
    for v, ss in samples:
        s0 = ss[0]
        what = f"item {s0.item} of split {pv.split} {s0.part}, one block per stride"
        title = preview_title(pv, s0, mcfg, what, epoch)
        blocks = [sample_block(s, mcfg, max_frames) for s in ss]
        name = filename if (filename and len(samples) == 1) else f"preview_{video_stem(s0.name)}.png"
        written += write_figure(title, blocks, out_dir / name, tile, gif, palette)
    return written


def preview_training_samples(pretrain_config: str | os.PathLike, out_png: str | os.PathLike, num: int = 3,
                             cache_dir: str | None = None, tile: int = 64, epoch: int = 0) -> Path:
    """The report's picture: the first `num` training samples of pretraining epoch `epoch`, as
    drawn (one block each), for the run's own mask set."""
    base = read_pretrain_config(pretrain_config)
    if cache_dir:
        base["cache_dir"] = cache_dir
    if base.get("mask_set"):      # pretrained with a named (imported) mask set: that one
        cfgs = sample_configs(base, [], [], [base["mask_set"]])
    else:
        cfgs = sample_configs(base, [base.get("lam", 30)], [base.get("m", 0.5)])
    pv = Previewer(cfgs, cfgs[0].split, cfgs[0].part, cache_dir)
    videos = pv.first_items(num, epoch)
    out_png = Path(out_png)
    return write_previews(pv, videos, out_png.parent, epoch, drawn=True, tile=tile, max_frames=16,
                          filename=out_png.name)[0]
