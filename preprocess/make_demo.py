"""The built-in demo dataset: small synthetic videos in UCF101's exact layout.

    python preprocess/make_demo.py --data-root data/demo --seed 0 [--classes 6 --groups 18 --clips 3
                                                                    --frames 40] [--config FILE]
    python preprocess/make_demo.py --data-root data/demo --write-boxes    # + ground-truth boxes.csv

Layout (what UCF101's two archives unpack to)::

    <root>/UCF-101/<Class>/v_<Class>_gNN_cNN.avi          MPEG-4 part 2 (XVID tag), 320x240, 25 fps
    <root>/ucfTrainTestlist/classInd.txt                  "1 Circle" ... (1-based, sorted by name)
    <root>/ucfTrainTestlist/trainlist0{1,2,3}.txt         "Circle/v_Circle_g04_c01.avi 1"
    <root>/ucfTrainTestlist/testlist0{1,2,3}.txt          "Circle/v_Circle_g01_c01.avi"
    <root>/demo.json                                      parameters, per-video frame counts
    <root>/boxes.csv, boxes.json                          with --write-boxes only (see below)

The list files use CRLF line endings like the official UCF101 split files. Groups are cut into
three contiguous, nearly equal blocks; split k tests on block k and trains on the rest (UCF101:
25 groups, test groups 1-7 / 8-14 / 15-21), so within a split no group is in both train and test,
and the three test sets are disjoint.

What the classes are. A class is a MOTION, and nothing else:

- ``MoveUp`` / ``MoveDown``: straight translation, direction within 20 degrees of vertical;
- ``MoveSideways``: straight translation left OR right (random sign), within 20 degrees of
  horizontal;
- ``Circle``: circular path, random radius, speed, phase and sense of rotation;
- ``Oscillate``: back-and-forth along a near-horizontal axis around a fixed point;
- ``Pulsate``: in place, the object's size oscillates;
- ``Spin`` (7th) and ``ZigZag`` (8th) are available with ``--classes 7/8``.

Every class is closed under horizontal flipping (a flipped MoveSideways is a MoveSideways, a
flipped Circle a Circle), so the flip augmentation of the pretext task and of finetuning never
turns one class into another. Everything else is drawn from random streams that never see the
class: the scene of every video (background texture and colours, 1-2 static distractors drawn
from the same looks as the moving objects, the two moving objects' shapes, sizes, colours and
textures) comes from ``sample_scene(rng)``, the camera (sub-pixel jitter of up to 1 px, slow
global illumination change, sensor noise) from ``sample_camera(rng)``; only
``sample_track(class_name, rng, ...)`` depends on the class. Trajectories are centred on a point
drawn uniformly from the same central box for every class, so the time-averaged object position
is the frame centre for all classes. A single frame therefore tells nothing about the class (a
test trains a single-frame model and finds it at chance on unseen scenes).

Why it looks like this (version 3, measured on separate generated instances, never on the
reported demo's test split):

- Every video has its own scene (version 2 shared one per group, like UCF101): models trained
  from scratch on the version-2 demo memorised scenes instead of learning motion.
- Two large (radius 42-58 px), finely textured (pattern frequency 3-5 per radius) moving objects:
  frame differencing, i.e. the MAC masks, lights up most of their area, and the reference's
  per-clip soft masks have a mean value of about 0.05-0.06 at strides 2-4 (real footage: 0.02-0.11
  at stride 4; version 2: 0.018, too little for the pretext to see).
- Static distractors with the same looks as the movers: only motion tells them apart, so the
  pretext (which foreground was attenuated, and by how much) needs motion, not appearance.
- Motions are fast enough (1.5x version 2) to show in an 8-frame clip at 48 pixels.

Frame counts vary per video, uniformly in ``[frames - frames // 4, frames]``.

Ground-truth boxes (``--write-boxes``, or ``make_demo(..., write_boxes=True)``): ``boxes.csv``
holds, for every frame of every video, the bounding box of each MOVING object (never the static
distractors) as rendered: columns ``video,frame,object,x1,y1,x2,y2``, ``video`` the path used in
the list files and the cache (``Circle/v_Circle_g01_c01.avi``), ``frame`` 0-based, integer pixel
coordinates of the 320x240 rendered video with the box covering ``x1 <= x < x2``, ``y1 <= y < y2``:
exactly the pixels the object paints (its anti-aliased edge included), clipped to the frame; a
frame where an object is entirely outside the picture has no row for it. ``boxes.json`` records
the resolution (``source_size``: [320, 240]) and the parameters. They feed
``preprocess/import_masks.py --boxes <root>/boxes.csv --source-size 320x240`` (Table 3's
comparison with an external mask source). Written without rendering (the boxes come from the
scene, tracks and camera draws); the videos and other files are the same with or without them.

Determinism: the frames depend only on (seed, class, group, clip, frames); ``render_video``
returns them before encoding. The encoder runs single-threaded with bitexact flags, so the same
ffmpeg build also gives identical files.

Idempotent: if ``<root>/demo.json`` records the same parameters, nothing is done. Otherwise the
dataset is built in a temporary folder next to ``root`` and renamed into place (an existing
demo with other parameters is replaced; a non-empty folder that is not a demo is refused).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ffmpeg  # ffmpeg-python
import numpy as np

if __package__ in (None, ""):   # run as `python preprocess/make_demo.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import UsageError, exit_with

from core.flags import Flags, flag, parse
from preprocess.decode import ffmpeg_binary, ffmpeg_version

__all__ = [
    "ALL_CLASSES",
    "DEFAULTS",
    "class_names",
    "split_groups",
    "video_name",
    "sample_scene",
    "clip_scene",
    "sample_track",
    "sample_camera",
    "video_length",
    "render_video",
    "encode_video",
    "make_demo",
    "object_boxes",
    "write_ground_truth_boxes",
    "main",
]

GENERATOR = "mac-demo"
VERSION = 3  # bump when the rendered frames change
WIDTH, HEIGHT, FPS = 320, 240, 25
PAD = 4  # background margin for camera jitter (pixels)
ALL_CLASSES = ("MoveUp", "MoveDown", "MoveSideways", "Circle", "Oscillate", "Pulsate", "Spin",
               "ZigZag")
# the moving objects: large and finely textured, so that frame differencing (the MAC masks)
# lights up their whole area rather than a thin rim, and together they cover a realistic share of
# the picture (mean soft mask >= 0.05 at strides 2-4, as on real footage); static distractors are
# drawn from the same looks, so only motion tells them apart (version 2: radius 30-46, 1-2
# objects, small plain clutter)
OBJECT_RADIUS = (42.0, 58.0)   # pixels
OBJECT_FREQ = (3.0, 5.0)       # pattern cycles per radius
N_OBJECTS = (2, 2)             # moving objects per video (uniform, inclusive)
N_DISTRACTORS = (1, 2)         # static objects with the same looks
SPEED = 1.5                    # every class's speeds scale with this
JITTER_PX = (0.15, 0.6)        # camera jitter amplitude (smoothed random walk, clipped at 1 px)
DEFAULTS = dict(classes=6, groups=18, clips=3, frames=40)
LINE_END = "\r\n"

# random streams (SeedSequence entropy: [seed, STREAM, class index, group, clip])
_SCENE, _TRACK, _CAMERA, _LENGTH, _NOISE = 1, 2, 3, 4, 5


def _rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, *map(int, key)]))


def class_names(n: int = DEFAULTS["classes"]) -> list[str]:
    """The first ``n`` classes of ``ALL_CLASSES``, sorted by name (classInd order)."""
    if not 2 <= n <= len(ALL_CLASSES):
        raise ValueError(f"classes must be in 2..{len(ALL_CLASSES)}, got {n}")
    return sorted(ALL_CLASSES[:n])


def split_groups(groups: int) -> list[list[int]]:
    """Test groups of splits 1, 2, 3: three contiguous, nearly equal, disjoint blocks."""
    if groups < 3:
        raise ValueError("need at least 3 groups for 3 splits")
    return [[int(g) for g in block] for block in np.array_split(np.arange(1, groups + 1), 3)]


def video_name(class_name: str, group: int, clip: int) -> str:
    """``Class/v_Class_gNN_cNN.avi``, the path used in the list files."""
    return f"{class_name}/v_{class_name}_g{group:02d}_c{clip:02d}.avi"


def video_length(seed: int, class_name: str, group: int, clip: int, frames: int) -> int:
    lo = frames - frames // 4
    return int(_rng(seed, _LENGTH, ALL_CLASSES.index(class_name), group, clip)
               .integers(lo, frames + 1))


# --------------------------------------------------------------------------------------------
# scene (class-independent)


@dataclass(frozen=True)
class ObjectLook:
    shape: str          # ellipse | polygon | star
    radius: float       # pixels
    aspect: float       # x stretch of the shape
    sides: int          # polygon sides / star points
    colour1: np.ndarray
    colour2: np.ndarray
    pattern: str        # stripes | checker | wedges | blobs (none rotation-invariant: Spin shows)
    freq: float         # pattern cycles per radius
    pattern_angle: float
    phase: float
    angle: float        # resting orientation (radians)


@dataclass(frozen=True)
class Scene:
    background: np.ndarray  # float32 [H + 2 PAD, W + 2 PAD, 3]
    looks: tuple[ObjectLook, ...]


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _smooth_noise(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-std noise with a 1/f^beta amplitude spectrum (cloud-like)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** (-beta)
    amp[0, 0] = 0.0
    amp[f > 0.25] = 0.0  # nothing finer than 4 px: camera jitter must not light up the masks
    spec = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
    img = np.fft.irfft2(spec, s=(h, w))
    return ((img - img.mean()) / (img.std() + 1e-12)).astype(np.float32)


def _sample_look(rng: np.random.Generator, radius=OBJECT_RADIUS,
                 freq=OBJECT_FREQ) -> ObjectLook:
    c1 = rng.uniform(0, 255, 3)
    while True:  # two colours that differ clearly in brightness: the object always has edges
        c2 = rng.uniform(0, 255, 3)
        if abs(_luma(c1) - _luma(c2)) >= 70:
            break
    shape = str(rng.choice(["ellipse", "polygon", "star"]))
    return ObjectLook(
        shape=shape,
        radius=float(rng.uniform(*radius)),
        aspect=float(rng.uniform(0.6, 1.5)) if shape != "star" else 1.0,
        sides=int(rng.integers(3, 7)) if shape == "polygon" else int(rng.integers(4, 7)),
        colour1=c1.astype(np.float32),
        colour2=c2.astype(np.float32),
        pattern=str(rng.choice(["stripes", "checker", "wedges", "blobs"])),
        freq=float(rng.uniform(*freq)),
        pattern_angle=float(rng.uniform(0, np.pi)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        angle=float(rng.uniform(0, 2 * np.pi)),
    )


def sample_scene(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> Scene:
    """Background texture and object appearance. Takes no class: independent of it."""
    h, w = height + 2 * PAD, width + 2 * PAD
    n1 = _smooth_noise(rng, h, w, rng.uniform(2.2, 3.0))
    n2 = _smooth_noise(rng, h, w, rng.uniform(1.8, 2.4))
    a = rng.uniform(30, 220, 3)
    b = rng.uniform(30, 220, 3)
    mix = 1.0 / (1.0 + np.exp(-rng.uniform(0.8, 2.0) * n1))
    bg = (a + (b - a) * mix[..., None] + rng.uniform(4, 12) * n2[..., None]).astype(np.float32)
    # static distractors: the same looks as the moving objects, so that appearance cannot tell
    # what moves; camera jitter lights up their edges in the masks now and then, as on real footage
    for _ in range(int(rng.integers(N_DISTRACTORS[0], N_DISTRACTORS[1] + 1))):
        look = _sample_look(rng)
        _draw(bg, look, rng.uniform(0, w), rng.uniform(0, h), 1.0, look.angle)
    n_obj = int(rng.integers(N_OBJECTS[0], N_OBJECTS[1] + 1))
    looks = tuple(_sample_look(rng) for _ in range(n_obj))
    return Scene(np.clip(bg, 0, 255), looks)


# --------------------------------------------------------------------------------------------
# motion (the only class-dependent part)


@dataclass(frozen=True)
class Track:
    """Per-frame object pose in scene coordinates (pixels; y points down)."""

    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray
    angle: np.ndarray  # added to the look's resting angle


def _direction(rng, base: float, spread_deg: float = 20.0) -> tuple[float, float]:
    a = base + np.deg2rad(rng.uniform(-spread_deg, spread_deg))
    return math.cos(a), math.sin(a)


def sample_track(class_name: str, rng: np.random.Generator, n_frames: int,
                 height: int = HEIGHT, width: int = WIDTH) -> Track:
    """The motion of one object for ``class_name``; its centre point is drawn from the same
    central box for every class."""
    t = np.arange(n_frames, dtype=np.float64)
    tc = t - (n_frames - 1) / 2.0  # centred time: the path is symmetric about its centre point
    cx = rng.uniform(0.3 * width, 0.7 * width)
    cy = rng.uniform(0.35 * height, 0.65 * height)
    x = np.full(n_frames, cx)
    y = np.full(n_frames, cy)
    scale = np.ones(n_frames)
    angle = np.zeros(n_frames)
    if class_name in ("MoveUp", "MoveDown"):
        v = SPEED * rng.uniform(2.0, 3.5)
        dx, dy = _direction(rng, -np.pi / 2 if class_name == "MoveUp" else np.pi / 2)
        x, y = cx + v * dx * tc, cy + v * dy * tc
    elif class_name == "MoveSideways":
        v = SPEED * rng.uniform(2.5, 4.0)
        dx, dy = _direction(rng, 0.0 if rng.random() < 0.5 else np.pi)
        x, y = cx + v * dx * tc, cy + v * dy * tc
    elif class_name == "Circle":
        r = rng.uniform(28, 45)
        w = SPEED * rng.uniform(0.12, 0.22) * (1 if rng.random() < 0.5 else -1)
        ph = rng.uniform(0, 2 * np.pi)
        x, y = cx + r * np.cos(w * t + ph), cy + r * np.sin(w * t + ph)
    elif class_name == "Oscillate":
        amp = rng.uniform(25, 45)
        period = rng.uniform(12, 20) / SPEED
        dx, dy = _direction(rng, 0.0)
        s = amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        x, y = cx + dx * s, cy + dy * s
    elif class_name == "Pulsate":
        amp = rng.uniform(0.3, 0.5)
        period = rng.uniform(12, 22) / SPEED
        scale = 1.0 + amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    elif class_name == "Spin":
        w = rng.uniform(0.15, 0.3) * (1 if rng.random() < 0.5 else -1)
        angle = w * t
    elif class_name == "ZigZag":
        v = rng.uniform(2.0, 3.5) * (1 if rng.random() < 0.5 else -1)
        amp = rng.uniform(18, 30)
        period = rng.uniform(12, 20)
        tri = 2 * np.abs(2 * ((t / period + rng.uniform(0, 1)) % 1.0) - 1) - 1  # triangle wave
        x, y = cx + v * tc, cy + amp * tri
    else:
        raise ValueError(f"unknown class {class_name!r}; known: {ALL_CLASSES}")
    return Track(np.asarray(x, float), np.asarray(y, float), np.asarray(scale, float),
                 np.asarray(angle, float))


# --------------------------------------------------------------------------------------------
# camera and rendering


@dataclass(frozen=True)
class Camera:
    ox: np.ndarray    # per-frame jitter offset (pixels, |.| <= 2)
    oy: np.ndarray
    gain: np.ndarray  # global illumination factor per frame
    noise_sigma: float


def sample_camera(rng: np.random.Generator, n_frames: int) -> Camera:
    """Sub-pixel jitter (smoothed random walk, at most 2 px), slow illumination change, sensor
    noise level. Independent of the class."""
    amp = rng.uniform(*JITTER_PX)
    offs = []
    for _ in range(2):
        e = rng.standard_normal(n_frames + 8)
        s = np.convolve(e, np.ones(4) / 2.0, mode="valid")[:n_frames]  # mild temporal smoothing
        offs.append(np.clip(amp * s, -1.0, 1.0))
    period = rng.uniform(60, 160)
    gain = 1.0 + rng.uniform(0.03, 0.08) * np.sin(
        2 * np.pi * np.arange(n_frames) / period + rng.uniform(0, 2 * np.pi))
    return Camera(offs[0], offs[1], gain, float(rng.uniform(1.5, 3.5)))


def _shape_distance(look: ObjectLook, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed, roughly distance-like value in radius units (<= 0 inside)."""
    if look.shape == "ellipse":
        return np.sqrt((u / look.aspect) ** 2 + v * v) - 1.0
    if look.shape == "polygon":
        n = look.sides
        apothem = math.cos(math.pi / n)
        uu = u / look.aspect
        d = None
        for k in range(n):
            a = -np.pi / 2 + (2 * k + 1) * np.pi / n
            dk = uu * math.cos(a) + v * math.sin(a)
            d = dk if d is None else np.maximum(d, dk)
        return d / apothem - 1.0
    rho = np.sqrt(u * u + v * v)  # star
    phi = np.arctan2(v, u)
    edge = 1.0 - 0.45 * (0.5 + 0.5 * np.cos(look.sides * phi))
    return rho / edge - 1.0


def _pattern(look: ObjectLook, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = look.freq * np.pi
    if look.pattern == "stripes":
        p = np.sin(k * (u * math.cos(look.pattern_angle) + v * math.sin(look.pattern_angle))
                   + look.phase)
    elif look.pattern == "checker":
        p = np.tanh(4 * np.sin(k * u + look.phase) * np.sin(k * v))
    elif look.pattern == "wedges":
        p = np.sin(np.round(look.freq * 3) * np.arctan2(v, u) + look.phase)
    else:
        p = np.sin(k * u + look.phase) + np.sin(k * v * 1.3 - look.phase)
        p = np.clip(p, -1, 1)
    return 0.5 + 0.5 * p


def _draw(img: np.ndarray, look: ObjectLook, cx: float, cy: float, scale: float,
          angle: float, gain: float = 1.0) -> None:
    h, w, _ = img.shape
    rad = look.radius * scale
    ext = rad * max(look.aspect, 1.0) * 1.1 + 2
    x0, x1 = max(0, int(cx - ext)), min(w, int(cx + ext) + 2)
    y0, y1 = max(0, int(cy - ext)), min(h, int(cy + ext) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / rad
    dy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy) / rad
    c, s = math.cos(angle), math.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    alpha = np.clip(0.5 - _shape_distance(look, u, v) * rad, 0.0, 1.0)[..., None]
    p = _pattern(look, u, v)[..., None]
    colour = look.colour1 + (look.colour2 - look.colour1) * p
    if gain != 1.0:
        colour *= np.float32(gain)
    patch = img[y0:y1, x0:x1]
    patch += alpha * (colour - patch)


class _ShiftedBackground:
    """Bilinear sub-pixel shifts of a scene's background, quantised to 1/4 px and cached (the
    jitter of every frame of every clip of a group reuses at most 16 resampled copies)."""

    Q = 4

    def __init__(self, bg: np.ndarray):
        self.bg = bg
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def crop(self, ox: float, oy: float, height: int, width: int) -> np.ndarray:
        fx = round((PAD + ox) * self.Q) / self.Q
        fy = round((PAD + oy) * self.Q) / self.Q
        ix, iy = int(math.floor(fx)), int(math.floor(fy))
        key = (int(round((fx - ix) * self.Q)), int(round((fy - iy) * self.Q)))
        sh = self.cache.get(key)
        if sh is None:
            ax, ay = np.float32(key[0] / self.Q), np.float32(key[1] / self.Q)
            b = self.bg
            top = b[:-1, :-1] + ax * (b[:-1, 1:] - b[:-1, :-1])
            bot = b[1:, :-1] + ax * (b[1:, 1:] - b[1:, :-1])
            sh = self.cache[key] = top + ay * (bot - top)
        return sh[iy:iy + height, ix:ix + width]


def _render(scene: Scene, tracks: list[Track], cam: Camera, rng_noise: np.random.Generator,
            height: int, width: int, shifted: _ShiftedBackground | None = None) -> np.ndarray:
    n = len(cam.gain)
    out = np.empty((n, height, width, 3), np.uint8)
    shifted = shifted or _ShiftedBackground(scene.background)
    # a few noise fields (+0.5 so that the final cast rounds), cropped at random offsets per
    # frame: cheaper than fresh noise for every frame
    bank = rng_noise.standard_normal((3, height + 16, width + 16, 3), dtype=np.float32)
    bank *= np.float32(cam.noise_sigma)
    bank += np.float32(0.5)
    noise_pick = rng_noise.integers(0, 3, n)
    noise_off = rng_noise.integers(0, 17, (n, 2))
    img = np.empty((height, width, 3), np.float32)
    for t in range(n):
        # camera at offset (ox, oy): the scene appears shifted by (-ox, -oy)
        np.multiply(shifted.crop(cam.ox[t], cam.oy[t], height, width), np.float32(cam.gain[t]),
                    out=img)
        for look, tr in zip(scene.looks, tracks):
            # objects are drawn after the gain: scale their colours by the same factor
            _draw(img, look, tr.x[t] - cam.ox[t], tr.y[t] - cam.oy[t], tr.scale[t],
                  look.angle + tr.angle[t], gain=float(cam.gain[t]))
        oy, ox = noise_off[t]
        img += bank[noise_pick[t], oy:oy + height, ox:ox + width]
        np.clip(img, 0, 255.49, out=img)
        out[t] = img  # truncation after +0.5: round to nearest
    return out


def _inject_cue(tracks: list[Track], cue, height: int) -> list[Track]:
    """TEST-ONLY (tests/test_demo_cues.py's positive control): put a per-frame class cue into a
    video's moving objects. ``("scale", s)``: drawn ``s`` times their size; ``("band", a, b)``:
    their centres folded into rows ``[a * height, b * height)``. The dataset never has one."""
    if cue is None:
        return tracks
    if cue[0] == "scale":
        return [Track(tr.x, tr.y, tr.scale * float(cue[1]), tr.angle) for tr in tracks]
    if cue[0] == "band":
        lo, hi = float(cue[1]) * height, float(cue[2]) * height
        return [Track(tr.x, lo + np.mod(tr.y, hi - lo), tr.scale, tr.angle) for tr in tracks]
    raise ValueError(f"unknown cue {cue!r}")


def render_video(class_name: str, group: int, clip: int, seed: int = 0, n_frames: int = 40,
                 height: int = HEIGHT, width: int = WIDTH, *, _cue=None) -> np.ndarray:
    """The raw uint8 RGB frames ``[n_frames, height, width, 3]`` of one demo video, before
    encoding. Deterministic in its arguments; every video has its own scene (``clip_scene``).
    ``_cue`` is for tests only (see `_inject_cue`): a per-frame class cue the dataset never has."""
    ci = ALL_CLASSES.index(class_name)
    scene = clip_scene(seed, class_name, group, clip, height, width)
    trng = _rng(seed, _TRACK, ci, group, clip)
    tracks = _inject_cue([sample_track(class_name, trng, n_frames, height, width) for _ in scene.looks], _cue, height)
    cam = sample_camera(_rng(seed, _CAMERA, ci, group, clip), n_frames)
    return _render(scene, tracks, cam, _rng(seed, _NOISE, ci, group, clip), height, width)


def clip_scene(seed: int, class_name: str, group: int, clip: int, height: int = HEIGHT,
               width: int = WIDTH) -> Scene:
    """The scene of one video: its own random stream, drawn by the class-blind sampler."""
    return sample_scene(_rng(seed, _SCENE, ALL_CLASSES.index(class_name), group, clip), height, width)


def _object_box(look: ObjectLook, cx: float, cy: float, scale: float, angle: float, height: int,
                width: int) -> tuple[int, int, int, int] | None:
    """The pixels `_draw` paints (alpha > 0) for this pose on a height x width image: (x1, y1,
    x2, y2) with x1 <= x < x2, or None when none lies in the image. Same grid arithmetic as
    `_draw`."""
    rad = look.radius * scale
    ext = rad * max(look.aspect, 1.0) * 1.1 + 2
    x0, x1 = max(0, int(cx - ext)), min(width, int(cx + ext) + 2)
    y0, y1 = max(0, int(cy - ext)), min(height, int(cy + ext) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / rad
    dy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy) / rad
    c, s = math.cos(angle), math.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    inside = np.clip(0.5 - _shape_distance(look, u, v) * rad, 0.0, 1.0) > 0
    cols, rows = np.flatnonzero(inside.any(0)), np.flatnonzero(inside.any(1))
    if cols.size == 0:
        return None
    return x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1


def object_boxes(class_name: str, group: int, clip: int, seed: int = 0, n_frames: int = 40,
                 height: int = HEIGHT, width: int = WIDTH) -> list[tuple[int, int, int, int, int, int]]:
    """Ground-truth boxes of the moving objects of one video, as ``render_video`` draws them:
    [(frame, object, x1, y1, x2, y2)] in the rendered frame's pixels (x1 <= x < x2), sorted by
    frame and object; an object entirely outside a frame has no box there."""
    ci = ALL_CLASSES.index(class_name)
    scene = clip_scene(seed, class_name, group, clip, height, width)
    trng = _rng(seed, _TRACK, ci, group, clip)
    tracks = [sample_track(class_name, trng, n_frames, height, width) for _ in scene.looks]
    cam = sample_camera(_rng(seed, _CAMERA, ci, group, clip), n_frames)
    out = []
    for t in range(n_frames):
        for k, (look, tr) in enumerate(zip(scene.looks, tracks)):
            box = _object_box(look, tr.x[t] - cam.ox[t], tr.y[t] - cam.oy[t], tr.scale[t],
                              look.angle + tr.angle[t], height, width)
            if box is not None:
                out.append((t, k, *box))
    return out


BOX_HEADER = "video,frame,object,x1,y1,x2,y2"


def _video_boxes_csv(c: str, g: int, j: int, n: int, seed: int) -> str:
    name = video_name(c, g, j)
    return "".join(f"{name},{t},{k},{x1},{y1},{x2},{y2}\n" for t, k, x1, y1, x2, y2 in
                   object_boxes(c, g, j, seed=seed, n_frames=n))


def write_ground_truth_boxes(root, seed: int = 0, classes: int = DEFAULTS["classes"], groups: int = DEFAULTS["groups"],
                clips: int = DEFAULTS["clips"], frames: int = DEFAULTS["frames"], verbose: bool = False) -> Path:
    """Write ``<root>/boxes.csv`` and ``boxes.json`` (ground-truth boxes of the moving objects,
    see the module docstring) for the demo of these parameters; a file whose content is already
    right is left as it is. Returns the path of boxes.csv."""
    from core import atomic

    root = Path(root)
    params = _params(seed, classes, groups, clips, frames)
    jobs = [(c, g, j, video_length(seed, c, g, j, frames))
            for c in class_names(classes) for g in range(1, groups + 1) for j in range(1, clips + 1)]
    jobs.sort(key=lambda x: video_name(*x[:3]))
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(_video_boxes_csv, *zip(*jobs), [seed] * len(jobs), chunksize=8))
    text = BOX_HEADER + "\n" + "".join(parts)
    meta = json.dumps({"file": "boxes.csv", "source_size": [WIDTH, HEIGHT], "columns": BOX_HEADER.split(","),
                       "objects": "the moving objects of every video (never the static distractors)",
                       "coordinates": "pixels of the rendered video (x right, y down); a box covers "
                                      "x1 <= x < x2, y1 <= y < y2: the pixels the object paints, clipped to the frame",
                       "import": f"python preprocess/import_masks.py --dataset demo --name gt --boxes "
                                 f"{root / 'boxes.csv'} --source-size {WIDTH}x{HEIGHT}",
                       "params": params}, indent=1) + "\n"
    path = root / "boxes.csv"
    for target, content in ((path, text), (root / "boxes.json", meta)):
        try:
            if target.read_text() == content:
                continue
        except OSError:
            pass
        atomic.write_text(target, content)
    if verbose:
        print(f"wrote ground-truth boxes of the moving objects ({text.count(chr(10)) - 1} boxes, "
              f"{len(jobs)} videos, {WIDTH}x{HEIGHT}) to {path}")
    return path


# --------------------------------------------------------------------------------------------
# encoding and the dataset


def encode_video(frames: np.ndarray, path, binary: str | None = None, fps: int = FPS,
                 q: int = 4) -> Path:
    """Pipe uint8 RGB frames into ffmpeg: MPEG-4 part 2 with the XVID tag in AVI (UCF101's
    format), yuv420p, single-threaded and bitexact so a given ffmpeg build is reproducible."""
    binary = binary or ffmpeg_binary()
    t, h, w, _ = frames.shape
    node = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=fps)
        .output(str(path), vcodec="mpeg4", vtag="XVID", pix_fmt="yuv420p", threads=1,
                fflags="+bitexact", an=None, **{"q:v": q, "flags:v": "+bitexact"})
        .overwrite_output()
    )
    proc = node.run_async(cmd=[binary, "-nostdin", "-hide_banner", "-v", "error"],
                          pipe_stdin=True, pipe_stderr=True)
    _, err = proc.communicate(np.ascontiguousarray(frames, np.uint8).tobytes())
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed encoding {path}: {err.decode(errors='replace')[-500:]}")
    return Path(path)


def _params(seed, classes, groups, clips, frames) -> dict:
    return {"generator": GENERATOR, "version": VERSION, "seed": int(seed),
            "classes": class_names(classes), "groups": int(groups), "clips": int(clips),
            "frames": int(frames), "width": WIDTH, "height": HEIGHT, "fps": FPS}


def _write_lists(lists: Path, classes: list[str], groups: int, clips: int) -> None:
    lists.mkdir(parents=True)
    nl = LINE_END
    (lists / "classInd.txt").write_bytes(
        "".join(f"{i + 1} {c}{nl}" for i, c in enumerate(classes)).encode())
    for k, test in enumerate(split_groups(groups), start=1):
        train_lines, test_lines = [], []
        for label, c in enumerate(classes, start=1):
            for g in range(1, groups + 1):
                for j in range(1, clips + 1):
                    if g in test:
                        test_lines.append(f"{video_name(c, g, j)}{nl}")
                    else:
                        train_lines.append(f"{video_name(c, g, j)} {label}{nl}")
        (lists / f"trainlist{k:02d}.txt").write_bytes("".join(train_lines).encode())
        (lists / f"testlist{k:02d}.txt").write_bytes("".join(test_lines).encode())


def make_demo(root, seed: int = 0, classes: int = DEFAULTS["classes"],
              groups: int = DEFAULTS["groups"], clips: int = DEFAULTS["clips"],
              frames: int = DEFAULTS["frames"], binary: str | None = None,
              verbose: bool = False, write_boxes: bool = False) -> Path:
    """Build (or find) the demo dataset at ``root``; returns ``root`` as a Path. With
    ``write_boxes`` also ``boxes.csv`` / ``boxes.json`` (ground-truth boxes, see `write_ground_truth_boxes`)."""
    root = Path(root)
    if frames < 8:
        raise ValueError("frames must be >= 8")
    if clips < 1 or clips > 99 or groups > 99:
        raise ValueError("groups and clips must be in 1..99")
    split_groups(groups)  # raises unless groups >= 3
    params = _params(seed, classes, groups, clips, frames)
    marker = root / "demo.json"

    def existing() -> dict | None:
        try:
            return json.loads(marker.read_text()).get("params")
        except (OSError, ValueError):
            return None

    if existing() == params:
        if verbose:
            print(f"demo dataset already at {root} (same parameters): nothing to do")
        if write_boxes:
            write_ground_truth_boxes(root, seed, classes, groups, clips, frames, verbose)
        return root
    if root.exists() and not marker.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not a demo dataset; refusing to replace it")

    binary = binary or ffmpeg_binary()
    names = class_names(classes)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    t0 = time.perf_counter()
    try:
        videos = {}
        for c in names:
            (tmp / "UCF-101" / c).mkdir(parents=True)
        jobs = [(c, g, j, video_length(seed, c, g, j, frames))
                for c in names for g in range(1, groups + 1) for j in range(1, clips + 1)]
        # one task per video (render in Python, encode in ffmpeg): processes, since rendering
        # holds the GIL; the output depends only on the task, not on which process ran it
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_render_and_encode, c, g, j, n, seed, tmp / "UCF-101" / video_name(c, g, j),
                                   binary) for c, g, j, n in jobs]
            for (c, g, j, n), f in zip(jobs, futures):
                f.result()
                videos[video_name(c, g, j)] = n
        _write_lists(tmp / "ucfTrainTestlist", names, groups, clips)
        seconds = time.perf_counter() - t0
        (tmp / "demo.json").write_text(json.dumps(
            {"params": params, "videos": videos, "ffmpeg": ffmpeg_version(binary),
             "seconds": round(seconds, 2)}, indent=1) + "\n")
        _install(tmp, root, params, existing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(f"wrote {len(videos)} videos ({len(names)} classes x {groups} groups x {clips} "
              f"clips, {sum(videos.values())} frames) to {root} in {seconds:.1f} s")
    if write_boxes:
        write_ground_truth_boxes(root, seed, classes, groups, clips, frames, verbose)
    return root


def _render_and_encode(class_name: str, group: int, clip: int, n_frames: int, seed: int, path: Path,
                       binary: str, _cue=None) -> Path:
    return encode_video(render_video(class_name, group, clip, seed=seed, n_frames=n_frames, _cue=_cue), path,
                        binary)


def _install(tmp: Path, root: Path, params: dict, existing) -> None:
    """Rename the finished temporary folder into place (replacing an old demo)."""
    trash = None
    if root.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.rename(root, trash / "old")
    try:
        os.rename(tmp, root)
    except OSError:
        if existing() == params:  # a concurrent run finished first with the same parameters
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            if trash is not None and not root.exists():
                os.rename(trash / "old", root)  # put the previous demo back
            raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


@dataclass
class DemoFlags(Flags):
    """The flags of make_demo.py."""

    # --data-root: the name extract_masks.py and run_all.sh give the dataset root (--root: the old name)
    root: str = flag("data/demo", "output folder", name="--data-root", aliases=("--root",))
    seed: int = flag(0, "seed of every random stream", lo=0)
    classes: int = flag(DEFAULTS["classes"], f"number of classes, 2..{len(ALL_CLASSES)}", lo=2, hi=len(ALL_CLASSES))
    groups: int = flag(DEFAULTS["groups"], "groups per class, >= 3 (split 1 tests a third)", lo=3, hi=99,
                       note="split 1 tests a third of the groups")
    clips: int = flag(DEFAULTS["clips"], "clips per group", lo=1, hi=99)
    frames: int = flag(DEFAULTS["frames"], "maximum frames per video; lengths vary down to 3/4 of it", lo=8)
    write_boxes: bool = flag(False, "also write boxes.csv (+ boxes.json): ground-truth boxes of the moving objects "
                                    "per frame, for preprocess/import_masks.py --boxes (an existing demo gets them "
                                    "without re-rendering)")

    def check(self) -> None:
        if Path(self.root).exists() and not Path(self.root).is_dir():
            raise UsageError("--data-root", self.root, "exists and is not a folder")


def parse_args(argv=None) -> DemoFlags:
    return parse(DemoFlags, argv, description="Write the synthetic demo dataset in UCF101's layout (motion-defined "
                                              "classes).", prog="make_demo.py")


def main(argv=None) -> int:
    args = parse_args(argv)
    make_demo(args.root, seed=args.seed, classes=args.classes, groups=args.groups,
              clips=args.clips, frames=args.frames, verbose=True, write_boxes=args.write_boxes)
    return 0


def console() -> None:
    """The ``mac-make-demo`` console command (pyproject.toml): the same as ``python preprocess/make_demo.py``."""
    exit_with(main, "make_demo.py")


if __name__ == "__main__":
    console()
