"""Layout errors: the message of a :class:`DatasetLayoutError` for each dataset.

When a dataset is absent or unusable the user needs to see the expected tree, where to get the
archives, and how to run the demo instead; and, when we can tell, what went wrong (an archive
not extracted, a folder one level too deep). The expected trees and those hints live here, in
one place, so that every adapter raises the same kind of message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from preprocess.datasets.base import DEMO_COMMAND, HMDB_URL, KINETICS_URL, UCF_URL, DatasetLayoutError

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
