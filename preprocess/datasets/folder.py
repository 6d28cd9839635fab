"""The generic folder layout: any videos as ``<root>/<class>/<video>``.

Any common video extension (``VIDEO_EXTENSIONS``), classes sorted by name; optional
``<root>/splits/trainlist0k.txt`` / ``testlist0k.txt`` in UCF101's format (label column
optional, 1-based in sorted class order), read with UCF101's list reader. Without split lists
every video has the code 0 in all three splits.
"""

from __future__ import annotations

from pathlib import Path

from preprocess.datasets.base import VIDEO_EXTENSIONS, DatasetIndex, _scan_class_folders
from preprocess.datasets.builder import _Builder, _class_resolver
from preprocess.datasets.layout import _check_root, _layout_error
from preprocess.datasets.ucf101 import _process_ucf_lists

FOLDER_SPLIT_DIR = "splits"


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
