"""UCF101 (and the demo set, which has UCF101's layout).

``<root>/UCF-101/<Class>/*.avi`` and ``<root>/ucfTrainTestlist/`` (``classInd.txt``,
``trainlist0{1,2,3}.txt``, ``testlist0{1,2,3}.txt``). Labels come from ``classInd.txt``
(number minus one); when it is unusable they follow the sorted class folders, and class
folders it does not name are indexed under extra labels, each reported. The reader of the
split lists in UCF101's format ('<Class>/<video> [label]') is here too: the folder adapter
reads its optional ``splits/`` with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from preprocess.datasets.base import (SPLIT_IDS, SUBSET_CODES, DatasetIndex, _fold, _is_video_name, _join,
                                      _line_ranges, _read_list, _scan_class_folders)
from preprocess.datasets.builder import _Builder, _class_resolver
from preprocess.datasets.layout import _check_root, _layout_error, _nested_hint, _rar_hints

UCF_VIDEO_DIR = "UCF-101"
UCF_LIST_DIR = "ucfTrainTestlist"


# --------------------------------------------------------------------------- UCF101's list format

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
