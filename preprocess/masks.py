"""Foreground masks (MAC paper, Algorithm 1), bit-exact to the reference implementation.

See docs/method.md section 1. Over a sequence of frames, on the grey image ``I(t)``::

    I       = (9798 R + 19235 G + 3735 B + 2**14) >> 15        (OpenCV's uint8 RGB->grey)
    BG      = I(0)                                              (uint8)
    for t = 0 .. T-1:                                           (the update runs on frame 0 too)
        diff(t) = |I(t) - BG|                                   (integers)
        D(t)    = diff(t) where diff(t) > lam, else 0           (the thresholded difference)
        mask(t) = soft: trunc((D - min D) / ((max D - min D) + 2.22e-16) * 255)   (float64)
                  hard: 255 where D > 0, else 0
        mask(t) = max(mask[y, x], mask[y-1, x], mask[y, x-1])   (if dilate; outside ignored)
        w       = 1 - m                                         (the reference's `momentum`)
        BG      = uint8(trunc(w * I(t) + (1 - w) * BG))         (float64; m weights the OLD BG)
    mask(0) = mask(1)                                           (the first mask is always empty)

The reference runs this on each training clip's own frames (a stride-s clip compares frames s
apart, and its background starts at the clip's first frame). The cache therefore stores, per
stride s, the thresholded difference ``D`` of every frame against a background that runs over
every s-th frame of the video (one phase per start offset, ``t mod s``): a stride-s clip reads
the D of its own frame sequence, and the clip-level steps (min-max stretch over the crop,
dilation, first-mask rule) run in the loader, where the crop is known. ``D`` is thresholded but
neither stretched nor dilated, so the soft/hard mode and the dilation are sample-time choices.

Public API
----------
``foreground_masks(frames, lam=30, m=0.5, mode="soft", dilate=True)``
    uint8 [T,H,W,3] RGB -> uint8 [T,H,W]: Algorithm 1 on consecutive frames, the fast (numba)
    implementation (used on each augmented clip by the loader's exact mode).
``foreground_masks_reference(...)``
    same signature and result: a plain vectorised-numpy twin written for clarity (the tests
    compare the two bit for bit).
``foreground_masks_grey(grey, ...)``
    one-shot variant for callers that already hold OpenCV-converted grey frames [T,H,W].
``grey_opencv(frames)``
    uint8 [...,3] RGB -> uint8 [...]: OpenCV's fixed-point grey conversion.
``DiffStream(lam=30, m=0.5, strides=(1, 2, 3, 4))``
    the per-stride thresholded differences of a video fed in decode chunks:
    ``push(rgb [t,H,W,3])`` / ``push_grey(grey [t,H,W])`` return ``{stride: D uint8 [t,H,W]}``
    for the frames pushed, frame ``i`` compared with the background of its phase ``i mod s``
    (the first frame of a phase starts its background, so its D is 0). Concatenating the
    returned chunks equals ``stride_diffs(all frames, ...)`` for any chunking.
``stride_diffs(frames, lam, m, stride)`` / ``stride_diffs_reference(...)``
    one-shot per-stride D of RGB frames [T,H,W,3] -> uint8 [T,H,W] (numba / numpy twin).
``masks_from_diffs(D, mode="soft", dilate=True)`` / ``masks_from_diffs_reference(...)``
    uint8 [T,H,W] -> uint8 [T,H,W]: the stretch (min-max per frame over the given D, so over
    the crop when D is a crop) or the hard threshold, and the dilation, bit-exact to the steps
    of Algorithm 1 (no first-mask rule: the caller applies it to the clip). So
    ``foreground_masks(x)`` == ``masks_from_diffs(stride_diffs(x, stride=1))`` with mask 0
    replaced by mask 1, and for any stride s and phase p the masks of the frame sequence
    ``x[p::s]`` are ``masks_from_diffs(stride_diffs(x, stride=s)[p::s])`` with the same rule.

Implementation notes
--------------------
The kernels are ``@njit(cache=True, nogil=True)`` and strictly serial: parallelism is across
videos in worker processes, so ``NUMBA_NUM_THREADS`` has no effect on them (there is no prange;
they never start numba's thread pool). Background state comes in as an argument and goes out
as a result (or is updated in an array the caller owns).

Per frame, over L1-resident buffers (one frame of 112x112 is 12.5 KB per plane):

1. grey conversion (int32 fixed point) of the RGB frame into a scratch plane;
2. |I - BG|, threshold, running min/max of D (one vectorised loop), then the BG update;
3. dilation fused with the output values: each output pixel is computed from
   max(D[y,x], D[y-1,x], D[y,x-1]) in one vectorised loop (soft: fixed-point multiply, hard:
   compare), written straight into the output.

Exactness without float64 per pixel:

* BG update: ``trunc(w * I + (1 - w) * BG)`` with ``w = 1.0 - m`` is a function of two bytes,
  so a 256x256 uint8 table built once per ``m`` with exactly that numpy float64 expression
  reproduces it bit for bit. Writing it as ``(1 - m) * I + m * BG`` instead would differ for
  m = 0.1 (``1 - (1 - 0.1)`` is not ``0.1`` in floating point): 358 of the 65,536 entries.
  When the table equals an integer formula ``(A * I + B * BG) >> S`` at all 65,536 entries
  (dyadic m such as 0.5, 0.25, 0 or 1: the float arithmetic is then exact) the kernel uses the
  formula, which vectorises; the check is exhaustive, so this is exact by construction. Other m
  (0.1, 0.3, ...) use the table (a gather, about 1.5x slower overall).
* Soft normalisation: the value of a pixel depends only on ``k = D - min D`` and on the frame's
  range ``R = max D - min D`` (both integers in 0..255). For every R a multiplier K is found at
  import such that ``(k * K) >> 16`` (uint32) equals the reference's float64 expression for every
  k in 0..R; the check is exhaustive over all 32,896 (R, k) pairs, so the kernel needs no float
  at all. If some R had no such K (it does not happen on IEEE float64), frames with that range
  fall back to a 256-entry table evaluated per frame with the float64 expression itself.
  Both the multiplier and the table are non-decreasing in k, so ``max(f(a), f(b), f(c)) ==
  f(max(a, b, c))``: dilation is done on D and the value computed once per pixel. The same
  argument makes stretching a stored D later (over a crop) exact.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numba import njit

__all__ = [
    "foreground_masks",
    "foreground_masks_reference",
    "foreground_masks_grey",
    "grey_opencv",
    "DiffStream",
    "stride_diffs",
    "stride_diffs_reference",
    "masks_from_diffs",
    "masks_from_diffs_reference",
    "bg_update_table",
    "soft_values",
    "EPS",
]

# The reference adds this constant to the range (it is slightly below float64 machine epsilon).
EPS = 2.22e-16
_MODES = ("soft", "hard")

# BG update strategies chosen per m (see bg_update_table / _bg_plan).
_BG_TABLE = 0
_BG_ARITH = 1


# --------------------------------------------------------------------------------------------
# argument checking
# --------------------------------------------------------------------------------------------

def _check_params(lam, m, mode, dilate):
    """Validate (lam, m, mode, dilate); return (integer threshold, float m, soft flag, dilate)."""
    if isinstance(lam, (bool, np.bool_)) or not isinstance(lam, numbers.Real):
        raise ValueError(f"lam must be a number in 0..255, got {lam!r}")
    lam_f = float(lam)
    if not (0.0 <= lam_f <= 255.0):  # also rejects NaN
        raise ValueError(f"lam must be in 0..255, got {lam!r}")
    if isinstance(m, (bool, np.bool_)) or not isinstance(m, numbers.Real):
        raise ValueError(f"m must be a number in [0, 1], got {m!r}")
    m_f = float(m)
    if not (0.0 <= m_f <= 1.0):  # also rejects NaN
        raise ValueError(f"m must be in [0, 1] (the weight of the old background), got {m!r}")
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}: expected 'soft' or 'hard'")
    # diff is an integer, so `diff <= lam` is `diff <= floor(lam)`.
    return int(math.floor(lam_f)), m_f, mode == "soft", bool(dilate)


def _check_rgb(frames, what="frames", min_frames=2):
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"{what} must have shape [T, H, W, 3] (RGB), got {frames.shape}")
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"{what} must have H >= 1 and W >= 1, got {frames.shape}")
    if frames.shape[0] < min_frames:
        raise ValueError(f"{what}: fewer than 2 frames (got {frames.shape[0]}); "
                         "the first mask is replaced by the second, so at least 2 are needed")
    return np.ascontiguousarray(frames)


def _check_grey(grey, what="grey", min_frames=2):
    if not isinstance(grey, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(grey).__name__}")
    if grey.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got dtype {grey.dtype}")
    if grey.ndim != 3:
        raise ValueError(f"{what} must have shape [T, H, W] (grey), got {grey.shape}")
    if grey.shape[1] < 1 or grey.shape[2] < 1:
        raise ValueError(f"{what} must have H >= 1 and W >= 1, got {grey.shape}")
    if grey.shape[0] < min_frames:
        raise ValueError(f"{what}: fewer than 2 frames (got {grey.shape[0]}); "
                         "the first mask is replaced by the second, so at least 2 are needed")
    return np.ascontiguousarray(grey)


# --------------------------------------------------------------------------------------------
# grey conversion
# --------------------------------------------------------------------------------------------

def _grey_numpy(frames: np.ndarray) -> np.ndarray:
    """OpenCV's RGB->grey in plain numpy (the twin's version)."""
    f = frames.astype(np.int32)
    return ((9798 * f[..., 0] + 19235 * f[..., 1] + 3735 * f[..., 2] + (1 << 14)) >> 15).astype(np.uint8)


@njit(cache=True, nogil=True, inline="always")
def _grey_into(rgb, out):
    # rgb: 1D C-contiguous [3n] uint8, out: 1D [n] uint8. Indices start at 0 so numba emits no
    # negative-index wraparound and LLVM vectorises the loop.
    for i in range(out.shape[0]):
        out[i] = (np.int32(9798) * np.int32(rgb[3 * i]) + np.int32(19235) * np.int32(rgb[3 * i + 1])
                  + np.int32(3735) * np.int32(rgb[3 * i + 2]) + np.int32(16384)) >> np.int32(15)


@njit(cache=True, nogil=True)
def _grey_kernel(rgb_flat, out_flat):
    _grey_into(rgb_flat, out_flat)
    return out_flat


def grey_opencv(frames: np.ndarray) -> np.ndarray:
    """OpenCV's uint8 RGB->grey: ``(9798 R + 19235 G + 3735 B + 2**14) >> 15``.

    ``frames``: uint8 [..., 3] (RGB order); returns uint8 [...]. Differs by 1 from the rounded
    float ``0.299 R + 0.587 G + 0.114 B`` for some colours, by design (22,411 of the 2**24 with
    float64 round-half-up, 22,906 with round-half-even; the method page quotes 22,313 (docs/method.md section 1)).
    """
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError("grey_opencv: frames must be a uint8 numpy array [..., 3]")
    if frames.ndim < 1 or frames.shape[-1] != 3:
        raise ValueError(f"grey_opencv: last axis must be RGB (size 3), got shape {frames.shape}")
    out = np.empty(frames.shape[:-1], np.uint8)
    if out.size:
        _grey_kernel(np.ascontiguousarray(frames).reshape(-1), out.reshape(-1))
    return out


# --------------------------------------------------------------------------------------------
# background update table
# --------------------------------------------------------------------------------------------

def bg_update_table(m: float) -> np.ndarray:
    """uint8 [256 (I), 256 (BG)]: ``uint8(trunc(w * I + (1.0 - w) * BG))`` with ``w = 1.0 - m``,
    in float64: exactly the per-pixel expression of the reference, whose parameter is the new
    frame's weight ``w`` (its ``momentum``), and of the numpy twin."""
    w_new = 1.0 - float(m)
    w_old = 1.0 - w_new
    i = np.arange(256, dtype=np.float64)[:, None]
    b = np.arange(256, dtype=np.float64)[None, :]
    return (w_new * i + w_old * b).astype(np.uint8)


_PLAN_CACHE: dict = {}


def _bg_plan(m: float):
    """(strategy, table, A, B, S) for this m; cached per m.

    _BG_ARITH when ``(A * I + B * BG) >> S`` equals the table everywhere (checked exhaustively)."""
    plan = _PLAN_CACHE.get(m)
    if plan is not None:
        return plan
    table = bg_update_table(m)
    plan = (_BG_TABLE, table, 0, 0, 0)
    ii = np.arange(256, dtype=np.int64)[:, None]
    bb = np.arange(256, dtype=np.int64)[None, :]
    for s in range(0, 9):
        a = round((1.0 - m) * (1 << s))   # candidate only: accepted if exhaustively equal
        b = (1 << s) - a
        if a < 0 or b < 0:
            continue
        if np.array_equal((a * ii + b * bb) >> s, table):
            plan = (_BG_ARITH, table, a, b, s)
            break
    _PLAN_CACHE[m] = plan
    return plan


def soft_values(rng: int) -> np.ndarray:
    """The reference's soft values for a frame whose thresholded D spans ``rng = max D - min D``:
    uint8 [rng + 1], entry k = ``trunc(k / (rng + 2.22e-16) * 255)`` in float64 (k = D - min D),
    the same numpy expression as the twin."""
    k = np.arange(rng + 1, dtype=np.int64)
    return (k / (np.int64(rng) + 2.22e-16) * 255).astype(np.uint8)


def _soft_mults() -> np.ndarray:
    """int64 [256]: for each range R, a multiplier K with ``((k * K) >> 16) == soft_values(R)[k]``
    for every k in 0..R (uint32 arithmetic: k * K < 2**32), or -1 where none was found (the
    kernel then falls back to a per-frame float64 table). K is the smallest multiplier that
    reaches every value; the check against the float64 expression is exhaustive."""
    mults = np.full(256, -1, np.int64)
    for r in range(256):
        want = soft_values(r).astype(np.int64)
        k = np.arange(r + 1, dtype=np.int64)
        mult = int(np.max(-((-(want[1:] << 16)) // k[1:]))) if r else 0
        if mult * 255 < 2 ** 32 and np.array_equal((k * mult) >> 16, want):
            mults[r] = mult
    return mults


# Exact for every R on IEEE float64 (checked above at import, not assumed).
_SOFT_MULTS = _soft_mults()


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, inline="always")
def _diff_into(g, bg, d, lam, mn, mx):
    """D = |g - bg| thresholded (<= lam -> 0); returns updated running (min, max) of D."""
    for i in range(g.shape[0]):
        x = np.int32(g[i])
        b = np.int32(bg[i])
        v = np.abs(x - b)
        v = v if v > lam else np.int32(0)
        mn = min(mn, v)
        mx = max(mx, v)
        d[i] = v
    return mn, mx


@njit(cache=True, nogil=True, inline="always")
def _bg_arith(g, bg_old, bg_new, a, b, s):
    for i in range(g.shape[0]):
        bg_new[i] = (a * np.uint32(g[i]) + b * np.uint32(bg_old[i])) >> s


@njit(cache=True, nogil=True, inline="always")
def _bg_table(g, bg_old, bg_new, table_flat):
    for i in range(g.shape[0]):
        bg_new[i] = table_flat[(np.uintp(g[i]) << np.uintp(8)) | np.uintp(bg_old[i])]


@njit(cache=True, nogil=True, inline="always")
def _soft_table(mn, mx, lut):
    # Fallback only: the reference's float64 expression evaluated once per value D can take
    # (D values lie in {mn..mx}; the rest of the table is never read).
    rng = float(mx - mn) + 2.22e-16
    for v in range(mn, mx + 1):
        lut[v] = np.uint8(int(float(v - mn) / rng * 255.0))


@njit(cache=True, nogil=True, inline="always")
def _out_soft_fixed(d2, o2, mn, k, dilate):
    """o = ((max-filtered D - mn) * k) >> 16 (uint32), the exact soft values (see _soft_mults)."""
    H, W = d2.shape
    mn = np.uint32(mn)
    k = np.uint32(k)
    sh = np.uint32(16)
    if not dilate:
        for y in range(H):
            r = d2[y]
            o = o2[y]
            for x in range(W):
                o[x] = ((np.uint32(r[x]) - mn) * k) >> sh
        return
    r = d2[0]
    o = o2[0]
    o[0] = ((np.uint32(r[0]) - mn) * k) >> sh
    for x in range(1, W):
        o[x] = ((np.uint32(max(r[x], r[x - 1])) - mn) * k) >> sh
    for y in range(1, H):
        r = d2[y]
        p = d2[y - 1]
        o = o2[y]
        o[0] = ((np.uint32(max(r[0], p[0])) - mn) * k) >> sh
        for x in range(1, W):
            o[x] = ((np.uint32(max(r[x], max(p[x], r[x - 1]))) - mn) * k) >> sh


@njit(cache=True, nogil=True, inline="always")
def _out_hard(d2, o2, dilate):
    """o = 255 where the (max-filtered) D is non-zero."""
    H, W = d2.shape
    z = np.uint8(0)
    f = np.uint8(255)
    if not dilate:
        for y in range(H):
            r = d2[y]
            o = o2[y]
            for x in range(W):
                o[x] = f if r[x] != z else z
        return
    r = d2[0]
    o = o2[0]
    o[0] = f if r[0] != z else z
    for x in range(1, W):
        o[x] = f if max(r[x], r[x - 1]) != z else z
    for y in range(1, H):
        r = d2[y]
        p = d2[y - 1]
        o = o2[y]
        o[0] = f if max(r[0], p[0]) != z else z
        for x in range(1, W):
            o[x] = f if max(r[x], max(p[x], r[x - 1])) != z else z


@njit(cache=True, nogil=True, inline="always")
def _out_soft_table(d2, dm2, o, mn, mx, lut, dilate):
    """Fallback soft output through a per-frame float64 table (used if no exact multiplier)."""
    _soft_table(mn, mx, lut)
    if dilate:
        _dilate_into(d2, dm2)
        src = dm2.reshape(o.shape[0])
    else:
        src = d2.reshape(o.shape[0])
    for i in range(o.shape[0]):
        o[i] = lut[src[i]]


@njit(cache=True, nogil=True, inline="always")
def _dilate_into(d2, m2):
    """m2[y, x] = max(d2[y, x], d2[y-1, x], d2[y, x-1]), outside neighbours ignored."""
    H, W = d2.shape
    r = d2[0]
    o = m2[0]
    o[0] = r[0]
    for x in range(1, W):
        o[x] = max(r[x], r[x - 1])
    for y in range(1, H):
        r = d2[y]
        p = d2[y - 1]
        o = m2[y]
        o[0] = max(r[0], p[0])
        for x in range(1, W):
            o[x] = max(r[x], max(p[x], r[x - 1]))


@njit(cache=True, nogil=True, inline="always")
def _frame(g, bg, bg_next, d, dm, out, lam, H, W, plan, table_flat, a, b, s, soft, dilate, mults, lut):
    """One frame: g (grey, flat), bg (flat) -> bg_next (flat), out (flat mask)."""
    mn, mx = _diff_into(g, bg, d, np.int32(lam), np.int32(255), np.int32(0))
    if plan == 1:
        _bg_arith(g, bg, bg_next, np.uint32(a), np.uint32(b), np.uint32(s))
    else:
        _bg_table(g, bg, bg_next, table_flat)
    d2 = d.reshape(H, W)
    o2 = out.reshape(H, W)
    if not soft:
        _out_hard(d2, o2, dilate)
    elif mults[mx - mn] >= 0:
        _out_soft_fixed(d2, o2, mn, mults[mx - mn], dilate)
    else:
        _out_soft_table(d2, dm.reshape(H, W), out, mn, mx, lut, dilate)


@njit(cache=True, nogil=True)
def _masks_rgb_kernel(frames, bg0, lam, plan, table, a, b, s, soft, dilate, mults):
    """frames uint8 [T,H,W,3] C-contiguous, bg0 uint8 [H,W] (state in) ->
    (masks uint8 [T,H,W] without the first-mask fix, bg uint8 [H,W] (state out))."""
    T, H, W, _ = frames.shape
    N = H * W
    out = np.empty((T, H, W), np.uint8)
    fr = frames.reshape(T, 3 * N)
    of = out.reshape(T, N)
    table_flat = table.reshape(65536)
    bg = bg0.reshape(N).copy()
    bg_next = np.empty(N, np.uint8)
    g = np.empty(N, np.uint8)
    d = np.empty(N, np.uint8)
    dm = np.empty(N, np.uint8)
    lut = np.zeros(256, np.uint8)
    for t in range(T):
        _grey_into(fr[t], g)
        _frame(g, bg, bg_next, d, dm, of[t], lam, H, W, plan, table_flat, a, b, s, soft, dilate, mults, lut)
        bg, bg_next = bg_next, bg
    return out, bg.reshape(H, W)


@njit(cache=True, nogil=True)
def _masks_grey_kernel(grey, bg0, lam, plan, table, a, b, s, soft, dilate, mults):
    """As _masks_rgb_kernel on grey frames uint8 [T,H,W]."""
    T, H, W = grey.shape
    N = H * W
    out = np.empty((T, H, W), np.uint8)
    gf = grey.reshape(T, N)
    of = out.reshape(T, N)
    table_flat = table.reshape(65536)
    bg = bg0.reshape(N).copy()
    bg_next = np.empty(N, np.uint8)
    d = np.empty(N, np.uint8)
    dm = np.empty(N, np.uint8)
    lut = np.zeros(256, np.uint8)
    for t in range(T):
        _frame(gf[t], bg, bg_next, d, dm, of[t], lam, H, W, plan, table_flat, a, b, s, soft, dilate, mults, lut)
        bg, bg_next = bg_next, bg
    return out, bg.reshape(H, W)


def _run(grey_or_rgb, is_rgb, bg0, lam_i, m_f, soft, dilate):
    plan, table, a, b, s = _bg_plan(m_f)
    kern = _masks_rgb_kernel if is_rgb else _masks_grey_kernel
    return kern(grey_or_rgb, bg0, lam_i, plan, table, a, b, s, soft, dilate, _SOFT_MULTS)


# --------------------------------------------------------------------------------------------
# public one-shot API
# --------------------------------------------------------------------------------------------

def foreground_masks(frames: np.ndarray, lam=30, m=0.5, mode: str = "soft", dilate: bool = True) -> np.ndarray:
    """Foreground masks of consecutive RGB frames, bit-exact to the reference (docs/method.md section 1).

    frames: uint8 [T, H, W, 3] RGB, T >= 2. lam: threshold (diff <= lam -> 0), 0..255.
    m: weight of the OLD background in the update, [0, 1]. mode: "soft" (per-frame min-max
    normalised differences) or "hard" (255). dilate: 2x2 elliptical dilation (grows down/right).
    Returns uint8 [T, H, W]; mask 0 is a copy of mask 1."""
    lam_i, m_f, soft, dil = _check_params(lam, m, mode, dilate)
    frames = _check_rgb(frames)
    bg0 = grey_opencv(frames[0])
    out, _ = _run(frames, True, bg0, lam_i, m_f, soft, dil)
    out[0] = out[1]
    return out


def foreground_masks_grey(grey: np.ndarray, lam=30, m=0.5, mode: str = "soft", dilate: bool = True) -> np.ndarray:
    """As foreground_masks, on grey frames uint8 [T, H, W] already converted with grey_opencv."""
    lam_i, m_f, soft, dil = _check_params(lam, m, mode, dilate)
    grey = _check_grey(grey)
    out, _ = _run(grey, False, grey[0].copy(), lam_i, m_f, soft, dil)
    out[0] = out[1]
    return out


# --------------------------------------------------------------------------------------------
# numpy twin
# --------------------------------------------------------------------------------------------

def _dilate_reference(mask: np.ndarray) -> np.ndarray:
    """OpenCV dilate with the 2x2 ellipse [[0,1],[1,1]] anchored at (1,1); border ignored."""
    out = mask.copy()
    out[1:, :] = np.maximum(out[1:, :], mask[:-1, :])   # the pixel above
    out[:, 1:] = np.maximum(out[:, 1:], mask[:, :-1])   # the pixel to the left
    return out


def foreground_masks_reference(frames: np.ndarray, lam=30, m=0.5, mode: str = "soft",
                               dilate: bool = True) -> np.ndarray:
    """Plain numpy twin of foreground_masks (same signature, same result bit for bit)."""
    lam_i, m_f, soft, dil = _check_params(lam, m, mode, dilate)
    frames = _check_rgb(frames)
    grey = _grey_numpy(frames)
    w_new = 1.0 - m_f     # weight of the new frame (the reference's `momentum`)
    w_old = 1.0 - w_new   # computed as the reference does: not m itself (m = 0.1 differs)
    T, H, W = grey.shape
    out = np.empty((T, H, W), np.uint8)
    bg = grey[0].copy()                                        # BG(0) = I(0), uint8
    for t in range(T):
        img = grey[t]
        diff = np.abs(img.astype(np.int32) - bg.astype(np.int32))
        D = np.where(diff <= lam_i, 0, diff)
        if soft:
            mask = ((D - D.min()) / ((D.max() - D.min()) + 2.22e-16) * 255).astype(np.uint8)
        else:
            mask = np.where(D > 0, 255, 0).astype(np.uint8)
        if dil:
            mask = _dilate_reference(mask)
        out[t] = mask
        bg = (w_new * img.astype(np.float64) + w_old * bg.astype(np.float64)).astype(np.uint8)
    out[0] = out[1]                                            # the first mask is always empty
    return out


# --------------------------------------------------------------------------------------------
# per-stride thresholded differences, and masks from them
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _diffs_kernel(grey, t0, stride, bgs, lam, plan, table, a, b, s):
    """grey uint8 [T,H,W]: frames t0 .. t0+T-1 of a video. bgs uint8 [stride, H*W]: the
    background of each phase (frame t belongs to phase t % stride), updated in place. A frame
    with t < stride starts its phase's background (BG = I, so its D is 0).
    Returns D uint8 [T,H,W], the thresholded difference of each frame against its phase's
    background (Algorithm 1's diff > lam, before any normalisation or dilation)."""
    T, H, W = grey.shape
    N = H * W
    out = np.empty((T, H, W), np.uint8)
    gf = grey.reshape(T, N)
    of = out.reshape(T, N)
    table_flat = table.reshape(65536)
    for i in range(T):
        t = t0 + i
        bg = bgs[t % stride]
        g = gf[i]
        if t < stride:
            bg[:] = g
        _diff_into(g, bg, of[i], np.int32(lam), np.int32(255), np.int32(0))
        # the update in place: each pixel's new value depends only on its own old value
        if plan == 1:
            _bg_arith(g, bg, bg, np.uint32(a), np.uint32(b), np.uint32(s))
        else:
            _bg_table(g, bg, bg, table_flat)
    return out


@njit(cache=True, nogil=True)
def _masks_from_diffs_kernel(diffs, soft, dilate, mults):
    """diffs uint8 [T,H,W] (C-contiguous) -> masks uint8 [T,H,W]: per frame, the min/max of D
    over the whole given array, then the exact soft values (or 255) with the fused dilation."""
    T, H, W = diffs.shape
    N = H * W
    out = np.empty((T, H, W), np.uint8)
    dm = np.empty((H, W), np.uint8)
    lut = np.zeros(256, np.uint8)
    for t in range(T):
        d2 = diffs[t]
        o2 = out[t]
        if not soft:
            _out_hard(d2, o2, dilate)
            continue
        mn = np.int32(255)
        mx = np.int32(0)
        df = d2.reshape(N)
        for i in range(N):
            v = np.int32(df[i])
            mn = min(mn, v)
            mx = max(mx, v)
        if mults[mx - mn] >= 0:
            _out_soft_fixed(d2, o2, mn, mults[mx - mn], dilate)
        else:
            _out_soft_table(d2, dm, o2.reshape(N), mn, mx, lut, dilate)
    return out


def _check_strides(strides) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in strides)
    except TypeError:
        out = (int(strides),)
    if not out or min(out) < 1 or len(set(out)) != len(out):
        raise ValueError(f"strides must be distinct integers >= 1, got {strides!r}")
    return out


def _check_diffs(diffs, what="diffs"):
    if not isinstance(diffs, np.ndarray) or diffs.dtype != np.uint8 or diffs.ndim != 3:
        got = getattr(diffs, "shape", type(diffs).__name__)
        raise ValueError(f"{what} must be a uint8 numpy array [T, H, W], got {got}")
    if diffs.shape[1] < 1 or diffs.shape[2] < 1:
        raise ValueError(f"{what} must have H >= 1 and W >= 1, got {diffs.shape}")
    return np.ascontiguousarray(diffs)


def masks_from_diffs(diffs: np.ndarray, mode: str = "soft", dilate: bool = True) -> np.ndarray:
    """Masks from thresholded differences D uint8 [T, H, W]: per frame the reference's soft
    stretch over the given pixels (``trunc((D - min D) / ((max D - min D) + 2.22e-16) * 255)``)
    or the hard 255, then the 2x2 elliptical dilation. Bit-exact to those steps of Algorithm 1;
    the first-mask rule is the caller's (it belongs to a clip, not to a frame)."""
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}: expected 'soft' or 'hard'")
    diffs = _check_diffs(diffs)
    if diffs.shape[0] == 0:
        return np.empty(diffs.shape, np.uint8)
    return _masks_from_diffs_kernel(diffs, mode == "soft", bool(dilate), _SOFT_MULTS)


def masks_from_diffs_reference(diffs: np.ndarray, mode: str = "soft", dilate: bool = True) -> np.ndarray:
    """Plain numpy twin of masks_from_diffs (same result bit for bit)."""
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}: expected 'soft' or 'hard'")
    diffs = _check_diffs(diffs)
    out = np.empty(diffs.shape, np.uint8)
    for t, D in enumerate(diffs.astype(np.int64)):
        if mode == "soft":
            mask = ((D - D.min()) / ((D.max() - D.min()) + 2.22e-16) * 255).astype(np.uint8)
        else:
            mask = np.where(D > 0, 255, 0).astype(np.uint8)
        out[t] = _dilate_reference(mask) if dilate else mask
    return out


def stride_diffs(frames: np.ndarray, lam=30, m=0.5, stride: int = 1) -> np.ndarray:
    """Per-stride thresholded differences of a whole video, RGB uint8 [T, H, W, 3] -> uint8
    [T, H, W]: frame t against the background of its phase t % stride (see DiffStream)."""
    frames = _check_rgb(frames, min_frames=0)
    return DiffStream(lam, m, (stride,)).push(frames)[_check_strides((stride,))[0]]


def stride_diffs_reference(frames: np.ndarray, lam=30, m=0.5, stride: int = 1) -> np.ndarray:
    """Plain numpy twin of stride_diffs: Algorithm 1's D run separately over each phase's
    frame sequence ``frames[p::stride]``."""
    lam_i, m_f, _, _ = _check_params(lam, m, "soft", True)
    (stride,) = _check_strides((stride,))
    grey = _grey_numpy(_check_rgb(frames, min_frames=0)).astype(np.int32)
    w_new = 1.0 - m_f
    w_old = 1.0 - w_new
    out = np.zeros(grey.shape, np.uint8)
    for p in range(min(stride, len(grey))):
        bg = grey[p].astype(np.uint8)                          # BG(0) = I(0) of the phase
        for t in range(p, len(grey), stride):
            diff = np.abs(grey[t] - bg.astype(np.int32))
            out[t] = np.where(diff <= lam_i, 0, diff)
            bg = (w_new * grey[t].astype(np.float64) + w_old * bg.astype(np.float64)).astype(np.uint8)
    return out


class DiffStream:
    """Per-stride thresholded differences over decode chunks, every phase's background carried
    across chunks.

    ``push(rgb)`` (uint8 [t,H,W,3]) or ``push_grey(grey)`` (uint8 [t,H,W], from grey_opencv)
    returns ``{stride: D uint8 [t,H,W]}`` for exactly the frames pushed: frame i of the video is
    compared with the background that ran over frames i - s, i - 2s, ... of its phase i % s (the
    first frame of each phase starts that background: its D is 0). Concatenating the returned
    chunks gives ``stride_diffs(all frames, lam, m, s)`` whatever the chunking; for stride 1 it
    is Algorithm 1's D of the consecutive frames. All chunks must have the same H, W.
    """

    def __init__(self, lam=30, m=0.5, strides=(1, 2, 3, 4)):
        self._lam, self._m, _, _ = _check_params(lam, m, "soft", True)
        self.strides = _check_strides(strides)
        self._plan = _bg_plan(self._m)
        self._bgs: dict[int, np.ndarray] = {}
        self._hw = None
        self._n = 0

    @property
    def frames_seen(self) -> int:
        return self._n

    def push(self, frames: np.ndarray) -> dict[int, np.ndarray]:
        frames = _check_rgb(frames, "push: frames", min_frames=0)
        return self._push(grey_opencv(frames))

    def push_grey(self, grey: np.ndarray) -> dict[int, np.ndarray]:
        return self._push(_check_grey(grey, "push_grey: grey", min_frames=0))

    def _push(self, grey: np.ndarray) -> dict[int, np.ndarray]:
        hw = tuple(grey.shape[1:3])
        if self._hw is None:
            self._hw = hw
            self._bgs = {s: np.zeros((s, hw[0] * hw[1]), np.uint8) for s in self.strides}
        elif hw != self._hw:
            raise ValueError(f"DiffStream: frame size changed from {self._hw} to {hw}")
        if grey.shape[0] == 0:
            return {s: np.empty((0, *hw), np.uint8) for s in self.strides}
        plan, table, a, b, sh = self._plan
        out = {s: _diffs_kernel(grey, self._n, s, self._bgs[s], self._lam, plan, table, a, b, sh)
               for s in self.strides}
        self._n += grey.shape[0]
        return out
