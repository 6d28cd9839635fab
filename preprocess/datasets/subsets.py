"""Class subsets of an index (Mini-Kinetics style): ``select_classes`` and subset files.

It works on any :class:`DatasetIndex` after it is built, so it is separate from the adapters:
it keeps the videos of some classes (optionally at most N per class and split part), renumbers
the labels, and names unknown classes with a close match when there is one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Sequence, Union

from preprocess.datasets.base import DatasetIndex, VideoEntry, _label_key, _read_list


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
