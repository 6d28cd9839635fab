"""train/stats.py: bootstrap intervals (point estimate, coverage of the point, width against the
number of videos and instances, pairing of seeds and arms, reproducibility), the exact McNemar
test against hand-computed binomial tails, reading evaluate.py's scores.npz, the per-class table,
the formatting, and the errors on misaligned inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from train.stats import (
    _tail_exact, _tail_log, align_to, bootstrap_ci, format_ci, format_p, load_correct, mcnemar,
    paired_bootstrap_diff, per_class_table,
)


def pattern(n: int, acc: float, seed: int = 0) -> np.ndarray:
    """[n] bool with exactly round(acc * n) correct, in a shuffled order."""
    x = np.zeros(n, dtype=bool)
    x[:round(acc * n)] = True
    return np.random.default_rng(seed).permutation(x)


def demo_arm(accs=(0.9, 0.8, 0.85), seeds: int = 2, videos: int = 108, offset: int = 0) -> dict:
    return {f"inst{i}": np.stack([pattern(videos, a, seed=10 * i + s + offset) for s in range(seeds)])
            for i, a in enumerate(accs)}


def width(d: dict) -> float:
    return d["hi"] - d["lo"]


# --------------------------------------------------------------------------------------------
# bootstrap_ci


def test_mean_is_the_plain_mean_and_inside_the_interval():
    arm = demo_arm()
    d = bootstrap_ci(arm, n_boot=2000)
    plain = 100.0 * np.mean(np.stack(list(arm.values())))
    assert d["mean"] == pytest.approx(plain, abs=1e-12)
    assert d["lo"] <= d["mean"] <= d["hi"]
    assert d["lo"] < d["hi"]
    assert (d["n_instances"], d["n_seeds"], d["n_videos"]) == (3, 2, 108)
    assert (d["level"], d["n_boot"]) == (0.95, 2000)


def test_instances_weigh_equally_whatever_their_video_count():
    d = bootstrap_ci({"a": np.ones(50, dtype=bool), "b": np.zeros(200, dtype=bool)}, n_boot=500)
    assert d["mean"] == pytest.approx(50.0)          # not the pooled 20%
    assert d["n_videos"] == [50, 200] and d["n_seeds"] == 1
    assert d["lo"] == 0.0 and d["hi"] == 100.0       # two very different instances: anything goes


def test_interval_shrinks_as_videos_grow():
    small = bootstrap_ci({0: pattern(50, 0.7)}, n_boot=3000)
    large = bootstrap_ci({0: pattern(1000, 0.7)}, n_boot=3000)
    assert small["mean"] == pytest.approx(70.0) and large["mean"] == pytest.approx(70.0)
    assert width(large) < 0.5 * width(small)
    # the video bootstrap of a proportion: width ~ 2 * 1.96 * sqrt(p(1-p)/n)
    assert width(large) == pytest.approx(2 * 1.96 * 100 * math.sqrt(0.21 / 1000), rel=0.15)


def test_all_equal_data_gives_a_point():
    for value in (True, False):
        d = bootstrap_ci({i: np.full((2, 40 + i), value) for i in range(3)}, n_boot=500)
        assert d["mean"] == d["lo"] == d["hi"] == (100.0 if value else 0.0)


def test_seeds_share_the_video_draw():
    # seed 1 is right exactly where seed 0 is wrong: every video's seed average is 1/2, so a
    # draw shared by the seeds gives 50% every time; independent draws per seed would not
    x = pattern(60, 0.5)
    d = bootstrap_ci({0: np.stack([x, ~x]), 1: np.stack([~x, x])}, n_boot=1000)
    assert d["mean"] == d["lo"] == d["hi"] == 50.0


def test_hierarchical_wider_than_video_only_when_instances_differ():
    arm = demo_arm(accs=(0.3, 0.6, 0.95), videos=200)
    hier = bootstrap_ci(arm, n_boot=4000)
    video = bootstrap_ci(arm, n_boot=4000, resample_instances=False)
    assert hier["mean"] == video["mean"]
    assert width(hier) > 3 * width(video)


def test_one_instance_is_the_video_bootstrap():
    one = {0: np.stack([pattern(80, 0.75, 1), pattern(80, 0.6, 2)])}
    assert bootstrap_ci(one, n_boot=1000, seed=3) == bootstrap_ci(one, n_boot=1000, seed=3,
                                                                  resample_instances=False)


def test_reproducible_for_a_seed():
    arm = demo_arm()
    assert bootstrap_ci(arm, n_boot=1000, seed=7) == bootstrap_ci(arm, n_boot=1000, seed=7)
    other = bootstrap_ci(arm, n_boot=1000, seed=8)
    assert other["mean"] == bootstrap_ci(arm, n_boot=1000, seed=7)["mean"]
    assert (other["lo"], other["hi"]) != (bootstrap_ci(arm, n_boot=1000, seed=7)["lo"],
                                          bootstrap_ci(arm, n_boot=1000, seed=7)["hi"])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        bootstrap_ci({0: np.ones((2, 3, 4), dtype=bool)})
    with pytest.raises(ValueError, match="bool or 0/1"):
        bootstrap_ci({0: np.array([0.5, 1.0])})
    with pytest.raises(ValueError, match="no instances"):
        bootstrap_ci({})
    with pytest.raises(TypeError, match="instance ->"):
        bootstrap_ci(np.ones((2, 10), dtype=bool))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci({0: np.ones(5, dtype=bool)}, level=95)


# --------------------------------------------------------------------------------------------
# paired_bootstrap_diff


def test_identical_arms_differ_by_exactly_zero():
    arm = demo_arm()
    d = paired_bootstrap_diff(arm, {k: v.copy() for k, v in arm.items()}, n_boot=2000)
    assert d["mean"] == d["lo"] == d["hi"] == 0.0
    assert (d["n_instances"], d["n_seeds"], d["n_videos"]) == (3, 2, 108)


def test_paired_difference_mean_and_pairing():
    a, b = demo_arm(accs=(0.9, 0.8, 0.85)), demo_arm(accs=(0.7, 0.6, 0.65), offset=50)
    d = paired_bootstrap_diff(a, b, n_boot=3000)
    assert d["mean"] == pytest.approx(bootstrap_ci(a, n_boot=10)["mean"] - bootstrap_ci(b, n_boot=10)["mean"])
    expected = np.mean([round(x * 108) - round(y * 108) for x, y in ((0.9, 0.7), (0.8, 0.6), (0.85, 0.65))])
    assert d["mean"] == pytest.approx(100.0 * expected / 108)                  # ~20 points
    assert d["lo"] <= d["mean"] <= d["hi"] and d["lo"] > 0
    # b = a with 5 fixed videos per instance flipped to wrong: a constant shift of the pairs, far
    # narrower than the unpaired intervals of the arms
    b2 = {k: v.copy() for k, v in a.items()}
    for v in b2.values():
        v[:, :5] = False
    flipped = [int(v[:, :5].sum()) for v in a.values()]
    d2 = paired_bootstrap_diff(a, b2, n_boot=3000)
    assert d2["mean"] == pytest.approx(100.0 * np.mean(flipped) / (2 * 108))
    assert width(d2) < width(bootstrap_ci(a, n_boot=3000))


def test_misaligned_arms_name_the_shapes():
    a = demo_arm()
    b = dict(a, inst1=a["inst1"][:, :107])
    with pytest.raises(ValueError, match=r"'inst1'.*\(2, 108\).*\(2, 107\)"):
        paired_bootstrap_diff(a, b)
    with pytest.raises(ValueError, match="different instances"):
        paired_bootstrap_diff(a, {k: a[k] for k in ("inst0", "inst1")})


# --------------------------------------------------------------------------------------------
# mcnemar


def pairs(b01: int, b10: int, both_right: int = 5, both_wrong: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a = [False] * b01 + [True] * b10 + [True] * both_right + [False] * both_wrong
    b = [True] * b01 + [False] * b10 + [True] * both_right + [False] * both_wrong
    return np.array(a), np.array(b)


@pytest.mark.parametrize("b01, b10, p", [
    (0, 6, 2 / 64),
    (6, 0, 2 / 64),
    (3, 3, 1.0),
    (1, 9, 2 * (1 + 10) / 1024),
    (2, 8, 2 * (1 + 10 + 45) / 1024),
    (0, 1, 1.0),
    (0, 0, 1.0),
    (0, 20, 2 / 2 ** 20),
])
def test_mcnemar_exact_values(b01, b10, p):
    a, b = pairs(b01, b10)
    r = mcnemar(a, b)
    assert (r["b01"], r["b10"], r["n"]) == (b01, b10, b01 + b10 + 7)
    assert r["p"] == pytest.approx(p, rel=1e-12)


def test_mcnemar_pools_any_shape_and_mappings():
    a, b = pairs(1, 9, both_right=2, both_wrong=0)          # 12 pairs
    r = mcnemar(a.reshape(2, 2, 3), b.reshape(2, 2, 3))
    assert (r["b01"], r["b10"], r["n"]) == (1, 9, 12)
    m = mcnemar({"x": a[:6].reshape(2, 3), "y": a[6:].reshape(2, 3)},
                {"y": b[6:].reshape(2, 3), "x": b[:6].reshape(2, 3)})
    assert m == r


def test_mcnemar_misaligned_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 108\).*\(2, 107\)"):
        mcnemar(np.ones((2, 108), dtype=bool), np.ones((2, 107), dtype=bool))
    with pytest.raises(ValueError, match=r"'i'.*\(3,\).*\(4,\)"):
        mcnemar({"i": np.ones(3, dtype=bool)}, {"i": np.ones(4, dtype=bool)})


def test_large_counts_sum_in_log_space_to_the_exact_tail():
    for k, n in ((700, 1500), (10, 1500), (749, 1500)):
        assert _tail_log(k, n) == pytest.approx(_tail_exact(k, n), rel=1e-9)
    a, b = pairs(2300, 2700)                               # past the exact range
    assert 0 < mcnemar(a, b)["p"] < 1e-7


# --------------------------------------------------------------------------------------------
# scores.npz, alignment, per-class table, formatting


def test_load_correct_reads_save_scores(tmp_path):
    from train.evaluate import save_scores, topk_accuracy

    probs = np.array([[0.7, 0.2, 0.1],
                      [0.1, 0.3, 0.6],
                      [0.2, 0.5, 0.3],
                      [0.4, 0.4, 0.2]])          # tie: the lower class wins, as in evaluate
    labels = np.array([0, 1, 1, 0])
    save_scores(tmp_path, ["v_a", "v_b", "v_c", "v_d"], labels, probs, ["c0", "c1", "c2"])
    names, correct, lab, preds = load_correct(tmp_path / "scores.npz")
    assert names.tolist() == ["v_a", "v_b", "v_c", "v_d"]
    np.testing.assert_array_equal(preds, [0, 2, 1, 0])
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_array_equal(correct, [True, False, True, True])
    assert correct.dtype == bool
    assert correct.mean() == topk_accuracy(probs, labels, 1)


def test_load_correct_refuses_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", names=np.array(["a"]), labels=np.array([0]))
    with pytest.raises(ValueError, match=r"lacks \['probs'\]"):
        load_correct(tmp_path / "x.npz")


def test_align_to_reorders_by_name():
    vals = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    out = align_to(["c", "a", "b"], ["a", "b", "c"], vals)
    np.testing.assert_array_equal(out, [[1, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="only in the reference"):
        align_to(["a", "b", "d"], ["a", "b", "c"], vals)


def test_per_class_table_averages_runs():
    run1 = (np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))     # class 0: 50%, class 1: 100%
    run2 = (np.array([0, 0, 1, 2]), np.array([0, 0, 0, 2]))     # 100%, 0%, class 2: 100%
    table = per_class_table([run1, run2], num_classes=4)
    np.testing.assert_allclose(table[:3], [75.0, 50.0, 100.0])
    assert np.isnan(table[3])                                   # in no test set


def test_formatting():
    assert format_ci({"mean": 92.5926, "lo": 88.0, "hi": 96.2963}) == "92.6 [88.0, 96.3]"
    assert format_ci({"mean": 3.24, "lo": -1.0, "hi": 7.41}, digits=2, signed=True) == "+3.24 [-1.00, +7.41]"
    assert format_p(0.03125) == "p = 0.031"
    assert format_p(1.0) == "p = 1.000"
    assert format_p(0.0004) == "p < 0.001"
    with pytest.raises(ValueError):
        format_p(float("nan"))
