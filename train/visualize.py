"""Pictures of masks, MAC samples and finetuned models, made from the cache alone (no GPU needed).

    python train/visualize.py preview --dataset demo --lambda 10 30 60             # 2 random training videos
    python train/visualize.py preview --dataset demo --videos v_Circle_g01_c01 --strides 2 4 --gif
    python train/visualize.py preview --pretrain-config runs/demo/demo/pretrain/config.json --drawn --num-videos 4
    python train/visualize.py cam --checkpoint runs/demo/demo/finetune/last.pt --num-videos 4
    python train/visualize.py cam --checkpoint runs/demo/demo/finetune/last.pt \\
        --compare runs/demo/demo/finetune_random/last.pt --per-group 2

preview
    One PNG per video (``--gif``: also an animation over time): for each stride a block of rows,
    ``frames`` (the augmented clip the trainer builds: scale, flip, crop, colour jitter), then per
    mask set (every ``--lambda`` x ``--m``) the clip's ``mask`` and the ``MAC`` clip (blended with
    the segment alphas, written on the first frame of each segment; the block's header gives the
    alpha tuple and its pretext label). The samples are made by the trainer's own code:
    ``train.data.PretrainClips`` draws and cuts the clip and computes its masks (``--mask-source
    clip``: Algorithm 1 on the augmented clip; ``cache``: the cached per-stride mask sets), and
    ``train.mac.MACTransform`` jitters, normalises and blends it. The MAC row is the transform's
    query with the normalisation undone for display (x * std + mean), so it is exactly what the
    network receives: with the default ``--blend-space normalised`` the attenuated foreground fades
    toward the normalisation's mean colour (grey), with ``pixel`` toward black. The frames row is
    the same clip without the blend. Every draw (clip, alphas, crop, jitter) is a function of
    (``--seed``, ``--epoch``, item) and never of the mask set, so the mask sets of one block show
    the same clip. Per stride, the sample is the one the trainer would draw with ``--strides``
    restricted to that stride; ``--drawn`` instead keeps the trainer's own stride draw, so every
    block is bit for bit the sample of that item in pretraining epoch ``--epoch`` (one PNG,
    ``preview_drawn_epoch<E>.png``, one block per video). Without ``--videos`` the videos are the
    first ``--num-videos`` items of the epoch's shuffled order (the start of the first batch).
    Settings: ``--pretrain-config`` (a run's ``pretrain/config.json`` or a preset such as
    ``configs/demo/pretrain.json``) < the sample flags here (pretrain.py's names and checks).

cam
    Grad-CAM of a finetuned checkpoint (train/finetune.py) on the last convolutional stage
    (``layer4``): channel weights = the spatio-temporal mean of the gradient of the target logit
    (``--target pred``: the clip's predicted class, or ``label``), CAM = ReLU(sum_c w_c A_c),
    upsampled to T x H x W (trilinear) and divided by its maximum over the clip. Per video the
    centre clip of the checkpoint's test geometry (as train/evaluate.py cuts clips: short side,
    centre crop), rows: frames, change mask (Algorithm 1 on the clip, ``--lambda``/``--m``), and
    the CAM over the frames with the clip's prediction and the video's (from predictions.csv).
    ``--compare CKPT2`` adds the second model's row and picks the videos from both models'
    ``predictions.csv`` (default: the evaluate folder beside each checkpoint): A right and B wrong,
    A wrong and B right, both wrong; one PNG per group (the layout of the supplementary's
    Figures 2-4).

Every PNG carries its captions as PNG text (``Title``, ``Description``). Files are written
atomically; bad values end the tool with status 2 and one line (core/errors.py).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

if __package__ in (None, ""):   # run as `python train/visualize.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import atomic
from core.checks import check_file, check_range
from core.errors import ToolError, UsageError, exit_with
from core.flags import parse_checked
__all__ = ["Block", "Row", "render_grid", "render_gif", "save_png", "save_gif", "read_pretrain_config",
           "sample_configs", "preview_samples", "write_previews", "grad_cam", "cam_overlay", "read_predictions",
           "compare_groups", "load_classifier", "cam_figure", "preview_training_samples", "cam_strip", "main"]

# --------------------------------------------------------------------------------------------
# Drawing: rows of tiles with captions, as a PNG grid or a GIF over time
# --------------------------------------------------------------------------------------------

BACKGROUND = (255, 255, 255)
INK = (25, 25, 25)
CUT = (220, 40, 40)          # the line between two temporal segments
LABEL_W = 150                # the left column of row labels (at least)
GAP = 2
RIGHT, WRONG = "\u2713", "\u2717"    # check mark, ballot x


@dataclass
class Row:
    """One row of a block: a label (left column, lines split on newlines) and T tiles uint8
    [T, h, w, 3] (or [T, h, w] grey), with optional text on some tiles (tile index -> text)."""

    label: str
    tiles: np.ndarray
    notes: dict = field(default_factory=dict)


@dataclass
class Block:
    """A header line and rows of equally many tiles; ``cuts``: tile indices where a new temporal
    segment starts (a line is drawn before them)."""

    header: str
    rows: list
    cuts: tuple = ()


_FONTS: dict = {}


def font(size: int):
    """DejaVu Sans (shipped with matplotlib) at `size` px; Pillow's default font otherwise."""
    if size not in _FONTS:
        from PIL import ImageFont

        try:
            import matplotlib

            path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            _FONTS[size] = ImageFont.truetype(str(path), size)
        except (ImportError, OSError):
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def _rgb(tiles: np.ndarray) -> np.ndarray:
    t = np.asarray(tiles)
    if t.dtype != np.uint8:
        raise TypeError(f"tiles must be uint8, got {t.dtype}")
    if t.ndim == 3:
        t = np.repeat(t[..., None], 3, axis=-1)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"tiles must be [T, h, w, 3] or [T, h, w], got {t.shape}")
    return t


def _tile_image(tile: np.ndarray, size: int):
    """A tile as a PIL image `size` px high (nearest neighbour: pixels stay visible)."""
    from PIL import Image

    im = Image.fromarray(tile)
    if im.height != size:
        im = im.resize((max(1, round(im.width * size / im.height)), size), Image.NEAREST)
    return im


def _note(draw, xy, text: str, size: int = 11) -> None:
    """White text on a dark box, on a tile."""
    f = font(size)
    x, y = xy
    l, t, r, b = draw.textbbox((x + 2, y + 1), text, font=f)
    draw.rectangle((x, y, r + 2, b + 2), fill=(0, 0, 0))
    draw.text((x + 2, y + 1), text, fill=(255, 255, 255), font=f)


def _fit(draw, text: str, width: int, size: int) -> str:
    """`text` cut with an ellipsis to fit `width` px."""
    f = font(size)
    if draw.textlength(text, font=f) <= width:
        return text
    while text and draw.textlength(text + "...", font=f) > width:
        text = text[:-1]
    return text + "..."


def _wrap(draw, text: str, width: int, size: int) -> list[str]:
    """Greedy word wrap of one paragraph to `width` px."""
    f = font(size)
    lines, line = [], ""
    for word in text.split(" "):
        cand = word if not line else line + " " + word
        if draw.textlength(cand, font=f) <= width or not line:
            line = cand
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def label_width(blocks: Sequence[Block]) -> int:
    """Width of the row-label column: LABEL_W, or wider for long labels (up to 2 x LABEL_W)."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    longest = max((probe.textlength(ln, font=font(12)) for b in blocks for r in b.rows for ln in r.label.split("\n")),
                  default=0)
    return int(min(2 * LABEL_W, max(LABEL_W, math.ceil(longest) + 16)))


def render_grid(title: str, blocks: Sequence[Block], tile: int = 96):
    """The PNG layout: title, then per block its header and its rows (label | T tiles)."""
    from PIL import Image, ImageDraw

    if not blocks:
        raise ValueError("nothing to draw")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    ncols = max(len(r.tiles) for b in blocks for r in b.rows)
    widths = [_tile_image(_rgb(r.tiles)[0], tile).width for b in blocks for r in b.rows]
    tw = max(widths)
    label_w = label_width(blocks)
    width = label_w + ncols * (tw + GAP) + 6
    title_lines = [ln for part in title.split("\n") for ln in _wrap(probe, part, width - 12, 15)]
    headers = [[ln for part in b.header.split("\n") for ln in _wrap(probe, part, width - 12, 13)] for b in blocks]
    height = 8 + 19 * len(title_lines) + 4
    for b, hl in zip(blocks, headers):
        height += 6 + 17 * len(hl) + 2 + len(b.rows) * (tile + GAP)
    height += 6
    im = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(im)
    y = 8
    for ln in title_lines:
        draw.text((6, y), ln, fill=INK, font=font(15))
        y += 19
    y += 4
    for b, hl in zip(blocks, headers):
        draw.line((0, y + 2, width, y + 2), fill=(200, 200, 200))
        y += 6
        for ln in hl:
            draw.text((6, y), ln, fill=INK, font=font(13))
            y += 17
        y += 2
        top = y
        for r in b.rows:
            tiles = _rgb(r.tiles)
            lines = r.label.split("\n")
            ly = y + max(0, (tile - 15 * len(lines)) // 2)
            for ln in lines:
                draw.text((6, ly), _fit(draw, ln, label_w - 10, 12), fill=INK, font=font(12))
                ly += 15
            for j, t in enumerate(tiles):
                x = label_w + j * (tw + GAP)
                im.paste(_tile_image(t, tile), (x, y))
                if j in r.notes and r.notes[j]:
                    _note(draw, (x, y), str(r.notes[j]))
            y += tile + GAP
        for j in b.cuts:
            if 0 < j < ncols:
                x = label_w + j * (tw + GAP) - GAP // 2 - 1
                draw.line((x, top - 2, x, y - GAP + 1), fill=CUT, width=2)
    return im


def render_gif(title: str, blocks: Sequence[Block], tile: int = 96) -> list:
    """The animation: frame t shows tile t of every row, a block's rows side by side (each
    labelled by its row label's first two lines), blocks stacked; a tile's note stays until
    the next one (the alpha of the current segment). The title's first line only."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    T = max(len(r.tiles) for b in blocks for r in b.rows)
    ncols = max(len(b.rows) for b in blocks)
    tw = max(_tile_image(_rgb(r.tiles)[0], tile).width for b in blocks for r in b.rows)
    width = max(ncols * (tw + GAP) + 12, 320)
    title_lines = _wrap(probe, title.split("\n")[0], width - 12, 13)
    headers = [_wrap(probe, b.header.split("\n")[0], width - 12, 12) for b in blocks]
    height = 6 + 16 * (len(title_lines) + 1)
    for hl in headers:
        height += 4 + 15 * len(hl) + 28 + tile + GAP
    frames = []
    for t in range(T):
        im = Image.new("RGB", (width, height + 4), BACKGROUND)
        draw = ImageDraw.Draw(im)
        y = 6
        for ln in title_lines + [f"frame {t + 1} of {T}"]:
            draw.text((6, y), ln, fill=INK, font=font(13))
            y += 16
        for b, hl in zip(blocks, headers):
            y += 4
            for ln in hl:
                draw.text((6, y), ln, fill=INK, font=font(12))
                y += 15
            for c, r in enumerate(b.rows):
                x = 6 + c * (tw + GAP)
                for i, ln in enumerate(r.label.split("\n")[:2]):
                    draw.text((x, y + 13 * i), _fit(draw, ln, tw - 2, 11), fill=INK, font=font(11))
                tiles = _rgb(r.tiles)
                k = min(t, len(tiles) - 1)
                im.paste(_tile_image(tiles[k], tile), (x, y + 28))
                sticky = [j for j in r.notes if j <= k and r.notes[j]]
                if sticky:
                    _note(draw, (x, y + 28), str(r.notes[max(sticky)]))
            y += 28 + tile + GAP
        frames.append(im)
    return frames


def figure_text(title: str, blocks: Sequence[Block]) -> str:
    """Every caption of a figure, one per line (stored in the PNG's Description)."""
    lines = [title]
    for b in blocks:
        lines.append(b.header)
        for r in b.rows:
            lines.append("  " + r.label.replace("\n", " | ")
                         + ("".join(f" [{j}: {n}]" for j, n in sorted(r.notes.items()) if n)))
    return "\n".join(lines)


def _readable(path: Path) -> Path:
    """Atomic writes create files readable by their owner only: open them up as a plain write
    would (0666 minus the umask), like the other pictures of a run."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return path


def save_png(im, path: str | os.PathLike, title: str = "", description: str = "", palette: bool = False) -> Path:
    """Write a PIL image as PNG atomically, with Title / Description text chunks. `palette`:
    256 colours (about 3x smaller; gradients band a little), for documentation."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("Title", title)
    info.add_itxt("Description", description)
    info.add_text("Software", "MAC train/visualize.py")
    if palette:
        im = im.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=info, optimize=True)
    return _readable(atomic.write_bytes(path, buf.getvalue()))


def save_gif(frames: Sequence, path: str | os.PathLike, duration_ms: int = 250) -> Path:
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=list(frames[1:]), duration=duration_ms,
                   loop=0, optimize=False)
    return _readable(atomic.write_bytes(path, buf.getvalue()))


def write_figure(title: str, blocks: Sequence[Block], path: Path, tile: int, gif: bool = False,
                 palette: bool = False) -> list[Path]:
    """The PNG (and with `gif` the GIF beside it) of a figure; returns the files written."""
    out = [save_png(render_grid(title, blocks, tile), path, title, figure_text(title, blocks), palette)]
    if gif:
        out.append(save_gif(render_gif(title, blocks, tile), path.with_suffix(".gif")))
    return out


def auto_tile(crop: int) -> int:
    """Tile size for a crop: small crops are enlarged by an integer factor to >= 96 px."""
    return int(crop) if crop >= 96 else int(crop) * math.ceil(96 / int(crop))


def _shown(T: int, max_frames: int) -> np.ndarray:
    """Which of a clip's T frames are drawn: all, or every ceil(T / max_frames)-th."""
    step = max(1, math.ceil(T / max(1, max_frames)))
    return np.arange(0, T, step)


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


def find_video(index, name: str) -> int:
    """The index of a cached video given its full name (e.g. UCF-101/Circle/v_Circle_g01_c01.avi),
    its file name or its stem; a UsageError (--videos) when none or several match."""
    names = [str(n) for n in index.names]
    if name in names:
        return names.index(name)
    hits = [i for i, n in enumerate(names) if Path(n).name == name or Path(n).stem == name or n.endswith("/" + name)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise UsageError("--videos", name, f"no such video in the {index.dataset} cache (e.g. {names[0] if names else '-'})")
    raise UsageError("--videos", name, f"ambiguous: {len(hits)} videos match (give the full name)")


# --------------------------------------------------------------------------------------------
# Preview: the MAC samples of the trainer, for one or several mask sets
# --------------------------------------------------------------------------------------------

#: PretrainConfig fields that shape a sample (the preview's flags copy pretrain.py's for these).
SAMPLE_FIELDS = ("dataset", "cache_dir", "split", "short_side", "jpeg_quality", "mask_source", "mask_mode", "dilate",
                 "n", "k", "loss", "reverse", "blend_space", "frames", "strides", "scales", "crop", "flip_p",
                 "colour_jitter", "greyscale", "norm", "seed")


def read_pretrain_config(path: str | os.PathLike) -> dict:
    """PretrainConfig field values from a run's ``pretrain/config.json`` ({"config": {field:
    value}}) or from a preset file of pretrain.py's flags (``configs/<preset>/pretrain.json``)."""
    from train import engine as E
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
    parsed = read_config_file(path, E.build_parser(PretrainConfig, prog="pretrain.py"))
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


# --------------------------------------------------------------------------------------------
# Class activation maps (Grad-CAM) of finetuned checkpoints
# --------------------------------------------------------------------------------------------

def cam_layer(model):
    """The last convolutional stage of a VideoResNet (``layer4``)."""
    layer = getattr(model, "layer4", None)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no layer4 (the last convolutional stage Grad-CAM uses)")
    return layer


def grad_cam(model, clips, target=None, layer=None):
    """Grad-CAM of `model` on clips float [B, 3, T, H, W] (normalised as the model expects).

    target: class indices [B] (or one int), or None for each clip's predicted class. With A the
    output of `layer` (default ``model.layer4``) and g the gradient of the target logit w.r.t.
    it, w_c = mean over (t, h, w) of g_c, CAM = ReLU(sum_c w_c A_c), trilinearly upsampled to
    (T, H, W) and divided by its maximum over the clip (all zero when nothing is positive).
    The model runs in eval mode (BN running statistics), fp32. Returns (cam float32 [B, T, H, W]
    in [0, 1], logits float32 [B, C], target int64 [B])."""
    import torch
    import torch.nn.functional as F

    layer = layer if layer is not None else cam_layer(model)
    store: dict = {}
    handle = layer.register_forward_hook(lambda mod, inp, out: store.__setitem__("a", out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = clips.detach().float().requires_grad_(True)
            logits = model(x)
            a = store.pop("a")
            if target is None:
                tgt = logits.argmax(1)
            else:
                tgt = torch.as_tensor(target, device=logits.device, dtype=torch.long).reshape(-1)
                if tgt.numel() == 1 and logits.shape[0] > 1:
                    tgt = tgt.expand(logits.shape[0])
            score = logits.gather(1, tgt[:, None]).sum()
            (g,) = torch.autograd.grad(score, a)
    finally:
        handle.remove()
        model.train(was_training)
    with torch.no_grad():
        w = g.mean(dim=(2, 3, 4), keepdim=True)
        cam = F.relu((w * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(clips.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2, 3), keepdim=True)
        cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return cam.float().cpu(), logits.detach().float().cpu(), tgt.cpu()


def cam_overlay(frames: np.ndarray, cam: np.ndarray, weight: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """frames uint8 [T, H, W, 3], cam [T, H, W] in [0, 1] -> uint8 [T, H, W, 3]:
    (1 - weight) * frame + weight * colormap(cam)."""
    import matplotlib

    heat = matplotlib.colormaps[cmap](np.clip(np.asarray(cam, dtype=np.float64), 0, 1))[..., :3] * 255.0
    out = (1 - weight) * frames.astype(np.float64) + weight * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Prediction:
    label: int
    label_name: str
    correct: bool
    pred: str
    prob: float


def read_predictions(path: str | os.PathLike) -> dict:
    """predictions.csv of train/evaluate.py -> {video: Prediction} (the top-1)."""
    out = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                out[row["video"]] = Prediction(int(row["label"]), row["label_name"], row["correct"] == "1",
                                               row["pred1"], float(row["prob1"]))
    except (OSError, KeyError, ValueError) as e:
        raise ToolError(f"{path}: not a readable predictions.csv of train/evaluate.py ({type(e).__name__}: {e})") from None
    return out


COMPARE_GROUPS = (("a-right_b-wrong", True, False), ("a-wrong_b-right", False, True), ("both-wrong", False, False))


def compare_groups(pa: dict, pb: dict) -> dict:
    """{group: sorted video names} over the videos both predictions hold: A right and B wrong,
    A wrong and B right, both wrong."""
    common = sorted(set(pa) & set(pb))
    return {g: [v for v in common if pa[v].correct == ra and pb[v].correct == rb] for g, ra, rb in COMPARE_GROUPS}


def pick(names: Sequence[str], k: int, seed: int = 0) -> list[str]:
    """k of `names`, drawn without replacement by a seeded generator, in name order."""
    names = sorted(names)
    if len(names) <= k:
        return names
    rng = np.random.default_rng(seed)
    return sorted(names[i] for i in rng.choice(len(names), size=k, replace=False))


def pick_balanced(preds: dict, names: Sequence[str], k: int, seed: int = 0) -> list[str]:
    """k videos of `names`: half of them (rounded up) predicted right, the rest wrong, where
    there are enough of each."""
    right = [v for v in names if v in preds and preds[v].correct]
    wrong = [v for v in names if v in preds and not preds[v].correct]
    nw = min(len(wrong), k // 2)
    nr = min(len(right), k - nw)
    nw = min(len(wrong), k - nr)
    return pick(right, nr, seed) + pick(wrong, nw, seed)


@dataclass
class Classifier:
    path: Path
    name: str
    model: Any
    ckpt: dict
    classes: list
    geometry: dict
    norm: str


def load_classifier(path: str | os.PathLike, name: str | None = None, trust: bool = False, device="cpu",
                    frames=None, stride=None, crop=None, short_side=None) -> Classifier:
    """A finetuning checkpoint (train/finetune.py) as a model in eval mode, with its classes,
    test clip geometry and normalisation."""
    from train.inference import checkpoint_config, clip_geometry, load_checkpoint
    from train.models import build_backbone

    path = Path(path)
    ckpt = load_checkpoint(path, trust=trust)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "finetune" or not ckpt.get("classes"):
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
        raise ToolError(f"{path} is a {kind or 'foreign'} checkpoint, not a finetuning one (train/finetune.py): "
                        f"class activation maps need its classifier and class names")
    cfg = checkpoint_config(ckpt)
    classes = list(ckpt["classes"])
    model = build_backbone(ckpt["backbone_name"], num_classes=len(classes))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    geo = clip_geometry(cfg, frames, stride, crop, short_side)
    return Classifier(path, name or path.parent.name, model, ckpt, classes, geo, cfg.get("norm", "kinetics"))


class CamMaker:
    """Clips of the cache as the checkpoints' evaluation cuts them, and their Grad-CAMs."""

    def __init__(self, models: Sequence[Classifier], cache_dir: str | None = None, split: int | None = None,
                 device="cpu", lam: int = 30, m: float = 0.5):
        from train.inference import checkpoint_config, open_checkpoint_cache

        self.models = list(models)
        a = self.models[0]
        for b in self.models[1:]:
            ds_a = a.ckpt.get("dataset") or checkpoint_config(a.ckpt).get("dataset")
            ds_b = b.ckpt.get("dataset") or checkpoint_config(b.ckpt).get("dataset")
            if ds_a != ds_b or a.classes != b.classes:
                raise UsageError("--compare", b.path, f"was finetuned on {ds_b} ({len(b.classes)} classes), "
                                 f"--checkpoint on {ds_a} ({len(a.classes)} classes): compare models of one dataset")
        try:
            self.index = open_checkpoint_cache(a.ckpt, cache_dir)
        except SystemExit as e:
            raise ToolError(str(e.code)) from None
        if list(self.index.classes) != a.classes:
            raise ToolError(f"the classes of {a.path} ({len(a.classes)}) differ from those of the cache at "
                            f"{self.index.root} ({len(self.index.classes)})")
        cfg = checkpoint_config(a.ckpt)
        self.split = int(split or a.ckpt.get("split") or cfg.get("split") or 1)
        self.device = device
        self.lam, self.m = int(lam), float(m)
        self._eval: dict = {}

    def find(self, name: str) -> int:
        return find_video(self.index, name)

    def clip(self, clf: Classifier, video: int):
        """(uint8 frames [T, S, S, 3], frame indices) of the video's centre clip in `clf`'s test
        geometry (train.data.EvalClips with one clip)."""
        from train.data import EvalClips
        from train.mac import sample_clip_indices

        g = clf.geometry
        key = (g["frames"], g["stride"], g["short_side"], g["crop"])
        if key not in self._eval:
            self._eval[key] = EvalClips(self.index, self.split, "all", num_clips=1, frames=g["frames"],
                                        stride=g["stride"], short_side=g["short_side"], crop=g["crop"])
        item = self._eval[key][video]
        n = int(self.index.n_frames[video])
        idx = sample_clip_indices(n, g["frames"], g["stride"], int(item["starts"][0]))
        return item["frames"][0].numpy(), idx

    def cam(self, clf: Classifier, frames: np.ndarray, target=None):
        """(cam [T, S, S], probabilities [C], target class) of one clip."""
        import torch

        from train.mac import eval_transform

        x = eval_transform({"frames": torch.from_numpy(frames)[None, None]}, clf.norm, self.device)["clips"][:, 0]
        cam, logits, tgt = grad_cam(clf.model, x, target)
        return cam[0].numpy(), torch.softmax(logits[0], 0).numpy(), int(tgt[0])

    def block(self, video: int, preds: Sequence[dict | None], target: str = "pred", max_frames: int = 16) -> Block:
        from preprocess.masks import foreground_masks

        name = str(self.index.names[video])
        label = int(self.index.labels[video])
        frames, idx = self.clip(self.models[0], video)
        shown = _shown(len(frames), max_frames)
        change = foreground_masks(frames, self.lam, self.m)
        g = self.models[0].geometry
        rows = [Row("frames", frames[shown], {j: f"#{int(idx[t])}" for j, t in enumerate(shown)}),
                Row(f"change mask\n\u03bb {self.lam}, m {self.m:g}", change[shown])]
        for tag, clf, pr in zip("AB", self.models, preds):
            fr = frames
            if clf.geometry != self.models[0].geometry:
                fr, _ = self.clip(clf, video)
            cam, probs, tgt = self.cam(clf, fr, label if target == "label" else None)
            p = int(np.argmax(probs))
            clip_pred = f"clip: {clf.classes[p]} {probs[p]:.2f}"
            vid = pr.get(name) if pr else None
            vid_txt = f"video: {vid.pred} {RIGHT if vid.correct else WRONG}" if vid is not None else ""
            head = f"{tag}: {clf.name}" if len(self.models) > 1 else clf.name
            lines = [head, clip_pred] + ([vid_txt] if vid_txt else []) + [f"CAM of {clf.classes[tgt]}"]
            rows.append(Row("\n".join(lines), cam_overlay(fr, cam)[_shown(len(fr), max_frames)]))
        header = (f"{name}: true class {self.index.classes[label]} | centre clip, frames {int(idx[0])}..{int(idx[-1])} "
                  f"(stride {g['stride']}), short side {g['short_side']}, crop {g['crop']}")
        return Block(header, rows)

    def title(self, what: str, target: str) -> str:
        tgt = "the predicted class" if target == "pred" else "the true class"
        names = "; ".join(f"{t}: {c.path}" for t, c in zip("AB", self.models)) if len(self.models) > 1 \
            else str(self.models[0].path)
        return (f"{self.index.dataset} split {self.split}: {what}\nGrad-CAM on layer4 for {tgt}, upsampled to the "
                f"clip, divided by its maximum per clip (jet: 0 blue .. 1 red); {names}")


def cam_figure(maker: CamMaker, videos: Sequence[int], preds: Sequence[dict | None], what: str, path: Path,
               target: str = "pred", tile: int | None = None, gif: bool = False, max_frames: int = 16,
               palette: bool = False) -> list[Path]:
    blocks = [maker.block(v, preds, target, max_frames) for v in videos]
    tile = tile or auto_tile(maker.models[0].geometry["crop"])
    return write_figure(maker.title(what, target), blocks, path, tile, gif, palette)


def default_predictions(checkpoint: Path) -> Path:
    """predictions.csv of the evaluate folder beside a checkpoint's stage (finetune -> evaluate)."""
    from train.inference import default_out_dir

    return default_out_dir(Path(checkpoint), "evaluate") / "predictions.csv"


def cam_strip(checkpoint: str | os.PathLike, out_png: str | os.PathLike, predictions: str | os.PathLike | None = None,
              num: int = 3, cache_dir: str | None = None, tile: int = 64, seed: int = 0) -> Path:
    """The report's picture: Grad-CAMs of `num` test videos of a finetuned checkpoint (right and
    wrong ones, when predictions.csv says which)."""
    clf = load_classifier(checkpoint)
    maker = CamMaker([clf], cache_dir)
    names = [str(n) for n in maker.index.names[maker.index.subset(maker.split, "test")]]
    preds = read_predictions(predictions) if predictions and Path(predictions).is_file() else None
    chosen = pick_balanced(preds, names, num, seed) if preds else pick(names, num, seed)
    if not chosen:
        raise ToolError(f"{maker.index.dataset} split {maker.split} has no test videos")
    videos = [maker.find(v) for v in chosen]
    what = f"{len(videos)} test videos" + (" (right and wrong, from predictions.csv)" if preds else "")
    return cam_figure(maker, videos, [preds], what, Path(out_png), tile=tile)[0]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _copy_flags(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    """pretrain.py's flags for `fields` (names, types, choices, help), with default None: not
    given = the --pretrain-config file's value, else pretrain.py's default."""
    from train import engine as E
    from train.pretrain import PretrainConfig

    src = E.build_parser(PretrainConfig, prog="pretrain.py")
    for a in src._actions:
        if a.dest not in fields:
            continue
        shown = " ".join(map(str, a.default)) if isinstance(a.default, tuple) else a.default
        text = f"{a.help} (default: {shown}, or the --pretrain-config file's)".replace("%", "%%")
        # "%(default).0s" prints nothing and keeps the formatter from appending "(default: None)"
        kw: dict[str, Any] = {"dest": a.dest, "default": None, "help": text + "%(default).0s"}
        if isinstance(a, argparse.BooleanOptionalAction):
            parser.add_argument(a.option_strings[0], action=argparse.BooleanOptionalAction, **kw)
            continue
        kw.update(type=a.type, nargs=a.nargs, choices=a.choices)
        if a.nargs == "*":
            kw["nargs"] = "+"
        parser.add_argument(*[o for o in a.option_strings if o.startswith("--")], **kw)


def parse_args(argv=None) -> argparse.Namespace:
    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="visualize.py", description=doc[0], epilog="\n\n".join(doc[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{preview,cam}", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    pp = sub.add_parser("preview", help="frames | masks | MAC clips of cached videos (the trainer's samples)",
                        formatter_class=fmt, allow_abbrev=False,
                        description="frames | mask | MAC clip of cached videos, per stride, for one or several mask "
                                    "sets side by side; made by the trainer's own sample code from the cache alone")
    pp.add_argument("--pretrain-config", default=None, metavar="FILE",
                    help="a run's pretrain/config.json or a preset (configs/<preset>/pretrain.json): the sample "
                         "settings; the flags below override it")
    pp.add_argument("--videos", nargs="+", default=None, metavar="NAME",
                    help="cached videos (full name, file name or stem); default: the first --num-videos items of "
                         "the epoch's shuffled order of --part")
    pp.add_argument("--num-videos", type=int, default=2)
    pp.add_argument("--part", default="train", choices=("train", "test", "all"), help="videos of the split")
    pp.add_argument("--epoch", type=int, default=0, help="the pretraining epoch whose draws are shown")
    pp.add_argument("--drawn", action="store_true",
                    help="the trainer's own stride draw instead of one block per stride: every block is that "
                         "item's sample in --epoch, all videos in one PNG")
    pp.add_argument("--lambda", dest="lams", type=int, nargs="+", default=None, metavar="LAMBDA",
                    help="mask thresholds, side by side (default: 30 or the config's)")
    pp.add_argument("--m", dest="ms", type=float, nargs="+", default=None, metavar="M",
                    help="background weights, side by side (default: 0.5 or the config's)")
    pp.add_argument("--mask-set", dest="mask_sets", nargs="+", default=None, metavar="NAME",
                    help="named (imported) mask sets shown beside the frame-difference ones "
                         "(preprocess/import_masks.py; default: the config's --mask-set, if any)")
    _copy_flags(pp, SAMPLE_FIELDS)
    pp.add_argument("--max-frames", type=int, default=16, help="frames drawn per clip (every k-th beyond)")
    pp.add_argument("--tile", type=int, default=0, help="tile size in px (0: the crop, enlarged to >= 96)")
    pp.add_argument("--gif", action="store_true", help="also an animated GIF beside each PNG")
    pp.add_argument("--palette", action="store_true", help="256-colour PNGs (about 3x smaller), for documentation")
    pp.add_argument("--out-dir", type=Path, default=None, help="default: runs/<dataset>/visualize")

    pc = sub.add_parser("cam", help="Grad-CAM of finetuned checkpoints beside frames and change masks",
                        formatter_class=fmt, allow_abbrev=False,
                        description="class activation maps (Grad-CAM on layer4) of a finetuned checkpoint over "
                                    "test clips, beside the frames and their change masks; --compare: two models")
    pc.add_argument("--checkpoint", required=True, type=Path, help="a finetuning checkpoint (train/finetune.py)")
    pc.add_argument("--compare", type=Path, default=None, metavar="CKPT2",
                    help="a second finetuning checkpoint: both side by side, videos picked from both predictions.csv")
    pc.add_argument("--names", nargs=2, default=None, metavar=("A", "B"),
                    help="names of the two models (default: their run folders' names)")
    pc.add_argument("--predictions", type=Path, default=None,
                    help="predictions.csv of --checkpoint (default: the evaluate folder beside it, if present)")
    pc.add_argument("--compare-predictions", type=Path, default=None,
                    help="predictions.csv of --compare (default: the evaluate folder beside it)")
    pc.add_argument("--videos", nargs="+", default=None, metavar="NAME", help="videos to show (default: picked)")
    pc.add_argument("--num-videos", type=int, default=4,
                    help="without --compare/--videos: videos picked (half right, half wrong when predictions exist)")
    pc.add_argument("--per-group", type=int, default=2, help="with --compare: videos per group")
    pc.add_argument("--split", type=int, default=None, help="default: the checkpoint's")
    pc.add_argument("--part", default="test", choices=("test", "train", "all"), help="where videos are picked")
    pc.add_argument("--target", default="pred", choices=("pred", "label"),
                    help="the class whose evidence is mapped: the clip's prediction or the true class")
    pc.add_argument("--frames", type=int, default=None, help="default: the checkpoint's")
    pc.add_argument("--stride", type=int, default=None, help="default: the checkpoint's")
    pc.add_argument("--crop", type=int, default=None, help="default: the checkpoint's")
    pc.add_argument("--short-side", type=int, default=None, help="default: 128 * crop / 112")
    pc.add_argument("--lambda", dest="lam", type=int, default=30, help="change mask threshold (Algorithm 1)")
    pc.add_argument("--m", type=float, default=0.5, help="change mask background weight (Algorithm 1)")
    pc.add_argument("--cache-dir", default=None, help="default: the checkpoint's, else data_cache")
    pc.add_argument("--device", default="cpu", choices=("auto", "cuda", "cpu"))
    pc.add_argument("--seed", type=int, default=0, help="which videos are picked")
    pc.add_argument("--max-frames", type=int, default=16)
    pc.add_argument("--tile", type=int, default=0, help="tile size in px (0: the crop, enlarged to >= 96)")
    pc.add_argument("--gif", action="store_true", help="also an animated GIF beside each PNG")
    pc.add_argument("--palette", action="store_true", help="256-colour PNGs (about 3x smaller), for documentation")
    pc.add_argument("--out-dir", type=Path, default=None, help="default: <run>/cam beside the checkpoint's stage")
    pc.add_argument("--trust-checkpoint", action="store_true",
                    help="allow full unpickling of the checkpoints (can run code stored in the files)")
    return parse_checked(p, argv, check_args)


def check_args(args: argparse.Namespace) -> None:
    check_range("--max-frames", args.max_frames, lo=1)
    check_range("--tile", args.tile, lo=0, hi=1024)
    if args.command == "preview":
        check_range("--num-videos", args.num_videos, lo=1)
        check_range("--epoch", args.epoch, lo=0)
        check_file("--pretrain-config", args.pretrain_config)
        if args.lams is not None:
            check_range("--lambda", args.lams, lo=0, hi=255)
        if args.ms is not None:
            check_range("--m", args.ms, lo=0, hi=1)
        base = read_pretrain_config(args.pretrain_config) if args.pretrain_config else {}
        given = {f: getattr(args, f, None) for f in SAMPLE_FIELDS}
        base.update({f: (tuple(v) if isinstance(v, list) else v) for f, v in given.items() if v is not None})
        lams = args.lams or [base.get("lam", 30)]
        ms = args.ms or [base.get("m", 0.5)]
        named = args.mask_sets if args.mask_sets is not None else ([base["mask_set"]] if base.get("mask_set") else [])
        args.sample_configs = sample_configs(base, lams, ms, named)    # every value checked (pretrain.py's checks)
        return
    check_file("--checkpoint", args.checkpoint)
    check_file("--compare", args.compare)
    check_file("--predictions", args.predictions)
    check_file("--compare-predictions", args.compare_predictions)
    check_range("--num-videos", args.num_videos, lo=1)
    check_range("--per-group", args.per_group, lo=1)
    if args.split is not None:
        check_range("--split", args.split, lo=1, hi=3)
    for flag, v in (("--frames", args.frames), ("--stride", args.stride)):
        if v is not None:
            check_range(flag, v, lo=1)
    for flag, v in (("--crop", args.crop), ("--short-side", args.short_side)):
        if v is not None:
            check_range(flag, v, lo=8)
    check_range("--lambda", args.lam, lo=0, hi=255)
    check_range("--m", args.m, lo=0, hi=1)
    if args.names and not args.compare:
        raise UsageError("--names", args.names, "needs --compare (names of the two models)")


def run_preview(args) -> list[Path]:
    cfgs = args.sample_configs
    pv = Previewer(cfgs, cfgs[0].split, args.part)
    videos = [pv.find(v) for v in args.videos] if args.videos else pv.first_items(args.num_videos, args.epoch)
    out_dir = args.out_dir or Path("runs") / cfgs[0].dataset / "visualize"
    written = write_previews(pv, videos, out_dir, args.epoch, cfgs[0].strides if not args.drawn else None,
                             args.drawn, args.gif, args.tile or None, args.max_frames, palette=args.palette)
    return written


def run_cam(args) -> list[Path]:
    from train.inference import default_out_dir, resolve_device

    device = resolve_device(args.device)
    names = args.names or [None, None]
    geo = dict(frames=args.frames, stride=args.stride, crop=args.crop, short_side=args.short_side)
    models = [load_classifier(args.checkpoint, names[0], args.trust_checkpoint, device, **geo)]
    if args.compare:
        models.append(load_classifier(args.compare, names[1], args.trust_checkpoint, device, **geo))
        if models[0].name == models[1].name:
            models[0].name, models[1].name = str(args.checkpoint), str(args.compare)
    maker = CamMaker(models, args.cache_dir, args.split, device, args.lam, args.m)
    out_dir = args.out_dir or default_out_dir(args.checkpoint, "cam")
    tile = args.tile or None
    part_names = [str(n) for n in maker.index.names[maker.index.subset(maker.split, args.part)]]
    pred_paths = [args.predictions or default_predictions(args.checkpoint)]
    if args.compare:
        pred_paths.append(args.compare_predictions or default_predictions(args.compare))
    preds = [read_predictions(p) if Path(p).is_file() else None for p in pred_paths]
    written: list[Path] = []
    if args.videos:
        videos = [maker.find(v) for v in args.videos]
        return cam_figure(maker, videos, preds, f"{len(videos)} chosen videos", out_dir / "cam_videos.png",
                          args.target, tile, args.gif, args.max_frames, args.palette)
    if not args.compare:
        chosen = (pick_balanced(preds[0], part_names, args.num_videos, args.seed) if preds[0]
                  else pick(part_names, args.num_videos, args.seed))
        if not chosen:
            raise ToolError(f"{maker.index.dataset} split {maker.split} has no '{args.part}' videos")
        what = f"{len(chosen)} {args.part} videos" + (" (right and wrong, from predictions.csv)" if preds[0] else "")
        return cam_figure(maker, [maker.find(v) for v in chosen], preds, what, out_dir / f"cam_{args.part}.png",
                          args.target, tile, args.gif, args.max_frames, args.palette)
    for p, path in zip(preds, pred_paths):
        if p is None:
            raise ToolError(f"no predictions at {path}: --compare picks videos from both models' predictions.csv; "
                            f"run python train/evaluate.py --checkpoint <ckpt> first, or pass --predictions / "
                            f"--compare-predictions")
    keep = set(part_names)
    groups = compare_groups({k: v for k, v in preds[0].items() if k in keep}, {k: v for k, v in preds[1].items() if k in keep})
    total = len(set(preds[0]) & set(preds[1]) & keep)
    a, b = models[0].name, models[1].name
    titles = {"a-right_b-wrong": f"A ({a}) right, B ({b}) wrong", "a-wrong_b-right": f"A ({a}) wrong, B ({b}) right",
              "both-wrong": "both wrong"}
    for g, members in groups.items():
        chosen = pick(members, args.per_group, args.seed)
        print(f"[visualize] {titles[g]}: {len(members)} of {total} videos" + (f", showing {len(chosen)}" if chosen else ""))
        if not chosen:
            continue
        what = f"{titles[g]}: {len(members)} of {total} {args.part} videos, showing {len(chosen)}"
        written += cam_figure(maker, [maker.find(v) for v in chosen], preds, what, out_dir / f"cam_{g}.png",
                              args.target, tile, args.gif, args.max_frames, args.palette)
    return written


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    written = run_preview(args) if args.command == "preview" else run_cam(args)
    for p in written:
        print(f"[visualize] wrote {p}")
    return written


if __name__ == "__main__":
    exit_with(main, "visualize.py")
