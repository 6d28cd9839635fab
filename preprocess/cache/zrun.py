"""zrun: the byte-oriented run-length codec of the cache's mask records (docs/cache.md, "Records
and codecs").

Why not zlib: a clip's masks are read on every training sample, and inflating its 16 zlib
streams of 128x171 took ~0.9 ms, several times what computing the masks from the frames costs
(0.1-0.3 ms). The masks are ~90 % zero runs between clusters of arbitrary bytes, so a run-length
code of zero runs and raw literal bytes keeps most of the size gain (records ~1.2-1.3x zlib's)
and decodes a clip in ~0.05 ms: one numba call fills the whole clip (`decode_many`), with no
Python work per record.

Format of one record for a uint8 mask of H x W pixels in row-major order: a sequence of pairs

    zero-run length   unsigned LEB128 varint (7 bits per byte, low group first, high bit set on
                      every byte but the last)
    literal count L   unsigned LEB128 varint
    L literal bytes   the next L pixels, as they are (zeros allowed among them)

repeated until exactly H*W pixels are covered; nothing may follow. The encoder keeps a zero run
shorter than 3 between two non-zero pixels inside the literal bytes (a split costs 2 bytes of
varints, so it never saves a byte and costs the decoder a step), starts with a zero run of 0 when
the first pixel is not zero, ends with a pair of literal count 0 when the mask ends in zeros, and
writes an all-zero mask as the one pair (H*W, 0) and a mask of no pixels as no bytes. Decoders
accept any split that covers the pixels exactly.

A malformed record (truncated, a run past H*W pixels, bytes after the last pixel, a varint of
more than 9 bytes) raises `RecordError`, a ValueError naming the record and the reason; the
kernels check every length before they write, so no input writes outside `out`.

`encode` / `decode` / `decode_many` are the numba kernels' wrappers; `encode_reference` and
`decode_reference` are their plain numpy/python twins, written for clarity (the tests compare them).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from preprocess.cache.format import RecordError

_TRUNCATED = "truncated: the record ends before it covers all pixels"
_OVERFLOW = "a run goes past the last pixel"
_TRAILING = "bytes after the last pixel"
_VARINT = "a length (varint) longer than 9 bytes"
_MAX_VARINT_BYTES = 9          # 63 bits: more than any mask has pixels, and no overflow
_SHORT_GAP = 3                 # zero runs shorter than this stay inside the literal bytes


# --------------------------------------------------------------------------------------------
# numba kernels

@njit(cache=True, nogil=True, inline="always")
def _put_varint(buf, k, value):
    while value >= 0x80:
        buf[k] = (value & 0x7F) | 0x80
        value >>= 7
        k += 1
    buf[k] = value
    return k + 1


@njit(cache=True, nogil=True)
def _encode_kernel(flat, buf):
    """Encode the pixels `flat` into `buf` (at least 2 * len(flat) + 16 bytes); returns the
    number of bytes written."""
    n = flat.size
    i = 0
    k = 0
    while i < n:
        z0 = i
        while i < n and flat[i] == 0:
            i += 1
        j = i                                     # the literal bytes run from i to j
        while j < n:
            if flat[j] != 0:
                j += 1
                continue
            r = j
            while r < n and flat[r] == 0 and r - j < _SHORT_GAP:
                r += 1
            if r == n or r - j >= _SHORT_GAP:     # zeros to the end, or a long run: stop here
                break
            j = r                                 # a short gap between non-zero pixels
        k = _put_varint(buf, k, i - z0)
        k = _put_varint(buf, k, j - i)
        for p in range(i, j):
            buf[k] = flat[p]
            k += 1
        i = j
    return k


# The decoder runs on unsigned 64-bit positions throughout and its varint reader signals an error
# by a value no run can take (_UBAD) rather than a status: numba then skips its negative-index
# wraparound test on every access and LLVM vectorises the copies (with signed positions, or a
# status beside the value, the same kernel measured 3-8x slower). Runs are written in whole
# 16-byte blocks where the record's row has room: a zero run's last block spills into the
# literals that follow and a literal run's into the next zero run, each overwritten right after
# (the record's last run, or the bytes it spills into, use the exact byte loop instead). A run
# then costs a few predictable block steps instead of a byte loop of data-dependent length:
# measured 2.4x faster on random clips of the demo cache. It only finds the first malformed
# record; the wrapper asks `decode_reference` why it is malformed (an error path, once).
_U0, _U1, _U7, _U127 = np.uint64(0), np.uint64(1), np.uint64(7), np.uint64(0x7F)
_UMAX_SHIFT = np.uint64(7 * _MAX_VARINT_BYTES)
_UBAD = np.uint64(2 ** 64 - 1)
_BLOCK = 16
_UBLOCK = np.uint64(_BLOCK)


@njit(cache=True, nogil=True, inline="always")
def _get_varint(span, pos, stop):
    """(value, next position) of the varint at span[pos:stop]; value _UBAD when it is truncated
    or longer than _MAX_VARINT_BYTES."""
    value = _U0
    shift = _U0
    while shift < _UMAX_SHIFT and pos < stop:
        b = np.uint64(span[pos])
        pos += _U1
        value |= (b & _U127) << shift
        if b <= _U127:
            return value, pos
        shift += _U7
    return _UBAD, pos


@njit(cache=True, nogil=True)
def _decode_many_kernel(span, starts, stops, flat, n):
    """Decode record t = span[starts[t]:stops[t]] into flat[t*n:(t+1)*n] for every t (the
    caller has checked that the starts and stops lie within the span and that `flat` holds them
    all); returns the first malformed record's t, -1 when all are well formed. Never writes
    outside the row of the record it decodes, nor reads outside `span`."""
    un = np.uint64(n)
    size = np.uint64(span.size)
    for t in range(starts.size):
        pos, stop = np.uint64(starts[t]), np.uint64(stops[t])
        o = np.uint64(t) * un
        end = o + un
        while o < end:
            z, pos = _get_varint(span, pos, stop)
            if z > end - o:
                return t
            if o + z + _UBLOCK <= end:
                q = _U0
                while q < z:
                    for p in range(_BLOCK):
                        flat[o + q + np.uint64(p)] = 0
                    q += _UBLOCK
            else:
                for p in range(z):
                    flat[o + np.uint64(p)] = 0
            o += z
            lit, pos = _get_varint(span, pos, stop)
            if lit > end - o or lit > stop - pos:
                return t
            if o + lit + _UBLOCK <= end and pos + lit + _UBLOCK <= size:
                q = _U0
                while q < lit:
                    for p in range(_BLOCK):
                        flat[o + q + np.uint64(p)] = span[pos + q + np.uint64(p)]
                    q += _UBLOCK
            else:
                for p in range(lit):
                    flat[o + np.uint64(p)] = span[pos + np.uint64(p)]
            o += lit
            pos += lit
        if pos != stop:
            return t
    return -1


# --------------------------------------------------------------------------------------------
# wrappers

def _as_bytes_array(record) -> np.ndarray:
    return np.frombuffer(record, dtype=np.uint8) if isinstance(record, (bytes, bytearray, memoryview)) \
        else np.ascontiguousarray(record, dtype=np.uint8).reshape(-1)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"a zrun mask is a uint8 [H, W] array, got {mask.dtype} {mask.shape}")
    return np.ascontiguousarray(mask).reshape(-1)


def encode(mask: np.ndarray) -> bytes:
    """The zrun record of a uint8 [H, W] mask."""
    flat = _check_mask(mask)
    buf = np.empty(2 * flat.size + 16, np.uint8)   # bound: each pair's varints <= its pixels + 2
    return buf[:_encode_kernel(flat, buf)].tobytes()


def decode_many(span: np.ndarray, starts: np.ndarray, stops: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Decode the T records span[starts[t]:stops[t]] into out[t] (uint8 [T, H, W], C-contiguous)
    in one kernel call; returns `out`. RecordError naming the first malformed record (t)."""
    span = _as_bytes_array(span)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    stops = np.ascontiguousarray(stops, dtype=np.int64)
    if out.dtype != np.uint8 or out.ndim != 3 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 [T, H, W] array, got {out.dtype} {out.shape}")
    n_records, h, w = out.shape
    if starts.shape != (n_records,) or stops.shape != (n_records,):
        raise ValueError(f"{n_records} output masks but {starts.shape} starts and {stops.shape} stops")
    outside = (starts < 0) | (stops < starts) | (stops > span.size)
    if outside.any():
        t = int(np.argmax(outside))
        raise RecordError(t, f"bytes {starts[t]}:{stops[t]} are not within the span of {span.size} bytes")
    t = _decode_many_kernel(span, starts, stops, out.reshape(-1), h * w)
    if t >= 0:
        try:
            decode_reference(span[starts[t]:stops[t]], h, w)
        except RecordError as e:
            raise RecordError(t, e.reason) from None
        raise AssertionError(f"zrun: the kernel rejects record {t}, decode_reference accepts it")
    return out


def decode(record, height: int, width: int) -> np.ndarray:
    """The uint8 [height, width] mask of one zrun record (bytes or a uint8 array)."""
    rec = _as_bytes_array(record)
    out = np.empty((1, height, width), np.uint8)
    return decode_many(rec, np.array([0]), np.array([rec.size]), out)[0]


# --------------------------------------------------------------------------------------------
# numpy/python twins

def _varint_reference(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >= 0x80 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def encode_reference(mask: np.ndarray) -> bytes:
    """Twin of `encode`: the runs of non-zero pixels, merged across gaps shorter than 3."""
    flat = _check_mask(mask)
    nz = np.concatenate([[False], flat != 0, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(nz))
    segments = edges.reshape(-1, 2).tolist()        # [start, stop) of each run of non-zero pixels
    merged: list[list[int]] = []
    for a, b in segments:
        if merged and a - merged[-1][1] < _SHORT_GAP:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    out, pos = bytearray(), 0
    for a, b in merged:
        out += _varint_reference(a - pos) + _varint_reference(b - a) + flat[a:b].tobytes()
        pos = b
    if pos < flat.size:
        out += _varint_reference(flat.size - pos) + _varint_reference(0)
    return bytes(out)


def decode_reference(record, height: int, width: int) -> np.ndarray:
    """Twin of `decode`, in plain python over the bytes (RecordError alike)."""
    rec = _as_bytes_array(record).tobytes()
    n = height * width
    out = np.zeros(n, np.uint8)
    pos = o = 0

    def varint() -> int:
        nonlocal pos
        value = 0
        for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
            if pos >= len(rec):
                raise RecordError(0, _TRUNCATED)
            b = rec[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if value > n - o:
                raise RecordError(0, _OVERFLOW)
            if b < 0x80:
                return value
        raise RecordError(0, _VARINT)

    while o < n:
        o += varint()                                # zeros: already in `out`
        lit = varint()
        if lit > len(rec) - pos:
            raise RecordError(0, _TRUNCATED)
        out[o:o + lit] = np.frombuffer(rec, np.uint8, lit, pos)
        o += lit
        pos += lit
    if pos != len(rec):
        raise RecordError(0, _TRAILING)
    return out.reshape(height, width)
