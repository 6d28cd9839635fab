"""The shared base of the dataset adapters: the index types, the constants, the class-index
file, and the helpers every adapter uses to read the disk and the list files.

It owns what an index *is* (:class:`DatasetIndex` of :class:`VideoEntry`, the split codes
0 = in neither list, 1 = train, 2 = test, :func:`split_members`), the error that says a dataset
is absent or unusable (:class:`DatasetLayoutError`; its messages are built in ``layout.py``),
the counts of the official releases, and the label -> class-name table written beside a cache
(:func:`save_class_index` / :func:`load_class_index`). The helpers here (hidden-file and
video-name rules, the tolerant list reader, the folder walk, case/Unicode-insensitive keys) are
the conventions of the package docstring, in one place so that every adapter applies them alike.
Nothing here knows a particular dataset's layout: that is in the adapter modules.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

from core import atomic

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v"}
)
"""File extensions (lower case) treated as videos; matched case-insensitively."""

DEMO_COMMAND = "python preprocess/extract_masks.py --dataset demo"

SPLIT_IDS = (1, 2, 3)
SUBSET_CODES = {"train": 1, "test": 2}

UCF_URL = "https://www.crcv.ucf.edu/data/UCF101.php"
HMDB_URL = "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/"
KINETICS_URL = "https://github.com/cvdfoundation/kinetics-dataset"

EXPECTED_COUNTS: dict[str, dict] = {
    "ucf101": {
        "videos": 13320,
        "classes": 101,
        "splits": ((9537, 3783), (9586, 3734), (9624, 3696)),
    },
    "hmdb51": {
        "videos": 6766,
        "classes": 51,
        "splits": ((3570, 1530), (3570, 1530), (3570, 1530)),
    },
}
"""Counts of the official releases: videos on disk, classes, and per split 1..3 the
(train, test) numbers of videos. ``DatasetIndex.counts()`` returns the same structure."""


# --------------------------------------------------------------------------- public types


class DatasetLayoutError(Exception):
    """The dataset is absent or unusable; the message says what was expected where."""


@dataclass(frozen=True)
class VideoEntry:
    rel_path: str  # POSIX path relative to the dataset root
    class_name: str
    label: int  # 0-based index into DatasetIndex.classes
    splits: tuple[int, int, int]  # per split 1..3: 0 = in neither list, 1 = train, 2 = test


@dataclass(frozen=True)
class DatasetIndex:
    name: str
    root: Path
    classes: tuple[str, ...]  # label -> class name
    videos: tuple[VideoEntry, ...]  # sorted by rel_path
    problems: tuple[str, ...]  # human-readable, each naming the file (and line)
    # annotated videos without a file on disk (kinetics): "<list file>:<line>\t<expected path>\t<class>"
    missing: tuple[str, ...] = ()

    def path(self, entry: Union[VideoEntry, int, str]) -> Path:
        """Path of a video below ``root`` (given an entry, its index, or its rel_path)."""
        if isinstance(entry, VideoEntry):
            rel = entry.rel_path
        elif isinstance(entry, int):
            rel = self.videos[entry].rel_path
        else:
            rel = str(entry)
        return self.root.joinpath(*rel.split("/"))

    def counts(self) -> dict:
        """Found counts in the structure of ``EXPECTED_COUNTS`` entries."""
        splits = []
        for k in range(3):
            train = sum(1 for v in self.videos if v.splits[k] == 1)
            test = sum(1 for v in self.videos if v.splits[k] == 2)
            splits.append((train, test))
        return {"videos": len(self.videos), "classes": len(self.classes), "splits": tuple(splits)}

    def summary(self, max_problems: int = 5) -> str:
        """Counts per split, classes and the number of problems (with the first few)."""
        c = self.counts()
        lines = [f"{self.name} at {self.root}: {c['videos']} videos, {c['classes']} classes"]
        n = c["videos"]
        if all(v.splits == (0, 0, 0) for v in self.videos):
            lines.append("  split lists: none (no video is in a train or test list)")
        elif self.name == "kinetics" and all(v.splits[0] == v.splits[1] == v.splits[2] for v in self.videos):
            train, test = c["splits"][0]
            lines.append(f"  split (one, the same in slots 1-3): {train} train, {test} val")
        else:
            for k, (train, test) in enumerate(c["splits"], start=1):
                lines.append(
                    f"  split {k}: {train} train, {test} test, {n - train - test} in neither"
                )
        lines.append(f"  problems: {len(self.problems)}")
        for p in self.problems[:max_problems]:
            lines.append(f"    - {p}")
        if len(self.problems) > max_problems:
            lines.append(f"    ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


def split_members(index: DatasetIndex, split: int, subset: str) -> list[int]:
    """Indices into ``index.videos`` of the videos in ``subset`` ("train"/"test") of ``split``."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be 1, 2 or 3, got {split!r}")
    if subset not in SUBSET_CODES:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    code = SUBSET_CODES[subset]
    return [i for i, v in enumerate(index.videos) if v.splits[split - 1] == code]


# --------------------------------------------------------------------------- class index I/O

_CLASS_INDEX_FORMAT = "mac-class-index"


def save_class_index(index: Union[DatasetIndex, Sequence[str]], path: Union[str, Path]) -> Path:
    """Write the label -> class-name table as JSON (atomically); returns the path."""
    if isinstance(index, DatasetIndex):
        classes, name = list(index.classes), index.name
    else:
        classes, name = [str(c) for c in index], None
    payload = {
        "format": _CLASS_INDEX_FORMAT,
        "version": 1,
        "dataset": name,
        "num_classes": len(classes),
        "classes": classes,
    }
    try:
        text = json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable file names (surrogates): escape everything
        data = (json.dumps(payload, indent=1, ensure_ascii=True) + "\n").encode("ascii")
    return atomic.write_bytes(path, data)


def load_class_index(path: Union[str, Path]) -> tuple[str, ...]:
    """Read a table written by :func:`save_class_index` (a bare JSON list is accepted too)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a class index (invalid JSON: {exc})") from None
    classes = payload.get("classes") if isinstance(payload, dict) else payload
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{path}: not a class index (expected a list of class names)")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path}: class index has duplicate class names")
    if isinstance(payload, dict) and payload.get("num_classes", len(classes)) != len(classes):
        raise ValueError(
            f"{path}: class index says num_classes={payload['num_classes']} "
            f"but lists {len(classes)} classes"
        )
    return tuple(classes)


# --------------------------------------------------------------------------- helpers


def _fold(s: str) -> str:
    """Key for tolerant matching: Unicode NFC + case folding."""
    return unicodedata.normalize("NFC", s).casefold()


def _label_key(name: str) -> str:
    """Class names compared leniently: case, Unicode form, '_' vs ' ', quotes, repeated spaces."""
    return " ".join(_fold(name).replace("_", " ").strip().strip("\"'").split())


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _is_video_name(name: str) -> bool:
    return not _is_hidden(name) and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _read_list(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a list file as (1-based line number, stripped text)."""
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    out = []
    for n, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        line = line.strip()
        if line:
            out.append((n, line))
    return out


def _kinds(entries, exclude: Iterable[str] = ()):
    """(entry, is a folder, is a file) of the visible entries not in ``exclude``; an entry that
    vanished or cannot be stat'ed is skipped."""
    for e in entries:
        if _is_hidden(e.name) or e.name in exclude:
            continue
        try:
            is_dir = e.is_dir()
            is_file = not is_dir and e.is_file()
        except OSError:
            continue
        yield e, is_dir, is_file


def _walk_videos(
    directory: Path, prefix: str, out: list[str], seen: set, problems: list[str], shown: str
) -> None:
    """Append every video below ``directory`` as ``prefix + relative/posix/path`` (sorted)."""
    try:
        st = os.stat(directory)
        key = (st.st_dev, st.st_ino)
        if key in seen:  # symlink loop or the same folder linked twice
            return
        seen.add(key)
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        problems.append(f"{shown}: cannot read folder ({exc.strerror or exc})")
        return
    for e, is_dir, is_file in _kinds(entries):
        if is_dir:
            _walk_videos(
                Path(e.path), f"{prefix}{e.name}/", out, seen, problems, f"{shown}/{e.name}"
            )
        elif is_file and _is_video_name(e.name):
            out.append(prefix + e.name)


def _scan_class_folders(
    base: Path, base_rel: str, exclude: Iterable[str], problems: list[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Class folders directly below ``base`` -> their videos ("Class/.../file", sorted), and
    loose videos directly in ``base``."""
    exclude = set(exclude)
    shown = base_rel or "."
    classes: dict[str, list[str]] = {}
    loose: list[str] = []
    seen: set = set()
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError as exc:
        problems.append(f"{shown}: cannot read folder ({exc.strerror or exc})")
        return classes, loose
    for e, is_dir, is_file in _kinds(entries, exclude):
        if is_dir:
            vids: list[str] = []
            sub_shown = f"{base_rel}/{e.name}" if base_rel else e.name
            _walk_videos(Path(e.path), f"{e.name}/", vids, seen, problems, sub_shown)
            classes[e.name] = vids
        elif is_file and _is_video_name(e.name):
            loose.append(e.name)
    return classes, loose


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _line_ranges(lines: list[int]) -> str:
    if len(lines) == 1:
        return f"line {lines[0]}"
    if len(lines) <= 5:
        return "lines " + ", ".join(map(str, lines))
    return f"lines {lines[0]}..{lines[-1]}"
