"""The MAC sample: alpha classes, blending, clip sampling, spatial and colour augmentation,
device transform (train/mac.py)."""
from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
import torch

from train.mac import (
    IDENTITY_JITTER, NORMS, ClipConfig, ColourJitter, MACConfig, MACTransform, SpatialParams,
    adjust_hue, alpha_indices, alpha_label, alpha_values, apply_jitter, apply_spatial, blend,
    blend_batch, blend_weights, centre_spatial, clip_masks, clip_transform, draw_alphas, draw_clip, draw_jitter, draw_spatial,
    eval_transform, gpu_transform, normalise, num_alpha_classes, rgb_to_grey, sample_clip_indices,
    to_float_clips, uniform_clip_starts,
)

# --------------------------------------------------------------------------------------------
# alpha classes


def _alphas_independent(k):
    edges = np.linspace(0.0, 1.0, k)            # k-1 equal bins of (0, 1)
    return list((edges[:-1] + edges[1:]) / 2) + [1.0]


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
def test_alpha_values(k):
    a = alpha_values(k)
    assert len(a) == k and a[-1] == 1.0
    assert a == sorted(a) and all(0 < x <= 1 for x in a)
    np.testing.assert_allclose(a, _alphas_independent(k), rtol=0, atol=1e-12)


def test_alpha_values_known_and_errors():
    assert alpha_values(2) == [0.5, 1.0]
    np.testing.assert_allclose(alpha_values(4), [1 / 6, 1 / 2, 5 / 6, 1.0], atol=1e-15)
    # the reference's hard-coded list is these values rounded
    np.testing.assert_allclose(alpha_values(4), [0.165, 0.495, 0.83, 1.0], atol=0.005)
    for bad in (1, 0, -3, 2.5):
        with pytest.raises(ValueError):
            alpha_values(bad)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("n", [2, 4])
def test_label_round_trip(k, n):
    assert num_alpha_classes(k, n) == k ** n
    tuples = list(itertools.product(range(k), repeat=n))    # lexicographic = label order
    for label, tup in enumerate(tuples):
        assert alpha_label(tup, k) == label == sum(i * k ** (n - 1 - j) for j, i in enumerate(tup))
        assert alpha_indices(label, k, n) == tup


def test_label_errors():
    assert alpha_label([1, 2], 4) == 6
    with pytest.raises(ValueError):
        alpha_label([4, 0], 4)
    with pytest.raises(ValueError):
        alpha_label([], 4)
    with pytest.raises(ValueError):
        alpha_indices(16, 4, 2)
    with pytest.raises(ValueError):
        alpha_indices(-1, 4, 2)


def test_draw_alphas_losses():
    for loss in ("ce", "mse"):
        rng = np.random.default_rng(0)
        for _ in range(50):
            idx, alpha, label, target = draw_alphas(rng, 4, 2, loss)
            assert idx.dtype == np.int64 and alpha.dtype == np.float32 and target.dtype == np.float32
            assert label == alpha_label(idx, 4)
            np.testing.assert_allclose(alpha, np.array(alpha_values(4), np.float32)[idx])
            np.testing.assert_array_equal(target, alpha)
    rng = np.random.default_rng(0)
    vals = []
    for _ in range(200):
        idx, alpha, label, target = draw_alphas(rng, 4, 4, "mse-n")
        assert label == -1 and (idx == -1).all() and alpha.shape == (4,)
        np.testing.assert_array_equal(target, alpha)
        vals.append(alpha)
    vals = np.concatenate(vals)
    assert vals.min() > 0 and vals.max() <= 1 and len(np.unique(vals)) > 700   # continuous
    # the label distribution of ce is uniform over the k^n classes
    rng = np.random.default_rng(1)
    labels = [draw_alphas(rng, 4, 2)[2] for _ in range(3200)]
    counts = np.bincount(labels, minlength=16)
    assert counts.min() > 120 and counts.max() < 280


# --------------------------------------------------------------------------------------------
# blending


def _blend_independent(clip, mask, alphas, reverse):
    clip, mask = np.asarray(clip, np.float64), np.asarray(mask, np.float64)
    out = np.empty_like(clip)
    T = clip.shape[1]
    seg = T // len(alphas)
    for t in range(T):
        a = alphas[t // seg]
        for c in range(clip.shape[0]):
            x, m = clip[c, t], mask[t]
            out[c, t] = m * x + a * (1 - m) * x if reverse else a * m * x + (1 - m) * x
    return out


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("alphas", [[1 / 6, 5 / 6], [0.5, 1.0, 1 / 6, 5 / 6]])
def test_blend_formula(reverse, alphas):
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(3, 16, 9, 11, generator=g)
    mask = torch.rand(16, 9, 11, generator=g)
    mask[:, :, :3] = 0.0
    mask[:, :, -3:] = 1.0
    out = blend(clip, mask, alphas, reverse=reverse)
    assert out.shape == clip.shape and out.dtype == clip.dtype
    np.testing.assert_allclose(out.numpy(), _blend_independent(clip, mask, alphas, reverse), atol=1e-6)
    # segments: frames of segment j only depend on alpha_j
    seg = 16 // len(alphas)
    for j, a in enumerate(alphas):
        fr = slice(j * seg, (j + 1) * seg)
        full_fg = out[:, fr, :, -3:]
        assert torch.allclose(full_fg, (1.0 if reverse else a) * clip[:, fr, :, -3:], atol=1e-6)
        bg = out[:, fr, :, :3]
        assert torch.allclose(bg, (a if reverse else 1.0) * clip[:, fr, :, :3], atol=1e-6)
    # numpy in, numpy out
    out_np = blend(clip.numpy(), mask.numpy(), alphas, reverse=reverse)
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, out.numpy(), atol=1e-7)


def test_blend_errors_and_identity():
    clip, mask = torch.rand(3, 16, 4, 4), torch.rand(16, 4, 4)
    with pytest.raises(ValueError, match="equal segments"):
        blend(clip, mask, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError):
        blend(clip, mask[:8], [0.5, 0.5])
    with pytest.raises(TypeError):
        blend(clip, (mask * 255).to(torch.uint8), [0.5, 0.5])
    assert torch.allclose(blend(clip, mask, [1.0, 1.0]), clip)
    assert torch.allclose(blend(clip, mask, [1.0, 1.0], reverse=True), clip)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("n", [2, 4])
def test_blend_batch_matches_blend(reverse, n):
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(3, 3, 16, 6, 7, generator=g)
    masks = torch.rand(3, 16, 6, 7, generator=g)
    alphas = torch.rand(3, n, generator=g)
    out = blend_batch(clips, masks, alphas, reverse)
    for b in range(3):
        assert torch.allclose(out[b], blend(clips[b], masks[b], alphas[b], reverse), atol=1e-6)


# --------------------------------------------------------------------------------------------
# temporal sampling


def test_sample_clip_indices():
    np.testing.assert_array_equal(sample_clip_indices(100, 16, 2, 5), 5 + 2 * np.arange(16))
    short = sample_clip_indices(10, 16, 1, 0)                  # repeats its last frame
    np.testing.assert_array_equal(short, np.minimum(np.arange(16), 9))
    np.testing.assert_array_equal(sample_clip_indices(20, 16, 4, 3), np.minimum(3 + 4 * np.arange(16), 19))
    assert sample_clip_indices(20, 16, 4, 3).dtype == np.int64
    with pytest.raises(ValueError):
        sample_clip_indices(10, 16, 1, 10)
    with pytest.raises(ValueError):
        sample_clip_indices(0, 16, 1, 0)


def test_draw_clip_uniform():
    rng = np.random.default_rng(0)
    strides, starts = [], []
    for _ in range(4000):
        start, stride = draw_clip(rng, 100, 16, (1, 2, 3, 4))
        assert 0 <= start <= 100 - (15 * stride + 1)
        strides.append(stride)
        starts.append((start, stride))
    counts = np.bincount(strides)[1:]
    assert len(counts) == 4 and counts.min() > 850
    s4 = [s for s, st in starts if st == 4]                  # max start 39
    assert min(s4) == 0 and max(s4) == 39
    # short video: start 0 always
    assert all(draw_clip(rng, 10, 16)[0] == 0 for _ in range(50))


def test_uniform_clip_starts():
    s = uniform_clip_starts(300, 16, 2, 10)
    assert s.dtype == np.int64 and len(s) == 10
    assert s[0] == 0 and s[-1] == 300 - 31 and (np.diff(s) > 0).all()
    np.testing.assert_allclose(np.diff(s), 269 / 9, atol=1)
    np.testing.assert_array_equal(uniform_clip_starts(20, 16, 2, 10), np.zeros(10))   # short video
    s = uniform_clip_starts(40, 16, 2, 10)                                       # 9 possible starts
    assert s[0] == 0 and s[-1] == 9 and (np.diff(s) >= 0).all()
    for n in (1, 31, 32, 500):
        for st in uniform_clip_starts(n, 16, 2, 10):
            assert len(sample_clip_indices(n, 16, 2, st)) == 16
    assert list(uniform_clip_starts(100, 16, 1, 1)) == [(100 - 16) // 2]


# --------------------------------------------------------------------------------------------
# spatial augmentation


def _square_video(T=16, H=128, W=171, seed=0):
    """Random texture in G and B; a square (moving) of R=255 on R=0 elsewhere; the mask marks
    exactly the square. So after any identical resize of frames and masks, R == mask."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)
    frames[..., 0] = 0
    masks = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        y, x = 20 + t, 30 + 3 * t
        frames[t, y:y + 40, x:x + 25, 0] = 255
        masks[t, y:y + 40, x:x + 25] = 255
    return frames, masks


def test_apply_spatial_keeps_frames_and_masks_aligned():
    frames, masks = _square_video()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        p = draw_spatial(rng, 128, 171, (112, 128, 144), 112, 0.5)
        seen.add((p.size, p.flip))
        f, m = apply_spatial(frames, masks, p)
        assert f.shape == (16, 112, 112, 3) and m.shape == (16, 112, 112)
        assert f.dtype == np.uint8 and m.dtype == np.uint8
        np.testing.assert_array_equal(f[..., 0], m)   # same geometry, same resampling
        # and both are the crop of the source, flipped if drawn
        if p.size == 112:
            ref_f = frames[:, p.y0:p.y0 + 112, p.x0:p.x0 + 112]
            ref_m = masks[:, p.y0:p.y0 + 112, p.x0:p.x0 + 112]
            if p.flip:
                ref_f, ref_m = ref_f[:, :, ::-1], ref_m[:, :, ::-1]
            np.testing.assert_array_equal(f, ref_f)
            np.testing.assert_array_equal(m, ref_m)
    assert {s for s, _ in seen} == {128, 112, 100}    # short side 128 scaled to 112 / 128 / 144
    assert {fl for _, fl in seen} == {False, True}
    # torch in, torch out, same values
    p = SpatialParams(3, 40, 100, 112, True)
    ft, mt = apply_spatial(torch.from_numpy(frames), torch.from_numpy(masks), p)
    fn, mn = apply_spatial(frames, masks, p)
    assert isinstance(ft, torch.Tensor) and ft.is_contiguous() and mt.is_contiguous()
    np.testing.assert_array_equal(ft.numpy(), fn)
    np.testing.assert_array_equal(mt.numpy(), mn)
    f_only, none = apply_spatial(frames, None, p)
    assert none is None
    np.testing.assert_array_equal(f_only, fn)


def test_apply_spatial_geometry():
    """The square lands where scaling the short side to s, cropping and flipping puts it."""
    frames, masks = _square_video(T=4)
    # box of the whole 128 short side resized to 112 (scale 112): the square (rows 20..59 at t=0)
    p = SpatialParams(0, 0, 128, 112, False)
    _, m = apply_spatial(frames, masks, p)
    rows = np.flatnonzero(m[0].max(1) > 127)
    assert abs(rows[0] - 20 * 112 / 128) <= 1 and abs(rows[-1] + 1 - 60 * 112 / 128) <= 1
    cols = np.flatnonzero(m[0].max(0) > 127)
    assert abs(cols[0] - 30 * 112 / 128) <= 1 and abs(cols[-1] + 1 - 55 * 112 / 128) <= 1
    _, mf = apply_spatial(frames, masks, SpatialParams(0, 0, 128, 112, True))
    np.testing.assert_array_equal(mf, m[:, :, ::-1])
    # odd T (mask packing pads to a multiple of 4)
    f, m = apply_spatial(frames[:3], masks[:3], SpatialParams(5, 7, 99, 112, False))
    np.testing.assert_array_equal(f[..., 0], m)
    with pytest.raises(ValueError):
        apply_spatial(frames, masks, SpatialParams(30, 0, 100, 112, False))


def test_centre_spatial():
    p = centre_spatial(128, 171, 128, 112)
    assert (p.y0, p.x0, p.size, p.out, p.flip) == (8, 29, 112, 112, False)
    p = centre_spatial(240, 320, 128, 112)                 # full-size frames: box 210, resized
    assert p.size == 210 and p.y0 == 15 and p.x0 == 55
    assert SpatialParams.from_array(p.as_array()) == p


def test_draw_spatial_flip_probability():
    rng = np.random.default_rng(3)
    flips = [draw_spatial(rng, 128, 171, flip_p=0.35).flip for _ in range(4000)]
    assert abs(np.mean(flips) - 0.35) < 0.03
    assert not any(draw_spatial(rng, 128, 171, flip_p=0.0).flip for _ in range(200))
    with pytest.raises(ValueError):
        draw_spatial(rng, 128, 171, scales=(100,), crop=112)


# --------------------------------------------------------------------------------------------
# colour augmentation


def test_draw_jitter_switchable_and_probabilities():
    rng = np.random.default_rng(0)
    off = np.stack([draw_jitter(rng, ColourJitter.off()) for _ in range(200)])
    assert (off == np.array(IDENTITY_JITTER, np.float32)).all()
    d = np.stack([draw_jitter(rng, ColourJitter()) for _ in range(5000)])
    assert d.dtype == np.float32 and d.shape == (5000, 5)
    assert abs((d[:, 0] != 0).mean() - 0.8) < 0.03 and np.abs(d[:, 0]).max() <= 32 / 255
    assert abs((d[:, 1] != 1).mean() - 0.8) < 0.03 and d[:, 1].min() >= 0.8 and d[:, 1].max() <= 1.2
    assert abs((d[:, 3] != 0).mean() - 0.8) < 0.03 and np.abs(d[:, 3]).max() <= 12 / 360
    assert ((d[:, 2] != 1) == (d[:, 3] != 0)).all() and d[:, 2].min() >= 0.9 and d[:, 2].max() <= 1.1
    assert abs(d[:, 4].mean() - 0.2) < 0.03
    # switching one op off leaves the other draws unchanged
    a = [draw_jitter(np.random.default_rng(s), ColourJitter()) for s in range(50)]
    b = [draw_jitter(np.random.default_rng(s), ColourJitter(p_greyscale=0.0, p_brightness=0.0)) for s in range(50)]
    for x, y in zip(a, b):
        assert y[4] == 0 and y[0] == 0
        np.testing.assert_array_equal(x[1:4], y[1:4])
    light = np.stack([draw_jitter(rng, ColourJitter.light()) for _ in range(4000)])
    applied = (light != np.array(IDENTITY_JITTER, np.float32)).any(1)
    assert abs(applied.mean() - 0.2) < 0.03 and (light[:, 4] == 0).all()


def test_apply_jitter_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 4, 5, 6, generator=g) * 0.8 + 0.1
    ident = torch.tensor([IDENTITY_JITTER] * 4)
    assert torch.equal(apply_jitter(x, ident), x)                      # identity: untouched
    p = ident.clone()
    p[0, 0] = 0.05                                                      # brightness
    p[1, 1] = 1.2                                                       # contrast
    p[2, 2] = 0.9                                                       # saturation
    p[3, 4] = 1.0                                                       # greyscale
    y = apply_jitter(x, p)
    assert torch.allclose(y[0], (x[0] + 0.05).clamp(0, 1))
    mean = rgb_to_grey(x[1:2]).mean()
    assert torch.allclose(y[1], (1.2 * x[1] + (1 - 1.2) * mean).clamp(0, 1), atol=1e-6)
    assert torch.allclose(y[2], (0.9 * x[2] + 0.1 * rgb_to_grey(x[2:3])[0]).clamp(0, 1), atol=1e-6)
    assert torch.equal(y[3, 0], y[3, 1]) and torch.equal(y[3, 1], y[3, 2])     # greyscale: equal channels
    assert torch.allclose(y[3, 0], rgb_to_grey(x[3:4])[0, 0], atol=1e-6)
    # untouched samples in a mixed batch stay exactly the same for the other ops
    assert torch.equal(y[1:, :, :], apply_jitter(x[1:], p[1:]))


def test_adjust_hue_matches_colorsys():
    g = torch.Generator().manual_seed(0)
    px = torch.rand(500, 3, generator=g)
    px[:20] = px[:20, :1]                       # some greys
    px[20:40, 1] = px[20:40, 0]                 # ties between max channels
    shift = (torch.rand(500, generator=g) - 0.5) * (24 / 360)
    out = adjust_hue(px.view(500, 3, 1), shift).view(500, 3)
    for i in range(500):
        h, s, v = colorsys.rgb_to_hsv(*px[i].tolist())
        ref = colorsys.hsv_to_rgb((h + shift[i].item()) % 1.0, s, v)
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)
    assert torch.allclose(adjust_hue(px.view(500, 3, 1), torch.zeros(500)).view(500, 3), px, atol=1e-6)


def test_colour_jitter_greyscale_in_transform():
    cfg = MACConfig(key_view=True)
    batch = _fake_batch(cfg, B=2)
    batch["jitter"][:] = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    batch["key_jitter"][:] = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    out = gpu_transform(batch, cfg, "cpu")
    mean = torch.tensor(NORMS[cfg.norm].mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(NORMS[cfg.norm].std).view(1, 3, 1, 1, 1)
    # the query is blended AFTER the greyscale and the normalisation: undo the blend first
    w = blend_weights(batch["masks"].float() / 255, batch["alpha"])
    for name, x in (("query", out["query"] / w), ("key", out["key"])):
        pix = x * std + mean
        assert torch.allclose(pix[:, 0], pix[:, 1], atol=1e-5) and torch.allclose(pix[:, 1], pix[:, 2], atol=1e-5), name


# --------------------------------------------------------------------------------------------
# device transform


def _fake_batch(cfg: MACConfig, B=3, seed=0):
    rng = np.random.default_rng(seed)
    S, T, n = cfg.crop, cfg.frames, cfg.n
    batch = {
        "frames": torch.from_numpy(rng.integers(0, 256, (B, T, S, S, 3), dtype=np.uint8)),
        "masks": torch.from_numpy(rng.integers(0, 256, (B, T, S, S), dtype=np.uint8)),
        "key_frames": torch.from_numpy(rng.integers(0, 256, (B, T, S, S, 3), dtype=np.uint8)),
    }
    items = [draw_alphas(rng, cfg.k, n, cfg.loss) for _ in range(B)]
    batch["alpha_idx"] = torch.from_numpy(np.stack([it[0] for it in items]))
    batch["alpha"] = torch.from_numpy(np.stack([it[1] for it in items]))
    batch["label"] = torch.tensor([it[2] for it in items])
    batch["alpha_target"] = torch.from_numpy(np.stack([it[3] for it in items]))
    batch["jitter"] = torch.from_numpy(np.stack([draw_jitter(rng, cfg.colour) for _ in range(B)]))
    batch["key_jitter"] = torch.from_numpy(np.stack([draw_jitter(rng, cfg.key_jitter) for _ in range(B)]))
    return batch


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("key_view", [True, False])
def test_gpu_transform_shapes(n, key_view):
    cfg = MACConfig(n=n, key_view=key_view)
    batch = _fake_batch(cfg, B=2)
    out = gpu_transform(batch, cfg, torch.device("cpu"))
    assert out["query"].shape == (2, 3, 16, 112, 112) and out["query"].dtype == torch.float32
    assert out["query"].is_contiguous()
    assert out["label"].dtype == torch.int64 and out["label"].shape == (2,)
    assert out["alpha_target"].shape == (2, n) and out["alpha_target"].dtype == torch.float32
    assert out["label"].max() < cfg.num_classes
    if key_view:
        assert out["key"].shape == (2, 3, 16, 112, 112) and out["key"].dtype == torch.float32
    else:
        assert "key" not in out
    assert torch.isfinite(out["query"]).all()


def _spec2_query(frames, mask, alphas, jitter, norm, reverse):
    """A plain per-clip implementation of docs/method.md section 2, steps 4-6, in float64 numpy: colour
    jitter and greyscale on the pixel clip, then mean/std normalisation, then the blend.
    frames uint8 [T,H,W,3], mask uint8 [T,H,W] -> float [3,T,H,W]."""
    import colorsys

    luma = lambda x: 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    x = frames.astype(np.float64) / 255
    bright, contrast, sat, hue, grey = (float(v) for v in jitter)
    if bright != 0:
        x = np.clip(x + bright, 0, 1)
    if contrast != 1:
        x = np.clip(contrast * x + (1 - contrast) * luma(x).mean(), 0, 1)
    if sat != 1:
        x = np.clip(sat * x + (1 - sat) * luma(x)[..., None], 0, 1)
    if hue != 0:
        flat = x.reshape(-1, 3)
        for i, (r, g, b) in enumerate(flat):
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            flat[i] = colorsys.hsv_to_rgb((h + hue) % 1.0, s, v)
        x = np.clip(flat.reshape(x.shape), 0, 1)
    if grey:
        x = np.repeat(luma(x)[..., None], 3, axis=-1)
    n = (x - np.array(NORMS[norm].mean)) / np.array(NORMS[norm].std)
    T, seg = len(frames), len(frames) // len(alphas)
    M = mask.astype(np.float64)[..., None] / 255
    out = np.empty_like(n)
    for t in range(T):
        a = float(alphas[t // seg])
        out[t] = (M[t] * n[t] + a * (1 - M[t]) * n[t]) if reverse else (a * M[t] * n[t] + (1 - M[t]) * n[t])
    return out.transpose(3, 0, 1, 2)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("norm", ["imagenet", "kinetics"])
def test_query_order_is_spec2(reverse, norm):
    """The batched transform equals a plain per-clip implementation of docs/method.md 2: jitter and
    greyscale, THEN normalisation, THEN the blend of the normalised clip (every op drawn on)."""
    always = ColourJitter(p_brightness=1.0, p_contrast=1.0, p_hue_saturation=1.0, p_greyscale=0.5)
    cfg = MACConfig(frames=4, crop=8, scales=(8,), n=2, colour=always, key_view=False, norm=norm,
                    reverse=reverse)
    batch = _fake_batch(cfg, B=6, seed=4)
    assert (batch["jitter"][:, 4] == 1).any() and (batch["jitter"][:, 4] == 0).any()
    q = MACTransform(cfg, "cpu")(batch)["query"]
    for b in range(6):
        ref = _spec2_query(batch["frames"][b].numpy(), batch["masks"][b].numpy(), batch["alpha"][b].numpy(),
                           batch["jitter"][b].numpy(), norm, reverse)
        np.testing.assert_allclose(q[b].numpy(), ref, atol=1e-4)
    # blending first (the old order) is measurably different on the same batch
    x = apply_jitter(blend_batch(to_float_clips(batch["frames"]), batch["masks"].float() / 255, batch["alpha"],
                                 reverse), batch["jitter"])
    assert (normalise(x, norm) - q).abs().max() > 0.05


def test_normalised_blend_attenuates_toward_the_mean_colour():
    """blend on the normalised clip: with alpha -> 0 a full-mask pixel goes to the normalisation's
    mean colour (0 after normalising); blend_space="pixel" attenuates toward black instead."""
    for reverse in (False, True):
        cfg = MACConfig(colour=ColourJitter.off(), key_view=False, reverse=reverse)
        batch = _fake_batch(cfg, B=3)
        batch["jitter"][:] = torch.tensor(IDENTITY_JITTER)
        q = MACTransform(cfg, "cpu")(batch)["query"]
        x = to_float_clips(batch["frames"])
        ref = blend_batch(normalise(x, cfg.norm), batch["masks"].float() / 255, batch["alpha"], reverse)
        assert torch.allclose(q, ref, atol=1e-5)
        # the clip stays in [0, 1] in pixel units (convex with the mean colour)
        mean = torch.tensor(NORMS[cfg.norm].mean).view(1, 3, 1, 1, 1)
        std = torch.tensor(NORMS[cfg.norm].std).view(1, 3, 1, 1, 1)
        pix = q * std + mean
        assert pix.min() > -1e-5 and pix.max() < 1 + 1e-5
    # blend_space="pixel": attenuation toward black, then normalise
    cfg = MACConfig(colour=ColourJitter.off(), key_view=False, blend_space="pixel")
    batch = _fake_batch(cfg, B=2)
    batch["jitter"][:] = torch.tensor(IDENTITY_JITTER)
    q = gpu_transform(batch, cfg, "cpu")["query"]
    ref = normalise(blend_batch(to_float_clips(batch["frames"]), batch["masks"].float() / 255, batch["alpha"]), cfg.norm)
    assert torch.allclose(q, ref, atol=1e-5)


def test_key_is_unblended():
    cfg = MACConfig(colour=ColourJitter.off())
    batch = _fake_batch(cfg, B=2)
    batch["jitter"][:] = torch.tensor(IDENTITY_JITTER)
    batch["key_jitter"][:] = torch.tensor(IDENTITY_JITTER)
    out = gpu_transform(batch, cfg, "cpu")
    assert torch.allclose(out["key"], normalise(to_float_clips(batch["key_frames"])), atol=1e-6)


def test_clip_and_eval_transforms():
    rng = np.random.default_rng(0)
    b = {"frames": torch.from_numpy(rng.integers(0, 256, (2, 16, 112, 112, 3), dtype=np.uint8)),
         "jitter": torch.tensor([IDENTITY_JITTER, IDENTITY_JITTER]), "label": torch.tensor([3, 4])}
    out = clip_transform(b, ClipConfig(), "cpu")
    assert out["clips"].shape == (2, 3, 16, 112, 112) and out["clips"].dtype == torch.float32
    assert torch.allclose(out["clips"], normalise(to_float_clips(b["frames"]), "kinetics"))
    e = {"frames": torch.from_numpy(rng.integers(0, 256, (2, 10, 16, 112, 112, 3), dtype=np.uint8)),
         "label": torch.tensor([1, 2]), "video": torch.tensor([5, 6])}
    out = eval_transform(e, "kinetics", "cpu")
    assert out["clips"].shape == (2, 10, 3, 16, 112, 112)
    assert torch.allclose(out["clips"][1, 3], normalise(to_float_clips(e["frames"][1, 3:4]), "kinetics")[0])
    assert out["video"].tolist() == [5, 6]


def test_config_validation_and_round_trip():
    cfg = MACConfig(n=4, k=3, colour=ColourJitter(p_greyscale=0.0))
    assert cfg.num_classes == 81
    assert MACConfig.from_dict(cfg.to_dict()) == cfg
    assert ClipConfig.from_dict(ClipConfig().to_dict()) == ClipConfig()
    with pytest.raises(ValueError):
        MACConfig(frames=16, n=3)
    with pytest.raises(ValueError):
        MACConfig(loss="l1")
    with pytest.raises(ValueError):
        MACConfig(blend_space="lab")
    with pytest.raises(ValueError):
        MACConfig(scales=(100, 128))
    with pytest.raises(ValueError):
        MACConfig.from_dict({"nonsense": 1})


def test_config_names_match_the_flags_and_old_checkpoints_still_load():
    """One name per quantity: the sample's config says frames and n, as the flags do; the "mac"
    section of a checkpoint written before that (T, n_segments) still loads."""
    cfg = MACConfig(frames=8, n=4)
    assert cfg.to_dict()["frames"] == 8 and cfg.to_dict()["n"] == 4 and "T" not in cfg.to_dict()
    old = {**cfg.to_dict(), "T": 8, "n_segments": 4}
    del old["frames"], old["n"]
    assert MACConfig.from_dict(old) == cfg
    assert ClipConfig.from_dict({"T": 12, "stride": 2}).frames == 12
