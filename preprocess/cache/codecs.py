"""Record codecs: one JPEG per frame (libjpeg-turbo through simplejpeg), one zrun record per mask
(docs/cache.md, "Records and codecs").

Pure functions from arrays to bytes and back: no file, no checksum (integrity.py), no layout.
`decode_frame` is the one decoder of cached frames, for the trainer and for masks computed from
cached frames alike, so that masks are always those of the exact pixels the trainer reads.

Mask records: new shards are written with MASK_CODEC, "zrun" (zrun.py: a run-length code of zero
runs and literal bytes), because reading a clip's masks is on every training sample's path and
inflating zlib streams cost more than computing the masks from the frames. Shards written before
it hold LEGACY_MASK_CODEC, "zlib-rle" (one zlib stream per mask), and stay readable: a mask
shard's `codec` attribute says which, and the reader passes it to `decode_mask` / `decode_masks`.
"""
from __future__ import annotations

import zlib

import numpy as np
import simplejpeg

from preprocess.cache.format import MASK_ZLIB_LEVEL, DecodeParams, RecordError

MASK_CODEC = "zrun"                 # the codec new mask shards are written with
LEGACY_MASK_CODEC = "zlib-rle"      # shards written before zrun, and those without a codec attribute
MASK_CODECS = (MASK_CODEC, LEGACY_MASK_CODEC)


# --------------------------------------------------------------------------------------------
# Record codecs: one JPEG per frame, one zrun (or, in older shards, zlib) record per mask.

def encode_frame(frame: np.ndarray, decode: DecodeParams) -> bytes:
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(frame), quality=decode.jpeg_quality, colorspace="RGB",
        colorsubsampling=decode.subsampling)


def encode_frame_yuv(y: np.ndarray, u: np.ndarray, v: np.ndarray, decode: DecodeParams) -> bytes:
    """One JPEG from full-range YUV 4:2:0 planes (ffmpeg's ``yuv=True`` output): what a JPEG
    stores, so libjpeg-turbo skips the colour conversion and the chroma downsampling of
    `encode_frame`. Only for 4:2:0 frame sets."""
    if decode.subsampling != "420":
        raise ValueError(f"YUV 4:2:0 planes make a 4:2:0 JPEG, not {decode.subsampling}")
    return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=decode.jpeg_quality)


def decode_frame(record: bytes | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one JPEG record (into `out`, a contiguous uint8 [H,W,3] array, when given)."""
    # Accurate IDCT and upsampling: deterministic integer code in libjpeg-turbo, so masks computed
    # from these pixels are reproducible across runs and machines with the same library.
    return simplejpeg.decode_jpeg(record, colorspace="RGB", fastdct=False, fastupsample=False, buffer=out)


def encode_mask(mask: np.ndarray, codec: str = MASK_CODEC) -> bytes:
    """The record of a uint8 [H, W] mask in `codec` (new shards: MASK_CODEC)."""
    if codec == MASK_CODEC:
        from preprocess.cache import zrun      # numba: loaded by the first mask record, not by every import

        return zrun.encode(mask)
    if codec == LEGACY_MASK_CODEC:
        # Deflate with the run-length strategy: masks are mostly zero runs, and Z_RLE skips the
        # hash chains (15-45 % fewer bytes than plain level 1 at the same speed).
        packer = zlib.compressobj(MASK_ZLIB_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        return packer.compress(np.ascontiguousarray(mask).tobytes()) + packer.flush()
    raise ValueError(_unknown(codec))


def decode_mask(record: bytes | np.ndarray, height: int, width: int, codec: str = MASK_CODEC) -> np.ndarray:
    """The uint8 [height, width] mask of one record in `codec`; RecordError when malformed."""
    out = np.empty((1, height, width), np.uint8)
    rec = np.frombuffer(record, np.uint8) if isinstance(record, bytes) else np.asarray(record, np.uint8)
    return decode_masks(rec, np.array([0]), np.array([rec.size]), out, codec)[0]


def decode_masks(span: np.ndarray, starts: np.ndarray, stops: np.ndarray, out: np.ndarray,
                 codec: str = MASK_CODEC) -> np.ndarray:
    """Decode the records span[starts[t]:stops[t]] of `codec` into out[t] (uint8 [T, H, W],
    C-contiguous); returns `out`. A clip's records lie in one contiguous span of a shard's blob,
    so zrun decodes them all in one kernel call. RecordError naming the first malformed record."""
    if codec == MASK_CODEC:
        from preprocess.cache import zrun

        return zrun.decode_many(span, starts, stops, out)
    if codec != LEGACY_MASK_CODEC:
        raise ValueError(_unknown(codec))
    n = out.shape[1] * out.shape[2]
    for t, (a, b) in enumerate(zip(np.asarray(starts).tolist(), np.asarray(stops).tolist())):
        try:
            raw = zlib.decompress(span[a:b])
        except zlib.error as e:
            raise RecordError(t, f"not a zlib stream ({e})", codec) from None
        if len(raw) != n:
            raise RecordError(t, f"{len(raw)} bytes inflated, the mask has {n} pixels", codec)
        out[t] = np.frombuffer(raw, np.uint8).reshape(out.shape[1:])
    return out


def _unknown(codec: str) -> str:
    return f"unknown mask codec {codec!r} (known: {', '.join(MASK_CODECS)})"
