"""Integrity of the cache: damaged bytes are found by the reader, by `extract_masks.py --verify`
and by planning (indexes), and repaired by a rerun; an intact cache is left exactly as it is.

Damage is done the way a disk or a copy does it: bytes of the shard file flipped with plain file
I/O, located through the blob dataset's chunk addresses (HDF5 keeps no checksums for them).
"""
from __future__ import annotations

import hashlib
import json
import pickle
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from preprocess import extract_masks
from preprocess.cache import (NO_CHECKSUMS, CacheError, ClipReader, MaskParams, open_cache, read_shard_info,
                              verify_shard)
from tests.conftest import make_ucf_layout


def run(root: Path, cache: Path, *extra: str) -> int:
    """With the mask sets of strides 1-4: every kind of shard is there to damage and repair."""
    return extract_masks.main(["--dataset", "ucf101", "--data-root", str(root), "--cache-dir", str(cache),
                               "--strides", "1", "2", "3", "4", "--videos-per-shard", "2", "--workers", "1", *extra])


def snapshot(cache: Path) -> dict[str, tuple[str, int]]:
    """(sha256, mtime_ns) of every shard and manifest."""
    return {str(p.relative_to(cache)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(cache.rglob("*")) if p.suffix in (".h5", ".json")}


def blob_file_offset(path: Path, pos: int) -> int:
    """Byte offset in the file of byte `pos` of the shard's blob (chunks are stored unfiltered)."""
    with h5py.File(path, "r") as f:
        ds = f["jpeg" if "jpeg" in f else "data"]
        c = ds.chunks[0]
        info = ds.id.get_chunk_info_by_coord((pos // c * c,))
        assert info.filter_mask == 0
        return info.byte_offset + pos % c


def flip_file_bytes(path: Path, offset: int, n: int = 1) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def flip_record_byte(index, path: Path, video: int, t: int) -> int:
    """Flip one byte in the middle of record (video, frame t) of shard file `path`; returns the
    record's number in the shard."""
    with h5py.File(path, "r") as f:
        offsets = f["jpeg_offsets" if "jpeg_offsets" in f else "offsets"][()]
    g = int(index.first_frame[video]) + t
    flip_file_bytes(path, blob_file_offset(path, int(offsets[g] + (offsets[g + 1] - offsets[g]) // 2)))
    return g


def fix_command(msg: str, b) -> list[str]:
    """The command a message gives, as argv for extract_masks.main, pointed at the test's data."""
    line = next(l.strip() for l in msg.splitlines() if l.strip().startswith("python preprocess/extract_masks.py"))
    return shlex.split(line)[2:] + ["--data-root", str(b.root), "--videos-per-shard", "2", "--workers", "1"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One cache built by extract_masks.py (6 videos x 20 frames, 3 shards, strides 1-4) and what
    its reader returns, for the tests to damage copies of."""
    from preprocess.decode import ffmpeg_binary

    base = tmp_path_factory.mktemp("pristine")
    root = make_ucf_layout(base / "ucf", ffmpeg_binary())
    assert run(root, base / "cache") == 0
    index = open_cache(base / "cache", "ucf101", masks=MaskParams())
    reader = ClipReader(index)
    frames = [reader.frames(v, np.arange(index.n_frames[v])) for v in range(len(index))]
    diffs = {s: [reader.diffs(v, np.arange(index.n_frames[v]), s) for v in range(len(index))] for s in index.strides}
    reader.close()
    return base, frames, diffs


@pytest.fixture
def built(pristine, tmp_path):
    base, frames, diffs = pristine
    shutil.copytree(base / "ucf", tmp_path / "ucf")       # copy2: source mtimes kept, the cache stays current
    shutil.copytree(base / "cache", tmp_path / "cache")
    index = open_cache(tmp_path / "cache", "ucf101", masks=MaskParams())
    return SimpleNamespace(root=tmp_path / "ucf", cache=tmp_path / "cache", index=index, frames=frames, diffs=diffs)


def assert_reads_like_pristine(b) -> None:
    index = open_cache(b.cache, "ucf101", masks=MaskParams())
    reader = ClipReader(index)
    for v in range(len(index)):
        np.testing.assert_array_equal(reader.frames(v, np.arange(index.n_frames[v])), b.frames[v])
        for s in index.strides:
            np.testing.assert_array_equal(reader.diffs(v, np.arange(index.n_frames[v]), s), b.diffs[s][v])
    reader.close()


def test_flipped_byte_in_a_frame_record(built, capsys):
    b, index = built, built.index
    v, t = 2, 7                                           # shard 1
    name = index.names[v]
    path = index.frames_path(1)
    others = {p.name: p.read_bytes() for p in (index.frames_path(0), index.frames_path(2))}
    g = flip_record_byte(index, path, v, t)

    # Without the check the damage reaches the trainer unnamed: a valid-looking, wrong frame, or
    # (where the flipped byte lands in the entropy-coded data's structure) the JPEG decoder's own
    # error, which names no shard, video or fix.
    unchecked = ClipReader(index, verify=False)
    try:
        got = unchecked.frames(v, np.arange(20))
        assert not np.array_equal(got[t], b.frames[v][t])
    except ValueError as e:
        assert "JPEG" in str(e) and str(path) not in str(e)
    assert pickle.loads(pickle.dumps(unchecked)).verify is False

    # The reader: the shard, the video and frame, and the command that repairs it.
    reader = ClipReader(index)
    with pytest.raises(CacheError) as e:
        reader.frames(v, np.arange(1, 20, 2))
    msg = str(e.value)
    assert str(path) in msg and "damaged" in msg and f"record {g} ({name}, frame {t})" in msg
    assert "python preprocess/extract_masks.py --dataset ucf101" in msg and msg.rstrip().endswith("--verify")
    # only the records returned are checked: clips without the frame read fine
    np.testing.assert_array_equal(reader.frames(v, np.arange(0, 20, 2)), b.frames[v][::2])
    assert verify_shard(path).problem == f"checksum mismatch in record {g} ({name}, frame {t})"

    # The command of the message finds it, rebuilds the shard from its videos, and says so.
    capsys.readouterr()
    assert extract_masks.main(fix_command(msg, b)) == 0
    out = capsys.readouterr().out
    assert f"DAMAGED {path}: checksum mismatch in record {g} ({name}, frame {t})" in out
    assert "verified 15 shards, 600 records: 1 damaged, rebuilt" in out
    assert {p.name: p.read_bytes() for p in (index.frames_path(0), index.frames_path(2))} == others
    assert_reads_like_pristine(b)        # frames re-decoded, and the shard's mask sets recomputed

    # Verified again: nothing damaged, nothing rewritten.
    before = snapshot(b.cache)
    capsys.readouterr()
    assert run(b.root, b.cache, "--verify") == 0
    assert "15 shards, 600 records: 0 damaged" in capsys.readouterr().out
    assert snapshot(b.cache) == before


def test_flipped_byte_in_a_mask_record(built, capsys, monkeypatch):
    b, index = built, built.index
    v, t, s = 1, 9, 2                                     # shard 0, stride 2, phase 1
    name = index.names[v]
    path = index.masks_path(0, s)
    g = flip_record_byte(index, path, v, t)
    frames_before = {p: p.read_bytes() for p in sorted((b.cache / "ucf101/s128_q90_420/frames").glob("shard-*"))}

    reader = ClipReader(index)
    for read in (lambda: reader.diffs(v, np.arange(1, 20, s), s), lambda: reader.masks(v, np.arange(1, 20, s))):
        with pytest.raises(CacheError) as e:
            read()
        msg = str(e.value)
        assert str(path) in msg and "damaged" in msg and f"({name}, frame {t}, mask set stride {s})" in msg
        assert msg.rstrip().endswith("--verify")
    np.testing.assert_array_equal(reader.diffs(v, np.arange(0, 20, s), s), b.diffs[s][v][::s])  # other phase

    # Repaired from the cached frames: ffmpeg does not run, the frames are not touched.
    import preprocess.decode as decode

    def no_ffmpeg(*a, **k):
        raise AssertionError("a damaged mask shard is recomputed from the cached frames")

    monkeypatch.setattr(decode, "iter_frames", no_ffmpeg)
    monkeypatch.setattr(decode, "probe", no_ffmpeg)
    capsys.readouterr()
    assert extract_masks.main(fix_command(msg, b)) == 0
    out = capsys.readouterr().out
    assert f"DAMAGED {path}: checksum mismatch in record {g} ({name}, frame {t})" in out
    assert "1 damaged, rebuilt" in out
    assert {p: p.read_bytes() for p in frames_before} == frames_before
    assert_reads_like_pristine(b)


def test_four_kb_flipped_in_the_middle_of_a_frame_shard(built, capsys):
    """The issue's scenario: 4 KB flipped in the middle of a frame shard file."""
    b, index = built, built.index
    path = index.frames_path(1)
    mid = path.stat().st_size // 2
    with h5py.File(path, "r") as f:
        ds = f["jpeg"]
        chunk = next(c for c in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks()))
                     if c.byte_offset <= mid < c.byte_offset + c.size)   # the middle of the file is frame data
        start = min(mid, chunk.byte_offset + chunk.size - 4096)
        lo = chunk.chunk_offset[0] + start - chunk.byte_offset
        assert lo + 4096 <= ds.shape[0]
        offsets, first = f["jpeg_offsets"][()], f["first_frame"][()]
    flip_file_bytes(path, start, 4096)
    hit = [g for g in range(len(offsets) - 1) if offsets[g] < lo + 4096 and offsets[g + 1] > lo]
    assert hit

    reader = ClipReader(index)
    for g in hit:
        local = int(np.searchsorted(first, g, side="right")) - 1
        v = int(np.flatnonzero(index.shard == 1)[local])
        with pytest.raises(CacheError, match="damaged") as e:
            reader.frames(v, np.array([g - int(first[local])]))
        assert str(path) in str(e.value)

    capsys.readouterr()
    assert run(b.root, b.cache, "--verify") == 0
    out = capsys.readouterr().out
    assert f"DAMAGED {path}: checksum mismatch in record {hit[0]} " in out
    assert (f"and {len(hit) - 1} more record(s)" in out) == (len(hit) > 1)
    assert "1 damaged, rebuilt" in out
    assert_reads_like_pristine(b)


def test_verify_with_nothing_damaged_rewrites_nothing(built, capsys):
    before = snapshot(built.cache)
    capsys.readouterr()
    assert run(built.root, built.cache, "--verify") == 0
    out = capsys.readouterr().out
    assert "verified 15 shards, 600 records: 0 damaged" in out and "DAMAGED" not in out
    assert snapshot(built.cache) == before


def test_damaged_index_is_found_by_planning_and_a_plain_rerun_rebuilds_it(built, capsys):
    b, index = built, built.index
    fpath, mpath = index.frames_path(1), index.masks_path(2, 3)
    with h5py.File(fpath, "r+") as f:
        f["jpeg_offsets"][5] += 1
    with h5py.File(mpath, "r+") as f:
        f["n_frames"][0] = 19
    for path in (fpath, mpath):
        with pytest.raises(CacheError, match="the shard is damaged: its index") as e:
            read_shard_info(path)
        assert str(path) in str(e.value) and "extract_masks.py" in str(e.value)
        assert verify_shard(path).problem == "index checksum mismatch"
    with pytest.raises(CacheError, match="damaged") as e:
        ClipReader(index).frames(int(np.flatnonzero(index.shard == 1)[0]), np.arange(2))
    assert str(fpath) in str(e.value) and "--verify" in str(e.value)

    capsys.readouterr()
    assert run(b.root, b.cache) == 0                     # no --verify: indexes are always checked
    out = capsys.readouterr().out
    assert "shard 1: frames: damaged" in out and "shard 2: mask set lam30_m0.5_stride3: damaged" in out
    assert read_shard_info(fpath).checksums and read_shard_info(mpath).checksums
    assert_reads_like_pristine(b)


def test_masks_are_not_computed_from_damaged_frames(built, capsys):
    """Adding a mask set reads the cached frames: a damaged frame record stops the run with the
    shard and the fix (exit 2) instead of producing masks from it; the fix repairs and adds."""
    b, index = built, built.index
    flip_record_byte(index, index.frames_path(1), 3, 4)
    capsys.readouterr()
    assert run(b.root, b.cache, "--lambda", "10") == 2
    err = capsys.readouterr().err
    assert str(index.frames_path(1)) in err and "damaged" in err and "no masks are computed from it" in err
    assert "--lambda 10 --m 0.5 --strides 1 2 3 4 --verify" in err
    assert extract_masks.main(fix_command(err, b)) == 0
    assert "1 damaged, rebuilt" in capsys.readouterr().out
    assert_reads_like_pristine(b)
    open_cache(b.cache, "ucf101", masks=MaskParams(lam=10))


def test_damaged_manifests(built, capsys):
    b = built
    frames_manifest = b.index.root / "frames" / "manifest.json"
    mask_manifest = b.index.root / "masks-lam30_m0.5_stride2" / "manifest.json"
    text = frames_manifest.read_text()
    frames_manifest.write_text(text.replace('"n_frames": 20', '"n_frames": 21', 1))   # one digit
    with pytest.raises(CacheError, match="damaged manifest") as e:
        open_cache(b.cache, "ucf101")
    assert str(frames_manifest) in str(e.value) and "python preprocess/extract_masks.py" in str(e.value)
    frames_manifest.write_text(text)
    mask_manifest.write_bytes(mask_manifest.read_bytes()[:40])                         # not JSON any more
    with pytest.raises(CacheError, match="damaged manifest") as e:
        open_cache(b.cache, "ucf101", masks=MaskParams())
    assert str(mask_manifest) in str(e.value) and "--lambda 30 --m 0.5" in str(e.value)
    capsys.readouterr()
    assert extract_masks.main(["--list", "--cache-dir", str(b.cache)]) == 0
    assert "DAMAGED manifest" in capsys.readouterr().out
    assert run(b.root, b.cache, "--verify") == 0
    out = capsys.readouterr().out
    assert f"DAMAGED {mask_manifest}" in out and "0 damaged; 1 damaged manifest(s), rewritten" in out
    open_cache(b.cache, "ucf101", masks=MaskParams())
    # manifests written before checksums (no sha256 field) are accepted
    for m in (frames_manifest, mask_manifest):
        content = json.loads(m.read_text())
        assert content.pop("sha256")
        m.write_text(json.dumps(content, indent=0))
    open_cache(b.cache, "ucf101", masks=MaskParams())


def test_shards_without_checksums_are_read_and_reported(built, capsys):
    """A cache written before checksums existed: read unverified, --verify says so and rewrites
    no shard."""
    b = built
    shards = sorted(b.cache.rglob("shard-*.h5"))
    for p in shards:
        with h5py.File(p, "r+") as f:
            del f["jpeg_crc32" if "jpeg" in f else "crc32"]
            del f.attrs["index_crc32"]
    digests = {p: p.read_bytes() for p in shards}
    assert not read_shard_info(shards[0]).checksums
    assert verify_shard(shards[0]).checksums is False and verify_shard(shards[0]).problem is None
    assert_reads_like_pristine(b)
    capsys.readouterr()
    assert run(b.root, b.cache, "--verify") == 0
    out = capsys.readouterr().out
    assert NO_CHECKSUMS in out and "verified 0 shards" in out and "15 shard(s) not verified" in out
    assert {p: p.read_bytes() for p in shards} == digests
    # a record table without its index checksum is damage, not an older shard
    with h5py.File(shards[0], "r+") as f:
        f.create_dataset("jpeg_crc32" if "jpeg" in f else "crc32", data=np.zeros(1, np.uint32))
    with pytest.raises(CacheError, match="missing"):
        read_shard_info(shards[0])


def test_plain_rerun_after_a_damaged_record_says_that_verify_repairs(built, capsys):
    """The plain rerun stays cheap (it reads no records, so it cannot see the damage), but its
    summary says that --verify checks records; the same command with --verify repairs."""
    b, index = built, built.index
    flip_record_byte(index, index.frames_path(1), 2, 7)
    capsys.readouterr()
    assert run(b.root, b.cache) == 0
    out = capsys.readouterr().out
    assert "record checksums are checked only with --verify" in out and "after a trainer reported" in out
    assert run(b.root, b.cache, "--verify") == 0
    out = capsys.readouterr().out
    assert "1 damaged, rebuilt" in out and "checked only with --verify" not in out
    assert_reads_like_pristine(b)
