"""Mask record codecs: zrun (preprocess/cache/zrun.py: numba kernels against their numpy twins,
the format, malformed records), the codec dispatch of codecs.py, and the reader on zrun shards,
on legacy zlib-rle shards and on shards of an unknown codec."""
from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

from preprocess.cache import (CacheError, ClipReader, DecodeParams, MaskParams, NamedMaskSet, ShardWriter,
                              index_checksum, open_cache, write_cache_from_arrays)
from preprocess.cache import zrun
from preprocess.cache.codecs import LEGACY_MASK_CODEC, MASK_CODEC, decode_mask, decode_masks, encode_mask
from preprocess.cache.zrun import RecordError
from tests.conftest import moving_square_video


def sparse_mask(rng, shape, density):
    """A D-like mask: clustered non-zero bytes (any value 1..255) among zeros."""
    blobs = rng.random((shape[0] // 4 + 1, shape[1] // 4 + 1)) < density
    keep = blobs.repeat(4, 0).repeat(4, 1)[:shape[0], :shape[1]] & (rng.random(shape) < 0.8)
    return np.where(keep, rng.integers(1, 256, shape), 0).astype(np.uint8)


def span_of(records):
    lens = np.array([len(r) for r in records], np.int64)
    stops = np.cumsum(lens)
    return np.frombuffer(b"".join(records), np.uint8), stops - lens, stops


# --------------------------------------------------------------------------------------------
# zrun: format and twins

@pytest.mark.parametrize("shape", [(128, 171), (37, 5), (1, 1), (1, 300), (200, 200), (0, 7)])
def test_zrun_round_trip_numba_and_twin_agree(shape):
    rng = np.random.default_rng(sum(shape))
    masks = [sparse_mask(rng, shape, p) for p in (0.02, 0.1, 0.3)]
    masks += [np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8),
              rng.integers(1, 256, shape).astype(np.uint8), rng.integers(0, 2, shape).astype(np.uint8)]
    for m in masks:
        rec = zrun.encode(m)
        assert rec == zrun.encode_reference(m)
        np.testing.assert_array_equal(zrun.decode(rec, *shape), m)
        np.testing.assert_array_equal(zrun.decode_reference(rec, *shape), m)


def test_zrun_format():
    # a gap of 1 zero between non-zero pixels stays in the literals; the mask ends in zeros
    m = np.array([[0, 0, 0, 0, 5, 0, 7, 0, 0, 0, 9, 0]], np.uint8)
    assert zrun.encode(m) == bytes([4, 3, 5, 0, 7, 3, 1, 9, 1, 0])
    assert zrun.encode(np.zeros((0, 3), np.uint8)) == b""
    assert zrun.encode(np.zeros((1, 1), np.uint8)) == bytes([1, 0])
    assert zrun.encode(np.full((1, 1), 200, np.uint8)) == bytes([0, 1, 200])
    # multi-byte varints: 300 = 0b10_0101100 -> 0xAC 0x02; 40000 - 1 -> three bytes
    assert zrun.encode(np.zeros((1, 300), np.uint8)) == bytes([0xAC, 0x02, 0x00])
    big = np.zeros((200, 200), np.uint8)
    big[-1, -1] = 1
    assert zrun.encode(big) == bytes([0xBF, 0xB8, 0x02, 0x01, 0x01])
    np.testing.assert_array_equal(zrun.decode(zrun.encode(big), 200, 200), big)
    long = np.full((1, 20000), 3, np.uint8)                 # a literal count > 16383
    assert zrun.encode(long)[:4] == bytes([0x00, 0xA0, 0x9C, 0x01])
    # decoders take any split, not only the encoder's: (0, 0) pairs, zeros as literals
    np.testing.assert_array_equal(zrun.decode(bytes([0, 0, 2, 2, 0, 5]), 1, 4), [[0, 0, 0, 5]])


def test_decode_many_equals_per_record_decode():
    rng = np.random.default_rng(1)
    h, w = 48, 60
    masks = [sparse_mask(rng, (h, w), p) for p in np.linspace(0, 0.5, 9)]
    span, starts, stops = span_of([zrun.encode(m) for m in masks])
    order = np.array([3, 0, 0, 8, 5, 1])                    # any order, repeats allowed
    out = zrun.decode_many(span, starts[order], stops[order], np.empty((len(order), h, w), np.uint8))
    for got, i in zip(out, order):
        np.testing.assert_array_equal(got, zrun.decode(span[starts[i]:stops[i]], h, w))
        np.testing.assert_array_equal(got, masks[i])
    assert zrun.decode_many(span, starts[:0], stops[:0], np.empty((0, h, w), np.uint8)).shape == (0, h, w)


MALFORMED = {
    "truncated": (bytes([4, 3, 5, 0]), "truncated"),
    "empty": (b"", "truncated"),
    "truncated varint": (bytes([4, 0x83]), "truncated"),
    "zero run past the end": (bytes([13, 0]), "past the last pixel"),
    "literals past the end": (bytes([0, 13]) + bytes(13), "past the last pixel"),
    "trailing bytes": (bytes([12, 0, 0]), "after the last pixel"),
    "varint of 10 bytes": (bytes([0x80] * 9 + [0]), "longer than 9 bytes"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_records_raise_naming_the_record(case):
    bad, reason = MALFORMED[case]
    h, w = 3, 4
    good = [zrun.encode(np.arange(12, dtype=np.uint8).reshape(h, w)), zrun.encode(np.zeros((h, w), np.uint8))]
    span, starts, stops = span_of([good[0], good[1], bad, good[0]])
    guarded = np.full((6, h, w), 77, np.uint8)             # out = guarded[1:5]: rows 0 and 5 must stay
    with pytest.raises(RecordError, match=f"zrun mask record 2: .*{reason}") as e:
        zrun.decode_many(span, starts, stops, guarded[1:5])
    assert e.value.record == 2 and isinstance(e.value, ValueError)
    assert (guarded[0] == 77).all() and (guarded[5] == 77).all()
    with pytest.raises(RecordError, match=reason):
        zrun.decode_reference(bad, h, w)
    with pytest.raises(ValueError, match=reason):
        zrun.decode(bad, h, w)


def test_span_bounds_and_output_are_checked():
    span, starts, stops = span_of([zrun.encode(np.zeros((2, 2), np.uint8))] * 2)
    with pytest.raises(RecordError, match="record 1: bytes 2:9 are not within the span of 4 bytes"):
        zrun.decode_many(span, starts, np.array([2, 9]), np.empty((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        zrun.decode_many(span, starts, stops, np.empty((2, 2, 4), np.uint8)[:, :, ::2])
    with pytest.raises(ValueError, match="2 output masks but"):
        zrun.decode_many(span, starts[:1], stops[:1], np.empty((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="uint8 \\[H, W\\]"):
        zrun.encode(np.zeros((2, 2), np.int32))


def test_kernel_and_twin_agree_on_damaged_records():
    """Random damage (a byte changed, truncation, extra bytes): the kernel accepts exactly what
    the twin accepts, decodes it to the same mask, and never writes outside its output (its
    16-byte block writes included)."""
    rng = np.random.default_rng(7)
    for trial in range(600):
        h, w = ((9, 13), (16, 40), (1, 31))[trial % 4 % 3]
        rec = bytearray(zrun.encode(sparse_mask(rng, (h, w), 0.3)))
        kind = trial % 3
        if kind == 0:
            rec[int(rng.integers(len(rec)))] = int(rng.integers(256))
        elif kind == 1:
            del rec[int(rng.integers(len(rec))):]
        else:
            rec += bytes(rng.integers(0, 256, int(rng.integers(1, 4))).tolist())
        try:
            want = zrun.decode_reference(bytes(rec), h, w)
        except RecordError as e:
            want = e.reason
        guarded = np.full((3, h, w), 77, np.uint8)
        try:
            zrun.decode_many(np.frombuffer(bytes(rec), np.uint8), np.array([0]), np.array([len(rec)]),
                             guarded[1:2])
            np.testing.assert_array_equal(guarded[1], want)
        except RecordError as e:
            assert e.reason == want and e.record == 0
        assert (guarded[0] == 77).all() and (guarded[2] == 77).all()


# --------------------------------------------------------------------------------------------
# codecs.py: the dispatch

def test_codecs_dispatch_new_and_legacy():
    rng = np.random.default_rng(3)
    masks = [sparse_mask(rng, (20, 30), p) for p in (0.05, 0.4)]
    assert MASK_CODEC == "zrun" and LEGACY_MASK_CODEC == "zlib-rle"
    assert encode_mask(masks[0]) == zrun.encode(masks[0])
    legacy = [encode_mask(m, LEGACY_MASK_CODEC) for m in masks]
    assert zlib.decompress(legacy[0]) == masks[0].tobytes()        # any zlib decoder reads them
    for codec in (MASK_CODEC, LEGACY_MASK_CODEC):
        recs = [encode_mask(m, codec) for m in masks]
        np.testing.assert_array_equal(decode_mask(recs[1], 20, 30, codec), masks[1])
        span, starts, stops = span_of(recs)
        np.testing.assert_array_equal(decode_masks(span, starts, stops, np.empty((2, 20, 30), np.uint8), codec),
                                      np.stack(masks))
    span, starts, stops = span_of([legacy[0], b"not zlib"])
    with pytest.raises(RecordError, match="zlib-rle mask record 1: not a zlib stream"):
        decode_masks(span, starts, stops, np.empty((2, 20, 30), np.uint8), LEGACY_MASK_CODEC)
    with pytest.raises(RecordError, match="zlib-rle mask record 0: 600 bytes inflated, the mask has 1200 pixels"):
        decode_mask(legacy[0], 40, 30, LEGACY_MASK_CODEC)
    for call in (lambda: encode_mask(masks[0], "zstd"), lambda: decode_mask(legacy[0], 20, 30, "zstd")):
        with pytest.raises(ValueError, match="unknown mask codec 'zstd' \\(known: zrun, zlib-rle\\)"):
            call()


# --------------------------------------------------------------------------------------------
# the reader on zrun, legacy and unknown shards

STRIDES = (1, 2)


@pytest.fixture
def cache(tmp_path):
    videos = [(f"C0/v_{i}.avi", 0, (1, 0, 0), moving_square_video(14 + i, 64, 80, seed=i), 25.0) for i in range(3)]
    write_cache_from_arrays(tmp_path, "toy", ["C0"], videos, videos_per_shard=2, strides=STRIDES)
    index = open_cache(tmp_path, "toy", masks=MaskParams(), strides=STRIDES)
    return index


def read_all(index, verify=True):
    reader = ClipReader(index, verify=verify)
    return {(v, s): (reader.diffs(v, np.arange(int(index.n_frames[v])), s),
                     reader.masks(v, np.arange(1, int(index.n_frames[v]), s)))
            for v in range(len(index)) for s in STRIDES}


def mask_shards(index):
    return sorted(p for s in STRIDES for p in index.masks_path(0, s).parent.glob("shard-*.h5"))


def rewrite_records(path, recode, codec_attr):
    """Rewrite a mask shard's records with `recode(record bytes) -> bytes` and its codec
    attribute (None: remove it, as in shards written before the attribute), with consistent
    CRC32s and index checksum."""
    with h5py.File(path, "r+") as f:
        offsets, blob = f["offsets"][()], f["data"][()]
        recs = [recode(blob[a:b].tobytes()) for a, b in zip(offsets[:-1], offsets[1:])]
        new_offsets = np.concatenate([[0], np.cumsum([len(r) for r in recs])]).astype(np.int64)
        del f["data"], f["offsets"], f["crc32"]
        f.create_dataset("data", data=np.frombuffer(b"".join(recs), np.uint8), chunks=True, maxshape=(None,))
        f["offsets"] = new_offsets
        f["crc32"] = np.array([zlib.crc32(r) for r in recs], np.uint32)
        if codec_attr is None:
            del f.attrs["codec"]
        else:
            f.attrs["codec"] = codec_attr
        f.attrs["index_crc32"] = np.uint32(index_checksum(f))


def test_new_shards_are_zrun(cache, tmp_path):
    for path in mask_shards(cache):
        with h5py.File(path, "r") as f:
            assert f.attrs["codec"] == MASK_CODEC
    named = tmp_path / "named" / "shard-00000.h5"
    writer = ShardWriter(None, {NamedMaskSet("boxes"): named}, dataset="toy", shard_id=0, decode=DecodeParams(),
                         frames_uid="0123456789abcdef")
    writer.commit()
    with h5py.File(named, "r") as f:
        assert f.attrs["codec"] == MASK_CODEC


@pytest.mark.parametrize("codec_attr", [LEGACY_MASK_CODEC, None])
def test_legacy_zlib_shards_read_the_same(cache, codec_attr):
    h, w = int(cache.heights[0]), int(cache.widths[0])
    want = read_all(cache)
    for path in mask_shards(cache):
        rewrite_records(path, lambda r: encode_mask(zrun.decode(r, h, w), LEGACY_MASK_CODEC), codec_attr)
    for verify in (True, False):
        got = read_all(cache, verify)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k][0], want[k][0])
            np.testing.assert_array_equal(got[k][1], want[k][1])


def test_unknown_codec_names_the_file(cache):
    path = cache.masks_path(0, 2)
    rewrite_records(path, lambda r: r, "zstd-19")
    reader = ClipReader(cache)
    reader.diffs(0, np.arange(4), 1)                        # the other mask sets still read
    with pytest.raises(CacheError) as e:
        reader.diffs(0, np.arange(0, 8, 2), 2)
    msg = str(e.value)
    assert str(path) in msg and "unknown mask codec 'zstd-19'" in msg and "zrun, zlib-rle" in msg


def test_a_record_that_does_not_decode_names_video_and_frame(cache):
    """Bytes whose CRC32 matches (a writer's bug, a wrong codec attribute) but that are no zrun
    record: CacheError naming the shard, the video and the frame, verified or not."""
    path = cache.masks_path(0, 1)
    with h5py.File(path, "r") as f:
        first = int(f["first_frame"][1])
    target = first + 5                                      # video 1, frame 5
    n = [0]

    def truncate_one(r):
        n[0] += 1
        return r[:-1] if n[0] - 1 == target else r

    rewrite_records(path, truncate_one, MASK_CODEC)
    for verify in (True, False):
        reader = ClipReader(cache, verify=verify)
        assert reader.diffs(1, np.arange(5), 1).shape == (5, 64, 80)     # the records before it
        with pytest.raises(CacheError) as e:
            reader.diffs(1, np.arange(12), 1)
        msg = str(e.value)
        assert str(path) in msg and "not a valid zrun mask record (truncated" in msg
        assert f"record {target} ({cache.names[1]}, frame 5, mask set stride 1)" in msg
