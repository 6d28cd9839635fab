"""train/evaluate.py: metric functions on known arrays, the test clips it reads, the split guard,
and one end-to-end evaluation of a small hand-made finetuning checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train.evaluate import (
    SplitLeakError, average_clip_probs, check_no_overlap, clip_geometry, compute_metrics, confusion_matrix,
    default_short_side, eval_batches, mean_class_accuracy, per_class_accuracy, softmax, topk_accuracy,
    topk_predictions,
)

# --------------------------------------------------------------------------------------------
# pure metrics


def test_topk_on_known_scores():
    scores = np.array([[0.1, 0.5, 0.2, 0.15, 0.05],    # ranking 1,2,3,0,4
                       [0.3, 0.3, 0.1, 0.2, 0.1],      # tie 0/1: lower index first
                       [0.0, 0.0, 0.0, 0.1, 0.9]])     # ranking 4,3,0,1,2
    labels = np.array([2, 1, 2])
    np.testing.assert_array_equal(topk_predictions(scores, 3), [[1, 2, 3], [0, 1, 3], [4, 3, 0]])
    assert topk_accuracy(scores, labels, 1) == 0.0
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 5) == 1.0
    assert topk_accuracy(scores, labels, 50) == 1.0          # k > classes: everything
    assert topk_accuracy(np.zeros((0, 5)), np.zeros(0, int), 1) == 0.0


def test_confusion_and_mean_class_accuracy():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 0, 1, 1, 0, 1])
    cm = confusion_matrix(labels, preds, 4)
    np.testing.assert_array_equal(cm, [[3, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    acc = per_class_accuracy(cm)
    np.testing.assert_allclose(acc[:3], [0.75, 0.5, 0.0])
    assert np.isnan(acc[3])                                   # class without samples is skipped
    assert mean_class_accuracy(labels, preds, 4) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    # differs from overall accuracy (4/7) on an unbalanced set
    assert (preds == labels).mean() == pytest.approx(4 / 7)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 4)


def test_video_scores_average_softmax_over_clips():
    # video 0: two confident wrong clips (class 1), one very confident right clip (class 0);
    # averaging softmax (not logits, not votes) decides
    logits = np.array([[0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [20.0, 0.0, 0.0],     # video 0
                       [0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [0.0, 0.0, 5.0]])     # video 1
    clip_video = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([0, 2])
    m, probs = compute_metrics(logits, clip_video, labels, 3)
    p = softmax(logits)
    np.testing.assert_allclose(probs[0], p[:3].mean(0))
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs[0].argmax() == 1                           # 2 x 0.79 for class 1 beats 1.0 + 2 x 0.1
    assert m["clip_top1"] == pytest.approx(100 * 4 / 6)
    assert m["video_top1"] == 50.0 and m["video_top5"] == 100.0
    assert m["mean_class_acc"] == 50.0 and m["num_videos"] == 2 and m["num_clips"] == 6
    with pytest.raises(ValueError, match="no clips"):
        average_clip_probs(p[:3], np.array([0, 0, 2]), 3)


# --------------------------------------------------------------------------------------------
# split guard


def test_split_guard_refuses_overlap():
    train = [f"A/v_A_g{g:02d}_c01.avi" for g in range(1, 9)]
    check_no_overlap(train, ["A/v_A_g09_c01.avi"], "x/best.pt", "ucf101", 1)       # disjoint: fine
    with pytest.raises(SplitLeakError) as e:
        check_no_overlap(train, ["A/v_A_g09_c01.avi", train[2], train[5]], "runs/u/r/finetune/best.pt", "ucf101", 2)
    msg = str(e.value)
    assert "runs/u/r/finetune/best.pt" in msg and "split 2" in msg and train[2] in msg and "2 of its 3" in msg
    with pytest.raises(SplitLeakError, match="does not record"):
        check_no_overlap(None, ["a"], "x.pt", "ucf101", 1)


# --------------------------------------------------------------------------------------------
# the clips evaluate reads, and main() on a small cache

H, W = 36, 48
CLASSES = ("Left", "Right")


def _video(n, label, seed):
    """Flat grey frames whose level encodes the frame index (JPEG keeps a flat frame exact)."""
    f = np.empty((n, H, W, 3), dtype=np.uint8)
    f[:] = (np.arange(n) * 4 + 2).astype(np.uint8)[:, None, None, None]
    return f


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    from preprocess.cache import open_cache, write_cache_from_arrays

    d = tmp_path_factory.mktemp("cache")
    # (name, label, splits, n_frames): split 1 test = v3 (short), v4 (long), v6; split 2 test = v1, v2
    spec = [("Left/v1.avi", 0, (1, 2, 1), 30), ("Left/v2.avi", 0, (1, 2, 1), 24),
            ("Left/v3.avi", 0, (2, 1, 1), 5), ("Right/v4.avi", 1, (2, 1, 1), 60),
            ("Right/v5.avi", 1, (1, 1, 2), 20), ("Right/v6.avi", 1, (2, 1, 2), 18)]
    videos = [(n, y, s, _video(t, y, i), 25.0) for i, (n, y, s, t) in enumerate(spec)]
    write_cache_from_arrays(d, "demo", CLASSES, videos, masks=())
    return d, open_cache(d, "demo")


def test_eval_clip_positions_short_and_long(small_cache):
    _, index = small_cache
    geo = clip_geometry({"T": 4, "stride": 2, "crop": 32})
    assert geo == {"frames": 4, "stride": 2, "crop": 32, "short_side": default_short_side(32)}
    assert default_short_side(112) == 128
    ds, loader = eval_batches(index, 1, "test", geo, 10, batch_size=2, workers=0)
    by_name = {str(index.names[int(ds.videos[i])]): ds[i] for i in range(len(ds))}
    short, long_ = by_name["Left/v3.avi"], by_name["Right/v4.avi"]
    # short video (5 frames < span 7): ten clips at 0, last frame repeated
    np.testing.assert_array_equal(short["starts"].numpy(), np.zeros(10))
    np.testing.assert_array_equal(short["frames"][0, :, 0, 0, 0].numpy() // 4, [0, 2, 4, 4])
    # long video (60 frames): first clip at 0, last ends on the last frame, evenly spaced
    s = long_["starts"].numpy()
    assert s[0] == 0 and s[-1] == 60 - 7 and len(s) == 10
    assert np.abs(np.diff(s) - 53 / 9).max() <= 1
    assert long_["frames"].shape == (10, 4, 32, 32, 3)
    np.testing.assert_array_equal(long_["frames"][-1, :, 0, 0, 0].numpy() // 4, [53, 55, 57, 59])
    batches = list(loader)
    assert sum(len(b["video"]) for b in batches) == len(ds) == 3


def _finetune_ckpt(path, index, split, train_names, seed=0):
    from train.models import backbone_state_dict, build_backbone

    torch.manual_seed(seed)
    model = build_backbone("r2plus1d_10", num_classes=len(CLASSES))
    torch.save({"kind": "finetune", "backbone_name": "r2plus1d_10", "model": model.state_dict(),
                "backbone": backbone_state_dict(model), "epoch": 1, "step": 3, "dataset": "demo", "split": split,
                "classes": list(CLASSES), "train_videos": list(train_names),
                "config": {"T": 4, "stride": 2, "crop": 32, "dataset": "demo", "split": split},
                "cache": {"manifest_hash": index.manifest_hash}}, path)
    return path


def test_main_writes_outputs_and_refuses_leaks(small_cache, tmp_path):
    from train.evaluate import main

    cache_dir, index = small_cache
    train1 = index.names[index.subset(1, "train")]
    (tmp_path / "finetune").mkdir()
    ck = _finetune_ckpt(tmp_path / "finetune" / "best.pt", index, 1, train1)
    m = main(["--checkpoint", str(ck), "--cache-dir", str(cache_dir), "--workers", "0", "--device", "cpu"])
    out = tmp_path / "evaluate"
    rec = json.loads((out / "metrics.json").read_text())
    for k in ("clip_top1", "clip_top5", "video_top1", "video_top5", "mean_class_acc"):
        assert k in m and 0.0 <= m[k] <= 100.0 and rec["metrics"][k] == m[k]
    assert m["num_videos"] == 3 and m["num_clips"] == 30 and m["video_top5"] == 100.0   # 2 classes
    assert rec["split"] == 1 and rec["frames"] == 4 and rec["crop"] == 32
    sc = np.load(out / "scores.npz")
    assert sc["probs"].shape == (3, 2) and sorted(sc["names"]) == ["Left/v3.avi", "Right/v4.avi", "Right/v6.avi"]
    assert (out / "confusion.png").stat().st_size > 1000
    assert (out / "predictions.csv").read_text().count("\n") == 4
    # split 2's test videos (v1, v2) were training videos of split 1: refused, naming them
    with pytest.raises(SplitLeakError, match=r"split 2 \(test\): 2 of its 2 .*Left/v1\.avi, Left/v2\.avi"):
        main(["--checkpoint", str(ck), "--split", "2", "--cache-dir", str(cache_dir), "--workers", "0"])
