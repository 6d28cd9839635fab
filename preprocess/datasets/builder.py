"""The index builder of the list-based adapters (UCF101 / demo, HMDB51, folder).

These datasets are a tree of class folders plus split lists: :class:`_Builder` holds the
videos found on disk, looks up each list entry (exactly, else ignoring case and Unicode
normalisation), records its split code (the higher code wins on a conflict, so a test video
never leaks into training), and reports duplicates, unlisted videos and counts that differ from
the official release. Kinetics has a different shape (annotation CSVs, clips missing by the
thousand) and builds its index itself in ``kinetics.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

from preprocess.datasets.base import EXPECTED_COUNTS, DatasetIndex, VideoEntry, _fold, _join

_CODE_NAMES = {0: "unused", 1: "train", 2: "test"}


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
