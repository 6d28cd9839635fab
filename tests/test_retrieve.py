"""Retrieval: recall@k on hand-built features with known answers, and checkpoint loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import UsageError
from train.retrieve import l2_normalise, load_feature_backbone, nearest_neighbours, recall_at_k


def _unit(deg):
    a = np.deg2rad(deg)
    return np.array([np.cos(a), np.sin(a)])


def test_recall_hand_built():
    # gallery on the unit circle (angles in degrees) with classes; scale must not matter
    g_angles = [0, 10, 90, 100, 180, 270]
    g_labels = np.array([0, 0, 1, 1, 2, 3])
    gallery = np.stack([_unit(a) * s for a, s in zip(g_angles, [1, 5, 2, 0.3, 7, 1])])
    # query A (label 0) at 4 deg: nearest 0 (class 0) -> hit at 1
    # query B (label 1) at 40 deg: order 10(0), 0(0), 90(1) -> first hit at rank 3
    # query C (label 3) at 175 deg: order 180(2), 100(1), 90(1), 270(3) -> first hit at rank 4
    # query D (label 5) has no gallery class: never a hit
    queries = np.stack([_unit(4), _unit(40) * 3, _unit(175), _unit(300)])
    q_labels = np.array([0, 1, 3, 5])
    r = recall_at_k(queries, q_labels, gallery, g_labels, ks=(1, 2, 3, 4, 5, 50))
    assert r == {"R@1": 25.0, "R@2": 25.0, "R@3": 50.0, "R@4": 75.0, "R@5": 75.0, "R@50": 75.0}
    nn = nearest_neighbours(queries, gallery, 3)
    np.testing.assert_array_equal(nn[0], [0, 1, 2])
    np.testing.assert_array_equal(nn[1], [1, 0, 2])


def test_recall_perfect_and_random_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32)) * 10
    gl = np.repeat(np.arange(5), 8)
    ql = np.repeat(np.arange(5), 3)
    g = centres[gl] + rng.normal(size=(len(gl), 32)) * 0.1
    q = centres[ql] + rng.normal(size=(len(ql), 32)) * 0.1
    assert all(v == 100.0 for v in recall_at_k(q, ql, g, gl).values())
    # a gallery of one class only: every query of that class hits at 1, others never
    r = recall_at_k(q, ql, g[gl == 2], gl[gl == 2], ks=(1, 50))
    assert r == {"R@1": 20.0, "R@50": 20.0}
    np.testing.assert_allclose(np.linalg.norm(l2_normalise(g), axis=1), 1.0)


def test_load_feature_backbone_formats(tmp_path):
    from train.models import backbone_state_dict, build_backbone

    torch.manual_seed(1)
    ref = build_backbone("r2plus1d_10", num_classes=7)
    # torchvision-format state dict (with a 7-way fc): backbone name inferred from the keys
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    model, ckpt, desc = load_feature_backbone(tmp_path / "tv.pth")
    assert ckpt == {} and "r2plus1d_10" in desc
    for k, v in backbone_state_dict(ref).items():
        assert torch.equal(model.state_dict()[k], v)
    # this project's checkpoint (pretraining kind, RNG state and config inside)
    torch.save({"kind": "pretrain", "backbone_name": "r2plus1d_10", "backbone": backbone_state_dict(ref),
                "model": {}, "config": {"crop": 64}, "dataset": "demo", "split": 1,
                "rng": {"torch": torch.get_rng_state()}}, tmp_path / "last.pt")
    model, ckpt, desc = load_feature_backbone(tmp_path / "last.pt")
    assert ckpt["dataset"] == "demo" and desc.startswith("pretrain")
    assert torch.equal(model.state_dict()["stem.0.weight"], ref.state_dict()["stem.0.weight"])
    # random init is seeded
    a, _, _ = load_feature_backbone(None, "random", "r2plus1d_10", seed=3)
    b, _, _ = load_feature_backbone(None, "random", "r2plus1d_10", seed=3)
    assert torch.equal(a.state_dict()["stem.0.weight"], b.state_dict()["stem.0.weight"])
    with pytest.raises(UsageError, match="missing.pt: no such file"):
        load_feature_backbone(tmp_path / "missing.pt")
