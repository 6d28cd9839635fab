"""preprocess/import_masks.py: named mask sets from boxes, arrays and mask functions; the checks
against the cache; the reader and the trainer using them (--mask-set); the demo's ground-truth
boxes (make_demo --write-boxes) end to end."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from preprocess.cache import CacheError, ClipReader, MaskParams, open_cache
from core.errors import run
from preprocess.import_masks import main, rasterise_boxes
from train.utils.checkpoint import load_checkpoint
from train.data import PretrainClips, make_loader
from train.mac import MACConfig, MACTransform, SpatialParams, apply_spatial, sample_clip_indices
from train.pretrain import main as pretrain_main
from tests.test_pretrain import build_tiny_cache, tiny_args

H, W, T = 48, 64, 12          # build_tiny_cache: 12 videos of 12 frames, 48x64, 8 videos per shard


def imp(*argv) -> int:
    """import_masks.py's exit status for argv (as the command line would give it)."""
    return run(main, "import_masks.py", [str(a) for a in argv])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return build_tiny_cache(tmp_path_factory.mktemp("import_cache"))


@pytest.fixture(scope="module")
def names(cache) -> list[str]:
    return [str(n) for n in open_cache(cache, "ucf101").names]


def named(cache, name: str):
    index = open_cache(cache, "ucf101", masks=MaskParams(), mask_set=name)
    return index, ClipReader(index)


def write_csv(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------
# boxes


def test_rasterise_scales_and_covers_every_overlapped_pixel():
    # 2x source: (10, 20, 50, 40) -> (5, 10, 25, 20): columns 5..24, rows 10..19, exactly
    m = rasterise_boxes([(10, 20, 50, 40)], (128, 96), (H, W))
    want = np.zeros((H, W), np.uint8)
    want[10:20, 5:25] = 255
    np.testing.assert_array_equal(m, want)
    # 0.4x: (11, 13, 31, 37) -> (4.4, 5.2, 12.4, 14.8): every pixel it overlaps, columns 4..12, rows 5..14
    m = rasterise_boxes([(11, 13, 31, 37)], (160, 120), (H, W))
    want = np.zeros((H, W), np.uint8)
    want[5:15, 4:13] = 255
    np.testing.assert_array_equal(m, want)
    # union, clipping at the frame's edge
    m = rasterise_boxes([(0, 0, 4, 4), (-6, 90, 10, 200)], (128, 96), (H, W))
    want = np.zeros((H, W), np.uint8)
    want[0:2, 0:2] = 255
    want[45:48, 0:5] = 255
    np.testing.assert_array_equal(m, want)


def test_boxes_import_exactly_and_the_reader_returns_them_at_clip_indices(cache, names, tmp_path, capsys):
    a, b = names[0], names[5]
    stem_b = Path(b).stem                                  # v_..., matched by the file's stem
    rows = [(a, 3, 10, 20, 50, 40, 0.9), (a, 3, 100, 60, 128, 96, 0.8),      # two boxes: union
            (a, 7, 0, 0, 128, 96, 0.2),                                       # dropped by --min-score
            (stem_b, 0, 64, 48, 128, 96, 0.99),
            ("Nowhere/v_unknown.avi", 0, 0, 0, 5, 5, 1.0)]                  # no cached video: ignored
    f = write_csv(tmp_path / "boxes.csv", "video,frame,x1,y1,x2,y2,score", rows)
    assert imp("--cache-dir", cache, "--name", "b", "--boxes", f, "--source-size", "128x96", "--min-score", "0.5",
               "--allow-missing") == 0
    out, err = capsys.readouterr()
    assert "imported 12, failed 0" in out and "v_unknown" in err

    index, reader = named(cache, "b")
    va, vb = names.index(a), names.index(b)
    got = reader.named_masks(va, np.arange(T))
    want = np.zeros((T, H, W), np.uint8)
    want[3, 10:20, 5:25] = 255
    want[3, 30:48, 50:64] = 255
    np.testing.assert_array_equal(got, want)                 # frame 7's low-score box dropped, others empty
    gb = reader.named_masks(vb, np.arange(T))
    assert (gb[0, 24:, 32:] == 255).all() and gb.sum() == 255 * 24 * 32
    # a clip of any stride reads the masks of its own frames (clamped past the end too)
    for idx in ([1, 3, 5, 7], [0, 4, 8], [8, 11, 11, 11], [3]):
        np.testing.assert_array_equal(reader.named_masks(va, np.array(idx)), want[idx])
    for v in set(range(12)) - {va, vb}:
        assert not reader.named_masks(v, np.arange(T)).any()  # --allow-missing: all zero

    man = json.loads((index.root / "masks-ext-b" / "manifest.json").read_text())
    assert man["complete"] and man["kind"] == "named" and man["videos"] == 12 and not man["failed"]
    assert man["source"]["kind"] == "boxes" and man["source"]["source_size"] == [128, 96]
    assert man["unmatched_source_videos"] == ["Nowhere/v_unknown.avi"]
    assert "--boxes" in man["command"] and "--min-score 0.5" in man["command"]
    with h5py.File(index.root / "masks-ext-b" / "shard-00000.h5", "r") as h:
        assert h.attrs["mask_kind"] == "named" and h.attrs["mask_set"] == "b"


def test_box_mismatches_fail_per_video_and_others_import(cache, names, tmp_path, capsys):
    good, late, bad_src, inverted = names[0], names[1], names[2], names[3]
    rows = [(n, 0, 0, 0, 32, 24) for n in names]
    rows += [(late, T, 0, 0, 8, 8),                 # frame 12 of a 12-frame video
             (inverted, 2, 30, 10, 20, 20),         # x2 < x1
             (bad_src, 1, 200, 10, 220, 30)]        # entirely outside a 128x96 source
    f = write_csv(tmp_path / "boxes.csv", "video,frame,x1,y1,x2,y2", rows)
    assert imp("--cache-dir", cache, "--name", "bx", "--boxes", f, "--source-size", "128x96") == 1
    err = capsys.readouterr().err
    assert f"FAILED {late}: a box on frame 12, but the cache has 12 frames" in err
    assert f"FAILED {inverted}: frame 2: box" in err and "inverted" in err
    assert f"FAILED {bad_src}: frame 1: box" in err and "outside the 128x96 source frame" in err
    with pytest.raises(CacheError) as e:
        open_cache(cache, "ucf101", mask_set="bx")
    msg = str(e.value)
    assert "lacks 3 video(s)" in msg and late in msg and "import_masks.py" in msg and "--boxes" in msg
    # the others are imported (and only they)
    root = open_cache(cache, "ucf101").root
    with h5py.File(root / "masks-ext-bx" / "shard-00000.h5", "r") as h:
        stored = {n.decode() for n in h["names"][()]}
        failed = {x["name"] for x in json.loads(h.attrs["failed"])}
    assert stored == set(names[:8]) - {late, bad_src, inverted} and failed == {late, bad_src, inverted}
    assert len((root / "masks-ext-bx" / "failures.txt").read_text().splitlines()) == 3

    # a source size of another aspect would stretch the boxes: refused, per video
    assert imp("--cache-dir", cache, "--name", "by", "--boxes", f, "--source-size", "128x64") == 1
    assert "does not have the aspect of the cached 64x48 frames" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# arrays


def _soft(seed: int, n: int = T) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, W), dtype=np.uint8)


def test_arrays_npz_npy_png_and_value_conversion(cache, names, tmp_path, capsys):
    from PIL import Image

    d = tmp_path / "arrays"
    want = {}
    for i, n in enumerate(names):
        base = Path(n).with_suffix("")
        m = _soft(i)
        if i == 0:                      # a folder of PNGs, natural order (frame_10 after frame_9)
            (d / base).mkdir(parents=True)
            for t in range(T):
                Image.fromarray(m[t]).save(d / base / f"frame_{t + 1}.png")
        elif i == 1:                    # floats in [0, 1]
            f = m.astype(np.float32) / 255.0
            (d / base.parent).mkdir(parents=True, exist_ok=True)
            np.savez(d / f"{base}.npz", f)
        elif i == 2:                    # bool, by the file's stem at the top level, several arrays
            m = m > 128
            np.savez(d / f"{base.name}.npz", masks=m, other=np.zeros(3))
            m = m.astype(np.uint8) * 255
        elif i == 3:                    # integers 0/1: binary
            m = (m > 100).astype(np.int64)
            np.save(d / f"{base.name}.npy", m)
            m = (m * 255).astype(np.uint8)
        else:
            (d / base.parent).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(d / f"{base}.npz", m[..., None])      # [T, H, W, 1] accepted
        want[i] = m
    assert imp("--cache-dir", cache, "--name", "arr", "--arrays", d) == 0, capsys.readouterr().err
    _, reader = named(cache, "arr")
    for i in range(len(names)):
        np.testing.assert_array_equal(reader.named_masks(i, np.arange(T)), want[i], err_msg=names[i])


def test_array_mismatches_fail_per_video_never_stretched(cache, names, tmp_path, capsys):
    d = tmp_path / "arrays"
    d.mkdir()
    short, big, missing, floats = names[1], names[9], names[4], names[10]
    for i, n in enumerate(names):
        m = _soft(i)
        if n == short:
            m = m[:-1]                                   # 11 masks for 12 frames
        elif n == big:
            m = np.zeros((T, H + 2, W), np.uint8)        # 64x50
        elif n == missing:
            continue
        elif n == floats:
            m = m.astype(np.float32)                     # floats beyond [0, 1]
        np.savez(d / f"{Path(n).stem}.npz", m)
    assert imp("--cache-dir", cache, "--name", "am", "--arrays", d) == 1
    err = capsys.readouterr().err
    assert f"FAILED {short}: masks: 11 masks, but the cache has 12 frames" in err
    assert f"FAILED {big}: masks: masks are 64x50 (WxH), the cached frames 64x48" in err
    assert f"FAILED {missing}: not in the source" in err and "--allow-missing" in err
    assert f"FAILED {floats}: float mask values" in err
    root = open_cache(cache, "ucf101").root
    man = json.loads((root / "masks-ext-am" / "manifest.json").read_text())
    assert not man["complete"] and man["videos"] == 8
    assert {f["name"] for f in man["failed"]} == {short, big, missing, floats}
    assert all(f["reason"] for f in man["failed"])
    with pytest.raises(CacheError, match="lacks 4 video"):
        open_cache(cache, "ucf101", mask_set="am")

    # fixed and imported again: complete, the failures list gone
    for n in (short, big, missing, floats):
        np.savez(d / f"{Path(n).stem}.npz", _soft(names.index(n)))
    assert imp("--cache-dir", cache, "--name", "am", "--arrays", d) == 0
    assert not (root / "masks-ext-am" / "failures.txt").exists()
    _, reader = named(cache, "am")
    np.testing.assert_array_equal(reader.named_masks(names.index(big), np.arange(T)), _soft(names.index(big)))


# --------------------------------------------------------------------------------------------
# a mask function


def test_mask_fn_uses_the_same_writer(cache, names, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_detector.py").write_text(
        "import numpy as np\n"
        "def masks(frames, name):\n"
        "    if name.endswith('g03_c01.avi') and 'MoveLeft' in name:\n"
        "        raise RuntimeError('no model for this one')\n"
        "    return frames[..., 0] > 150\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert imp("--cache-dir", cache, "--name", "fn", "--mask-fn", "my_detector:masks") == 1
    err = capsys.readouterr().err
    assert "FAILED MoveLeft/v_MoveLeft_g03_c01.avi: --mask-fn my_detector:masks raised RuntimeError" in err
    root = open_cache(cache, "ucf101").root
    with h5py.File(root / "masks-ext-fn" / "shard-00000.h5", "r") as h:
        assert json.loads(h.attrs["source"])["kind"] == "fn"
    # the function's masks are stored exactly, computed from the cached frames
    (tmp_path / "my_detector.py").write_text(
        "def masks(frames, name):\n    return frames[..., 0] > 150\n")
    sys.modules.pop("my_detector", None)
    assert imp("--cache-dir", cache, "--name", "fn", "--mask-fn", "my_detector:masks") == 0
    _, reader = named(cache, "fn")
    for v in (0, 7, 11):
        fr = reader.frames(v, np.arange(T))
        np.testing.assert_array_equal(reader.named_masks(v, np.arange(T)), (fr[..., 0] > 150).astype(np.uint8) * 255)


# --------------------------------------------------------------------------------------------
# usage errors: status 2, before anything is written


@pytest.mark.parametrize("argv, says", [
    ([], "give exactly one of --boxes"),
    (["--boxes", "B", "--arrays", "A"], "give exactly one of"),
    (["--name", "a/b", "--arrays", "A"], "--name a/b"),
    (["--boxes", "B", "--source-size", "320"], "--source-size 320: must be WIDTHxHEIGHT"),
    (["--boxes", "nofile.csv", "--source-size", "320x240"], "--boxes nofile.csv: no such file"),
    (["--arrays", "A", "--source-size", "320x240"], "applies to --boxes only"),
    (["--arrays", "A", "--min-score", "0.5"], "--min-score 0.5: applies to --boxes only"),
    (["--boxes", "B"], "--source-size (missing)"),
    (["--boxes", "NOCOL", "--source-size", "320x240"], "has no column(s) y2"),
    (["--boxes", "B", "--source-size", "320x240", "--min-score", "0.5"], "has no score column"),
    (["--mask-fn", "not a spec"], "must be module:function"),
    (["--mask-fn", "no_such_module_xyz:f"], "cannot import no_such_module_xyz"),
    (["--arrays", "A", "--dataset", "hmdb51"], "no cached frames for dataset 'hmdb51'"),
])
def test_bad_flags_exit_2(cache, tmp_path, capsys, argv, says):
    (tmp_path / "A").mkdir()
    write_csv(tmp_path / "B.csv", "video,frame,x1,y1,x2,y2", [("x", 0, 0, 0, 1, 1)])
    write_csv(tmp_path / "NOCOL.csv", "video,frame,x1,y1,x2", [("x", 0, 0, 0, 1)])
    subst = {"A": tmp_path / "A", "B": tmp_path / "B.csv", "NOCOL": tmp_path / "NOCOL.csv"}
    argv = [str(subst.get(a, a)) for a in argv]
    if "--name" not in argv:
        argv += ["--name", "x"]
    assert imp("--cache-dir", cache, *argv) == 2
    err = capsys.readouterr().err
    assert "import_masks.py: error:" in err and says in err, err
    assert not (open_cache(cache, "ucf101").root / "masks-ext-x").exists()


# --------------------------------------------------------------------------------------------
# the trainer


@pytest.fixture(scope="module")
def zero_and_full(cache, names, tmp_path_factory):
    """Two named sets: 'zero' (every mask empty) and 'full' (every mask 255), and 'soft' (random)."""
    d = tmp_path_factory.mktemp("sets")
    for sub, fill in (("full", 255), ("soft", None)):
        (d / sub).mkdir()
        for i, n in enumerate(names):
            m = np.full((T, H, W), fill, np.uint8) if fill is not None else _soft(100 + i)
            np.savez(d / sub / f"{Path(n).stem}.npz", m)
        assert imp("--cache-dir", cache, "--name", sub, "--arrays", d / sub) == 0
    (d / "empty").mkdir()
    assert imp("--cache-dir", cache, "--name", "zero", "--arrays", d / "empty", "--allow-missing") == 0
    return cache


def test_pretrain_clips_read_the_named_masks_at_the_clip_and_crop_them_with_the_frames(zero_and_full):
    cache = zero_and_full
    index, reader = named(cache, "soft")
    cfg = MACConfig(frames=4, strides=(1, 2, 3), n=2, k=2, scales=(16, 20), crop=16, seed=5)
    ds = PretrainClips(index, 1, "train", cfg, mask_set="soft")
    for i in range(len(ds)):
        item = ds[i]
        v = int(item["video"])
        start, stride = (int(x) for x in item["clip"])
        idx = sample_clip_indices(int(index.n_frames[v]), 4, stride, start)
        sp = SpatialParams.from_array(item["spatial"].numpy())
        fr, m = apply_spatial(reader.frames(v, idx), reader.named_masks(v, idx), sp)
        assert torch.equal(item["masks"], torch.from_numpy(m)) and torch.equal(item["frames"], torch.from_numpy(fr))
    # the frames, alphas and crops are those of the frame-difference run (only the masks differ)
    plain = PretrainClips(open_cache(cache, "ucf101", masks=MaskParams()), 1, "train", cfg)[0]
    item = ds[0]
    for k in ("frames", "alpha", "spatial", "clip", "jitter", "key_frames"):
        assert torch.equal(item[k], plain[k]), k
    with pytest.raises(ValueError, match="mask_set='soft'"):
        PretrainClips(open_cache(cache, "ucf101", masks=MaskParams()), 1, "train", cfg, mask_set="soft")


@pytest.mark.parametrize("name", ["zero", "full"])
def test_the_blend_uses_the_imported_masks(zero_and_full, name):
    """An all-zero set leaves the query equal to the unblended clip; an all-255 set scales every
    pixel of segment j by alpha_j."""
    index, _ = named(zero_and_full, name)
    cfg = MACConfig(frames=4, strides=(1, 2), n=2, k=4, scales=(16, 20), crop=16, seed=1)
    batch = next(iter(make_loader(PretrainClips(index, 1, "train", cfg, mask_set=name), 4, 0, shuffle=True)))
    tf = MACTransform(cfg, "cpu")
    q = tf(batch)["query"]
    unblended = tf.key(batch["frames"], batch["jitter"])
    if name == "zero":
        assert not batch["masks"].any() and torch.equal(q, unblended)
    else:
        assert (batch["masks"] == 255).all()
        a = batch["alpha"].repeat_interleave(2, dim=1)[:, None, :, None, None]     # [B,1,T,1,1]
        torch.testing.assert_close(q, unblended * a)
        assert not torch.equal(q, unblended)


def test_pretrain_from_an_imported_set(zero_and_full, tmp_path, capsys):
    cache = zero_and_full
    res = pretrain_main(tiny_args(cache, "--method", "mac-s", "--k", "2", "--epochs", "1", "--max-steps", "2",
                                  "--mask-set", "soft", "--run-dir", str(tmp_path / "run")))
    ck = load_checkpoint(res["checkpoint"])
    assert ck["cache"]["mask_set"] == "soft" and ck["step"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["mask_set"] == "soft"
    assert ck["cache"]["manifest_hash"] != open_cache(cache, "ucf101", masks=MaskParams()).manifest_hash

    # a set that is not there: status 2 and the import command on screen
    with pytest.raises(SystemExit) as e:
        pretrain_main(tiny_args(cache, "--mask-set", "absent", "--run-dir", str(tmp_path / "run2")))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "named mask set 'absent' is not in the cache" in err and "python preprocess/import_masks.py" in err
    assert "--name absent" in err and "named sets cached:" in err and "soft" in err
    # flags that do not apply to imported masks are refused before anything runs
    for bad in (["--mask-source", "cache"], ["--mask-mode", "hard"], ["--no-dilate"], ["--mask-set", "a b"]):
        with pytest.raises(SystemExit) as e:
            pretrain_main(tiny_args(cache, *(["--mask-set", "soft"] if "--mask-set" not in bad else []), *bad,
                                    "--run-dir", str(tmp_path / "run3")))
        assert e.value.code == 2


def test_a_stale_named_set_is_refused_with_the_command(zero_and_full, tmp_path):
    """Frames rebuilt since the import (another frame-shard uid): the set is stale."""
    cache = tmp_path / "copy"
    shutil.copytree(zero_and_full, cache)
    mpath = open_cache(cache, "ucf101").root / "masks-ext-soft" / "manifest.json"
    man = json.loads(mpath.read_text())
    from preprocess.cache import _write_manifest
    _write_manifest(mpath, {**{k: v for k, v in man.items() if k != "sha256"},
                            "frames_shard_uids": {**man["frames_shard_uids"], "0": "0" * 16}})
    with pytest.raises(CacheError) as e:
        open_cache(cache, "ucf101", mask_set="soft")
    assert "imported for other frames" in str(e.value) and man["command"] in str(e.value)


# --------------------------------------------------------------------------------------------
# the demo's ground-truth boxes


def test_demo_boxes_cover_the_moving_objects(tmp_path):
    from preprocess.make_demo import object_boxes, render_video, video_length, write_ground_truth_boxes
    from preprocess.masks import grey_opencv

    kw = dict(seed=3, classes=3, groups=3, clips=1, frames=12)
    path = write_ground_truth_boxes(tmp_path, **kw)
    lines = path.read_text().splitlines()
    assert lines[0] == "video,frame,object,x1,y1,x2,y2"
    meta = json.loads((tmp_path / "boxes.json").read_text())
    assert meta["source_size"] == [320, 240] and "--source-size 320x240" in meta["import"]
    for c, g in (("MoveUp", 1), ("MoveDown", 2), ("MoveSideways", 3)):
        n = video_length(3, c, g, 1, 12)
        rows = [l.split(",") for l in lines[1:] if l.startswith(f"{c}/v_{c}_g{g:02d}_c01.avi,")]
        boxes = object_boxes(c, g, 1, seed=3, n_frames=n)
        assert [tuple(map(int, r[1:])) for r in rows] == boxes and {b[1] for b in boxes} == {0, 1}
        frames = render_video(c, g, 1, seed=3, n_frames=n)
        inside = np.zeros(frames.shape[:3], bool)
        for t, _, x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
            inside[t, y1:y2, x1:x2] = True
        # the pixels that change between frames t-1 and t (Algorithm 1's differences, lambda 30)
        # lie in the objects' boxes at t-1 or t; the rest are the static distractors' edges under
        # camera jitter, which are not moving objects
        grey = grey_opencv(frames).astype(np.int16)
        moved = np.abs(np.diff(grey, axis=0)) > 30
        assert (moved & (inside[1:] | inside[:-1])).sum() >= 0.99 * moved.sum()
        assert inside.mean() < 0.5                      # boxes, not the whole picture


def test_demo_boxes_end_to_end_and_the_demo_unchanged_without_them(tmp_path, capsys):
    from preprocess.extract_masks import main as extract_main
    from preprocess.make_demo import make_demo

    kw = dict(seed=2, classes=2, groups=3, clips=1, frames=8)
    plain = make_demo(tmp_path / "plain", **kw)
    demo = make_demo(tmp_path / "demo", **kw, write_boxes=True)
    assert sorted(p.name for p in plain.iterdir()) == ["UCF-101", "demo.json", "ucfTrainTestlist"]
    assert sorted(p.name for p in demo.iterdir()) == ["UCF-101", "boxes.csv", "boxes.json", "demo.json",
                                                      "ucfTrainTestlist"]
    for f in sorted(plain.rglob("*")):
        if f.is_file() and f.name != "demo.json":       # demo.json records the build time
            assert (demo / f.relative_to(plain)).read_bytes() == f.read_bytes(), f
    cache = tmp_path / "cache"
    assert extract_main(["--dataset", "demo", "--data-root", str(demo), "--cache-dir", str(cache),
                         "--strides", "1", "--workers", "1"]) == 0
    assert imp("--dataset", "demo", "--cache-dir", cache, "--name", "gt", "--boxes", demo / "boxes.csv",
               "--source-size", "320x240") == 0
    assert "imported 6, failed 0" in capsys.readouterr().out
    index = open_cache(cache, "demo", masks=MaskParams(), strides=(1,), mask_set="gt")
    reader = ClipReader(index)
    for v in range(len(index)):
        idx = np.arange(int(index.n_frames[v]))
        gt = reader.named_masks(v, idx) > 0
        d = reader.diffs(v, idx, 1) > 0                # the cached frame differences, stride 1
        inside = gt[1:] | gt[:-1]
        assert (d[1:] & inside).sum() >= 0.95 * d[1:].sum(), index.names[v]
