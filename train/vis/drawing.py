"""Drawing for the pictures of train/visualize.py: rows of tiles with captions as a PNG grid or a
GIF over time, the colour overlay of a map on frames, and the PNG/GIF writing.

Owns: the layout (``Row``, ``Block``, ``render_grid``, ``render_gif``), fonts and colours, the
heat-map overlay (``cam_overlay``: matplotlib lives here, for its colormaps and its font), the
files (``save_png``/``save_gif``/``write_figure``: atomic, captions as PNG text), and the small
helpers both kinds of picture share (tile size, which frames are drawn, a cached video by name).
Knows nothing of samples, masks or models: train/vis/preview.py and train/vis/gradcam.py fill
the rows, this module only draws them, so both pictures look alike.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core import atomic
from core.errors import UsageError

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


# --------------------------------------------------------------------------------------------
# Shared by the preview and Grad-CAM: tile size, the frames drawn, a video by name, the heat overlay
# --------------------------------------------------------------------------------------------

def auto_tile(crop: int) -> int:
    """Tile size for a crop: small crops are enlarged by an integer factor to >= 96 px."""
    return int(crop) if crop >= 96 else int(crop) * math.ceil(96 / int(crop))


def _shown(T: int, max_frames: int) -> np.ndarray:
    """Which of a clip's T frames are drawn: all, or every ceil(T / max_frames)-th."""
    step = max(1, math.ceil(T / max(1, max_frames)))
    return np.arange(0, T, step)


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


def cam_overlay(frames: np.ndarray, cam: np.ndarray, weight: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """frames uint8 [T, H, W, 3], cam [T, H, W] in [0, 1] -> uint8 [T, H, W, 3]:
    (1 - weight) * frame + weight * colormap(cam)."""
    import matplotlib

    heat = matplotlib.colormaps[cmap](np.clip(np.asarray(cam, dtype=np.float64), 0, 1))[..., :3] * 255.0
    out = (1 - weight) * frames.astype(np.float64) + weight * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
