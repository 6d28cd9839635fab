"""Kinetics-400 (or -600/-700) in the official release layout.

``<root>/{train,val}/<video>.mp4`` or ``<root>/{train,val}/<class>/<video>.mp4``, with
``<root>/annotations/{train,val}.csv`` (columns ``label,youtube_id,time_start,time_end,split``;
more columns are ignored). A row's video is the file named
``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` anywhere below its split folder. Classes
are the sorted labels of both files (names kept as written, spaces included). Kinetics has one
split: train rows get the code 1 (train) and val rows 2 (test) in all three split slots.

Its shape differs from the list-based datasets: hundreds of thousands of rows, and rows without
a file are the norm (videos taken off YouTube). So it builds its index itself rather than with
``_Builder``, and caps its problems (``_Capped``): per annotation file and kind, the first
``KINETICS_DETAIL_LIMIT`` name their row, then one line gives the count; the rows without a file
are listed in ``DatasetIndex.missing``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from preprocess.datasets.base import DatasetIndex, VideoEntry, _label_key, _line_ranges, _read_list, _walk_videos
from preprocess.datasets.layout import _check_root, _layout_error, _nested_hint

KINETICS_SPLITS = ("train", "val")
KINETICS_ANN_DIR = "annotations"
KINETICS_DETAIL_LIMIT = 20
"""Per annotation file and kind (missing file, wrong folder, ...), at most this many problems
name their row; one more line gives the count."""


# --------------------------------------------------------------------------- Kinetics

_KINETICS_REQUIRED = ("label", "youtube_id", "time_start", "time_end")
_KINETICS_HEADER = "label,youtube_id,time_start,time_end,split"
_KINETICS_SPLIT_NAMES = {"train": {"train", "training"}, "val": {"val", "valid", "validate", "validation"}}
_KINETICS_CODES = {"train": 1, "val": 2}
_KINETICS_EXT_ORDER = (".mp4", ".mkv", ".webm")


def kinetics_stem(youtube_id: str, time_start: int, time_end: int) -> str:
    """File name (without extension) of a Kinetics clip in the official release."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


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
