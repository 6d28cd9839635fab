"""Dataset adapters: index a video dataset in its real on-disk layout.

``load_dataset(name, root)`` walks the videos of one of the supported layouts, reads its
official split lists (all three splits), and returns a :class:`DatasetIndex`: every video
found on disk (sorted by its POSIX path relative to the root), its class and 0-based label,
and its membership code in each split (0 = in neither list of that split, 1 = train,
2 = test). Nothing in the lists is trusted blindly: every disagreement between the lists and
the disk (a listed video that is missing, a video that no list names, a malformed line, a
label that disagrees with ``classInd.txt``, an unknown class, a duplicate entry, counts that
differ from the official release) becomes one human-readable line in ``index.problems``,
naming the file (and line). Only a dataset that is absent or unusable raises
:class:`DatasetLayoutError`, whose message shows the expected tree, where to get the
archives, and how to run the demo instead.

Supported layouts (see ``DATASETS``):

* ``ucf101`` / ``demo``: ``<root>/UCF-101/<Class>/*.avi`` and ``<root>/ucfTrainTestlist/``
  (``classInd.txt``, ``trainlist0{1,2,3}.txt``, ``testlist0{1,2,3}.txt``). Labels come from
  ``classInd.txt`` (number minus one).
* ``hmdb51``: ``<root>/<class>/*.avi`` (or ``<root>/hmdb51_org/<class>/*.avi``) and
  ``<root>/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt`` ("<video> <code>",
  code 0 unused, 1 train, 2 test). Classes sorted by name.
* ``folder``: ``<root>/<class>/<video>`` with any common video extension, classes sorted by
  name; optional ``<root>/splits/trainlist0k.txt`` / ``testlist0k.txt`` in UCF101's format
  (label column optional, 1-based in sorted class order).
* ``kinetics``: Kinetics-400 (or -600/-700) in the official release layout,
  ``<root>/{train,val}/<video>.mp4`` or ``<root>/{train,val}/<class>/<video>.mp4``, with
  ``<root>/annotations/{train,val}.csv`` (columns ``label,youtube_id,time_start,time_end,split``;
  more columns are ignored). A row's video is the file named
  ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` anywhere below its split folder. Classes
  are the sorted labels of both files (names kept as written, spaces included). Kinetics has one
  split: train rows get the code 1 (train) and val rows 2 (test) in all three split slots, so any
  ``--split`` reads it. Rows without a file are the norm (videos taken off YouTube): each is a
  problem (the first ``KINETICS_DETAIL_LIMIT`` per file with file:line, then one count per file)
  and listed in ``DatasetIndex.missing``; videos on disk that no row names are reported and not
  indexed (their label is unknown). ``select_classes`` then builds Mini-Kinetics-style subsets.

Conventions: list files are read as UTF-8 (a BOM is ignored, undecodable bytes are kept via
``surrogateescape`` so they still match the file names on disk), CRLF/CR line endings,
surrounding whitespace and blank lines are tolerated. A listed path that matches a file on
disk only up to letter case or Unicode normalisation is accepted (and noted once per list
file). Hidden files and folders (``.*``, ``__MACOSX``) are ignored. When one video is listed
twice in the same split with different codes, the higher code wins (test over train over
unused), so a conflict can never leak a test video into training.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from core import atomic
from typing import Callable, Iterable, Sequence, Union

__all__ = [
    "VideoEntry",
    "DatasetIndex",
    "DatasetLayoutError",
    "load_dataset",
    "DATASETS",
    "EXPECTED_COUNTS",
    "VIDEO_EXTENSIONS",
    "DEMO_COMMAND",
    "save_class_index",
    "load_class_index",
    "split_members",
    "select_classes",
    "read_class_subset",
    "UnknownClassesError",
    "KINETICS_DETAIL_LIMIT",
]

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v"}
)
"""File extensions (lower case) treated as videos; matched case-insensitively."""

DEMO_COMMAND = "python preprocess/extract_masks.py --dataset demo"

SPLIT_IDS = (1, 2, 3)
SUBSET_CODES = {"train": 1, "test": 2}
_CODE_NAMES = {0: "unused", 1: "train", 2: "test"}

UCF_VIDEO_DIR = "UCF-101"
UCF_LIST_DIR = "ucfTrainTestlist"
HMDB_SPLIT_DIR = "testTrainMulti_7030_splits"
HMDB_NESTED_DIR = "hmdb51_org"
FOLDER_SPLIT_DIR = "splits"

UCF_URL = "https://www.crcv.ucf.edu/data/UCF101.php"
HMDB_URL = "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/"
KINETICS_URL = "https://github.com/cvdfoundation/kinetics-dataset"
KINETICS_SPLITS = ("train", "val")
KINETICS_ANN_DIR = "annotations"
KINETICS_DETAIL_LIMIT = 20
"""Per annotation file and kind (missing file, wrong folder, ...), at most this many problems
name their row; one more line gives the count."""

DATASETS: dict[str, str] = {
    "ucf101": (
        "UCF101 (13,320 videos, 101 classes): <root>/UCF-101/<Class>/v_<Class>_gNN_cNN.avi "
        "and <root>/ucfTrainTestlist/{classInd,trainlist01-03,testlist01-03}.txt, from "
        f"UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip ({UCF_URL})"
    ),
    "hmdb51": (
        "HMDB51 (6,766 videos, 51 classes): <root>/<class>/<video>.avi (or "
        "<root>/hmdb51_org/<class>/) and <root>/testTrainMulti_7030_splits/"
        "<class>_test_split{1,2,3}.txt, from hmdb51_org.rar (one .rar per class inside) "
        f"and test_train_splits.rar ({HMDB_URL})"
    ),
    "folder": (
        "any videos as <root>/<class>/<video>.{avi,mp4,mkv,webm,mov,mpg,mpeg,m4v}, classes "
        "sorted by name; optional <root>/splits/trainlist0{1,2,3}.txt and testlist0{1,2,3}.txt "
        "in UCF101's format ('<class>/<video> [label]')"
    ),
    "kinetics": (
        "Kinetics-400 (~240k 10-second YouTube clips, 400 classes; -600/-700 alike) in the "
        "official release layout: <root>/{train,val}/<youtube_id>_<start:06d>_<end:06d>.mp4 (or "
        "<root>/{train,val}/<class>/<...>.mp4) and <root>/annotations/{train,val}.csv "
        f"('label,youtube_id,time_start,time_end,split'), e.g. from {KINETICS_URL}"
    ),
    "demo": (
        "the small synthetic demo set in UCF101's layout (<root>/UCF-101/<Class>/*.avi and "
        f"<root>/ucfTrainTestlist/), created by `{DEMO_COMMAND}`"
    ),
}
"""Dataset name -> short description of the expected layout and where to obtain it."""

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
    for e in entries:
        if _is_hidden(e.name):
            continue
        try:
            is_dir = e.is_dir()
            is_file = not is_dir and e.is_file()
        except OSError:
            continue
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
    for e in entries:
        if _is_hidden(e.name) or e.name in exclude:
            continue
        try:
            is_dir = e.is_dir()
            is_file = not is_dir and e.is_file()
        except OSError:
            continue
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


class _Builder:
    """Accumulates videos, split codes and problems for one dataset."""

    def __init__(self, name: str, root: Path, video_base_rel: str):
        self.name = name
        self.root = root
        self.base_rel = video_base_rel  # folder of the class folders, relative to root
        self.problems: list[str] = []
        self.keys: list[str] = []  # path relative to the video base ("Class/file.avi")
        self.classes_of: list[str] = []
        self.codes: list[list[int]] = []
        self.exact: dict[str, int] = {}
        self.folded: dict[str, list[int]] = {}
        self.listed: set[int] = set()
        self.in_split: list[set[int]] = [set(), set(), set()]
        self.split_has_list = [False, False, False]
        self.any_list_read = False
        # (split, key) -> (list file shown, line, code) of the first occurrence
        self.first: dict[tuple[int, str], tuple[str, int, int]] = {}

    def rel(self, key: str) -> str:
        return _join(self.base_rel, key)

    def add_video(self, key: str, class_name: str) -> None:
        i = len(self.keys)
        self.keys.append(key)
        self.classes_of.append(class_name)
        self.codes.append([0, 0, 0])
        self.exact[key] = i
        self.folded.setdefault(_fold(key), []).append(i)

    def lookup(self, key: str) -> tuple[int | None, bool]:
        """(video index or None, matched only case/normalisation-insensitively)."""
        i = self.exact.get(key)
        if i is not None:
            return i, False
        cands = self.folded.get(_fold(key), [])
        if len(cands) == 1:
            return cands[0], True
        return None, False

    def assign(self, split: int, idx: int | None, key: str, code: int, where: str, line: int) -> bool:
        """Record one list occurrence; returns False if it duplicates an earlier one."""
        k = split - 1
        ident = self.keys[idx] if idx is not None else _fold(key)
        prev = self.first.get((split, ident))
        if prev is not None:
            pfile, pline, pcode = prev
            if pcode == code:
                self.problems.append(
                    f"{where}:{line}: duplicate entry {key!r} (already at {pfile}:{pline})"
                )
            else:
                win = max(code, pcode)
                self.problems.append(
                    f"{where}:{line}: {key!r} is listed as {_CODE_NAMES[code]} here but as "
                    f"{_CODE_NAMES[pcode]} at {pfile}:{pline}; treated as {_CODE_NAMES[win]}"
                )
                self.first[(split, ident)] = (pfile, pline, win)
                if idx is not None:
                    self.codes[idx][k] = win
            return False
        self.first[(split, ident)] = (where, line, code)
        if idx is not None:
            self.codes[idx][k] = code
            self.listed.add(idx)
            self.in_split[k].add(idx)
        return True

    def report_unlisted(self) -> None:
        if not self.any_list_read:
            return
        for i in sorted(set(range(len(self.keys))) - self.listed, key=lambda i: self.keys[i]):
            self.problems.append(f"{self.rel(self.keys[i])}: video on disk is in no split list")
        for k in range(3):
            if not self.split_has_list[k]:
                continue
            partial = sorted(self.rel(self.keys[i]) for i in self.listed - self.in_split[k])
            if partial:
                self.problems.append(
                    f"split {k + 1}: {len(partial)} video(s) listed in other splits are in no "
                    f"split-{k + 1} list, e.g. {partial[0]!r}"
                )

    def check_counts(self, classes: Sequence[str], title: str) -> None:
        expected = EXPECTED_COUNTS.get(self.name)
        if expected is None:
            return
        found = {
            "videos": len(self.keys),
            "classes": len(classes),
            "splits": tuple(
                (sum(1 for c in self.codes if c[k] == 1), sum(1 for c in self.codes if c[k] == 2))
                for k in range(3)
            ),
        }
        if found != expected:
            self.problems.append(
                f"counts differ from the official {title} release: expected "
                f"{_fmt_counts(expected)}; found {_fmt_counts(found)}"
            )

    def build(self, classes: Sequence[str]) -> DatasetIndex:
        label_of = {c: i for i, c in enumerate(classes)}
        videos = sorted(
            (
                VideoEntry(
                    rel_path=self.rel(key),
                    class_name=cls,
                    label=label_of[cls],
                    splits=(codes[0], codes[1], codes[2]),
                )
                for key, cls, codes in zip(self.keys, self.classes_of, self.codes)
            ),
            key=lambda v: v.rel_path,
        )
        return DatasetIndex(
            name=self.name,
            root=self.root,
            classes=tuple(classes),
            videos=tuple(videos),
            problems=tuple(self.problems),
        )


def _fmt_counts(c: dict) -> str:
    splits = ", ".join(f"split {k} {tr}/{te}" for k, (tr, te) in enumerate(c["splits"], 1))
    return f"{c['videos']} videos, {c['classes']} classes, {splits} (train/test)"


def _class_resolver(known: Iterable[str]) -> Callable[[str], str | None]:
    known = list(known)
    exact = set(known)
    folded: dict[str, list[str]] = {}
    for c in known:
        folded.setdefault(_fold(c), []).append(c)

    def resolve(name: str) -> str | None:
        if name in exact:
            return name
        cands = folded.get(_fold(name), [])
        return cands[0] if len(cands) == 1 else None

    return resolve


_UCF_LINE = re.compile(r"(.*?\S)\s+([+-]?\d+)")


def _parse_ucf_path(line: str) -> tuple[str, int | None] | None:
    """'<Class>/<video> [label]' -> (normalised path, label or None); None if malformed."""
    m = _UCF_LINE.fullmatch(line)
    path, label = (m.group(1), int(m.group(2))) if m else (line, None)
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    parts = path.split("/")
    if len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        return None
    if not _is_video_name(parts[-1]):
        return None
    return "/".join(parts), label


def _process_ucf_lists(
    b: _Builder,
    list_dir: Path,
    list_dir_rel: str,
    resolve: Callable[[str], str | None],
    numbers: dict[str, int],
    label_source: str,
    required: bool,
    strip_prefix: str | None = None,
) -> None:
    """Read trainlist0k/testlist0k (k = 1..3) in UCF101's format into ``b``."""
    present = {}
    for k in SPLIT_IDS:
        for subset in ("train", "test"):
            p = list_dir / f"{subset}list0{k}.txt"
            present[(k, subset)] = p.is_file()
    class_folders = {c.split("/", 1)[0] for c in b.keys}
    for k in SPLIT_IDS:
        for subset in ("train", "test"):
            fname = f"{subset}list0{k}.txt"
            shown = _join(list_dir_rel, fname)
            other = "test" if subset == "train" else "train"
            if not present[(k, subset)]:
                if required:
                    b.problems.append(f"{shown}: split list missing (expected in {list_dir})")
                elif present[(k, other)]:
                    b.problems.append(
                        f"{shown}: split list missing while {other}list0{k}.txt exists"
                    )
                continue
            try:
                lines = _read_list(list_dir / fname)
            except OSError as exc:
                b.problems.append(f"{shown}: cannot read split list ({exc.strerror or exc})")
                continue
            b.any_list_read = True
            b.split_has_list[k - 1] = True
            _process_one_ucf_list(
                b, k, SUBSET_CODES[subset], shown, lines, resolve, numbers, label_source,
                class_folders, strip_prefix,
            )


def _process_one_ucf_list(
    b: _Builder,
    split: int,
    code: int,
    shown: str,
    lines: list[tuple[int, str]],
    resolve: Callable[[str], str | None],
    numbers: dict[str, int],
    label_source: str,
    class_folders: set[str],
    strip_prefix: str | None,
) -> None:
    folded_matches: list[tuple[int, str, str]] = []
    absent_class: dict[str, list[int]] = {}  # known class without folder -> line numbers
    for n, line in lines:
        parsed = _parse_ucf_path(line)
        if parsed is None:
            b.problems.append(
                f"{shown}:{n}: malformed line {line!r} (expected '<Class>/<video>.avi [label]')"
            )
            continue
        key, label = parsed
        if strip_prefix and key.startswith(strip_prefix + "/") and key.count("/") >= 2:
            key = key[len(strip_prefix) + 1 :]
        folder = key.split("/", 1)[0]
        cls = resolve(folder)
        idx, via_fold = b.lookup(key)
        if cls is None and idx is not None:
            cls = b.classes_of[idx]  # video of an unknown class folder: still indexed
        if cls is None or cls not in numbers:
            extra = "" if idx is not None else "; no such file on disk either"
            b.problems.append(
                f"{shown}:{n}: unknown class {folder!r} in {key!r} (not in {label_source}){extra}"
            )
        elif label is not None and label != numbers[cls]:
            b.problems.append(
                f"{shown}:{n}: label {label} for {key!r} disagrees with {label_source} "
                f"({cls} = {numbers[cls]})"
            )
        first = b.assign(split, idx, key, code, shown, n)
        if idx is None:
            if not first or cls is None or cls not in numbers:
                continue
            has_folder = folder in class_folders or any(
                _fold(f) == _fold(folder) for f in class_folders
            )
            if not has_folder:
                absent_class.setdefault(cls, []).append(n)
            else:
                b.problems.append(
                    f"{shown}:{n}: listed video {key!r} not found on disk "
                    f"(expected {b.rel(key)})"
                )
        elif via_fold:
            folded_matches.append((n, key, b.keys[idx]))
    for cls, ns in absent_class.items():
        b.problems.append(
            f"{shown}: {len(ns)} listed video(s) of class {cls!r} ({_line_ranges(ns)}) are "
            f"missing: folder {b.rel(cls)}/ not found on disk"
        )
    if folded_matches:
        n, key, disk = folded_matches[0]
        b.problems.append(
            f"{shown}: {len(folded_matches)} entr{'y' if len(folded_matches) == 1 else 'ies'} "
            f"match files on disk only ignoring case/Unicode normalisation, e.g. line {n} "
            f"{key!r} -> {disk!r}"
        )


# --------------------------------------------------------------------------- layout errors

_UCF_TREE = """\
  {root}/
    UCF-101/                         <- UCF101.rar
      ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi
      ...                            (101 class folders, 13,320 .avi files)
    ucfTrainTestlist/                <- UCF101TrainTestSplits-RecognitionTask.zip
      classInd.txt                   "1 ApplyEyeMakeup"
      trainlist01.txt .. trainlist03.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
      testlist01.txt .. testlist03.txt     "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\""""

_HMDB_TREE = """\
  {root}/
    brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi
    ...                              (51 class folders, 6,766 .avi files; from hmdb51_org.rar,
                                      which holds one .rar per class: extract each of them;
                                      {root}/hmdb51_org/<class>/ is accepted too)
    testTrainMulti_7030_splits/      <- test_train_splits.rar
      brush_hair_test_split1.txt .. brush_hair_test_split3.txt
      ...                            lines "<video>.avi <code>", 0 unused, 1 train, 2 test"""

_FOLDER_TREE = """\
  {root}/
    <class>/<video>.mp4              (.avi .mp4 .mkv .webm .mov .mpg .mpeg .m4v)
    ...
    splits/                          (optional) trainlist01.txt .. testlist03.txt,
                                     lines "<class>/<video> [label]\""""


_KINETICS_TREE = """\
  {root}/
    train/<youtube_id>_<start:06d>_<end:06d>.mp4      e.g. train/---QUuC4vJs_000084_000094.mp4
    val/...                          (or train/<class>/<...>.mp4, val/<class>/<...>.mp4)
    annotations/train.csv            "label,youtube_id,time_start,time_end,split",
                                     rows like "abseiling,---QUuC4vJs,84,94,train"
    annotations/val.csv              (same columns; rows "...,val")
""".rstrip("\n")


def _layout_error(name: str, root: Path, what: str, hints: Sequence[str] = ()) -> DatasetLayoutError:
    if name in ("ucf101", "demo"):
        tree = _UCF_TREE
        source = (
            f"Create it with: {DEMO_COMMAND}"
            if name == "demo"
            else f"Download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from "
            f"{UCF_URL} and extract both into {root}."
        )
    elif name == "hmdb51":
        tree = _HMDB_TREE
        source = (
            f"Download hmdb51_org.rar and test_train_splits.rar from {HMDB_URL} and extract "
            f"them (and the per-class .rar files inside hmdb51_org.rar) into {root}."
        )
    elif name == "kinetics":
        tree = _KINETICS_TREE
        source = (
            f"Download the release (e.g. with the scripts of {KINETICS_URL}) and extract its "
            f"archives so that train/, val/ and annotations/ are directly below {root}."
        )
    else:
        tree = _FOLDER_TREE
        source = "Put one folder per class below the root, the videos inside."
    lines = [f"{name} dataset at {root}: {what}", *hints, "Expected layout:", tree.format(root=root), source]
    if name != "demo":
        lines.append(f"No dataset at hand? Run the demo instead: {DEMO_COMMAND}")
    return DatasetLayoutError("\n".join(lines))


def _rar_hints(folder: Path, names: Sequence[str]) -> list[str]:
    hints = []
    for n in names:
        if (folder / n).is_file():
            hints.append(f"Found the archive {folder / n}: extract it there (e.g. `unrar x {n}`).")
    return hints


def _nested_hint(root: Path, dirname: str) -> list[str]:
    """Hint when ``dirname`` exists one level too deep (an archive extracted into a folder)."""
    try:
        found = sorted(p for p in root.glob(f"*/{dirname}") if p.is_dir())
    except OSError:
        return []
    return [f"Found {found[0]}: move it to {root / dirname}."] if found else []


def _check_root(name: str, root: Path) -> None:
    if not root.exists():
        raise _layout_error(name, root, "the root folder does not exist")
    if not root.is_dir():
        raise _layout_error(name, root, "the root is not a folder")


# --------------------------------------------------------------------------- UCF101 / demo


def _parse_class_ind(
    path: Path, shown: str, problems: list[str]
) -> tuple[list[str], dict[str, int]]:
    """classInd.txt -> (classes ordered by number, class -> number as written)."""
    rows: list[tuple[int, str]] = []
    by_num: dict[int, tuple[str, int]] = {}
    by_name: dict[str, int] = {}
    for n, line in _read_list(path):
        m = re.fullmatch(r"(\d+)\s+(\S.*)", line)
        if not m:
            problems.append(f"{shown}:{n}: malformed line {line!r} (expected '<number> <Class>')")
            continue
        num, cls = int(m.group(1)), m.group(2).strip()
        if num in by_num:
            problems.append(
                f"{shown}:{n}: duplicate class number {num} (already {by_num[num][0]!r} "
                f"at line {by_num[num][1]}); line ignored"
            )
            continue
        if cls in by_name:
            problems.append(
                f"{shown}:{n}: duplicate class {cls!r} (already at line {by_name[cls]}); "
                "line ignored"
            )
            continue
        by_num[num] = (cls, n)
        by_name[cls] = n
        rows.append((num, cls))
    rows.sort()
    if rows and [num for num, _ in rows] != list(range(1, len(rows) + 1)):
        problems.append(
            f"{shown}: class numbers are not 1..{len(rows)}; labels follow the order of the numbers"
        )
    return [cls for _, cls in rows], {cls: num for num, cls in rows}


def _load_ucf(name: str, root: Path) -> DatasetIndex:
    _check_root(name, root)
    video_dir = root / UCF_VIDEO_DIR
    list_dir = root / UCF_LIST_DIR
    if not video_dir.is_dir():
        hints = _rar_hints(root, ["UCF101.rar"])
        if (root / "UCF101" / UCF_VIDEO_DIR).is_dir():
            hints.append(f"Found {root / 'UCF101' / UCF_VIDEO_DIR}: use {root / 'UCF101'} as the root.")
        if (root / "ApplyEyeMakeup").is_dir():
            hints.append(
                f"{root} looks like the UCF-101 folder itself: use its parent as the root "
                "(with ucfTrainTestlist/ beside UCF-101/)."
            )
        raise _layout_error(name, root, f"video folder {video_dir} not found", hints)
    if not list_dir.is_dir():
        hints = _rar_hints(root, ["UCF101TrainTestSplits-RecognitionTask.zip"])
        hints += _nested_hint(root, UCF_LIST_DIR)
        raise _layout_error(name, root, f"split-list folder {list_dir} not found", hints)

    b = _Builder(name, root, UCF_VIDEO_DIR)
    folders, loose = _scan_class_folders(video_dir, UCF_VIDEO_DIR, (), b.problems)
    if not any(folders.values()):
        raise _layout_error(
            name, root, f"no videos found in {video_dir}",
            _rar_hints(root, ["UCF101.rar"]),
        )
    for f in loose:
        b.problems.append(f"{_join(UCF_VIDEO_DIR, f)}: video not inside a class folder; ignored")

    ind_shown = _join(UCF_LIST_DIR, "classInd.txt")
    class_ind = list_dir / "classInd.txt"
    label_source = "classInd.txt"
    if class_ind.is_file():
        try:
            classes, numbers = _parse_class_ind(class_ind, ind_shown, b.problems)
        except OSError as exc:
            b.problems.append(f"{ind_shown}: cannot read ({exc.strerror or exc})")
            classes, numbers = [], {}
    else:
        classes, numbers = [], {}
        b.problems.append(f"{ind_shown}: missing")
    if not classes:
        classes = sorted(f for f, v in folders.items() if v)
        numbers = {c: i + 1 for i, c in enumerate(classes)}
        label_source = "the sorted class folders (classInd.txt unusable)"
        b.problems.append(
            f"{ind_shown}: no usable classes; labels follow the sorted class folders instead"
        )

    resolve = _class_resolver(classes)
    extra_classes: list[str] = []
    mapped: set[str] = set()
    for folder, vids in folders.items():
        cls = resolve(folder)
        if cls is None:
            if vids:
                extra_classes.append(folder)
                b.problems.append(
                    f"{_join(UCF_VIDEO_DIR, folder)}/: class folder not in {label_source} "
                    f"({len(vids)} video(s) indexed under an extra label)"
                )
            cls = folder
        elif cls != folder:
            b.problems.append(
                f"{_join(UCF_VIDEO_DIR, folder)}/: folder name differs from {label_source} "
                f"class {cls!r}; matched ignoring case"
            )
        if vids and cls in numbers:
            mapped.add(cls)
        for key in vids:
            b.add_video(key, cls)
    for cls in classes:
        if cls not in mapped:
            b.problems.append(
                f"{_join(UCF_VIDEO_DIR, cls)}/: class {cls!r} from {label_source} has no videos on disk"
            )

    _process_ucf_lists(
        b, list_dir, UCF_LIST_DIR, resolve, numbers, label_source, required=True,
        strip_prefix=UCF_VIDEO_DIR,
    )
    b.report_unlisted()
    all_classes = list(classes) + sorted(extra_classes)
    b.check_counts(all_classes, "UCF101")
    return b.build(all_classes)


# --------------------------------------------------------------------------- HMDB51

_HMDB_SPLIT_FILE = re.compile(r"(.+)_test_split([123])\.txt")


def _load_hmdb(name: str, root: Path) -> DatasetIndex:
    _check_root(name, root)
    problems: list[str] = []
    exclude = {HMDB_SPLIT_DIR, HMDB_NESTED_DIR}
    top, top_loose = _scan_class_folders(root, "", exclude, problems)
    nested_dir = root / HMDB_NESTED_DIR
    nested: dict[str, list[str]] = {}
    nested_loose: list[str] = []
    if nested_dir.is_dir():
        nested, nested_loose = _scan_class_folders(nested_dir, HMDB_NESTED_DIR, (), problems)
    if any(top.values()):
        folders, loose, base_rel = top, top_loose, ""
        if any(nested.values()):
            problems.append(
                f"{HMDB_NESTED_DIR}/: also holds videos; ignored in favour of the class "
                f"folders directly in the root"
            )
    elif any(nested.values()):
        folders, loose, base_rel = nested, nested_loose, HMDB_NESTED_DIR
    else:
        hints = _rar_hints(root, ["hmdb51_org.rar"])
        for d in (root, nested_dir):
            if d.is_dir():
                rars = sorted(p.name for p in d.glob("*.rar") if p.name != "test_train_splits.rar")
                if len(rars) > 1 or (rars and rars != ["hmdb51_org.rar"]):
                    hints.append(
                        f"Found {len(rars)} .rar file(s) in {d} (e.g. {rars[0]}): extract each "
                        "class archive (e.g. `for f in *.rar; do unrar x \"$f\"; done`)."
                    )
        raise _layout_error(
            name, root, f"no class folders with videos in {root} or {nested_dir}", hints
        )
    split_dir = root / HMDB_SPLIT_DIR
    if not split_dir.is_dir():
        raise _layout_error(
            name, root, f"split-list folder {split_dir} not found",
            _rar_hints(root, ["test_train_splits.rar"]) + _nested_hint(root, HMDB_SPLIT_DIR),
        )

    b = _Builder(name, root, base_rel)
    b.problems.extend(problems)
    for f in loose:
        b.problems.append(f"{_join(base_rel, f)}: video not inside a class folder; ignored")

    # split files: class -> split -> file name
    split_files: dict[str, dict[int, str]] = {}
    try:
        names = sorted(os.listdir(split_dir))
    except OSError as exc:
        raise _layout_error(name, root, f"cannot read {split_dir} ({exc.strerror or exc})") from None
    for fname in names:
        if _is_hidden(fname):
            continue
        m = _HMDB_SPLIT_FILE.fullmatch(fname)
        if m:
            split_files.setdefault(m.group(1), {})[int(m.group(2))] = fname
        elif fname.lower().endswith(".txt"):
            b.problems.append(
                f"{_join(HMDB_SPLIT_DIR, fname)}: unexpected file name "
                "(expected '<class>_test_split<1|2|3>.txt'); ignored"
            )

    disk_classes = [f for f, v in folders.items() if v]
    classes = sorted(set(disk_classes) | set(split_files))
    for f in disk_classes:
        for key in folders[f]:
            b.add_video(key, f)
    for cls in sorted(set(split_files) - set(disk_classes)):
        b.problems.append(
            f"{_join(base_rel, cls)}/: class {cls!r} has split lists in {HMDB_SPLIT_DIR}/ "
            "but no videos on disk"
        )

    for k in SPLIT_IDS:
        for cls in classes:
            fname = split_files.get(cls, {}).get(k)
            shown = _join(HMDB_SPLIT_DIR, fname or f"{cls}_test_split{k}.txt")
            if fname is None:
                b.problems.append(f"{shown}: split list missing (expected in {split_dir})")
                continue
            try:
                lines = _read_list(split_dir / fname)
            except OSError as exc:
                b.problems.append(f"{shown}: cannot read split list ({exc.strerror or exc})")
                continue
            b.any_list_read = True
            b.split_has_list[k - 1] = True
            _process_hmdb_list(b, k, cls, shown, lines, cls in disk_classes)
    b.report_unlisted()
    b.check_counts(classes, "HMDB51")
    return b.build(classes)


_HMDB_LINE = re.compile(r"(.*?\S)\s+(\S+)")


def _process_hmdb_list(
    b: _Builder, split: int, cls: str, shown: str, lines: list[tuple[int, str]], has_folder: bool
) -> None:
    folded_matches: list[tuple[int, str, str]] = []
    absent: list[int] = []
    for n, line in lines:
        m = _HMDB_LINE.fullmatch(line)
        if (
            not m
            or m.group(2) not in ("0", "1", "2")
            or "/" in m.group(1)
            or "\\" in m.group(1)
            or not _is_video_name(m.group(1))
        ):
            b.problems.append(
                f"{shown}:{n}: malformed line {line!r} (expected '<video>.avi <0|1|2>')"
            )
            continue
        video, code = m.group(1), int(m.group(2))
        key = f"{cls}/{video}"
        idx, via_fold = b.lookup(key)
        first = b.assign(split, idx, video, code, shown, n)
        if idx is None:
            if not first:
                continue
            if has_folder:
                b.problems.append(
                    f"{shown}:{n}: listed video {video!r} not found on disk "
                    f"(expected {b.rel(key)})"
                )
            else:
                absent.append(n)
        else:
            b.listed.add(idx)  # code 0 ("unused") still counts as listed
            if via_fold:
                folded_matches.append((n, video, b.keys[idx]))
    if absent:
        b.problems.append(
            f"{shown}: {len(absent)} listed video(s) ({_line_ranges(absent)}) are missing: "
            f"folder {b.rel(cls)}/ not found on disk"
        )
    if folded_matches:
        n, key, disk = folded_matches[0]
        b.problems.append(
            f"{shown}: {len(folded_matches)} entr{'y' if len(folded_matches) == 1 else 'ies'} "
            f"match files on disk only ignoring case/Unicode normalisation, e.g. line {n} "
            f"{key!r} -> {disk!r}"
        )


# --------------------------------------------------------------------------- generic folder


def _load_folder(name: str, root: Path) -> DatasetIndex:
    _check_root(name, root)
    b = _Builder(name, root, "")
    folders, loose = _scan_class_folders(root, "", {FOLDER_SPLIT_DIR}, b.problems)
    classes = sorted(f for f, v in folders.items() if v)
    if not classes:
        exts = " ".join(sorted(VIDEO_EXTENSIONS))
        raise _layout_error(
            name, root, f"no class folder with videos ({exts}) found", []
        )
    for f in loose:
        b.problems.append(f"{f}: video not inside a class folder; ignored")
    for cls in classes:
        for key in folders[cls]:
            b.add_video(key, cls)
    split_dir = root / FOLDER_SPLIT_DIR
    if split_dir.is_dir():
        numbers = {c: i + 1 for i, c in enumerate(classes)}
        _process_ucf_lists(
            b, split_dir, FOLDER_SPLIT_DIR, _class_resolver(classes), numbers,
            "the sorted class folders", required=False,
        )
    b.report_unlisted()
    return b.build(classes)


# --------------------------------------------------------------------------- Kinetics

_KINETICS_REQUIRED = ("label", "youtube_id", "time_start", "time_end")
_KINETICS_HEADER = "label,youtube_id,time_start,time_end,split"
_KINETICS_SPLIT_NAMES = {"train": {"train", "training"}, "val": {"val", "valid", "validate", "validation"}}
_KINETICS_CODES = {"train": 1, "val": 2}
_KINETICS_EXT_ORDER = (".mp4", ".mkv", ".webm")


def kinetics_stem(youtube_id: str, time_start: int, time_end: int) -> str:
    """File name (without extension) of a Kinetics clip in the official release."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


def _label_key(name: str) -> str:
    """Class names compared leniently: case, Unicode form, '_' vs ' ', quotes, repeated spaces."""
    return " ".join(_fold(name).replace("_", " ").strip().strip("\"'").split())


def _nonneg_int(text: str) -> int | None:
    text = text.strip()
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            return None
        if not f.is_integer():
            return None
        value = int(f)
    return value if value >= 0 else None


@dataclass(frozen=True)
class _KRow:
    shown: str  # annotation file, relative to the root
    line: int
    split: str  # "train" / "val": the file's split
    label: str
    stem: str


class _Capped:
    """Problems of one kind in one file: the first KINETICS_DETAIL_LIMIT verbatim, then a count."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        self.kinds: dict[tuple[str, str], list[int]] = {}

    def add(self, where: str, kind: str, text: str, line: int | None = None) -> None:
        seen = self.kinds.setdefault((where, kind), [])
        seen.append(line or 0)
        if len(seen) <= KINETICS_DETAIL_LIMIT:
            self.problems.append(text)

    def finish(self, counted_elsewhere: Iterable[str] = ()) -> None:
        skip = set(counted_elsewhere)
        for (where, kind), lines in self.kinds.items():
            if len(lines) > KINETICS_DETAIL_LIMIT and kind not in skip:
                numbered = [n for n in lines if n]
                span = f" ({_line_ranges(numbered)})" if numbered else ""
                self.problems.append(
                    f"{where}: {len(lines)} {kind} in total{span}; the first {KINETICS_DETAIL_LIMIT} are "
                    "listed above"
                )
        self.kinds.clear()


def _read_kinetics_csv(path: Path, shown: str, split: str, capped: _Capped, problems: list[str]) -> list[_KRow]:
    try:
        lines = _read_list(path)
    except OSError as exc:
        problems.append(f"{shown}: cannot read ({exc.strerror or exc})")
        return []
    if not lines:
        problems.append(f"{shown}: empty (expected a header '{_KINETICS_HEADER}' and one row per video)")
        return []
    n0, header_line = lines[0]
    try:
        header = [h.strip().lower() for h in next(csv.reader([header_line]))]
    except csv.Error:
        header = []
    lacking = [c for c in _KINETICS_REQUIRED if c not in header]
    if lacking:
        problems.append(
            f"{shown}:{n0}: header {header_line!r} lacks the column(s) {', '.join(lacking)} "
            f"(expected '{_KINETICS_HEADER}'); file ignored"
        )
        return []
    col = {c: header.index(c) for c in _KINETICS_REQUIRED}
    split_col = header.index("split") if "split" in header else None
    need = max(col.values()) + 1
    rows: list[_KRow] = []
    other_split: list[int] = []
    for n, line in lines[1:]:
        try:
            fields = next(csv.reader([line]))
        except csv.Error:
            fields = []
        ok = len(fields) >= need
        if ok:
            label = fields[col["label"]].strip()
            yid = fields[col["youtube_id"]].strip()
            t0, t1 = _nonneg_int(fields[col["time_start"]]), _nonneg_int(fields[col["time_end"]])
            ok = bool(label) and bool(yid) and t0 is not None and t1 is not None and not (set(yid) & set("/\\"))
        if not ok:
            capped.add(
                shown, "malformed rows",
                f"{shown}:{n}: malformed row {line!r} (expected '{_KINETICS_HEADER}' with whole-second "
                "times); row ignored",
                n,
            )
            continue
        if split_col is not None and split_col < len(fields):
            value = fields[split_col].strip().lower()
            if value and value not in _KINETICS_SPLIT_NAMES[split]:
                other_split.append(n)
        rows.append(_KRow(shown, n, split, label, kinetics_stem(yid, t0, t1)))
    if other_split:
        problems.append(
            f"{shown}: {len(other_split)} row(s) ({_line_ranges(other_split)}) name another split in "
            f"the 'split' column; indexed as {split} (the file's split)"
        )
    return rows


def _pick_file(candidates: list[str]) -> str:
    def order(rel: str):
        ext = os.path.splitext(rel)[1].lower()
        rank = _KINETICS_EXT_ORDER.index(ext) if ext in _KINETICS_EXT_ORDER else len(_KINETICS_EXT_ORDER)
        return rank, rel

    return min(candidates, key=order)


def _load_kinetics(name: str, root: Path) -> DatasetIndex:
    _check_root(name, root)
    ann_dir = root / KINETICS_ANN_DIR
    csvs = {s: ann_dir / f"{s}.csv" for s in KINETICS_SPLITS}
    if not any(p.is_file() for p in csvs.values()):
        hints = _nested_hint(root, KINETICS_ANN_DIR)
        what = (f"annotation folder {ann_dir} not found" if not ann_dir.is_dir()
                else f"neither {csvs['train'].name} nor {csvs['val'].name} in {ann_dir}")
        raise _layout_error(name, root, what, hints)
    split_dirs = {s: root / s for s in KINETICS_SPLITS if (root / s).is_dir()}
    if not split_dirs:
        hints = []
        try:
            archives = sorted(p.name for p in root.glob("*.tar.gz"))
        except OSError:
            archives = []
        if archives:
            hints.append(
                f"Found {len(archives)} archive(s) in {root} (e.g. {archives[0]}): extract them into "
                f"{root / 'train'} and {root / 'val'} (`tar xzf <archive> -C <folder>`)."
            )
        hints += _nested_hint(root, "train")
        raise _layout_error(name, root, f"no video folder {root / 'train'} or {root / 'val'}", hints)

    problems: list[str] = []
    capped = _Capped(problems)
    # the files: per split folder, clip name (file name without extension) -> its paths
    on_disk: dict[str, dict[str, list[str]]] = {}
    seen: set = set()
    for split, folder in split_dirs.items():
        vids: list[str] = []
        _walk_videos(folder, f"{split}/", vids, seen, problems, split)
        stems: dict[str, list[str]] = {}
        for rel in vids:
            stems.setdefault(os.path.splitext(rel.rsplit("/", 1)[-1])[0], []).append(rel)
        on_disk[split] = stems
        for stem, rels in stems.items():
            if len(rels) > 1:
                capped.add(
                    f"{split}/", "clips stored as several files",
                    f"{split}/: clip {stem!r} exists as {len(rels)} files ({', '.join(rels)}); "
                    f"using {_pick_file(rels)}",
                )
    for split in KINETICS_SPLITS:
        if split not in split_dirs and csvs[split].is_file():
            problems.append(f"{split}/: folder missing ({KINETICS_ANN_DIR}/{split}.csv names its videos there)")

    rows: list[_KRow] = []
    for split, path in csvs.items():
        shown = f"{KINETICS_ANN_DIR}/{split}.csv"
        if not path.is_file():
            problems.append(f"{shown}: missing (expected in {ann_dir}); its videos are not indexed")
            continue
        rows += _read_kinetics_csv(path, shown, split, capped, problems)
    classes = sorted({r.label for r in rows})

    chosen: dict[str, list] = {}  # rel_path -> [label, code]
    first: dict[str, _KRow] = {}   # clip -> its first row
    where: dict[str, str | None] = {}  # clip -> its file (None: missing)
    missing: list[str] = []
    missing_lines: dict[str, list[int]] = {}
    listed: dict[str, int] = {}
    for row in rows:
        listed[row.shown] = listed.get(row.shown, 0) + 1
        prev = first.get(row.stem)
        if prev is not None:
            same_label = "" if prev.label == row.label else f" with the label {prev.label!r}, here {row.label!r}"
            if prev.split == row.split:
                capped.add(row.shown, "duplicate rows",
                           f"{row.shown}:{row.line}: duplicate row for {row.stem!r} (already at "
                           f"{prev.shown}:{prev.line}{same_label}); ignored", row.line)
            else:
                capped.add(row.shown, "clips in both splits",
                           f"{row.shown}:{row.line}: {row.stem!r} is also in {prev.shown}:{prev.line}"
                           f"{same_label}; treated as val (test), never trained on", row.line)
                rel = where.get(row.stem)
                if rel is not None:
                    chosen[rel][1] = _KINETICS_CODES["val"]
            continue
        first[row.stem] = row
        rel = None
        cands = on_disk.get(row.split, {}).get(row.stem)
        if cands:
            rel = _pick_file(cands)
        else:
            for other in KINETICS_SPLITS:
                cands = on_disk.get(other, {}).get(row.stem) if other != row.split else None
                if cands:
                    rel = _pick_file(cands)
                    capped.add(row.shown, "videos found in the other split's folder",
                               f"{row.shown}:{row.line}: {row.stem!r} found as {rel}, not below {row.split}/; "
                               f"indexed as {row.split} (the annotation's split)", row.line)
                    break
        where[row.stem] = rel
        if rel is None:
            expected = f"{row.split}/{row.stem}.mp4"
            missing.append(f"{row.shown}:{row.line}\t{expected}\t{row.label}")
            missing_lines.setdefault(row.shown, []).append(row.line)
            capped.add(row.shown, "listed videos missing on disk",
                       f"{row.shown}:{row.line}: listed video {row.stem!r} ({row.label}) not found on disk "
                       f"(expected {expected} or {row.split}/<class>/{row.stem}.mp4)", row.line)
            continue
        parts = rel.split("/")
        if len(parts) >= 3 and _label_key(parts[-2]) != _label_key(row.label):
            capped.add(row.shown, "videos in another class's folder",
                       f"{row.shown}:{row.line}: {rel} is in the folder {parts[-2]!r} but annotated as "
                       f"{row.label!r}; the annotation's label is used", row.line)
        chosen[rel] = [row.label, _KINETICS_CODES[row.split]]
    for shown, lines in missing_lines.items():
        shown_first = "" if len(lines) <= KINETICS_DETAIL_LIMIT else f"; the first {KINETICS_DETAIL_LIMIT} are listed above"
        problems.append(
            f"{shown}: {len(lines)} of {listed[shown]} listed video(s) missing on disk "
            f"({_line_ranges(lines)}); left out, not fatal{shown_first}"
        )

    for split, stems in on_disk.items():
        for stem in sorted(stems):
            rel = _pick_file(stems[stem])
            if rel not in chosen and first.get(stem) is None:
                capped.add(f"{split}/", "videos in no annotation file",
                           f"{rel}: video on disk is in no annotation file ({KINETICS_ANN_DIR}/train.csv, "
                           f"{KINETICS_ANN_DIR}/val.csv); not indexed (its label is unknown)")
    have = {label for label, _ in chosen.values()}
    for cls in classes:
        if cls not in have:
            capped.add(KINETICS_ANN_DIR + "/", "classes without videos",
                       f"{KINETICS_ANN_DIR}/: class {cls!r} has no video on disk")
    capped.finish(counted_elsewhere=("listed videos missing on disk",))
    if not chosen:
        raise _layout_error(
            name, root,
            f"none of the {len(first)} annotated videos was found below "
            f"{' or '.join(str(d) for d in split_dirs.values())}",
            [f"e.g. {KINETICS_ANN_DIR}/{first[next(iter(first))].split}.csv names "
             f"{next(iter(first))}.mp4"] if first else [],
        )
    label_of = {c: i for i, c in enumerate(classes)}
    videos = sorted(
        (VideoEntry(rel, label, label_of[label], (code, code, code)) for rel, (label, code) in chosen.items()),
        key=lambda v: v.rel_path,
    )
    return DatasetIndex(name=name, root=root, classes=tuple(classes), videos=tuple(videos),
                        problems=tuple(problems), missing=tuple(missing))


# --------------------------------------------------------------------------- class subsets


class UnknownClassesError(ValueError):
    """Class names asked for that the dataset does not have; ``names`` lists them."""

    def __init__(self, names: Sequence[str], known: Sequence[str]):
        self.names = tuple(names)
        hints = []
        for n in self.names:
            close = difflib.get_close_matches(n, list(known), n=1, cutoff=0.75)
            if close:
                hints.append(f"{n!r} (did you mean {close[0]!r}?)")
            else:
                hints.append(repr(n))
        super().__init__(
            f"{len(self.names)} unknown class name(s): {', '.join(hints)}; the dataset has "
            f"{len(known)} classes"
        )


def read_class_subset(path: Union[str, Path]) -> list[str]:
    """Class names of a subset file: one per line (UTF-8; surrounding whitespace, blank lines
    and lines starting with '#' ignored). Raises ValueError when it names no class or one twice."""
    names: list[str] = []
    seen: dict[str, int] = {}
    dups = []
    for n, line in _read_list(Path(path)):
        if line.startswith("#"):
            continue
        if line in seen:
            dups.append(f"{line!r} (lines {seen[line]} and {n})")
            continue
        seen[line] = n
        names.append(line)
    if dups:
        raise ValueError(f"names a class twice: {', '.join(dups)}")
    if not names:
        raise ValueError("names no class (one class name per line)")
    return names


def select_classes(
    index: DatasetIndex, classes: Sequence[str] | None = None, max_per_class: int | None = None
) -> DatasetIndex:
    """A subset of ``index`` (Mini-Kinetics style): only the videos of ``classes`` (all when
    None), labels renumbered 0..K-1 in sorted order of the chosen names (the full order when
    ``classes`` is None), and with ``max_per_class`` at most that many videos per class in each
    split part (Kinetics: train and val separately): the first ones by file name (a YouTube id,
    so effectively a random draw, and the same on every machine). A name matches a class
    exactly, or else ignoring case, '_' vs ' ' and quotes when that identifies one class;
    unknown names raise :class:`UnknownClassesError`."""
    if classes is None:
        names = list(index.classes)
    else:
        exact = set(index.classes)
        lenient: dict[str, list[str]] = {}
        for c in index.classes:
            lenient.setdefault(_label_key(c), []).append(c)
        resolved, unknown = set(), []
        for n in classes:
            if n in exact:
                resolved.add(n)
            elif len(lenient.get(_label_key(n), [])) == 1:
                resolved.add(lenient[_label_key(n)][0])
            else:
                unknown.append(n)
        if unknown:
            raise UnknownClassesError(unknown, index.classes)
        names = sorted(resolved)
    wanted = set(names)
    videos = [v for v in index.videos if v.class_name in wanted]
    if max_per_class is not None:
        if max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
        groups: dict[tuple, list[VideoEntry]] = {}
        for v in videos:
            groups.setdefault((v.class_name, v.splits), []).append(v)
        keep = set()
        for group in groups.values():
            group.sort(key=lambda v: (v.rel_path.rsplit("/", 1)[-1], v.rel_path))
            keep.update(v.rel_path for v in group[:max_per_class])
        videos = [v for v in videos if v.rel_path in keep]
    label_of = {c: i for i, c in enumerate(names)}
    videos = [VideoEntry(v.rel_path, v.class_name, label_of[v.class_name], v.splits) for v in videos]
    missing = tuple(m for m in index.missing if m.rsplit("\t", 1)[-1] in wanted)
    return DatasetIndex(name=index.name, root=index.root, classes=tuple(names), videos=tuple(videos),
                        problems=index.problems, missing=missing)


# --------------------------------------------------------------------------- entry point

_LOADERS = {
    "ucf101": _load_ucf,
    "demo": _load_ucf,
    "hmdb51": _load_hmdb,
    "folder": _load_folder,
    "kinetics": _load_kinetics,
}


def load_dataset(name: str, root: Union[str, Path]) -> DatasetIndex:
    """Index dataset ``name`` (one of ``DATASETS``) found at ``root``.

    Raises ``DatasetLayoutError`` if the dataset is absent or unusable; every lesser
    inconsistency is reported in ``DatasetIndex.problems``.
    """
    key = str(name).lower()
    if key not in _LOADERS:
        known = "\n".join(f"  {n}: {d}" for n, d in DATASETS.items())
        raise ValueError(f"unknown dataset {name!r}; known datasets:\n{known}")
    root_path = Path(os.path.abspath(Path(root).expanduser()))
    return _LOADERS[key](key, root_path)
