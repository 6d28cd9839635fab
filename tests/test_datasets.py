"""Dataset adapters on miniature UCF101 / HMDB51 / folder trees in their real on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preprocess import datasets as ds
from preprocess.datasets import (
    DATASETS,
    DEMO_COMMAND,
    EXPECTED_COUNTS,
    DatasetIndex,
    DatasetLayoutError,
    VideoEntry,
    load_class_index,
    load_dataset,
    save_class_index,
    split_members,
)


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def write(path: Path, text: str, crlf: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes(data.encode("utf-8"))


def problems_matching(index: DatasetIndex, *needles: str) -> list[str]:
    return [p for p in index.problems if all(n in p for n in needles)]


# --------------------------------------------------------------------------- UCF101 fixtures

UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
# file names as on disk; note the real HandstandPushups folder holds v_HandStandPushups_*
UCF_FILES = {
    "ApplyEyeMakeup": ["v_ApplyEyeMakeup_g01_c01.avi", "v_ApplyEyeMakeup_g08_c01.avi", "v_ApplyEyeMakeup_g09_c01.avi"],
    "HandstandPushups": ["v_HandStandPushups_g01_c01.avi", "v_HandStandPushups_g08_c01.avi"],
    "YoYo": ["v_YoYo_g01_c01.avi", "v_YoYo_g08_c01.avi"],
}
# per split: (train, test); group g01 is test in split 1, g08 in split 2, g09 in split 3
UCF_TEST_GROUP = {1: "g01", 2: "g08", 3: "g09"}


def clean_ucf_lists() -> dict[str, list[str]]:
    lists = {}
    for k, g in UCF_TEST_GROUP.items():
        train, test = [], []
        for num, cls in enumerate(UCF_CLASSES, 1):
            for f in UCF_FILES[cls]:
                if f"_{g}_" in f:
                    test.append(f"{cls}/{f}")
                else:
                    train.append(f"{cls}/{f} {num}")
        lists[f"trainlist0{k}.txt"] = train
        lists[f"testlist0{k}.txt"] = test
    return lists


def make_ucf(root: Path, lists: dict[str, list[str]] | None = None, extra_files=(), crlf=()) -> Path:
    for cls, files in UCF_FILES.items():
        for f in files:
            touch(root / "UCF-101" / cls / f)
    for rel in extra_files:
        touch(root / "UCF-101" / rel)
    ltd = root / "ucfTrainTestlist"
    write(ltd / "classInd.txt", "".join(f"{i} {c}\n" for i, c in enumerate(UCF_CLASSES, 1)), crlf=True)
    for fname, lines in (lists if lists is not None else clean_ucf_lists()).items():
        write(ltd / fname, "".join(l + "\n" for l in lines), crlf=fname in crlf)
    return root


def test_ucf_clean_tree_indexes_everything(tmp_path):
    root = make_ucf(tmp_path / "ucf", crlf=("trainlist01.txt",))
    idx = load_dataset("demo", root)
    assert idx.name == "demo"
    assert idx.root == root
    assert idx.classes == tuple(UCF_CLASSES)
    assert idx.problems == ()
    assert len(idx.videos) == 7
    rels = [v.rel_path for v in idx.videos]
    assert rels == sorted(rels)
    by = {v.rel_path: v for v in idx.videos}
    e = by["UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"]
    assert e == VideoEntry(
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", 0, (1, 2, 1)
    )
    hs = by["UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi"]
    assert (hs.class_name, hs.label, hs.splits) == ("HandstandPushups", 1, (2, 1, 1))
    assert by["UCF-101/YoYo/v_YoYo_g08_c01.avi"].label == 2
    assert idx.path(hs) == root / "UCF-101" / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi"
    assert idx.path(0) == root / idx.videos[0].rel_path
    assert idx.counts() == {"videos": 7, "classes": 3, "splits": ((4, 3), (4, 3), (6, 1))}
    s = idx.summary()
    assert "7 videos, 3 classes" in s and "split 1: 4 train, 3 test" in s and "problems: 0" in s
    # deterministic
    assert load_dataset("demo", str(root)) == idx


def test_ucf_split_members(tmp_path):
    idx = load_dataset("demo", make_ucf(tmp_path / "ucf"))
    test1 = split_members(idx, 1, "test")
    assert [idx.videos[i].rel_path.rsplit("/", 1)[1] for i in test1] == [
        "v_ApplyEyeMakeup_g01_c01.avi", "v_HandStandPushups_g01_c01.avi", "v_YoYo_g01_c01.avi"
    ]
    assert len(split_members(idx, 3, "train")) == 6
    assert set(split_members(idx, 2, "train")).isdisjoint(split_members(idx, 2, "test"))
    with pytest.raises(ValueError):
        split_members(idx, 4, "train")
    with pytest.raises(ValueError):
        split_members(idx, 1, "val")


def test_ucf_quirks_are_reported_not_fatal(tmp_path):
    lists = clean_ucf_lists()
    # trailing whitespace, blank lines, a listed file that is missing on disk
    lists["trainlist01.txt"] = (
        [l + "  \t" for l in lists["trainlist01.txt"]]
        + ["", "   ", "ApplyEyeMakeup/v_ApplyEyeMakeup_g10_c01.avi 1"]
    )
    # malformed line and a label that disagrees with classInd
    lists["trainlist02.txt"] = [
        "YoYo/v_YoYo_g01_c01.avi 2" if l.startswith("YoYo/v_YoYo_g01") else l
        for l in lists["trainlist02.txt"]
    ] + ["this is not a video line"]
    # unknown class and a duplicate entry
    lists["testlist03.txt"] = lists["testlist03.txt"] + [
        "Foo/v_Foo_g01_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi",
    ]
    root = make_ucf(
        tmp_path / "ucf", lists, extra_files=["YoYo/v_YoYo_g25_c01.avi"], crlf=("trainlist01.txt",)
    )
    idx = load_dataset("demo", root)

    # every video on disk is indexed, including the unlisted one
    by = {v.rel_path: v for v in idx.videos}
    extra = by["UCF-101/YoYo/v_YoYo_g25_c01.avi"]
    assert (extra.label, extra.splits) == (2, (0, 0, 0))
    assert len(idx.videos) == 8

    n_train1 = len(clean_ucf_lists()["trainlist01.txt"])
    missing = problems_matching(idx, "ucfTrainTestlist/trainlist01.txt:", "v_ApplyEyeMakeup_g10_c01.avi", "not found")
    assert len(missing) == 1
    assert missing[0].startswith(f"ucfTrainTestlist/trainlist01.txt:{n_train1 + 3}:")

    assert problems_matching(idx, "UCF-101/YoYo/v_YoYo_g25_c01.avi", "no split list")

    n_train2 = len(clean_ucf_lists()["trainlist02.txt"])
    bad = problems_matching(idx, f"ucfTrainTestlist/trainlist02.txt:{n_train2 + 1}:", "malformed")
    assert len(bad) == 1 and "this is not a video line" in bad[0]

    lab = problems_matching(idx, "ucfTrainTestlist/trainlist02.txt:", "label 2", "classInd.txt", "YoYo = 3")
    assert len(lab) == 1
    # the video still gets its split code (the path is valid)
    assert by["UCF-101/YoYo/v_YoYo_g01_c01.avi"].splits[1] == 1

    n_test3 = len(clean_ucf_lists()["testlist03.txt"])
    unk = problems_matching(idx, f"ucfTrainTestlist/testlist03.txt:{n_test3 + 1}:", "unknown class 'Foo'")
    assert len(unk) == 1
    dup = problems_matching(idx, f"ucfTrainTestlist/testlist03.txt:{n_test3 + 2}:", "duplicate")
    assert len(dup) == 1 and "v_ApplyEyeMakeup_g09_c01.avi" in dup[0]

    # nothing else: CRLF, whitespace, blank lines and the HandStand naming are fine
    assert len(idx.problems) == 6, idx.problems
    assert "problems: 6" in idx.summary()


def test_ucf_train_test_conflict_resolves_to_test(tmp_path):
    lists = clean_ucf_lists()
    lists["testlist01.txt"].append("YoYo/v_YoYo_g08_c01.avi")  # also in trainlist01
    idx = load_dataset("demo", make_ucf(tmp_path / "ucf", lists))
    (p,) = idx.problems
    assert p.startswith("ucfTrainTestlist/testlist01.txt:4:") and "trainlist01.txt:" in p
    assert "treated as test" in p
    v = next(v for v in idx.videos if v.rel_path.endswith("v_YoYo_g08_c01.avi"))
    assert v.splits[0] == 2


def test_ucf_case_mismatch_and_unknown_folder(tmp_path):
    lists = clean_ucf_lists()
    # a list that spells the HandStand class/file differently from the disk
    lists["testlist02.txt"] = [
        l.replace("HandstandPushups/v_HandStandPushups", "HandStandPushups/v_HandstandPushups")
        for l in lists["testlist02.txt"]
    ]
    root = make_ucf(tmp_path / "ucf", lists, extra_files=["Zumba/v_Zumba_g01_c01.avi"])
    idx = load_dataset("demo", root)
    v = next(v for v in idx.videos if v.rel_path.endswith("v_HandStandPushups_g08_c01.avi"))
    assert v.splits == (1, 2, 1)
    assert problems_matching(idx, "ucfTrainTestlist/testlist02.txt:", "ignoring case")
    # an unknown class folder is indexed under an extra label after the classInd classes
    assert idx.classes == (*UCF_CLASSES, "Zumba")
    z = next(v for v in idx.videos if v.class_name == "Zumba")
    assert z.label == 3 and z.splits == (0, 0, 0)
    assert problems_matching(idx, "UCF-101/Zumba/", "not in classInd.txt")


def test_ucf_missing_list_file_and_class_folder(tmp_path):
    lists = clean_ucf_lists()
    del lists["testlist03.txt"]
    root = make_ucf(tmp_path / "ucf", lists)
    for f in (root / "UCF-101" / "YoYo").iterdir():
        f.unlink()
    (root / "UCF-101" / "YoYo").rmdir()
    idx = load_dataset("demo", root)
    assert problems_matching(idx, "ucfTrainTestlist/testlist03.txt", "missing")
    assert problems_matching(idx, "UCF-101/YoYo/", "no videos on disk")
    grouped = problems_matching(idx, "ucfTrainTestlist/trainlist03.txt:", "2 listed", "class 'YoYo'", "lines")
    assert grouped and "UCF-101/YoYo/" in grouped[0]
    assert idx.classes == tuple(UCF_CLASSES)  # labels stay those of classInd


def test_ucf_counts_check(tmp_path, monkeypatch):
    root = make_ucf(tmp_path / "ucf")
    idx = load_dataset("ucf101", root)
    (p,) = idx.problems
    assert "expected 13320 videos, 101 classes, split 1 9537/3783" in p
    assert "found 7 videos, 3 classes, split 1 4/3, split 2 4/3, split 3 6/1" in p
    assert EXPECTED_COUNTS["ucf101"]["splits"] == ((9537, 3783), (9586, 3734), (9624, 3696))
    assert EXPECTED_COUNTS["hmdb51"] == {"videos": 6766, "classes": 51, "splits": ((3570, 1530),) * 3}
    monkeypatch.setitem(EXPECTED_COUNTS, "ucf101", idx.counts())
    assert load_dataset("ucf101", root).problems == ()


def test_ucf_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError) as e:
        load_dataset("ucf101", tmp_path / "nowhere")
    msg = str(e.value)
    for needle in ("does not exist", "UCF-101/", "ucfTrainTestlist/", "classInd.txt", "UCF101.rar",
                   "UCF101TrainTestSplits-RecognitionTask.zip", DEMO_COMMAND):
        assert needle in msg, needle

    root = tmp_path / "ucf"
    root.mkdir()
    touch(root / "UCF101.rar")
    with pytest.raises(DatasetLayoutError) as e:
        load_dataset("ucf101", root)
    assert "UCF-101" in str(e.value) and "unrar x UCF101.rar" in str(e.value)

    touch(root / "UCF-101" / "YoYo" / "v_YoYo_g01_c01.avi")
    (root / "splits_zip" / "ucfTrainTestlist").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as e:
        load_dataset("ucf101", root)
    assert "ucfTrainTestlist" in str(e.value) and DEMO_COMMAND in str(e.value)
    assert f"Found {root / 'splits_zip' / 'ucfTrainTestlist'}: move it" in str(e.value)

    (root / "ucfTrainTestlist").mkdir()
    (root / "UCF-101" / "YoYo" / "v_YoYo_g01_c01.avi").unlink()
    with pytest.raises(DatasetLayoutError, match="no videos"):
        load_dataset("ucf101", root)

    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("sports1m", root)


# --------------------------------------------------------------------------- HMDB51

HMDB = {
    "brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi",
                   "brushing_hair_brush_hair_h_cm_np1_le_goo_1.avi"],
    "cartwheel": ["#20_Rhythm_clap_cartwheel_f_cm_np1_le_med_0.avi", "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
                  "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi"],
}
# code per split for each video (in file order)
HMDB_CODES = {1: [1, 1, 2], 2: [1, 2, 0], 3: [2, 1, 1]}


def make_hmdb(root: Path, nested: bool = False, lines_override=None) -> Path:
    vids = root / "hmdb51_org" if nested else root
    for cls, files in HMDB.items():
        for f in files:
            touch(vids / cls / f)
        for k, codes in HMDB_CODES.items():
            name = f"{cls}_test_split{k}.txt"
            lines = [f"{f} {c} " for f, c in zip(files, codes)]  # real files have a trailing space
            if lines_override and name in lines_override:
                lines = lines_override[name]
            write(root / "testTrainMulti_7030_splits" / name, "".join(l + "\n" for l in lines))
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_hmdb_index(tmp_path, nested):
    root = make_hmdb(tmp_path / "hmdb", nested=nested)
    idx = load_dataset("hmdb51", root)
    prefix = "hmdb51_org/" if nested else ""
    assert idx.classes == ("brush_hair", "cartwheel")
    assert len(idx.videos) == 6
    (counts,) = idx.problems  # only the counts check against the real release
    assert "expected 6766 videos, 51 classes" in counts and "found 6 videos, 2 classes" in counts
    by = {v.rel_path: v for v in idx.videos}
    v = by[prefix + "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi"]
    assert (v.class_name, v.label, v.splits) == ("cartwheel", 1, (1, 2, 1))
    v = by[prefix + "brush_hair/brushing_hair_brush_hair_h_cm_np1_le_goo_1.avi"]
    assert (v.label, v.splits) == (0, (2, 0, 1))
    assert [v.rel_path for v in idx.videos] == sorted(by)
    assert idx.path(v).is_file()


def test_hmdb_problems(tmp_path):
    files = HMDB["cartwheel"]
    override = {
        "cartwheel_test_split2.txt": [
            f"{files[0]} 1",
            f"{files[1]} 7",          # bad code
            "missing_video_cartwheel_f_cm_np1_le_med_0.avi 2",
            f"{files[0]} 1",          # duplicate
        ],
    }
    root = make_hmdb(tmp_path / "hmdb", lines_override=override)
    touch(root / "cartwheel" / "unlisted_cartwheel_f_cm_np1_le_med_0.avi")
    (root / "testTrainMulti_7030_splits" / "brush_hair_test_split3.txt").unlink()
    idx = load_dataset("hmdb51", root)
    f = "testTrainMulti_7030_splits/cartwheel_test_split2.txt"
    assert len(problems_matching(idx, f"{f}:2:", "malformed", " 7'")) == 1
    assert len(problems_matching(idx, f"{f}:3:", "missing_video", "not found")) == 1
    assert len(problems_matching(idx, f"{f}:4:", "duplicate", f"{f}:1)")) == 1
    assert problems_matching(idx, "testTrainMulti_7030_splits/brush_hair_test_split3.txt", "missing")
    assert problems_matching(idx, "cartwheel/unlisted_cartwheel_f_cm_np1_le_med_0.avi", "no split list")
    assert problems_matching(idx, "split 2:", "no split-2 list")  # files[1] lost its split-2 line
    assert problems_matching(idx, "counts differ")
    assert len(idx.videos) == 7


def test_hmdb_layout_errors(tmp_path):
    root = tmp_path / "hmdb"
    with pytest.raises(DatasetLayoutError) as e:
        load_dataset("hmdb51", root)
    msg = str(e.value)
    for needle in ("testTrainMulti_7030_splits", "hmdb51_org.rar", "test_train_splits.rar", DEMO_COMMAND):
        assert needle in msg, needle

    # the outer archive extracted, the per-class archives not
    touch(root / "hmdb51_org" / "brush_hair.rar")
    touch(root / "hmdb51_org" / "cartwheel.rar")
    with pytest.raises(DatasetLayoutError) as e:
        load_dataset("hmdb51", root)
    assert "2 .rar file(s)" in str(e.value) and "extract each class archive" in str(e.value)

    touch(root / "brush_hair" / "a_brush_hair_u_nm_np1_ba_goo_0.avi")
    with pytest.raises(DatasetLayoutError) as e:
        load_dataset("hmdb51", root)
    assert "split-list folder" in str(e.value) and "testTrainMulti_7030_splits" in str(e.value)


# --------------------------------------------------------------------------- folder


def test_folder_without_lists_non_ascii_and_spaces(tmp_path):
    root = tmp_path / "my videos"
    touch(root / "Zeitlupe Fußball" / "Tor über Kopf.MP4")
    touch(root / "Zeitlupe Fußball" / "sub dir" / "clip 2.webm")
    touch(root / "árbol" / "a.mkv")
    touch(root / "archery" / "x.MOV")
    touch(root / "archery" / "notes.txt")
    touch(root / "archery" / "._x.MOV")  # macOS resource fork: ignored
    (root / "empty").mkdir()
    touch(root / "loose.avi")
    idx = load_dataset("folder", root)
    assert idx.classes == ("Zeitlupe Fußball", "archery", "árbol")
    assert [v.rel_path for v in idx.videos] == [
        "Zeitlupe Fußball/Tor über Kopf.MP4",
        "Zeitlupe Fußball/sub dir/clip 2.webm",
        "archery/x.MOV",
        "árbol/a.mkv",
    ]
    assert all(v.splits == (0, 0, 0) for v in idx.videos)
    assert [v.label for v in idx.videos] == [0, 0, 1, 2]
    (p,) = idx.problems
    assert p.startswith("loose.avi:")
    assert idx.path(idx.videos[0]).is_file()
    assert "split lists: none" in idx.summary()


def test_folder_with_lists(tmp_path):
    root = tmp_path / "vids"
    for rel in ("b ball/one.mp4", "b ball/two.mp4", "jump/é 1.avi", "jump/é 2.avi"):
        touch(root / rel)
    write(root / "splits" / "trainlist01.txt", "b ball/one.mp4 1\njump/é 1.avi\n", crlf=True)
    write(root / "splits" / "testlist01.txt", "b ball/two.mp4\njump/é 2.avi 1\n")
    idx = load_dataset("folder", root)
    assert [v.splits for v in idx.videos] == [(1, 0, 0), (2, 0, 0), (1, 0, 0), (2, 0, 0)]
    (p,) = idx.problems
    assert p.startswith("splits/testlist01.txt:2:") and "label 1" in p and "jump = 2" in p

    write(root / "splits" / "trainlist02.txt", "b ball/one.mp4\n")
    idx = load_dataset("folder", root)
    assert problems_matching(idx, "splits/testlist02.txt", "missing")


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_dataset("folder", tmp_path / "absent")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no class folder with videos"):
        load_dataset("folder", tmp_path / "empty")


# --------------------------------------------------------------------------- class index, registry


def test_class_index_round_trip(tmp_path):
    idx = load_dataset("demo", make_ucf(tmp_path / "ucf"))
    path = save_class_index(idx, tmp_path / "cache" / "classes.json")
    assert load_class_index(path) == idx.classes
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["dataset"] == "demo" and payload["num_classes"] == 3

    names = ("Zeitlupe Fußball", "árbol", "b\udcffad")  # incl. an undecodable file name
    save_class_index(names, path)
    assert load_class_index(path) == names

    bad = tmp_path / "bad.json"
    bad.write_text('{"classes": ["a", "a"]}')
    with pytest.raises(ValueError, match="duplicate"):
        load_class_index(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a class index"):
        load_class_index(bad)


def test_registry_describes_every_dataset():
    assert set(DATASETS) == {"ucf101", "hmdb51", "folder", "demo", "kinetics"}
    assert "UCF101.rar" in DATASETS["ucf101"] and "test_train_splits.rar" in DATASETS["hmdb51"]
    assert DEMO_COMMAND in DATASETS["demo"]
    assert ds.VIDEO_EXTENSIONS >= {".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v"}
