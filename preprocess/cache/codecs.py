"""Record codecs: one JPEG per frame (libjpeg-turbo through simplejpeg), one zlib stream per mask
(docs/cache.md, "Records and codecs").

Pure functions from arrays to bytes and back: no file, no checksum (integrity.py), no layout.
`decode_frame` is the one decoder of cached frames, for the trainer and for masks computed from
cached frames alike, so that masks are always those of the exact pixels the trainer reads.
"""
from __future__ import annotations

import zlib

import numpy as np
import simplejpeg

from preprocess.cache.format import MASK_ZLIB_LEVEL, DecodeParams


# --------------------------------------------------------------------------------------------
# Record codecs: one JPEG per frame, one zlib stream per mask.

def encode_frame(frame: np.ndarray, decode: DecodeParams) -> bytes:
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(frame), quality=decode.jpeg_quality, colorspace="RGB",
        colorsubsampling=decode.subsampling)


def decode_frame(record: bytes | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one JPEG record (into `out`, a contiguous uint8 [H,W,3] array, when given)."""
    # Accurate IDCT and upsampling: deterministic integer code in libjpeg-turbo, so masks computed
    # from these pixels are reproducible across runs and machines with the same library.
    return simplejpeg.decode_jpeg(record, colorspace="RGB", fastdct=False, fastupsample=False, buffer=out)


def encode_mask(mask: np.ndarray) -> bytes:
    # Deflate with the run-length strategy: masks are mostly zero runs, and Z_RLE skips the hash
    # chains. Measured on 128x171 soft masks against plain level 1: 15-45 % fewer bytes at the same
    # encoding speed (decoding ~50 us instead of ~25). Any zlib decoder reads it.
    packer = zlib.compressobj(MASK_ZLIB_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return packer.compress(np.ascontiguousarray(mask).tobytes()) + packer.flush()


def decode_mask(record: bytes | np.ndarray, height: int, width: int) -> np.ndarray:
    return np.frombuffer(zlib.decompress(record), dtype=np.uint8).reshape(height, width)
