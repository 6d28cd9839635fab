"""Foreground masks (docs/method.md section 1): numba kernel vs numpy twin, known answers, streaming."""

import itertools

import numpy as np
import pytest

from preprocess.masks import (
    DiffStream,
    bg_update_table,
    foreground_masks,
    foreground_masks_grey,
    foreground_masks_reference,
    grey_opencv,
    masks_from_diffs,
    masks_from_diffs_reference,
    soft_values,
    stride_diffs,
    stride_diffs_reference,
)
from preprocess import masks as masks_mod


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------

def grey_clip(values) -> np.ndarray:
    """uint8 [T,H,W,3] RGB clip whose grey image is exactly `values` ([T,H,W]): R=G=B=v maps to v
    (9798 + 19235 + 3735 = 2**15)."""
    v = np.asarray(values, dtype=np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


def synthetic_clip(T=24, H=40, W=56, seed=0, n_squares=3, noise=6, touch_borders=False):
    """Moving squares over a textured background, with sensor noise and a slight flicker."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    texture = (96 + 40 * np.sin(xx / 3.0) * np.cos(yy / 5.0) + rng.normal(0, 12, (H, W)))[..., None]
    tint = np.array([1.0, 0.9, 1.1])
    frames = np.empty((T, H, W, 3), np.float64)
    sq = [(int(rng.integers(4, 9)), rng.uniform(0, H), rng.uniform(0, W), rng.uniform(-3, 3),
           rng.uniform(-3, 3), rng.integers(0, 256, 3)) for _ in range(n_squares)]
    for t in range(T):
        f = texture * tint * (1 + 0.02 * np.sin(t))
        for (s, y0, x0, vy, vx, col) in sq:
            y = int(y0 + vy * t) % H
            x = int(x0 + vx * t) % W
            f[y:y + s, x:x + s] = col
        if touch_borders:
            # squares sliding along each border, in and out of the frame
            k = t % 6
            f[0:3, k * 4:k * 4 + 5] = 250          # top
            f[H - 3:H, W - 5 - k * 4:W - k * 4] = 5  # bottom
            f[k * 3:k * 3 + 5, 0:3] = 240          # left
            f[H - 5 - k * 3:H - k * 3, W - 3:W] = 10  # right
            f[0:2, W - 2:W] = 255 * (t % 2)        # top-right corner
            f[H - 2:H, 0:2] = 255 * ((t + 1) % 2)  # bottom-left corner
            f[H - 1, W - 1] = 255 * (t % 3 == 0)   # bottom-right pixel
            f[0, 0] = 255 * (t % 3 == 1)           # top-left pixel
        frames[t] = f + rng.normal(0, noise, f.shape)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def both(frames, *args, **kw):
    a = foreground_masks(frames, *args, **kw)
    b = foreground_masks_reference(frames, *args, **kw)
    assert a.dtype == np.uint8 and a.shape == frames.shape[:3]
    np.testing.assert_array_equal(a, b)
    return a


def hard_mask(values, lam, m, dilate=False):
    """Hard masks of a grey clip [T,H,W] (checked against the twin)."""
    return both(grey_clip(values), lam=lam, m=m, mode="hard", dilate=dilate)


# ------------------------------------------------------------------------------------------
# grey conversion
# ------------------------------------------------------------------------------------------

COLOURS = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (1, 2, 3),
           (17, 200, 99), (128, 128, 128), (250, 3, 77), (12, 34, 56), (201, 13, 255)]


def _grey_int(r, g, b):
    return (9798 * r + 19235 * g + 3735 * b + 2 ** 14) >> 15


def test_grey_known_colours():
    rgb = np.array(COLOURS, np.uint8)
    want = np.array([_grey_int(*c) for c in COLOURS], np.uint8)
    np.testing.assert_array_equal(grey_opencv(rgb), want)
    np.testing.assert_array_equal(masks_mod._grey_numpy(rgb), want)
    assert grey_opencv(np.array([255, 255, 255], np.uint8)).shape == ()
    assert int(grey_opencv(np.array([255, 0, 0], np.uint8))) == 76
    assert int(grey_opencv(np.array([0, 255, 0], np.uint8))) == 150
    assert int(grey_opencv(np.array([0, 0, 255], np.uint8))) == 29


def test_grey_differs_from_rounded_float():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (200_000, 3)).astype(np.uint8)
    fixed = grey_opencv(rgb).astype(int)
    r, g, b = (rgb[:, i].astype(np.float64) for i in range(3))
    rounded = np.floor(0.299 * r + 0.587 * g + 0.114 * b + 0.5).astype(int)
    differ = np.nonzero(fixed != rounded)[0]
    assert len(differ) > 0
    assert np.abs(fixed - rounded).max() == 1
    for k in differ[:20]:
        assert fixed[k] == _grey_int(*map(int, rgb[k]))


def test_grey_numba_matches_numpy_any_shape():
    rng = np.random.default_rng(2)
    for shape in [(3,), (5, 3), (2, 7, 9, 3), (3, 4, 5, 6, 3)]:
        x = rng.integers(0, 256, shape).astype(np.uint8)
        np.testing.assert_array_equal(grey_opencv(x), masks_mod._grey_numpy(x))
    x = rng.integers(0, 256, (4, 6, 10, 3)).astype(np.uint8)[:, ::2, ::-1]   # non-contiguous
    np.testing.assert_array_equal(grey_opencv(x), masks_mod._grey_numpy(x))
    with pytest.raises(ValueError):
        grey_opencv(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        grey_opencv(np.zeros((4, 3), np.float32))


# ------------------------------------------------------------------------------------------
# background update
# ------------------------------------------------------------------------------------------

def test_bg_table_is_truncated_float_formula():
    i = np.arange(256)[:, None]
    b = np.arange(256)[None, :]
    np.testing.assert_array_equal(bg_update_table(0.5), (i + b) // 2)     # floor, not round
    np.testing.assert_array_equal(bg_update_table(1.0), np.broadcast_to(b, (256, 256)))
    np.testing.assert_array_equal(bg_update_table(0.0), np.broadcast_to(i, (256, 256)))
    t = bg_update_table(0.1)
    for (ii, bb) in [(0, 0), (255, 255), (3, 200), (200, 3), (17, 18), (100, 100), (9, 1)]:
        assert t[ii, bb] == int(0.9 * ii + (1 - 0.9) * bb)     # the reference with momentum 0.9


def test_bg_plan_arith_only_when_exact():
    for m in (0.5, 0.0, 1.0, 0.25, 0.75, 0.125):
        plan, table, a, b, s = masks_mod._bg_plan(m)
        assert plan == masks_mod._BG_ARITH
        i = np.arange(256)[:, None]
        bb = np.arange(256)[None, :]
        np.testing.assert_array_equal((a * i + b * bb) >> s, table)
    for m in (0.1, 0.3, 0.9, 1 / 3):
        assert masks_mod._bg_plan(m)[0] == masks_mod._BG_TABLE


def _diff_trace(values, m):
    """Hand model of the reference on one pixel, in Python floats/ints: diff(t). The reference's
    parameter is the new frame's weight w = 1 - m."""
    w = 1.0 - m
    bg = values[0]
    out = []
    for v in values:
        out.append(abs(v - bg))
        bg = int(w * v + (1 - w) * bg)
    return out


def _check_diffs(values, m, want_diffs):
    """Read diff(t) of pixel (0,0) through hard masks: diff > lam survives, diff <= lam does not.
    Pixel (0,1) stays 0 (a reference pixel)."""
    T = len(values)
    clip = np.zeros((T, 1, 2), np.uint8)
    clip[:, 0, 0] = values
    for t in range(1, T):
        d = want_diffs[t]
        if d <= 255:
            assert hard_mask(clip, lam=d, m=m)[t, 0, 0] == 0, (t, d)
        if d >= 1:
            assert hard_mask(clip, lam=d - 1, m=m)[t, 0, 0] == 255, (t, d)


def test_truncating_background_m_half():
    # BG = floor((I + BG) / 2): from 10 the background creeps towards 51 but stops at 50,
    # so diff stays 1 forever (a rounding update would reach 51 and diff 0).
    values = [10] + [51] * 11
    want = [0, 41, 21, 11, 6, 3, 2, 1, 1, 1, 1, 1]
    assert _diff_trace(values, 0.5) == want
    _check_diffs(values, 0.5, want)
    clip = np.zeros((12, 1, 2), np.uint8)
    clip[:, 0, 0] = values
    assert (hard_mask(clip, lam=0, m=0.5)[1:, 0, 0] == 255).all()


def test_m_one_keeps_first_frame():
    values = [10, 50, 90, 10, 200, 11]
    want = [0, 40, 80, 0, 190, 1]
    assert _diff_trace(values, 1.0) == want
    _check_diffs(values, 1.0, want)


def test_m_small_and_table_path():
    values = [10, 50, 90, 10, 200, 11, 11, 11, 180]
    for m in (0.1, 0.3):
        want = _diff_trace(values, m)
        _check_diffs(values, m, want)
    # by hand, m=0.1 (w = 0.9, 1 - w = 0.09999999999999998): BG 10 -> 10, 46, 85 (85.6),
    # 17 (17.5), 181 (181.7), 27 (0.9 * 11 + 0.0999.. * 181 = 27.999999999999996), ...: the
    # naive 0.1 * 181 gives 28.0 there, so diff(6) is 16 in the reference, 17 naively
    assert _diff_trace(values, 0.1) == [0, 40, 44, 75, 183, 170, 16, 1, 169]


def test_update_on_frame_zero_keeps_the_background():
    # The reference updates BG on frame 0 too, with BG = I(0): w * I + (1 - w) * I. In its
    # arithmetic that is exactly I for every byte and every m on a 0.01 grid (so the update is
    # invisible, and a constant clip never lights up, whatever m).
    for m in np.round(np.arange(0, 1.0001, 0.01), 2):
        np.testing.assert_array_equal(np.diag(bg_update_table(float(m))), np.arange(256), err_msg=str(m))
    clip = np.full((5, 1, 2), 3, np.uint8)
    clip[:, 0, 1] = 0
    for m in (0.1, 0.3, 0.5):
        assert (hard_mask(clip, lam=0, m=m) == 0).all()


def test_diff_uses_previous_background():
    # diff(t) = |I(t) - BG(t-1)|, not against BG(t)
    values = [0, 100, 100]
    clip = np.zeros((3, 1, 2), np.uint8)
    clip[:, 0, 0] = values
    # t=1: diff 100 (BG(0) = 0); t=2: BG(1) = 50 -> diff 50
    _check_diffs(values, 0.5, [0, 100, 50])


# ------------------------------------------------------------------------------------------
# threshold, normalisation, dilation, first mask
# ------------------------------------------------------------------------------------------

def _two_frame(second, first=None):
    second = np.asarray(second, np.uint8)
    first = np.zeros_like(second) if first is None else np.asarray(first, np.uint8)
    return grey_clip(np.stack([first, second]))


def test_threshold_is_inclusive():
    clip = _two_frame([[30, 31, 29, 0]])
    np.testing.assert_array_equal(both(clip, lam=30, mode="hard", dilate=False)[1], [[0, 255, 0, 0]])
    np.testing.assert_array_equal(both(clip, lam=29, mode="hard", dilate=False)[1], [[255, 255, 0, 0]])
    np.testing.assert_array_equal(both(clip, lam=0, mode="hard", dilate=False)[1], [[255, 255, 255, 0]])
    assert (both(clip, lam=255, mode="hard", dilate=False) == 0).all()
    # a non-integer lam means diff <= lam, i.e. floor(lam)
    np.testing.assert_array_equal(both(clip, lam=30.5, mode="hard", dilate=False)[1], [[0, 255, 0, 0]])


def test_soft_known_values():
    clip = _two_frame([[0, 40, 80, 10]])
    # D = [0, 40, 80, 0]: 40/80*255 = 127.5 -> 127
    np.testing.assert_array_equal(both(clip, lam=30, dilate=False)[1], [[0, 127, 255, 0]])


def test_soft_range_one_peaks_at_254():
    clip = _two_frame([[0, 31, 0, 30]])           # D = [0, 31, 0, 0]: range 31 -> 255
    np.testing.assert_array_equal(both(clip, lam=30, dilate=False)[1], [[0, 255, 0, 0]])
    # every pixel survives with values 40 and 41: min 40 -> 0, range 1 -> 41 maps to 254
    clip = _two_frame([[40, 41, 41, 40]])
    np.testing.assert_array_equal(both(clip, lam=30, dilate=False)[1], [[0, 254, 254, 0]])
    # a surviving pixel of 1 among zeros (lam=0): range 1 -> 254
    clip = _two_frame([[0, 1, 0, 0]])
    np.testing.assert_array_equal(both(clip, lam=0, dilate=False)[1], [[0, 254, 0, 0]])
    # range 2 is exact (2 + 2.22e-16 == 2.0 in float64): peaks at 255
    clip = _two_frame([[0, 2, 1, 0]])
    np.testing.assert_array_equal(both(clip, lam=0, dilate=False)[1], [[0, 255, 127, 0]])


def test_soft_scene_cut_min_maps_to_zero():
    clip = _two_frame([[200, 250, 220]], first=[[10, 10, 10]])
    # D = [190, 240, 210], all survive: (D - 190) / 50 * 255
    np.testing.assert_array_equal(both(clip, lam=30, dilate=False)[1], [[0, 255, 102]])


def test_soft_values_and_fixed_point_multipliers():
    np.testing.assert_array_equal(soft_values(0), [0])
    np.testing.assert_array_equal(soft_values(1), [0, 254])
    np.testing.assert_array_equal(soft_values(2), [0, 127, 255])
    np.testing.assert_array_equal(soft_values(50)[[0, 12, 50]], [0, 61, 255])
    mults = masks_mod._SOFT_MULTS
    assert (mults >= 0).all() and mults.max() * 255 < 2 ** 32
    for r in range(256):
        k = np.arange(r + 1, dtype=np.uint64)
        want = [int(float(j) / (float(r) + 2.22e-16) * 255.0) for j in range(r + 1)]
        np.testing.assert_array_equal((k * np.uint64(mults[r])) >> np.uint64(16), want)


def _kernel_masks(clip, lam, m, mode, dilate, mults):
    plan, table, a, b, s = masks_mod._bg_plan(float(m))
    out, _ = masks_mod._masks_rgb_kernel(np.ascontiguousarray(clip), grey_opencv(clip[0]), lam, plan, table,
                                         a, b, s, mode == "soft", dilate, mults)
    out[0] = out[1]
    return out


def test_soft_float_table_fallback_matches_twin():
    # The per-frame float64 table is only used for ranges without an exact multiplier (none on
    # IEEE float64); force it, and a mix of both paths, and compare with the twin.
    no_mults = np.full(256, -1, np.int64)
    half = masks_mod._SOFT_MULTS.copy()
    half[::2] = -1
    rng = np.random.default_rng(13)
    clips = [synthetic_clip(T=8, H=17, W=23, seed=13, touch_borders=True),
             rng.integers(0, 256, (6, 9, 11, 3)).astype(np.uint8)]
    for clip in clips:
        for (lam, m, dilate) in itertools.product((0, 30), (0.5, 0.1), (True, False)):
            want = foreground_masks_reference(clip, lam, m, "soft", dilate)
            for mults in (no_mults, half):
                np.testing.assert_array_equal(_kernel_masks(clip, lam, m, "soft", dilate, mults), want)


def test_all_zero_frame_stays_zero():
    clip = grey_clip(np.full((4, 3, 3), 77, np.uint8))
    for mode in ("soft", "hard"):
        assert (both(clip, mode=mode) == 0).all()


def test_dilation_shape():
    second = np.zeros((5, 5), np.uint8)
    second[2, 2] = 100
    second[4, 4] = 100    # bottom-right corner: nothing to grow into
    second[0, 4] = 100    # top-right: grows down only
    second[4, 0] = 100    # bottom-left: grows right only
    out = both(_two_frame(second), lam=30, mode="hard")[1] // 255
    want = np.array([
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 1],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1],
    ])
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(both(_two_frame(second), lam=30, mode="hard", dilate=False)[1] // 255,
                                  second // 100)


def test_dilation_after_normalisation():
    # soft values are computed first, then the max filter spreads them (ties -> max)
    second = np.array([[0, 0, 0], [0, 80, 40], [0, 0, 60]], np.uint8)
    out = both(_two_frame(second), lam=30)[1]
    # D normalised: 80 -> 255, 40 -> 127, 60 -> 191
    want = np.array([[0, 0, 0], [0, 255, 255], [0, 255, 191]], np.uint8)
    np.testing.assert_array_equal(out, want)


def test_first_mask_replaced_by_second():
    rng = np.random.default_rng(3)
    clip = rng.integers(0, 256, (4, 6, 7, 3)).astype(np.uint8)
    for mode, dil in itertools.product(("soft", "hard"), (False, True)):
        out = both(clip, mode=mode, dilate=dil)
        assert out[1].any()
        np.testing.assert_array_equal(out[0], out[1])
    out = both(clip[:2])
    np.testing.assert_array_equal(out[0], out[1])


# ------------------------------------------------------------------------------------------
# numba vs numpy twin
# ------------------------------------------------------------------------------------------

LAMS = (0, 10, 30, 60, 255)
MS = (0.1, 0.5, 1.0)


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("dilate", [True, False])
def test_twin_random_clips(mode, dilate):
    rng = np.random.default_rng(4)
    for (lam, m) in itertools.product(LAMS, MS + (0.0, 0.3, 0.25)):
        H, W = int(rng.integers(1, 19)), int(rng.integers(1, 23))
        clip = rng.integers(0, 256, (int(rng.integers(2, 7)), H, W, 3)).astype(np.uint8)
        both(clip, lam=lam, m=m, mode=mode, dilate=dilate)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_twin_generated_clips(mode):
    for seed, (lam, m) in enumerate(itertools.product(LAMS, MS)):
        clip = synthetic_clip(T=10, H=24, W=31, seed=seed, touch_borders=seed % 2 == 0)
        for dilate in (True, False):
            out = both(clip, lam=lam, m=m, mode=mode, dilate=dilate)
        if lam <= 30:
            assert out[1:].any()


def test_twin_motion_touching_all_borders():
    clip = synthetic_clip(T=14, H=30, W=40, seed=11, noise=0, touch_borders=True)
    for mode, dilate in itertools.product(("soft", "hard"), (True, False)):
        out = both(clip, lam=10, m=0.5, mode=mode, dilate=dilate)
        assert out[:, 0, :].any() and out[:, -1, :].any() and out[:, :, 0].any() and out[:, :, -1].any()
        for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
            assert out[(slice(None), *corner)].any()


def test_twin_constant_and_scene_cut_clips():
    rng = np.random.default_rng(5)
    H, W = 9, 13
    for v in (0, 3, 51, 128, 255):
        clip = np.full((5, H, W, 3), v, np.uint8)
        for (lam, m) in itertools.product(LAMS, MS + (0.3,)):
            both(clip, lam=lam, m=m, mode="soft")
            both(clip, lam=lam, m=m, mode="hard")
    a = rng.integers(0, 100, (4, H, W, 3)).astype(np.uint8)
    b = rng.integers(156, 256, (4, H, W, 3)).astype(np.uint8)
    clip = np.concatenate([a, b, a])
    for (lam, m) in itertools.product((10, 30, 50), MS):
        out = both(clip, lam=lam, m=m, mode="soft", dilate=False)
        assert out[4].min() == 0 and out[4].max() == 255   # every pixel survives the cut


def test_twin_larger_frame():
    clip = synthetic_clip(T=6, H=128, W=171, seed=21)
    for m in MS:
        both(clip, m=m)
    both(clip, mode="hard")


def test_grey_variant_and_noncontiguous_input():
    clip = synthetic_clip(T=8, H=20, W=26, seed=7)
    for m in (0.5, 0.1):
        want = foreground_masks(clip, lam=10, m=m)
        np.testing.assert_array_equal(foreground_masks_grey(grey_opencv(clip), lam=10, m=m), want)
    big = synthetic_clip(T=8, H=40, W=26, seed=7)[:, ::2]
    assert not big.flags.c_contiguous
    both(big, lam=10)
    ro = clip.copy()
    ro.flags.writeable = False          # e.g. np.frombuffer over a decoder's bytes
    want = foreground_masks(clip)
    np.testing.assert_array_equal(both(ro), want)
    s = DiffStream(strides=(1, 3))
    parts = [s.push(ro[:3]), s.push(ro[3:])]
    for k in (1, 3):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), stride_diffs(clip, stride=k))


# ------------------------------------------------------------------------------------------
# the reference's m arithmetic
# ------------------------------------------------------------------------------------------

def test_background_update_is_the_references_expression_for_every_m():
    """The reference is parameterised by the new frame's weight w and computes
    uint8(w * I + (1 - w) * BG); with w = 1 - m that must hold bit for bit for every m, where
    the naive (1 - m) * I + m * BG differs (m = 0.1: 1 - 0.9 is not 0.1)."""
    i = np.arange(256, dtype=np.float64)[:, None]
    b = np.arange(256, dtype=np.float64)[None, :]
    for m in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 0.0, 0.25, 1 / 3):
        w = 1.0 - m
        np.testing.assert_array_equal(bg_update_table(m), (w * i + (1 - w) * b).astype(np.uint8), err_msg=str(m))
    naive = ((1.0 - 0.1) * i + 0.1 * b).astype(np.uint8)
    assert int((naive != bg_update_table(0.1)).sum()) == 358
    # and the kernels use it (numba and the twin, both update paths) on a clip
    clip = synthetic_clip(T=20, H=24, W=30, seed=31)
    for m in (0.1, 0.3):
        grey = grey_opencv(clip).astype(np.int64)
        bg = grey[0].copy()
        got = stride_diffs(clip, 10, m, 1)
        for t in range(len(clip)):
            d = np.abs(grey[t] - bg)
            np.testing.assert_array_equal(got[t], np.where(d <= 10, 0, d))
            bg = bg_update_table(m)[grey[t], bg].astype(np.int64)
        both(clip, lam=10, m=m)


# ------------------------------------------------------------------------------------------
# per-stride thresholded differences and masks from them
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(lam=10, m=0.1), dict(lam=0, m=1.0), dict(lam=60, m=0.3)])
def test_stride_diffs_are_algorithm_1_per_phase(kw):
    """Stride s, phase p: D of frames p, p+s, ... equals Algorithm 1's D run on frames[p::s]
    (numba and twin); with the stretch, dilation and first-mask rule on top, the masks of that
    sequence, bit for bit."""
    clip = synthetic_clip(T=29, H=18, W=23, seed=14, touch_borders=True)
    for s in (1, 2, 3, 4, 5, 40):
        d = stride_diffs(clip, stride=s, **kw)
        np.testing.assert_array_equal(d, stride_diffs_reference(clip, stride=s, **kw))
        assert (d[:s] == 0).all()                         # each phase starts its background
        for p in range(min(s, len(clip))):
            seq = d[p::s]
            if len(seq) < 2:
                continue
            for mode in ("soft", "hard"):
                for dilate in (True, False):
                    got = masks_from_diffs(seq, mode, dilate)
                    np.testing.assert_array_equal(got, masks_from_diffs_reference(seq, mode, dilate))
                    got[0] = got[1]
                    np.testing.assert_array_equal(got, foreground_masks_reference(clip[p::s], mode=mode,
                                                                                  dilate=dilate, **kw))


def test_masks_from_diffs_stretch_over_the_given_pixels():
    """The stretch is over the pixels passed in: a crop of D is stretched over the crop (as the
    reference, which computes masks after cropping), and equals masking the cropped frames."""
    clip = synthetic_clip(T=12, H=40, W=56, seed=15)
    d = stride_diffs(clip, stride=2)
    crop = d[:, 5:30, 12:40]
    full = masks_from_diffs(d, dilate=False)[:, 5:30, 12:40]
    own = masks_from_diffs(crop, dilate=False)
    assert (own >= full).all() and (own > full).any()      # a smaller range: a stronger stretch
    np.testing.assert_array_equal(own, masks_from_diffs_reference(np.ascontiguousarray(crop), dilate=False))
    for p in (0, 1):   # D is per pixel: cropping the frames first gives the same D
        np.testing.assert_array_equal(crop[p::2], stride_diffs(clip[p::2, 5:30, 12:40], stride=1))
    # known answers: an all-zero frame stays 0; hard is 255; when every pixel survives, the
    # minimum maps to 0 and a range of 1 peaks at 254
    z = np.zeros((1, 2, 3), np.uint8)
    assert (masks_from_diffs(z) == 0).all()
    one = np.array([[[0, 31, 62]]], np.uint8)
    np.testing.assert_array_equal(masks_from_diffs(one, dilate=False), [[[0, 127, 255]]])
    np.testing.assert_array_equal(masks_from_diffs(one, "hard", dilate=False), [[[0, 255, 255]]])
    two = np.array([[[40, 41]]], np.uint8)
    np.testing.assert_array_equal(masks_from_diffs(two, dilate=False), [[[0, 254]]])
    np.testing.assert_array_equal(masks_from_diffs(two), [[[0, 254]]])
    with pytest.raises(ValueError, match="mode"):
        masks_from_diffs(z, mode="fuzzy")
    with pytest.raises(ValueError, match="uint8"):
        masks_from_diffs(z.astype(np.float32))


# ------------------------------------------------------------------------------------------
# streaming
# ------------------------------------------------------------------------------------------

def _chunks(n, sizes):
    out, i = [], 0
    for s in itertools.cycle(sizes):
        if i >= n:
            break
        out.append((i, min(n, i + s)))
        i += s
    return out


def _stream(frames, sizes, strides, grey=False, **kw):
    s = DiffStream(strides=strides, **kw)
    parts = {k: [] for k in strides}
    for (a, b) in _chunks(len(frames), sizes):
        if grey == "mixed":
            use_grey = (a // max(1, b - a)) % 2 == 1
        else:
            use_grey = grey
        got = s.push_grey(grey_opencv(frames[a:b])) if use_grey else s.push(frames[a:b])
        assert set(got) == set(strides)
        for k, d in got.items():
            assert d.dtype == np.uint8 and d.shape == (b - a, *frames.shape[1:3])
            parts[k].append(d)
    assert s.frames_seen == len(frames)
    return {k: np.concatenate(v) for k, v in parts.items()}


@pytest.mark.parametrize("kw", [dict(), dict(lam=10, m=0.1), dict(lam=0, m=1.0)])
def test_stream_equals_one_shot(kw):
    clip = synthetic_clip(T=17, H=18, W=21, seed=8, touch_borders=True)
    strides = (1, 2, 3, 4)
    want = {k: stride_diffs(clip, stride=k, **kw) for k in strides}
    sizes_list = [[1], [2], [3], [1, 4], [17], [16, 1], [1, 16], [5, 0, 2], [0, 1, 1, 7]]
    rng = np.random.default_rng(9)
    for _ in range(5):
        sizes = list(rng.integers(0, 6, 8))
        sizes_list.append(sizes if any(sizes) else [1] + sizes)
    for sizes in sizes_list:
        got = _stream(clip, sizes, strides, **kw)
        for k in strides:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{sizes} stride {k}")
    for grey in (True, "mixed"):
        got = _stream(clip, [3], strides, grey=grey, **kw)
        for k in strides:
            np.testing.assert_array_equal(got[k], want[k])


def test_stream_errors():
    s = DiffStream()
    s.push(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="frame size changed"):
        s.push(np.zeros((2, 4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        s.push(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        s.push_grey(np.zeros((2, 4, 4, 3), np.uint8))
    for bad in ((0,), (1, 1), (), (-2,)):
        with pytest.raises(ValueError, match="strides"):
            DiffStream(strides=bad)
    with pytest.raises(ValueError, match="lam"):
        DiffStream(lam=256)
    with pytest.raises(ValueError, match="m must"):
        DiffStream(m=1.5)


# ------------------------------------------------------------------------------------------
# argument errors
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [foreground_masks, foreground_masks_reference])
def test_errors(fn):
    ok = np.zeros((3, 4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="fewer than 2 frames"):
        fn(ok[:1])
    with pytest.raises(ValueError, match="fewer than 2 frames"):
        fn(ok[:0])
    with pytest.raises(ValueError, match="uint8"):
        fn(ok.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        fn(ok[..., 0])
    with pytest.raises(ValueError, match="shape"):
        fn(ok[..., :2])
    with pytest.raises(ValueError, match="numpy array"):
        fn(ok.tolist())
    for lam in (-1, 256, 300.0, float("nan"), "30", None, True):
        with pytest.raises(ValueError, match="lam"):
            fn(ok, lam=lam)
    for m in (-0.1, 1.01, float("nan"), "0.5", None):
        with pytest.raises(ValueError, match="m must"):
            fn(ok, m=m)
    with pytest.raises(ValueError, match="unknown mode"):
        fn(ok, mode="binary")
    # the edges of the valid ranges are accepted; numpy scalars too
    fn(ok, lam=0, m=0.0)
    fn(ok, lam=255, m=1.0)
    fn(ok, lam=np.int64(30), m=np.float32(0.5))


def test_grey_variant_errors():
    with pytest.raises(ValueError, match="fewer than 2 frames"):
        foreground_masks_grey(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        foreground_masks_grey(np.zeros((3, 4, 4, 3), np.uint8))
