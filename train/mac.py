"""The MAC sample (docs/method.md section 2): alpha classes, blending, clip sampling, spatial and colour
augmentation, masks of the augmented clip, as pure functions on arrays/tensors plus thin batched
wrappers.

The order is the reference's: sample a clip -> spatial augmentation (scale, flip, crop) -> the
clip's masks (after the spatial augmentation, so the soft stretch is over the crop) -> colour
jitter and greyscale -> mean/std normalisation -> alpha blending of the normalised clip. The
MoCo key (MAC-SC) is a second spatial + colour augmentation of the same frames, normalised,
never blended.

Where the work runs
-------------------
Every random draw happens in the (seeded) DataLoader workers, which do the integer work: JPEG
decode, temporal sampling, the spatial augmentation (crop + resize + flip, on uint8) and the
clip's masks (`clip_masks`, from the cache's per-stride differences, or `foreground_masks` on
the augmented frames in the exact mode). They return uint8 tensors plus the drawn parameters
(alpha indices, colour-jitter draws, ...). The per-pixel float work (uint8 -> float, colour
jitter, greyscale, normalisation, blend) runs batched on the training device in
`MACTransform` / `gpu_transform`, deterministically from those parameters, so a sample is a pure
function of (seed, epoch, item index) wherever it is computed.

Masks of a clip (docs/method.md sections 1 and 2.3)
-----------------------------------------
``mask_source="clip"`` (default, the exact mode): Algorithm 1 runs on the clip's augmented
frames, as the reference does, bit for bit (numba kernel: a grey conversion and one pass per
frame, ~0.3 ms for a 16 x 112 x 112 clip on one core). ``mask_source="cache"``: the stored
thresholded differences D of the clip's stride (`preprocess.cache.ClipReader.clip_diffs`) are
cropped, flipped, stretched per frame over the crop (soft) or thresholded (hard), dilated, then
resized with the frames; inflating 16 stored records costs more than computing the masks
(`benchmarks/bench_loader.py`: ~1.3 ms against ~0.3 ms a clip), and the background at the clip's
start carries its phase's earlier frames (`benchmarks/bench_mask_agreement.py`: correlation
0.93-0.95 with the exact masks on training samples). It is there to inspect the cached sets and
to compare with them. Masks that cannot be computed from the frames (boxes of a detector,
segmentations: preprocess/import_masks.py) are a named set (`--mask-set NAME`), read at the
clip's indices and cropped with the frames, never stretched or dilated.

Blending (docs/method.md 2.6)
-------------------
With n = (x - mean) / std the normalised (and colour-jittered) clip and the per-pixel weight

    w = alpha_j * M + (1 - M)          (= 1 - M (1 - alpha_j); reverse: 1 - (1 - M)(1 - alpha_j))

the blended query is w * n: attenuating the foreground pulls it toward the normalisation's
mean colour, as in the reference. ``blend_space="pixel"`` (a named departure) blends the
jittered pixel clip before normalising, attenuating toward black.

Normalisation constants: ``NORMS["imagenet"]`` (the default for MAC: the constants of the
reference's MAC pretraining, finetuning and test configs) and ``NORMS["kinetics"]``, the
Kinetics-400 mean/std of torchvision's video classification models (mean 0.43216, 0.394666,
0.37645; std 0.22803, 0.22145, 0.216989), for backbones trained with those.

Layouts: workers produce frames uint8 [T, H, W, 3] (as decoded) and masks uint8 [T, H, W]; the
device transform returns float clips [B, 3, T, H, W] (channels-first video layout).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from train.utils.distributed import to_device

@functools.lru_cache(maxsize=64)
def _const(values: tuple[float, ...], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Small constant tensors, made once per device (no host-to-device copy per call)."""
    return torch.tensor(values, dtype=dtype, device=device).view(shape)


__all__ = [
    "BLEND_SPACES", "JITTER_FIELDS", "IDENTITY_JITTER", "LOSSES", "MASK_MODES", "MASK_SOURCES", "MASK_VARIANTS", "NORMS",
    "ClipConfig", "ColourJitter", "MACConfig", "MACTransform", "Normalisation", "SpatialParams",
    "adjust_hue", "alpha_indices", "alpha_label", "alpha_table", "alpha_values", "apply_jitter", "apply_spatial",
    "blend", "blend_batch", "blend_weights", "centre_spatial", "clip_masks", "clip_span", "clip_transform",
    "draw_alphas", "draw_clip", "draw_jitter", "draw_spatial", "eval_transform", "gpu_transform",
    "max_clip_start", "normalise", "num_alpha_classes", "rgb_to_grey", "sample_clip_indices",
    "to_float_clips", "uniform_clip_starts",
]

# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: Named mean/std constants (RGB, pixel values in [0, 1]).
NORMS: dict[str, Normalisation] = {
    # Kinetics-400, as in torchvision's video models / video classification references.
    "kinetics": Normalisation((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
    "imagenet": Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

BLEND_SPACES = ("normalised", "pixel")
LOSSES = ("ce", "mse", "mse-n")
MASK_SOURCES = ("cache", "clip")
MASK_MODES = ("soft", "hard")
# what the blend attenuates (the controls of docs/demo.md): the clip's foreground masks (the method),
# or one thing changed: nothing (every alpha tuple gives the same input), the whole frame (a pretext
# without motion: the brightness of each segment), or the masks moved by half the crop in both
# directions (the same mask statistics, off the moving objects)
MASK_VARIANTS = ("foreground", "none", "full-frame", "displaced")

#: Order of the per-clip colour-jitter parameter vector, and the order the ops are applied in.
#: brightness: additive delta; contrast, saturation: factors; hue: shift in turns (deg / 360);
#: greyscale: 0 or 1.
JITTER_FIELDS = ("brightness", "contrast", "saturation", "hue", "greyscale")
IDENTITY_JITTER = (0.0, 1.0, 1.0, 0.0, 0.0)


@dataclass(frozen=True)
class ColourJitter:
    """Colour augmentation (docs/method.md 2.4), one draw per clip. Each op is switched off by p = 0.

    ``p`` gates the whole jitter (1 for pretraining; the finetuning "light" jitter uses 0.2);
    given the gate, brightness, contrast and hue/saturation are each applied with their own
    probability, then greyscale with ``p_greyscale``.
    """

    p: float = 1.0
    brightness: float = 32 / 255      # additive delta drawn from U(-b, b)
    p_brightness: float = 0.8
    contrast: float = 0.2             # factor drawn from U(1 - c, 1 + c)
    p_contrast: float = 0.8
    hue_deg: float = 12.0             # hue shift drawn from U(-h, h) degrees
    saturation: float = 0.1           # factor drawn from U(1 - s, 1 + s)
    p_hue_saturation: float = 0.8
    p_greyscale: float = 0.2

    @classmethod
    def off(cls) -> "ColourJitter":
        return cls(p=0.0, p_brightness=0.0, p_contrast=0.0, p_hue_saturation=0.0, p_greyscale=0.0)

    @classmethod
    def light(cls) -> "ColourJitter":
        """Finetuning: with p 0.2 the clip gets brightness, contrast and hue/saturation jitter
        of the pretraining magnitudes; no greyscale."""
        return cls(p=0.2, p_brightness=1.0, p_contrast=1.0, p_hue_saturation=1.0, p_greyscale=0.0)

    @property
    def enabled(self) -> bool:
        return self.p > 0 and (self.p_brightness > 0 or self.p_contrast > 0
                               or self.p_hue_saturation > 0 or self.p_greyscale > 0)


def _renamed(d: Mapping[str, Any], old_to_new: Mapping[str, str]) -> dict:
    return {old_to_new.get(k, k): v for k, v in d.items()}


def _coerce(cls, value):
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")


@dataclass(frozen=True)
class MACConfig:
    """Everything that determines a pretraining sample (and its device transform)."""

    frames: int = 16                  # frames per clip
    strides: tuple[int, ...] = (1, 2, 3, 4)
    n: int = 2                        # temporal segments: MAC-2 / MAC-4
    k: int = 4                        # |A_k|, alpha classes per segment
    reverse: bool = False             # attenuate the background instead of the foreground
    blend_space: str = "normalised"   # "normalised" (reference) | "pixel" (departure)
    mask_source: str = "clip"         # "clip" (Algorithm 1 per augmented clip, exact) | "cache" (per-stride sets)
    mask_mode: str = "soft"           # "soft" (the reference's default) | "hard"
    mask_variant: str = "foreground"  # "foreground" (the method) | controls: "none", "full-frame", "displaced"
    dilate: bool = True               # the reference's 2x2 elliptical dilation
    loss: str = "ce"                  # "ce" | "mse" (regress preset alphas) | "mse-n" (alphas ~ U(0,1])
    key_view: bool = True             # MAC-SC: second, unblended augmentation of the same frames
    scales: tuple[int, ...] = (112, 128, 144)
    crop: int = 112
    flip_p: float = 0.5
    colour: ColourJitter = field(default_factory=ColourJitter)
    key_colour: ColourJitter | None = None   # None: same as `colour`
    norm: str = "imagenet"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if self.mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}")
        if self.mask_variant not in MASK_VARIANTS:
            raise ValueError(f"mask_variant must be one of {MASK_VARIANTS}, got {self.mask_variant!r}")
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        object.__setattr__(self, "colour", _coerce(ColourJitter, self.colour))
        object.__setattr__(self, "key_colour", _coerce(ColourJitter, self.key_colour))
        if self.frames % self.n:
            raise ValueError(f"frames={self.frames} is not divisible into n={self.n} equal segments")
        if self.k < 2:
            raise ValueError(f"k must be >= 2, got {self.k}")
        if self.blend_space not in BLEND_SPACES:
            raise ValueError(f"blend_space must be one of {BLEND_SPACES}, got {self.blend_space!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {self.norm!r}")
        if not self.strides or min(self.strides) < 1:
            raise ValueError(f"strides must be positive, got {self.strides}")
        if not self.scales or min(self.scales) < self.crop:
            raise ValueError(f"every scale must be >= crop={self.crop}, got {self.scales}")

    @property
    def num_classes(self) -> int:
        return num_alpha_classes(self.k, self.n)

    @property
    def alphas(self) -> list[float]:
        return alpha_values(self.k)

    @property
    def key_jitter(self) -> ColourJitter:
        return self.colour if self.key_colour is None else self.key_colour

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MACConfig":
        d = _renamed(d, {"T": "frames", "n_segments": "n"})      # checkpoints written before the rename
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown MACConfig keys: {sorted(unknown)}")
        return cls(**dict(d))


@dataclass(frozen=True)
class ClipConfig:
    """A labelled training clip (finetuning, docs/method.md 5): stride-2 16-frame clips, random start,
    scale {112,128,144} / flip p 0.35 / crop 112, light colour jitter."""

    frames: int = 16
    stride: int = 2
    scales: tuple[int, ...] = (112, 128, 144)
    crop: int = 112
    flip_p: float = 0.35
    colour: ColourJitter = field(default_factory=ColourJitter.light)
    norm: str = "kinetics"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        object.__setattr__(self, "colour", _coerce(ColourJitter, self.colour))
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {self.norm!r}")
        if not self.scales or min(self.scales) < self.crop:
            raise ValueError(f"every scale must be >= crop={self.crop}, got {self.scales}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClipConfig":
        return cls(**_renamed(d, {"T": "frames"}))


# --------------------------------------------------------------------------------------------
# Alpha classes and labels


def alpha_values(k: int) -> list[float]:
    """A_k: the centres of k-1 equal bins of (0, 1), then 1.0; ascending.

    k=2 -> [0.5, 1.0]; k=4 -> [1/6, 1/2, 5/6, 1.0]. The paper uses k in 2..6.
    """
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2 (the paper uses 2..6), got {k!r}")
    k = int(k)
    return [(2 * i + 1) / (2 * (k - 1)) for i in range(k - 1)] + [1.0]


def alpha_table(k: int, device: torch.device | str) -> Tensor:
    """A_k as a float32 tensor on `device`, made once per (k, device): a loss that compares with
    the preset alphas every step copies nothing from the host."""
    return _const(tuple(alpha_values(k)), (int(k),), torch.device(device), torch.float32)


def num_alpha_classes(k: int, n: int) -> int:
    """k^n: the number of alpha tuples (16 for MAC-2 with k=4, 256 for MAC-4)."""
    return int(k) ** int(n)


def alpha_label(indices: Sequence[int], k: int) -> int:
    """The class of an alpha tuple: sum_j idx_j * k^(n-1-j) (first segment most significant)."""
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("alpha_label needs at least one segment index")
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    label = 0
    for i in idx:
        if not 0 <= i < k:
            raise ValueError(f"alpha index {i} out of range 0..{k - 1}")
        label = label * k + i
    return label


def alpha_indices(label: int, k: int, n: int) -> tuple[int, ...]:
    """Inverse of `alpha_label`: the n per-segment indices of class `label`."""
    label = int(label)
    if k < 2 or n < 1:
        raise ValueError(f"need k >= 2 and n >= 1, got k={k}, n={n}")
    if not 0 <= label < k ** n:
        raise ValueError(f"label {label} out of range 0..{k ** n - 1} (k={k}, n={n})")
    out = []
    for _ in range(n):
        label, r = divmod(label, k)
        out.append(r)
    return tuple(reversed(out))


def draw_alphas(rng: np.random.Generator, k: int, n: int, loss: str = "ce") -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Draw the alpha tuple of one clip: (alpha_idx int64 [n], alpha float32 [n], label, target float32 [n]).

    ce / mse: idx_j ~ U{0..k-1}, alpha_j = A_k[idx_j], target = alpha (the preset alphas).
    mse-n: alpha_j ~ U(0, 1] (continuous), target = alpha; alpha_idx = -1 and label = -1 (unused).
    The same random numbers are consumed whatever the loss.
    """
    idx = rng.integers(0, k, size=n).astype(np.int64)
    u = 1.0 - rng.random(n)                 # U(0, 1]
    if loss == "mse-n":
        alpha = u.astype(np.float32)
        return np.full(n, -1, np.int64), alpha, -1, alpha.copy()
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    alpha = np.asarray(alpha_values(k), dtype=np.float32)[idx]
    return idx, alpha, alpha_label(idx, k), alpha.copy()


# --------------------------------------------------------------------------------------------
# Blending


def _segment_alphas(alphas, n_frames: int, like: Tensor) -> Tensor:
    a = torch.as_tensor(alphas, dtype=like.dtype, device=like.device)
    n = a.shape[-1]
    if n < 1:
        raise ValueError("need at least one alpha (one per temporal segment)")
    if n_frames % n:
        raise ValueError(f"T={n_frames} frames cannot be cut into {n} equal segments (T % n != 0)")
    return a.repeat_interleave(n_frames // n, dim=-1)


def blend(clip: Tensor, mask: Tensor, alphas: Sequence[float] | Tensor, reverse: bool = False) -> Tensor:
    """MAC alpha blending of one clip.

    clip float [C, T, H, W]; mask float [T, H, W] in [0, 1]; one alpha per EQUAL temporal segment
    (n = len(alphas), T divisible by n). Segment j (frames j*T/n .. (j+1)*T/n - 1):
        x' = alpha_j * M * x + (1 - M) * x          (foreground attenuated)
        reverse: x' = M * x + alpha_j * (1 - M) * x  (background attenuated)
    Numpy arrays in give a numpy array out.
    """
    as_numpy = isinstance(clip, np.ndarray)
    x = torch.as_tensor(clip)
    m = torch.as_tensor(mask)
    if x.dim() != 4 or m.dim() != 3 or tuple(m.shape) != tuple(x.shape[1:]):
        raise ValueError(f"need clip [C,T,H,W] and mask [T,H,W] of the same T,H,W; got {tuple(x.shape)} and {tuple(m.shape)}")
    if not (x.is_floating_point() and m.is_floating_point()):
        raise TypeError("blend works on float clips and float masks in [0, 1] (convert uint8 masks with /255)")
    m = m.to(x.dtype)
    a = _segment_alphas(alphas, x.shape[1], x).view(1, -1, 1, 1)
    out = m * x + a * (1 - m) * x if reverse else a * m * x + (1 - m) * x
    return out.numpy() if as_numpy else out


def blend_weights(masks: Tensor, alphas: Tensor, reverse: bool = False) -> Tensor:
    """Per-pixel blend weight w of a batch: masks float [B, T, H, W] in [0, 1], alphas [B, n]
    -> w [B, 1, T, H, W], so that blend(x) = w * x (broadcast over channels).

    w = 1 - M (1 - alpha_j)   or, reverse, 1 - (1 - M)(1 - alpha_j).
    """
    if masks.dim() != 4 or alphas.dim() != 2 or alphas.shape[0] != masks.shape[0]:
        raise ValueError(f"need masks [B,T,H,W] and alphas [B,n]; got {tuple(masks.shape)}, {tuple(alphas.shape)}")
    a = _segment_alphas(alphas, masks.shape[1], masks)[:, :, None, None]       # [B,T,1,1]
    inv = (1 - a)
    w = 1 - (1 - masks) * inv if reverse else 1 - masks * inv
    return w.unsqueeze(1)


def blend_batch(clips: Tensor, masks: Tensor, alphas: Tensor, reverse: bool = False) -> Tensor:
    """`blend` for a batch on any device: clips [B, C, T, H, W], masks [B, T, H, W], alphas [B, n]."""
    if clips.dim() != 5 or tuple(masks.shape) != (clips.shape[0], *clips.shape[2:]):
        raise ValueError(f"need clips [B,C,T,H,W] and masks [B,T,H,W]; got {tuple(clips.shape)}, {tuple(masks.shape)}")
    return clips * blend_weights(masks.to(clips.dtype), alphas.to(clips.device, clips.dtype), reverse)


# --------------------------------------------------------------------------------------------
# Temporal sampling


def clip_span(T: int, stride: int) -> int:
    """Frames covered by a clip of T frames at `stride`."""
    return (T - 1) * stride + 1


def max_clip_start(n_frames: int, T: int, stride: int) -> int:
    """Largest start whose clip fits in the video (0 for videos shorter than the span)."""
    return max(0, int(n_frames) - clip_span(T, stride))


def sample_clip_indices(n_frames: int, T: int = 16, stride: int = 1, start: int = 0) -> np.ndarray:
    """Frame indices int64 [T]: start, start+stride, ...; past the end the last frame repeats."""
    n_frames, T, stride, start = int(n_frames), int(T), int(stride), int(start)
    if n_frames < 1 or T < 1 or stride < 1:
        raise ValueError(f"need n_frames, T, stride >= 1; got {n_frames}, {T}, {stride}")
    if not 0 <= start < n_frames:
        raise ValueError(f"start {start} outside the video's {n_frames} frames")
    return np.minimum(start + stride * np.arange(T, dtype=np.int64), n_frames - 1)


def draw_clip(rng: np.random.Generator, n_frames: int, T: int = 16,
              strides: Sequence[int] = (1, 2, 3, 4)) -> tuple[int, int]:
    """Pretraining draw: stride uniform from `strides`, start uniform over the valid starts.
    Returns (start, stride)."""
    stride = int(strides[int(rng.integers(len(strides)))])
    start = int(rng.integers(0, max_clip_start(n_frames, T, stride) + 1))
    return start, stride


def uniform_clip_starts(n_frames: int, T: int = 16, stride: int = 1, num_clips: int = 10) -> np.ndarray:
    """Starts int64 [num_clips] of uniformly spaced clips, first at 0 and last ending at the last
    frame (all 0 for videos shorter than one clip's span; one clip: the centred one)."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    last = max_clip_start(n_frames, T, stride)
    if num_clips == 1:
        return np.array([last // 2], dtype=np.int64)
    return np.floor(np.linspace(0, last, num_clips) + 0.5).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Spatial augmentation (identical for frames and masks)


@dataclass(frozen=True)
class SpatialParams:
    """A square box [y0:y0+size, x0:x0+size] in SOURCE pixels, resized to out x out, then an
    optional horizontal flip.

    Scaling the short side to s and cropping `crop` pixels is the same as cropping a box of
    crop * short / s source pixels and resizing it to crop (one resize instead of two, and no
    resize at all when the box is already crop pixels wide, e.g. s=128 on a 128-pixel cache).
    """

    y0: int
    x0: int
    size: int
    out: int
    flip: bool

    def as_array(self) -> np.ndarray:
        return np.array([self.y0, self.x0, self.size, self.out, int(self.flip)], dtype=np.int64)

    @classmethod
    def from_array(cls, a) -> "SpatialParams":
        y0, x0, size, out, flip = (int(v) for v in a)
        return cls(y0, x0, size, out, bool(flip))


def _box_size(h: int, w: int, scale: int, crop: int) -> int:
    short = min(h, w)
    return max(1, min(short, int(math.floor(crop * short / scale + 0.5))))


def draw_spatial(rng: np.random.Generator, h: int, w: int, scales: Sequence[int] = (112, 128, 144),
                 crop: int = 112, flip_p: float = 0.5) -> SpatialParams:
    """Random short-side scale from `scales` (aspect kept), random crop x crop, flip with p."""
    if min(scales) < crop:
        raise ValueError(f"every scale must be >= crop={crop}, got {tuple(scales)}")
    scale = int(scales[int(rng.integers(len(scales)))])
    size = _box_size(h, w, scale, crop)
    y0 = int(rng.integers(0, h - size + 1))
    x0 = int(rng.integers(0, w - size + 1))
    flip = bool(rng.random() < flip_p)
    return SpatialParams(y0, x0, size, int(crop), flip)


def centre_spatial(h: int, w: int, short_side: int = 128, crop: int = 112) -> SpatialParams:
    """Evaluation: short side to `short_side`, centre crop x crop, no flip."""
    size = _box_size(h, w, short_side, crop)
    return SpatialParams((h - size) // 2, (w - size) // 2, size, int(crop), False)


def _resize_u8(x: Tensor, out: int) -> Tensor:
    """uint8 [N, C, H, W] (any strides) -> uint8 [N, C, out, out], bilinear with antialias
    (torch's native uint8 kernel: ~15x faster than float on CPU, equal to float+round within 1)."""
    return F.interpolate(x, size=(out, out), mode="bilinear", antialias=True, align_corners=False)


def apply_spatial(frames, masks, params: SpatialParams):
    """Crop the box, resize it to out x out (bilinear, antialiased, the SAME resize for frames
    and masks) and flip: frames uint8 [T, H, W, 3], masks uint8 [T, H, W] or None ->
    (frames [T, out, out, 3], masks [T, out, out] or None), contiguous, same type (numpy/torch)
    as given."""
    as_numpy = isinstance(frames, np.ndarray)
    fr = torch.from_numpy(frames) if as_numpy else frames
    mk = None if masks is None else (torch.from_numpy(masks) if isinstance(masks, np.ndarray) else masks)
    T, H, W = fr.shape[:3]
    p = params
    if p.y0 < 0 or p.x0 < 0 or p.y0 + p.size > H or p.x0 + p.size > W:
        raise ValueError(f"spatial box {p} outside frames of {H}x{W}")
    if mk is not None and tuple(mk.shape) != (T, H, W):
        raise ValueError(f"masks {tuple(mk.shape)} do not match frames {tuple(fr.shape)}")
    box = fr[:, p.y0:p.y0 + p.size, p.x0:p.x0 + p.size]
    if p.size != p.out:
        # [T,L,L,3] viewed as channels-last [T,3,L,L]; the output is channels-last too, so the
        # permute back is contiguous [T,out,out,3].
        box = _resize_u8(box.permute(0, 3, 1, 2), p.out).permute(0, 2, 3, 1)
    box = box.flip(2) if p.flip else box.contiguous()
    mbox = None
    if mk is not None:
        mbox = _resize_planes_u8(mk[:, p.y0:p.y0 + p.size, p.x0:p.x0 + p.size], p.out)
        mbox = mbox.flip(2) if p.flip else mbox.contiguous()
    if as_numpy:
        return box.numpy(), (None if mbox is None else mbox.numpy())
    return box, mbox


def _resize_planes_u8(planes: Tensor, out: int) -> Tensor:
    """uint8 [T, L, L] -> [T, out, out] (the frames' resize, per plane)."""
    T, size = planes.shape[0], planes.shape[1]
    if size == out:
        return planes
    # The uint8 kernel is vectorised for 3/4 channels: pack 4 planes as one RGBA image
    # (channels are resized independently, so this is bit-identical to 1 channel, 2x faster).
    pad = (-T) % 4
    if pad:
        planes = torch.cat([planes, planes[-1:].expand(pad, -1, -1)])
    g = planes.reshape(-1, 4, size, size)
    return _resize_u8(g, out).reshape(T + pad, out, out)[:T]


def clip_masks(diffs: np.ndarray, params: SpatialParams, mode: str = "soft", dilate: bool = True) -> np.ndarray:
    """The masks of an augmented clip from its thresholded differences D (uint8 [T, H, W] at
    cached resolution, the clip's first-mask rule already applied): crop the box, flip, then per
    frame the soft stretch over the crop (or the hard threshold) and the dilation, exactly as
    Algorithm 1 computes them on a cropped and flipped clip, then the frames' resize to
    out x out. Returns uint8 [T, out, out], aligned with `apply_spatial`'s frames."""
    from preprocess.masks import masks_from_diffs

    p = params
    T, H, W = diffs.shape
    if p.y0 < 0 or p.x0 < 0 or p.y0 + p.size > H or p.x0 + p.size > W:
        raise ValueError(f"spatial box {p} outside differences of {H}x{W}")
    box = diffs[:, p.y0:p.y0 + p.size, p.x0:p.x0 + p.size]
    if p.flip:
        box = box[:, :, ::-1]
    m = masks_from_diffs(np.ascontiguousarray(box), mode, dilate)
    return _resize_planes_u8(torch.from_numpy(m), p.out).contiguous().numpy()


# --------------------------------------------------------------------------------------------
# Colour augmentation


def vary_masks(masks: np.ndarray, variant: str) -> np.ndarray:
    """uint8 [T, S, S] masks as the blend uses them under ``variant`` (MASK_VARIANTS): the clip's
    own masks ("foreground"), none (all 0: w = 1 everywhere, so the k^n alpha tuples of a clip give
    one identical input and the pretext cannot be learnt), the full frame (all 255: w = alpha
    everywhere, a pretext about each segment's overall brightness, with no motion in it), or the
    masks rolled by half the crop in both directions ("displaced": exactly the same values, hence
    the same mean and coverage, moved off the objects that produced them; the roll wraps around,
    so nothing is lost at the border)."""
    if variant == "foreground":
        return masks
    if variant == "none":
        return np.zeros_like(masks)
    if variant == "full-frame":
        return np.full_like(masks, 255)
    if variant == "displaced":
        h, w = masks.shape[-2:]
        return np.roll(masks, (h // 2, w // 2), axis=(-2, -1))
    raise ValueError(f"mask_variant must be one of {MASK_VARIANTS}, got {variant!r}")


def draw_jitter(rng: np.random.Generator, cj: ColourJitter) -> np.ndarray:
    """One clip's colour-jitter parameters, float32 [5] in JITTER_FIELDS order; identity values
    (0, 1, 1, 0, 0) for the ops not applied. Always consumes 10 uniforms, so switching one op
    off does not change the other draws."""
    u = rng.random(10)
    out = np.array(IDENTITY_JITTER, dtype=np.float64)
    if u[0] < cj.p:
        if u[1] < cj.p_brightness:
            out[0] = (2 * u[2] - 1) * cj.brightness
        if u[3] < cj.p_contrast:
            out[1] = 1 + (2 * u[4] - 1) * cj.contrast
        if u[5] < cj.p_hue_saturation:
            out[2] = 1 + (2 * u[6] - 1) * cj.saturation
            out[3] = (2 * u[7] - 1) * cj.hue_deg / 360.0
        if u[8] < cj.p_greyscale:
            out[4] = 1.0
    return out.astype(np.float32)


_GREY = (0.2989, 0.587, 0.114)   # ITU-R 601 luma, torchvision's rgb_to_grayscale weights


def rgb_to_grey(x: Tensor) -> Tensor:
    """[B, 3, ...] -> [B, 1, ...] luma."""
    r, g, b = x.unbind(1)
    return (_GREY[0] * r + _GREY[1] * g + _GREY[2] * b).unsqueeze(1)


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of x [B, 3, ...] (RGB in [0, 1]) by `shift` [B] turns; value and
    saturation are kept (the exact HSV round trip, vectorised)."""
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    chroma = maxc - minc
    r, g, b = x.unbind(1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h6 = torch.where(maxc == r, torch.remainder((g - b) / safe, 6.0),
                     torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h6 = h6 + 6.0 * _bcast(shift.to(x.dtype), h6)
    n = _const((5.0, 3.0, 1.0), (1, 3, *([1] * (x.dim() - 2))), x.device, x.dtype)
    k = torch.remainder(n + h6.unsqueeze(1), 6.0)
    f = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return maxc.unsqueeze(1) - chroma.unsqueeze(1) * f


def apply_jitter(x: Tensor, params: Tensor) -> Tensor:
    """Colour jitter of a batch x [B, 3, T, H, W] (pixel values in [0, 1]) with per-clip
    parameters [B, 5] (JITTER_FIELDS), in that order, clamping to [0, 1] after each op:
    brightness x + d; contrast c x + (1 - c) mean (mean: the clip's mean luma); saturation
    s x + (1 - s) luma; hue rotation (HSV); greyscale -> luma in all 3 channels.

    Ops whose parameter is the identity for the whole batch are skipped, and hue is computed only
    for the clips that draw it. Pass `params` on the CPU (as the loader delivers it): the skip
    decisions are then taken without any device synchronisation. x itself is never modified."""
    p_host = params.detach().to("cpu", torch.float64) if params.device.type != "cpu" else params.detach()
    p = params.to(device=x.device, dtype=x.dtype, non_blocking=True)
    bright, contrast, sat, hue, grey = p.unbind(1)
    if bool((p_host[:, 0] != 0).any()):
        x = (x + _bcast(bright, x)).clamp_(0, 1)
    if bool((p_host[:, 1] != 1).any()):
        c = _bcast(contrast, x)
        # the clip's mean luma = luma of the per-channel means (one reduction pass)
        w = _const(_GREY, (3,), x.device, x.dtype)
        mean = _bcast((x.mean(dim=tuple(range(2, x.dim()))) * w).sum(1), x)
        x = (c * x + (1 - c) * mean).clamp_(0, 1)
    if bool((p_host[:, 2] != 1).any()):
        s = _bcast(sat, x)
        x = (s * x + (1 - s) * rgb_to_grey(x)).clamp_(0, 1)
    hue_on = p_host[:, 3] != 0
    if bool(hue_on.all()):
        x = adjust_hue(x, hue).clamp_(0, 1)
    elif bool(hue_on.any()):
        sel = to_device(torch.nonzero(hue_on).squeeze(1), x.device)     # pinned: no stream sync
        x = x.index_copy(0, sel, adjust_hue(x.index_select(0, sel), hue.index_select(0, sel)).clamp_(0, 1))
    if bool((p_host[:, 4] != 0).any()):
        x = torch.where(_bcast(grey != 0, x), rgb_to_grey(x).expand_as(x), x)
    return x


# --------------------------------------------------------------------------------------------
# Device transforms


def to_float_clips(frames: Tensor, device: torch.device | str | None = None) -> Tensor:
    """uint8 [..., T, H, W, 3] -> float32 [..., 3, T, H, W] in [0, 1] on `device`."""
    x = frames.to(device, non_blocking=True) if device is not None else frames
    d = x.dim()
    x = x.permute(*range(d - 4), d - 1, d - 4, d - 3, d - 2)
    # one pass: uint8 -> float32 and channels-first contiguous layout
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def _norm_tensors(norm: str, x: Tensor) -> tuple[Tensor, Tensor]:
    nm = NORMS[norm]
    shape = (1, 3, *([1] * (x.dim() - 2)))
    return _const(nm.mean, shape, x.device, x.dtype), _const(nm.std, shape, x.device, x.dtype)


def normalise(x: Tensor, norm: str = "imagenet") -> Tensor:
    """(x - mean) / std over the channel axis 1 of [B, 3, ...]."""
    mean, std = _norm_tensors(norm, x)
    return (x - mean) / std


class MACTransform:
    """The per-pixel part of the MAC sample, batched on `device`.

    batch (as collated from `train.data.PretrainClips`): frames uint8 [B,T,S,S,3], masks uint8
    [B,T,S,S], alpha float32 [B,n], jitter float32 [B,5], label int64 [B], alpha_idx int64 [B,n],
    alpha_target float32 [B,n], and with cfg.key_view key_frames uint8 [B,T,S,S,3], key_jitter [B,5].

    Returns {"query": float32 [B,3,T,S,S], "key": float32 [B,3,T,S,S] (cfg.key_view only),
    "label": int64 [B], "alpha_target": float32 [B,n], "alpha_idx": int64 [B,n]}, all on device.
    query = blend(normalise(jitter(frames))) (the reference's order); key =
    normalise(jitter'(frames)), unblended.
    """

    def __init__(self, cfg: MACConfig, device: torch.device | str | None = None):
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def query(self, frames: Tensor, masks: Tensor, alpha: Tensor, jitter: Tensor) -> Tensor:
        x = apply_jitter(to_float_clips(frames, self.device), jitter)
        m = masks.to(self.device, non_blocking=True).float().div_(255.0)
        # non_blocking: a blocking copy here would make the host wait for the side stream (and
        # the frames + masks copies queued before it), losing the overlap with the running step
        w = blend_weights(m, alpha.to(self.device, torch.float32, non_blocking=True), self.cfg.reverse)
        if self.cfg.blend_space == "normalised":
            return normalise(x, self.cfg.norm).mul_(w).contiguous()
        return normalise(x * w, self.cfg.norm).contiguous()

    def key(self, frames: Tensor, jitter: Tensor) -> Tensor:
        x = apply_jitter(to_float_clips(frames, self.device), jitter)
        return normalise(x, self.cfg.norm).contiguous()

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        dev = self.device
        out = {
            "query": self.query(batch["frames"], batch["masks"], batch["alpha"], batch["jitter"]),
            "label": batch["label"].to(dev, non_blocking=True),
            "alpha_target": batch["alpha_target"].to(dev, non_blocking=True),
            "alpha_idx": batch["alpha_idx"].to(dev, non_blocking=True),
        }
        if self.cfg.key_view:
            if "key_frames" not in batch:
                raise KeyError("cfg.key_view is set but the batch has no key_frames (dataset built with key_view=False?)")
            out["key"] = self.key(batch["key_frames"], batch["key_jitter"])
        return out


def gpu_transform(batch: Mapping[str, Tensor], cfg: MACConfig, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Functional form of `MACTransform(cfg, device)(batch)`."""
    return MACTransform(cfg, device)(batch)


def clip_transform(batch: Mapping[str, Tensor], cfg: ClipConfig, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Labelled training batch (train.data.LabelledClips) -> {"clips": float32 [B,3,T,S,S]
    normalised and colour-jittered, "label": int64 [B]} on device."""
    x = apply_jitter(to_float_clips(batch["frames"], device), batch["jitter"])
    return {"clips": normalise(x, cfg.norm).contiguous(),
            "label": batch["label"].to(device, non_blocking=True) if device is not None else batch["label"]}


def eval_transform(batch: Mapping[str, Tensor], norm: str = "kinetics", device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Evaluation batch (train.data.EvalClips): frames uint8 [B,N,T,S,S,3] -> {"clips": float32
    [B,N,3,T,S,S] normalised, "label": [B], "video": [B]} on device."""
    x = to_float_clips(batch["frames"], device)
    shape = x.shape
    x = normalise(x.reshape(-1, *shape[-4:]), norm).reshape(shape).contiguous()
    out = {"clips": x}
    for k in ("label", "video"):
        if k in batch:
            out[k] = batch[k].to(device, non_blocking=True) if device is not None else batch[k]
    return out
