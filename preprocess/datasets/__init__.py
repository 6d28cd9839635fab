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

The package owns one thing: indexing a dataset in its real on-disk layout and checking its split
lists (or annotation files) against the files, reporting every disagreement. It must not decode
video, open a video file, or touch the cache (``preprocess/decode.py``, ``preprocess/cache/``
and ``preprocess/build.py`` do); the only file it writes is the class index, where its caller
says. It imports nothing from ``train/``.

Modules, one concern each (in the style of pytorchvideo: one file per dataset over a shared base):

* ``base.py``: the index types (``DatasetIndex``, ``VideoEntry``, ``split_members``),
  ``DatasetLayoutError``, the shared constants, the class-index file, and the helpers every
  adapter reads the disk and the list files with.
* ``builder.py``: ``_Builder``, which turns class folders plus split lists into an index with
  its problems (UCF101, HMDB51, folder).
* ``layout.py``: the messages of ``DatasetLayoutError`` (expected trees, download hints).
* ``ucf101.py``, ``hmdb51.py``, ``folder.py``, ``kinetics.py``: one adapter each.
* ``subsets.py``: ``select_classes`` and class-subset files.
* this file: the public API (import everything from here) and ``load_dataset``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

# Every public name of the former single module preprocess/datasets.py stays importable from here.
from preprocess.datasets.base import (DEMO_COMMAND, EXPECTED_COUNTS, HMDB_URL, KINETICS_URL, SPLIT_IDS,
                                      SUBSET_CODES, UCF_URL, VIDEO_EXTENSIONS, DatasetIndex, DatasetLayoutError,
                                      VideoEntry, load_class_index, save_class_index, split_members)
from preprocess.datasets.folder import FOLDER_SPLIT_DIR, _load_folder
from preprocess.datasets.hmdb51 import HMDB_NESTED_DIR, HMDB_SPLIT_DIR, _load_hmdb
from preprocess.datasets.kinetics import (KINETICS_ANN_DIR, KINETICS_DETAIL_LIMIT, KINETICS_SPLITS, _load_kinetics,
                                          kinetics_stem)
from preprocess.datasets.subsets import UnknownClassesError, read_class_subset, select_classes
from preprocess.datasets.ucf101 import UCF_LIST_DIR, UCF_VIDEO_DIR, _load_ucf

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
