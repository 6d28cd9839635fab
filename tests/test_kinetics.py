"""Kinetics in its official release layout: the adapter, class subsets, and extraction on a Dask
cluster, on generated trees with the missing and broken clips that are the norm there."""
from __future__ import annotations

import csv
import json
import re
import socket
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from core import errors as cli

from preprocess import extract_masks
from preprocess.cache import ClipReader, DecodeParams, MaskParams, open_cache
from preprocess.datasets import (KINETICS_DETAIL_LIMIT, UnknownClassesError, load_dataset, read_class_subset,
                                 select_classes)
from tests.conftest import moving_square_video, write_video

CLASSES = ("abseiling", "air drumming", "zumba")          # the annotations' label column, spaces kept
DECODE = DecodeParams(short_side=32)
STRIDES = ("1", "2")
BROKEN = "tr1_v2"                                          # a truncated file (no moov atom): fails to decode
EXTRA = "extra_000000_000010"                              # a file that no annotation row names


def clip_name(yid: str, start: int, end: int) -> str:
    return f"{yid}_{start:06d}_{end:06d}"


def make_kinetics(root: Path, ffmpeg: str, per_class: bool) -> dict:
    """A miniature Kinetics tree: <root>/{train,val}/[<class>/]<youtube_id>_<start>_<end>.mp4 and
    annotations/{train,val}.csv. Per class 3 train and 1 val clip; one train and one val row
    without a file; one truncated file; one file in no annotation. Returns what was made."""
    rows: dict[str, list[tuple[str, str, int, int]]] = {"train": [], "val": []}
    for split, n in (("train", 3), ("val", 1)):
        for ci, cls in enumerate(CLASSES):
            for k in range(n):
                # YouTube ids may start with '-' and contain '_': the file is found by the row, never parsed
                yid = f"{'-' if k == 0 else ''}{split[:2]}{ci}_v{k}"
                rows[split].append((cls, yid, 10 * k + ci, 10 * k + ci + 10))
    gone = {"train": ("zumba", "gone_train", 30, 40), "val": ("abseiling", "gone_val", 0, 10)}
    files, missing_lines, seed = {}, {}, 0
    for split in ("train", "val"):
        for cls, yid, t0, t1 in rows[split]:
            rel = f"{split}/{cls + '/' if per_class else ''}{clip_name(yid, t0, t1)}.mp4"
            seed += 1
            path = write_video(root / rel, moving_square_video(10, 48, 64, seed=seed, direction=1 + seed % 2), ffmpeg)
            if yid == BROKEN:
                path.write_bytes(path.read_bytes()[:1500])
            files[rel] = (cls, split)
    extra = f"val/{'zumba/' if per_class else ''}{EXTRA}.mp4"
    write_video(root / extra, moving_square_video(10, 48, 64, seed=99), ffmpeg)
    ann = root / "annotations"
    ann.mkdir(parents=True)
    # train.csv as csv.writer writes it (labels with spaces unquoted); the missing row on line 5
    train = rows["train"][:3] + [gone["train"]] + rows["train"][3:]
    with open(ann / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows([cls, yid, t0, t1, "train"] for cls, yid, t0, t1 in train)
    missing_lines["annotations/train.csv"] = 5
    # val.csv: quoted labels, CRLF, an extra column (is_cc), the missing row last (line 5)
    val = rows["val"] + [gone["val"]]
    text = "label,youtube_id,time_start,time_end,split,is_cc\r\n" + "".join(
        f'"{cls}",{yid},{t0},{t1},val,0\r\n' for cls, yid, t0, t1 in val)
    (ann / "val.csv").write_text(text)
    missing_lines["annotations/val.csv"] = 5
    return {"root": root, "files": files, "extra": extra, "gone": gone, "missing_lines": missing_lines,
            "broken": next(rel for rel in files if BROKEN in rel)}


@pytest.fixture(scope="module")
def trees(tmp_path_factory, ffmpeg_exe) -> dict:
    base = tmp_path_factory.mktemp("kinetics")
    return {layout: make_kinetics(base / layout, ffmpeg_exe, per_class=layout == "per_class")
            for layout in ("flat", "per_class")}


def extract(tree: dict, cache: Path, *extra: str, workers: int = 1) -> list[str]:
    return ["--dataset", "kinetics", "--data-root", str(tree["root"]), "--cache-dir", str(cache),
            "--short-side", str(DECODE.short_side), "--strides", *STRIDES, "--videos-per-shard", "3",
            "--workers", str(workers), *extra]


def one_line_error(capsys, prog: str = "extract_masks.py") -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return err.strip()


def shard_contents(folder: Path) -> dict:
    """Every dataset and attribute of every shard, less what is random per run (uids) and the
    index checksum, which covers the uids."""
    out = {}
    for path in sorted(folder.glob("shard-*.h5")):
        with h5py.File(path, "r") as f:
            data = {k: f[k][()] for k in f.keys()}
            attrs = {k: v for k, v in f.attrs.items() if k not in ("uid", "frames_uid", "index_crc32")}
        out[path.name] = (data, attrs)
    for path in sorted(folder.glob("shard-*.json")):          # mask statistics, one file per shard
        body = json.loads(path.read_text())
        body.pop("frames_uid")
        out[path.name] = body
    return out


def assert_same_contents(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith(".json"):
            assert a[name] == b[name], name
            continue
        (da, aa), (db, ab) = a[name], b[name]
        assert da.keys() == db.keys() and aa.keys() == ab.keys(), name
        for k in da:
            assert np.array_equal(da[k], db[k]), (name, k)
        for k in aa:
            assert np.array_equal(aa[k], ab[k]) if isinstance(aa[k], np.ndarray) else aa[k] == ab[k], (name, k)


# --------------------------------------------------------------------------- the adapter


@pytest.mark.parametrize("layout", ["flat", "per_class"])
def test_adapter_indexes_official_layout_and_reports_missing_extra(trees, layout):
    tree = trees[layout]
    idx = load_dataset("kinetics", tree["root"])
    assert idx.classes == CLASSES
    # every file a row names, the truncated one included (decoding is the extractor's business)
    assert [v.rel_path for v in idx.videos] == sorted(tree["files"])
    for v in idx.videos:
        cls, split = tree["files"][v.rel_path]
        assert v.class_name == cls and v.label == CLASSES.index(cls)
        code = 1 if split == "train" else 2
        assert v.splits == (code, code, code)      # Kinetics' one split, in every split slot
    assert idx.counts() == {"videos": 12, "classes": 3, "splits": ((9, 3), (9, 3), (9, 3))}

    probs = "\n".join(idx.problems)
    for shown, line in tree["missing_lines"].items():
        assert re.search(rf"^{re.escape(shown)}:{line}: listed video '.*gone_\w+' .* not found on disk", probs, re.M)
        n_rows = {"annotations/train.csv": 10, "annotations/val.csv": 4}[shown]
        assert re.search(rf"^{re.escape(shown)}: 1 of {n_rows} listed video\(s\) missing on disk \(line {line}\)",
                         probs, re.M)
    assert f"{tree['extra']}: video on disk is in no annotation file" in probs
    assert len(idx.problems) == 5, idx.problems
    assert idx.missing == (f"annotations/train.csv:5\ttrain/{clip_name('gone_train', 30, 40)}.mp4\tzumba",
                           f"annotations/val.csv:5\tval/{clip_name('gone_val', 0, 10)}.mp4\tabseiling")


def test_adapter_problems_capped_wrong_folder_duplicates_and_layout_errors(tmp_path):
    from preprocess.datasets import DatasetLayoutError

    root = tmp_path / "k"
    (root / "train" / "abseiling").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "train" / "abseiling" / "a_000000_000010.mp4").write_bytes(b"x")     # annotated as zumba
    (root / "train" / "abseiling" / "b_000001_000011.mp4").write_bytes(b"x")
    n_gone = KINETICS_DETAIL_LIMIT + 5
    lines = ["label,youtube_id,time_start,time_end,split", "zumba,a,0,10,train", "abseiling,b,1,11,train",
             "abseiling,b,1,11,train", "abseiling,c,x,11,train"]
    lines += [f"zumba,gone{i},0,10,train" for i in range(n_gone)]
    (root / "annotations" / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "annotations" / "val.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                                 "abseiling,b,1,11,val\n")
    idx = load_dataset("kinetics", root)
    probs = list(idx.problems)
    assert "annotations/train.csv:2: train/abseiling/a_000000_000010.mp4 is in the folder 'abseiling' but " \
           "annotated as 'zumba'; the annotation's label is used" in probs
    assert any(p.startswith("annotations/train.csv:4: duplicate row for 'b_000001_000011' (already at "
                            "annotations/train.csv:3)") for p in probs)
    assert any(p.startswith("annotations/train.csv:5: malformed row") for p in probs)
    assert any(p.startswith("annotations/val.csv:2: 'b_000001_000011' is also in annotations/train.csv:3")
               for p in probs)
    detail = [p for p in probs if re.match(r"annotations/train.csv:\d+: listed video 'gone", p)]
    assert len(detail) == KINETICS_DETAIL_LIMIT                     # capped, then counted
    assert f"annotations/train.csv: {n_gone} of {n_gone + 3} listed video(s) missing on disk (lines 6..{5 + n_gone})" \
        in "\n".join(probs)
    assert len(idx.missing) == n_gone
    by_name = {v.rel_path.rsplit("/", 1)[-1]: v for v in idx.videos}
    assert by_name["a_000000_000010.mp4"].class_name == "zumba"
    assert by_name["b_000001_000011.mp4"].splits == (2, 2, 2)       # in both splits: never trained on

    (root / "annotations" / "train.csv").unlink()
    (root / "annotations" / "val.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="neither train.csv nor val.csv") as e:
        load_dataset("kinetics", root)
    assert "annotations/train.csv" in str(e.value) and "cvdfoundation" in str(e.value)
    (root / "annotations" / "val.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,q,0,10,val\n")
    with pytest.raises(DatasetLayoutError, match="none of the 1 annotated videos"):
        load_dataset("kinetics", root)


def test_select_classes_subset_and_max_per_class(trees, tmp_path):
    idx = load_dataset("kinetics", trees["per_class"]["root"])
    sub = select_classes(idx, ["zumba", "Air_Drumming"], max_per_class=2)   # lenient: case, '_' for ' '
    assert sub.classes == ("air drumming", "zumba")
    names = [v.rel_path for v in sub.videos]
    # first 2 by file name per class and split ('-' sorts before letters); val has 1 per class
    assert names == sorted([
        f"train/air drumming/{clip_name('-tr1_v0', 1, 11)}.mp4", f"train/air drumming/{clip_name('tr1_v1', 11, 21)}.mp4",
        f"train/zumba/{clip_name('-tr2_v0', 2, 12)}.mp4", f"train/zumba/{clip_name('tr2_v1', 12, 22)}.mp4",
        f"val/air drumming/{clip_name('-va1_v0', 1, 11)}.mp4", f"val/zumba/{clip_name('-va2_v0', 2, 12)}.mp4"])
    assert [v.label for v in sub.videos] == [0, 0, 1, 1, 0, 1]
    assert sub.missing == (idx.missing[0],)                 # only the subset's missing rows
    assert select_classes(idx, None, 1).classes == CLASSES and len(select_classes(idx, None, 1).videos) == 6
    with pytest.raises(UnknownClassesError) as e:
        select_classes(idx, ["zumbaa", "abseiling", "foo"])
    assert e.value.names == ("zumbaa", "foo") and "did you mean 'zumba'" in str(e.value)

    f = tmp_path / "subset.txt"
    f.write_text("\ufeff# Mini-Kinetics, two classes\r\nzumba\r\n\r\n  air drumming  \r\n")
    assert read_class_subset(f) == ["zumba", "air drumming"]
    f.write_text("zumba\nzumba\n")
    with pytest.raises(ValueError, match="twice"):
        read_class_subset(f)


# --------------------------------------------------------------------------- extraction


def test_extract_reports_missing_and_broken_and_caches_the_rest(trees, tmp_path, capsys):
    tree = trees["flat"]
    cache = tmp_path / "cache"
    assert extract_masks.main(extract(tree, cache)) == 1          # the broken clip failed, the rest are cached
    out, err = capsys.readouterr()
    broken = tree["root"] / tree["broken"]
    frame_set = cache / "kinetics" / DECODE.key()
    failures = (frame_set / "failures.txt").read_text()
    assert failures.count("\n") == 1 and failures.startswith(f"{broken}\t")
    assert f"FAILED {broken}" in err
    assert "dataset problem: annotations/train.csv:5: listed video" in err
    assert f"dataset problem: {tree['extra']}: video on disk is in no annotation file" in err
    missing = (frame_set / "missing.txt").read_text().splitlines()
    assert missing[1:] == list(load_dataset("kinetics", tree["root"]).missing) and len(missing) == 3
    assert json.loads((cache / "kinetics" / "selection.json").read_text()) == \
        {"dataset": "kinetics", "classes": "all", "max_per_class": None}

    index = open_cache(cache, "kinetics", decode=DECODE, masks=MaskParams(), strides=(1, 2))
    assert index.classes == CLASSES and len(index) == 11
    assert sorted(index.names) == sorted(rel for rel in tree["files"] if rel != tree["broken"])
    for i, name in enumerate(index.names):
        assert index.labels[i] == CLASSES.index(tree["files"][name][0])
    for split in (1, 2, 3):
        assert len(index.subset(split, "train")) == 8 and len(index.subset(split, "test")) == 3
    reader = ClipReader(index)
    assert reader.frames(0, np.arange(10)).shape == (10, 32, 43, 3)          # 64x48 -> short side 32
    assert reader.diffs(0, np.arange(0, 10, 2), 2).shape == (5, 32, 43)

    capsys.readouterr()
    assert extract_masks.main(extract(tree, cache)) == 1           # known failure stays failed; nothing redone
    assert "nothing to do" in capsys.readouterr().out


def test_subset_gets_its_own_cache_name_and_never_mixes(trees, tmp_path, capsys):
    tree = trees["per_class"]
    cache = tmp_path / "cache"
    assert extract_masks.main(extract(tree, cache)) == 1
    full = shard_contents(cache / "kinetics" / DECODE.key() / "frames")
    full_files = {p: p.stat().st_mtime_ns for p in (cache / "kinetics").rglob("*") if p.is_file()}

    subset = tmp_path / "mini.txt"
    subset.write_text("zumba\nair_drumming\n")
    capsys.readouterr()
    assert extract_masks.main(extract(tree, cache, "--class-subset", str(subset), "--max-per-class", "2")) == 0
    name = re.search(r"cache name (kinetics-[0-9a-f]{8}) \(the trainer's --dataset\)", capsys.readouterr().out)[1]
    index = open_cache(cache, name, decode=DECODE, masks=MaskParams(), strides=(1, 2))
    assert index.classes == ("air drumming", "zumba") and len(index) == 6
    assert sorted(index.names) == [v.rel_path for v in select_classes(
        load_dataset("kinetics", tree["root"]), ["zumba", "air drumming"], 2).videos]
    assert json.loads((cache / name / "selection.json").read_text()) == \
        {"dataset": "kinetics", "classes": ["air drumming", "zumba"], "max_per_class": 2}
    # the full set's files are untouched
    assert {p: p.stat().st_mtime_ns for p in (cache / "kinetics").rglob("*") if p.is_file()} == full_files
    assert_same_contents(shard_contents(cache / "kinetics" / DECODE.key() / "frames"), full)

    # the same selection again: the same name, nothing to do; another selection: another name
    capsys.readouterr()
    assert extract_masks.main(extract(tree, cache, "--class-subset", str(subset), "--max-per-class", "2")) == 0
    out = capsys.readouterr().out
    assert name in out and "nothing to do" in out
    assert extract_masks.main(extract(tree, cache, "--class-subset", str(subset), "--max-per-class", "1")) == 0
    assert len({p.name for p in cache.iterdir() if p.name.startswith("kinetics-")}) == 2

    # a named folder holding another selection is refused before any work
    capsys.readouterr()
    argv = extract(tree, cache, "--class-subset", str(subset), "--cache-name", "kinetics")
    assert cli.run(extract_masks.main, "extract_masks.py", argv) == 2
    err = one_line_error(capsys)
    assert "--cache-name kinetics:" in err and "caches another selection" in err
    assert {p: p.stat().st_mtime_ns for p in (cache / "kinetics").rglob("*") if p.is_file()} == full_files
    assert extract_masks.main(extract(tree, cache, "--class-subset", str(subset), "--cache-name", "mini")) == 1
    assert len(open_cache(cache, "mini", decode=DECODE, masks=MaskParams(), strides=(1, 2))) == 7   # all 3 + 1 val, less the broken


def test_unknown_class_and_bad_subset_flags_exit_2_before_any_work(trees, tmp_path, capsys):
    tree = trees["flat"]
    cache = tmp_path / "cache"
    bad = tmp_path / "bad.txt"
    bad.write_text("zumba\nzumbaa\nfencing\n")
    cases = [
        (["--class-subset", str(bad)], "--class-subset", "2 unknown class name(s): 'zumbaa' (did you mean 'zumba'?), 'fencing'"),
        (["--class-subset", str(tmp_path / "none.txt")], "--class-subset", "no such file"),
        (["--max-per-class", "0"], "--max-per-class 0", "must be an integer >= 1"),
        (["--cache-name", "../x"], "--cache-name ../x", "a folder name"),
        (["--joblib-backend", "dask"], "--joblib-backend dask", "needs --scheduler"),
        (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler tcp://127.0.0.1:8786", "only with --joblib-backend dask"),
    ]
    for flags, flag, expected in cases:
        capsys.readouterr()
        assert cli.run(extract_masks.main, "extract_masks.py", extract(tree, cache, *flags)) == 2, flags
        err = one_line_error(capsys)
        assert flag in err and expected in err, err
    capsys.readouterr()
    argv = ["--dataset", "ucf101", "--cache-dir", str(cache), "--max-per-class", "3"]
    assert cli.run(extract_masks.main, "extract_masks.py", argv) == 2
    assert "only with --dataset kinetics" in one_line_error(capsys)
    assert not cache.exists()


# --------------------------------------------------------------------------- Dask


def test_dask_backend_builds_the_same_cache_as_loky(trees, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    tree = trees["flat"]
    loky, dask = tmp_path / "loky", tmp_path / "dask"
    assert extract_masks.main(extract(tree, loky, workers=2)) == 1
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        capsys.readouterr()
        assert extract_masks.main(extract(tree, dask, "--joblib-backend", "dask", "--scheduler",
                                          cluster.scheduler_address)) == 1
        out = capsys.readouterr().out
        assert f"Dask scheduler {cluster.scheduler_address}: 2 worker(s)" in out
        assert f"the Dask cluster at {cluster.scheduler_address}" in out
    a, b = loky / "kinetics" / DECODE.key(), dask / "kinetics" / DECODE.key()
    folders = sorted(p.name for p in a.iterdir() if p.is_dir())
    assert folders == sorted(p.name for p in b.iterdir() if p.is_dir()) and len(folders) == 4   # + the statistics
    for folder in folders:             # shard by shard, every dataset and attribute but the uids
        assert_same_contents(shard_contents(a / folder), shard_contents(b / folder))
        ma, mb = (json.loads((x / folder / "manifest.json").read_text()) for x in (a, b))
        for m in (ma, mb):
            for k in ("shard_uids", "frames_shard_uids", "sha256"):
                m.pop(k, None)
        assert ma == mb
    for report in ("failures.txt", "missing.txt"):
        assert (a / report).read_bytes() == (b / report).read_bytes()
    ia = open_cache(loky, "kinetics", decode=DECODE, masks=MaskParams(), strides=(1, 2))
    ib = open_cache(dask, "kinetics", decode=DECODE, masks=MaskParams(), strides=(1, 2))
    assert list(ia.names) == list(ib.names)
    ra, rb = ClipReader(ia), ClipReader(ib)
    for v in range(len(ia)):
        t = np.arange(ia.n_frames[v])
        assert np.array_equal(ra.frames(v, t), rb.frames(v, t))
        for s in (1, 2):
            assert np.array_equal(ra.diffs(v, t, s), rb.diffs(v, t, s))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dask_unreachable_scheduler_or_missing_dask_exit_2_quickly(trees, tmp_path, capsys, monkeypatch):
    tree = trees["flat"]
    cache = tmp_path / "cache"
    address = f"tcp://127.0.0.1:{free_port()}"
    argv = extract(tree, cache, "--joblib-backend", "dask", "--scheduler", address, "--scheduler-timeout", "1")
    capsys.readouterr()
    t0 = time.perf_counter()
    assert cli.run(extract_masks.main, "extract_masks.py", argv) == 2
    assert time.perf_counter() - t0 < 15
    err = one_line_error(capsys)
    assert f"--scheduler {address}: no Dask scheduler reachable there within 1 s" in err
    for bad in ("foo://host:1", "tcp://"):
        argv = extract(tree, cache, "--joblib-backend", "dask", "--scheduler", bad, "--scheduler-timeout", "1")
        assert cli.run(extract_masks.main, "extract_masks.py", argv) == 2
        assert f"--scheduler {bad}: not a Dask scheduler address" in one_line_error(capsys)

    monkeypatch.setitem(sys.modules, "dask.distributed", None)      # as if dask were not installed
    assert cli.run(extract_masks.main, "extract_masks.py", argv) == 2
    err = one_line_error(capsys)
    assert "--joblib-backend dask: needs dask.distributed, which is not installed" in err
    assert "pip install 'dask[distributed]==" in err
    assert not cache.exists()
