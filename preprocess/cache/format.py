"""The cache's names: format versions and constants, the parameters that key frame sets and mask
sets (DecodeParams, MaskParams, MaskSet, NamedMaskSet), the folders and shard files they name, the
commands that build what is missing, and CacheError. docs/cache.md states the format.

Owns every name and number the writer, the manifests and the reader agree on, so that each of them
spells a folder, a shard or a command the same way. It opens no shard and imports neither h5py nor
numpy: naming a folder or a command never depends on the storage code. The one file it reads is a
mask set's manifest.json, as JSON, to tell an older-format set (`old_mask_sets`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from core.errors import ToolError

FORMAT_VERSION = 1
# Mask sets: 2 = per-stride thresholded differences D with the reference's background arithmetic
# (w = 1 - m; BG = trunc(w I + (1 - w) BG)). Format 1 (one set of soft masks per video over
# consecutive frames, the update written (1 - m) I + m BG) is detected and never read.
MASK_FORMAT = 2
DEFAULT_STRIDES = (1, 2, 3, 4)  # the trainer's strides: the statistics' strides, the sets of a cache-mode preset
MASK_STATS_EVERY = 4  # one frame in 4 of a mask set feeds its statistics (mean mask value, coverage)
# Mask statistics of a frame set for one (lambda, m), written by every extraction (stats.py): the
# reference's per-clip masks of sampled clips, one 16-frame clip per stride in every window of
# STATS_WINDOW_EVERY frames of a video (the first window at frame 0).
STATS_FORMAT = 1
STATS_WINDOW_EVERY = 256
STATS_CLIP_LEN = 16
DEFAULT_VIDEOS_PER_SHARD = 32
BLOB_CHUNK_BYTES = 1 << 16  # small: the last, partly filled chunk of a shard is allocated whole
MASK_ZLIB_LEVEL = 1
# Named (imported) mask sets: final masks, uint8 0..255 per frame, stride-independent.
NAMED_MASK_FORMAT = 1
NAMED_KIND = "named"
NAMED_PREFIX = "ext-"          # folder masks-ext-<NAME>
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


class CacheError(ToolError):
    """The cache is missing, stale, incomplete or damaged. The message names the file and the fix."""


class RecordError(ValueError):
    """A malformed mask record: `record` is its position in the batch decoded (0 for a single
    record), `reason` what is wrong with it. (Here, not in zrun.py, so that naming it needs no numba.)"""

    def __init__(self, record: int, reason: str, codec: str = "zrun"):
        self.record, self.reason = int(record), reason
        super().__init__(f"{codec} mask record {record}: {reason}")


@dataclass(frozen=True)
class DecodeParams:
    """Everything that determines the cached frames' pixels."""

    short_side: int = 128
    jpeg_quality: int = 90
    subsampling: str = "420"

    def key(self) -> str:
        return f"s{self.short_side}_q{self.jpeg_quality}_{self.subsampling}"


@dataclass(frozen=True)
class MaskParams:
    """Algorithm 1's parameters: the threshold lambda and m, the weight of the OLD background."""

    lam: int = 30
    m: float = 0.5

    def key(self) -> str:
        return f"lam{self.lam}_m{self.m:g}"

    def at(self, stride: int) -> "MaskSet":
        return MaskSet(self.lam, self.m, int(stride))


@dataclass(frozen=True)
class MaskSet:
    """One stored mask set: Algorithm 1's parameters and the temporal stride of its phases.
    Together with the frame set it is computed from, this determines every stored byte."""

    lam: int = 30
    m: float = 0.5
    stride: int = 1

    @property
    def params(self) -> MaskParams:
        return MaskParams(self.lam, self.m)

    def key(self) -> str:
        return f"{self.params.key()}_stride{self.stride}"


@dataclass(frozen=True)
class NamedMaskSet:
    """A mask set imported from elsewhere (preprocess/import_masks.py), selected by name: final
    masks per frame, independent of lambda, m and the stride."""

    name: str

    def __post_init__(self) -> None:
        import re

        if not re.fullmatch(NAME_PATTERN, str(self.name)):
            raise ValueError(f"mask set name {self.name!r}: letters, digits, '_', '-', '.', starting with a letter "
                             f"or digit, at most 64 characters")

    def key(self) -> str:
        return f"{NAMED_PREFIX}{self.name}"


def valid_mask_set_name(name: str) -> bool:
    import re

    return re.fullmatch(NAME_PATTERN, str(name)) is not None


def frame_set_dir(cache_dir: str | Path, dataset: str, decode: DecodeParams) -> Path:
    return Path(cache_dir) / dataset / decode.key()


def mask_set_dir(frame_set: Path, mask_set: "MaskSet | NamedMaskSet") -> Path:
    return frame_set / f"masks-{mask_set.key()}"


def stats_dir(frame_set: Path, masks: MaskParams) -> Path:
    """The folder of the mask statistics of (lambda, m): one JSON file per frame shard and a manifest."""
    return frame_set / f"stats-{masks.key()}"


def stats_shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.json"


def named_mask_sets(frame_set: Path) -> list[str]:
    """Names of the named mask sets that have a manifest."""
    return sorted(p.parent.name[len("masks-" + NAMED_PREFIX):]
                  for p in frame_set.glob(f"masks-{NAMED_PREFIX}*/manifest.json"))


def old_mask_sets(frame_set: Path) -> list[Path]:
    """Mask-set folders of an older format (e.g. masks-lam30_m0.5_soft_dilate: soft masks per
    video over consecutive frames): never read, reported so that the user can replace them."""
    old = []
    for manifest in sorted(frame_set.glob("masks-*/manifest.json")):
        try:
            content = json.loads(manifest.read_text())
            fmt = content.get("mask_format", 1)
        except (OSError, ValueError, AttributeError):
            continue
        if content.get("kind") == NAMED_KIND or manifest.parent.name.startswith("masks-" + NAMED_PREFIX):
            continue        # an imported set (import_masks.py), not an old frame-difference set
        if fmt != MASK_FORMAT:
            old.append(manifest.parent)
    return old


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.h5"


def extract_command(dataset: str, cache_dir: str | Path, decode: DecodeParams, masks: MaskParams | None,
                    strides: Sequence[int] = ()) -> str:
    """The exact command that builds what `open_cache` was asked for: the frames (and the mask
    statistics of `masks`), and the mask sets of `strides` (none by default: the default training
    computes each clip's masks from its frames)."""
    cmd = ["python preprocess/extract_masks.py", f"--dataset {dataset}"]
    if str(cache_dir) != "data_cache":
        cmd.append(f"--cache-dir {cache_dir}")
    if decode != DecodeParams():
        cmd.append(f"--short-side {decode.short_side} --jpeg-quality {decode.jpeg_quality}")
    if masks is not None:
        cmd.append(f"--lambda {masks.lam} --m {masks.m:g}")
        if strides:
            cmd.append("--strides " + " ".join(str(s) for s in strides))
    return " ".join(cmd)


def import_command(dataset: str, cache_dir: str | Path, decode: DecodeParams, name: str,
                   source: str | None = None) -> str:
    """The import_masks.py command that (re)builds the named mask set `name`; `source` is its
    source flags (e.g. "--boxes data/demo/boxes.csv --source-size 320x240"), a placeholder when
    unknown."""
    cmd = ["python preprocess/import_masks.py", f"--dataset {dataset}"]
    if str(cache_dir) != "data_cache":
        cmd.append(f"--cache-dir {cache_dir}")
    if decode != DecodeParams():
        cmd.append(f"--short-side {decode.short_side} --jpeg-quality {decode.jpeg_quality}")
    cmd.append(f"--name {name}")
    cmd.append(source or "--boxes FILE.csv --source-size WxH  (or --arrays DIR, or --mask-fn module:function)")
    return " ".join(cmd)
