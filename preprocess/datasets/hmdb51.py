"""HMDB51.

``<root>/<class>/*.avi`` (or ``<root>/hmdb51_org/<class>/*.avi``) and
``<root>/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt``, one list per class and split,
with lines "<video> <code>" (code 0 unused, 1 train, 2 test). Classes sorted by name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from preprocess.datasets.base import (SPLIT_IDS, DatasetIndex, _is_hidden, _is_video_name, _join, _line_ranges,
                                      _read_list, _scan_class_folders)
from preprocess.datasets.builder import _Builder
from preprocess.datasets.layout import _check_root, _layout_error, _nested_hint, _rar_hints

HMDB_SPLIT_DIR = "testTrainMulti_7030_splits"
HMDB_NESTED_DIR = "hmdb51_org"


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
