"""What isolates MAC's own contribution: the validation split, the controls' inputs (no mask, full
frame, displaced masks), BN re-estimation for random features, time-reversed evaluation, the
compute-matched scratch baseline's schedule, and train/controls.py (its table on fabricated
results, and a tiny real run)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import moving_square_video

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# The validation split


class _Index:
    """The three arrays validation_split reads, in UCF101's naming (class, group, clip)."""

    def __init__(self, classes=4, groups=18, clips=3, test_groups=6):
        names, labels, splits = [], [], []
        for c in range(classes):
            for g in range(1, groups + 1):
                for k in range(1, clips + 1):
                    names.append(f"C{c}/v_C{c}_g{g:02d}_c{k:02d}.avi")
                    labels.append(c)
                    splits.append(2 if g <= test_groups else 1)
        self.names, self.labels = np.array(names, dtype=object), np.array(labels)
        self.splits = np.array(splits)

    def subset(self, split, part):
        return np.flatnonzero(self.splits == (1 if part == "train" else 2))


def test_validation_split_is_group_disjoint_stratified_seeded_and_apart_from_test():
    from train.data import validation_split, video_groups

    idx = _Index()
    train, val = validation_split(idx, 1, 0.2, seed=0)
    test = idx.subset(1, "test")
    assert not set(train) & set(val) and not set(val) & set(test) and not set(train) & set(test)
    assert sorted([*train, *val]) == sorted(idx.subset(1, "train"))          # nothing lost, nothing added
    g_train, g_val = set(video_groups(idx.names[train])), set(video_groups(idx.names[val]))
    assert not g_train & g_val                                              # group-disjoint
    per_class = np.bincount(idx.labels[val], minlength=4)
    assert (per_class == 2 * 3).all()                                       # round(0.2 * 12) groups of 3 clips
    again, val2 = validation_split(idx, 1, 0.2, seed=0)
    assert np.array_equal(val, val2) and np.array_equal(train, again)       # a pure function of the seed
    _, val3 = validation_split(idx, 1, 0.2, seed=1)
    assert not np.array_equal(np.sort(val), np.sort(val3))
    # a class with a single training group keeps it for training
    one = _Index(classes=2, groups=2, test_groups=1)
    tr, va = validation_split(one, 1, 0.5, seed=0)
    assert len(va) == 0 and len(tr) == len(one.subset(1, "train"))
    with pytest.raises(ValueError, match="fraction"):
        validation_split(idx, 1, 0.0)
    # names without UCF101 groups (HMDB51, folders) are their own groups
    assert list(video_groups(["a/x.avi", "a/v_A_g03_c01.avi", "b/v_A_g03_c02.avi"])) == ["a/x.avi", "a/g3", "b/g3"]


# --------------------------------------------------------------------------------------------
# The controls' inputs


def _clip_and_masks():
    from preprocess.masks import foreground_masks

    frames = moving_square_video(8, 64, 64, seed=3)                         # a square moving right at rows 40:64
    return frames, foreground_masks(frames, 30, 0.5)


def test_no_mask_gives_every_alpha_tuple_the_same_input_and_full_frame_a_uniform_weight():
    from train.mac import alpha_indices, alpha_values, blend_batch, vary_masks

    frames, masks = _clip_and_masks()
    k, n = 2, 2
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255 - 0.45      # [1,3,T,H,W]
    alphas = torch.tensor([[alpha_values(k)[i] for i in alpha_indices(c, k, n)] for c in range(k ** n)])
    assert masks.mean() > 0.005                                            # the square moves: a foreground exists
    for variant in ("foreground", "none", "full-frame"):
        m = torch.from_numpy(vary_masks(masks, variant)).float()[None] / 255
        outs = [blend_batch(x, m, a[None]) for a in alphas]
        same = all(torch.equal(outs[0], o) for o in outs[1:])
        assert same == (variant == "none"), variant                        # no mask: k^n identical inputs
        if variant == "full-frame":                                        # w = alpha of the segment, everywhere
            for a, o in zip(alphas, outs):
                w = o / x
                for j in range(n):
                    seg = w[:, :, j * 4:(j + 1) * 4][x[:, :, j * 4:(j + 1) * 4].abs() > 1e-3]
                    assert torch.allclose(seg, torch.full_like(seg, float(a[j])), atol=1e-5)


def test_displaced_masks_keep_their_statistics_and_leave_the_object():
    from train.mac import vary_masks

    _, masks = _clip_and_masks()
    moved = vary_masks(masks, "displaced")
    assert moved.dtype == masks.dtype and moved.mean() == masks.mean()
    assert np.array_equal(np.sort(moved.ravel()), np.sort(masks.ravel()))  # the same values
    box = np.zeros(masks.shape[1:], dtype=bool)                            # rows of the moving square
    box[38:66] = True
    inside = lambda m: m[:, box].sum() / max(m.sum(), 1)                   # noqa: E731
    assert inside(masks) > 0.9 and inside(moved) < 0.1
    with pytest.raises(ValueError, match="mask_variant"):
        vary_masks(masks, "elsewhere")


def test_pretraining_samples_apply_the_variant_and_keep_every_draw(tmp_path):
    """The same item of two datasets that differ only in the variant: identical draws and frames,
    masks changed exactly as vary_masks says."""
    from preprocess.cache import MaskParams, open_cache, write_cache_from_arrays
    from train.data import PretrainClips
    from train.mac import MACConfig, vary_masks

    videos = [(f"A/v_A_g0{g}_c01.avi", 0, (1 if g > 1 else 2, 1, 1), moving_square_video(20, 64, 80, seed=g), 25.0)
              for g in range(1, 4)]
    write_cache_from_arrays(tmp_path, "demo", ("A",), videos, masks=())
    index = open_cache(tmp_path, "demo", masks=MaskParams(30, 0.5), strides=())
    base = dict(frames=8, strides=(1,), n=2, k=2, scales=(48,), crop=48, key_view=False)
    items = {v: PretrainClips(index, 1, "train", MACConfig(**base, mask_variant=v))[0]
             for v in ("foreground", "none", "full-frame", "displaced")}
    ref = items["foreground"]
    for v, it in items.items():
        for key in ("frames", "alpha", "label", "jitter", "spatial", "clip"):
            assert torch.equal(it[key], ref[key]), (v, key)
        assert np.array_equal(it["masks"].numpy(), vary_masks(ref["masks"].numpy(), v))
    with pytest.raises(ValueError, match="mask_variant"):
        MACConfig(**base, mask_variant="bogus")


def test_moco_alone_and_an_empty_mac_s_are_spelled_out():
    from core.errors import UsageError
    from core.flags import parse
    from train.pretrain import PretrainConfig

    cfg = parse(PretrainConfig, ["--method", "mac-sc", "--cls-weight", "0", "--mask-variant", "none",
                                 "--queue-size", "1024", "--batch-size", "8"], prog="pretrain.py")
    assert cfg.cls_weight == 0 and cfg.mask_variant == "none"
    with pytest.raises((UsageError, SystemExit)):
        parse(PretrainConfig, ["--method", "mac-s", "--cls-weight", "0"], prog="pretrain.py")


# --------------------------------------------------------------------------------------------
# Random features: BN statistics from training clips


def test_bn_estimation_sets_the_statistics_of_the_clips_and_nothing_else():
    from train.inference import estimate_bn_statistics
    from train.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("r2plus1d_10_w32", num_classes=3).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    first = model.stem[1] if hasattr(model, "stem") else next(m for m in model.modules()
                                                             if isinstance(m, torch.nn.BatchNorm3d))
    assert torch.all(first.running_mean == 0) and torch.all(first.running_var == 1)        # untrained
    clips = [torch.randn(4, 3, 4, 32, 32) * 2 + 3 for _ in range(3)]
    assert estimate_bn_statistics(model, iter(clips), 2) == 2
    assert not model.training and all(not m.training for m in model.modules())             # modes restored
    assert first.momentum == 0.1                                                           # momentum restored
    assert not torch.all(first.running_var == 1) and first.running_mean.abs().sum() > 0
    # the first BN's mean is the average over the two batches of its input (cumulative average)
    conv = model.stem[0]
    with torch.no_grad():
        want = torch.stack([conv(c).mean((0, 2, 3, 4)) for c in clips[:2]]).mean(0)
    assert torch.allclose(first.running_mean, want, atol=1e-4)
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k                                           # weights untouched


# --------------------------------------------------------------------------------------------
# Time reversal


def test_reverse_time_evaluates_the_clips_played_backwards(tmp_path):
    """evaluate.py --reverse-time scores = the model run by hand on the time-flipped test clips;
    and they differ from the forward ones (the frames' levels encode time)."""
    from preprocess.cache import open_cache, write_cache_from_arrays
    from train.data import EvalClips
    from train.evaluate import main
    from train.mac import eval_transform
    from train.models import backbone_state_dict, build_backbone

    rng = np.random.default_rng(0)
    spec = [(f"{c}/v_{c}_g0{g}_c01.avi", y, (2 if g == 1 else 1, 1, 1)) for y, c in enumerate(("Up", "Down"))
            for g in (1, 2)]
    videos = [(n, y, s, np.clip(np.arange(12)[:, None, None, None] * 18 + rng.integers(0, 30, (12, 40, 40, 3)),
                                0, 255).astype(np.uint8), 25.0) for n, y, s in spec]
    write_cache_from_arrays(tmp_path / "cache", "demo", ("Up", "Down"), videos, masks=())
    index = open_cache(tmp_path / "cache", "demo")
    torch.manual_seed(0)
    model = build_backbone("r2plus1d_10_w32", num_classes=2).eval()
    (tmp_path / "finetune").mkdir()
    ck = tmp_path / "finetune" / "last.pt"
    torch.save({"kind": "finetune", "backbone_name": "r2plus1d_10_w32", "model": model.state_dict(),
                "backbone": backbone_state_dict(model), "epoch": 1, "step": 1, "dataset": "demo", "split": 1,
                "classes": ["Up", "Down"], "train_videos": [n for n, _, s in spec if s[0] == 1],
                "config": {"T": 8, "stride": 1, "crop": 32, "dataset": "demo", "split": 1, "norm": "imagenet"},
                "cache": {"manifest_hash": index.manifest_hash}}, ck)
    common = ["--checkpoint", str(ck), "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--device", "cpu",
              "--num-clips", "2"]
    main(common)
    main([*common, "--reverse-time"])
    fwd = np.load(tmp_path / "evaluate" / "scores.npz")
    rev = np.load(tmp_path / "evaluate_reversed" / "scores.npz")
    rec = json.loads((tmp_path / "evaluate_reversed" / "metrics.json").read_text())
    assert rec["reverse_time"] is True and set(rec["per_class_acc"]) == {"Up", "Down"}
    assert sum(map(sum, rec["confusion"]["counts"])) == 2
    ds = EvalClips(index, 1, "test", num_clips=2, frames=8, stride=1, short_side=37, crop=32)
    want = {}
    with torch.no_grad():
        for i in range(len(ds)):
            it = ds[i]
            x = eval_transform({"frames": it["frames"][None]}, "imagenet")["clips"][0]       # [N,3,T,S,S]
            want[str(index.names[int(it["video"])])] = torch.softmax(model(x.flip(2)), 1).mean(0).numpy()
    for name, p in zip(rev["names"], rev["probs"]):
        np.testing.assert_allclose(p, want[str(name)], atol=1e-5)
    assert not np.allclose(fwd["probs"], rev["probs"], atol=1e-4)


# --------------------------------------------------------------------------------------------
# The compute-matched scratch baseline


def test_scratch_schedule_matches_mac_total_steps():
    from core import presets

    assert presets.scratch_epochs(50, 8, 20, 8, (16,)) == (70, (56,))      # the demo: 1,350 + 540 steps of 8
    assert presets.scratch_epochs(300, 32, 150, 32, (60, 120)) == (450, (180, 360))
    assert presets.scratch_epochs(50, 8, 20, 4, (16,)) == (45, (36,))      # half the batch: twice the steps
    assert presets.scratch_epochs(50, 8, 20, 8, (16,), video_ratio=4.0) == (220, (176,))   # 25 % of the labels
    assert presets.scratch_epochs(50, 8, 20, 8, (16,), step_cost=1.5) == (95, (76,))     # a step worth 1.5
    vals = presets.values("demo", [])
    assert vals["SCRATCH_BASELINE"] == 1 and vals["SCRATCH_FLAGS"][:4] == ("--epochs", "70", "--milestones", "56")
    over = presets.values("demo", presets.parse_overrides(["pretrain.epochs=10", "finetune.epochs=5",
                                                            "finetune.milestones=4"]))
    assert over["SCRATCH_FLAGS"][:4] == ("--epochs", "15", "--milestones", "12")
    assert presets.values("ucf101", [])["SCRATCH_BASELINE"] == 0
    assert presets.stage_flags("scratch", presets.parse_overrides(["scratch.lr=0.004", "finetune.lr=1",
                                                                    "train.seed=3"])) == ["--lr", "0.004"]


# --------------------------------------------------------------------------------------------
# train/controls.py


def _fake_slot(root: Path, inst: int, seed: int, arm: str, correct: np.ndarray, names: list[str]) -> None:
    """A slot's evaluate_all/scores.npz whose argmax is right exactly where `correct` says."""
    from train.evaluate import save_scores

    d = root / "cells" / f"seed{inst}" / f"train{seed}" / arm / "evaluate_all"
    d.mkdir(parents=True)
    labels = np.arange(len(names)) % 6
    probs = np.full((len(names), 6), 0.1)
    pred = np.where(correct, labels, (labels + 1) % 6)
    probs[np.arange(len(names)), pred] = 0.5
    save_scores(d, np.array(names), labels, probs, [f"c{i}" for i in range(6)])


def test_controls_table_intervals_paired_differences_and_mcnemar(tmp_path):
    from train import controls as C

    names = [f"v{i:03d}" for i in range(60)]
    rng = np.random.default_rng(0)
    for inst in (0, 1):
        for seed in (0, 1):
            mac = rng.random(60) < 0.9
            worse = mac & (rng.random(60) < 0.5)                          # right only where MAC is, half as often
            _fake_slot(tmp_path, inst, seed, "mac", mac, names)
            _fake_slot(tmp_path, inst, seed, "no-mask", worse, names)
            _fake_slot(tmp_path, inst, seed, "scratch", mac.copy(), names)
    text, rows, rec = C.build_table(tmp_path, ["mac", "no-mask", "scratch"], [0, 1], [0, 1], [1.0], n_boot=500)
    m = rec["metrics"]["evaluate_all"]
    assert m["mac"]["instances"] == [0, 1] and m["mac"]["seeds"] == 2 and m["mac"]["videos"] == 120
    nm = m["no-mask"]
    assert nm["diff"]["hi"] < 0 < nm["mcnemar"]["b01"] and nm["mcnemar"]["b10"] == 0 and nm["mcnemar"]["p"] < 1e-6
    assert m["scratch"]["diff"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0} and m["scratch"]["mcnemar"]["p"] == 1.0
    assert m["mac"]["lo"] <= m["mac"]["mean"] <= m["mac"]["hi"]
    assert "| no mask | finetuned, all labels |" in text and "2 x 2" in text
    assert rows[0][:3] == ["arm", "metric", "mean"] and len(rows) == 4
    # every pretrained arm against the compute-matched scratch model too (here scratch equals MAC)
    assert m["mac"]["vs_scratch"]["diff"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    vs_nm = m["no-mask"]["vs_scratch"]
    assert {k: vs_nm[k] for k in ("diff", "mcnemar")} == {"diff": nm["diff"], "mcnemar": nm["mcnemar"]}
    # per cell: each instance/seed's own difference, whose mean is the pooled one (equal videos per cell)
    assert list(vs_nm["cells"]) == ["0/0", "0/1", "1/0", "1/1"] and all(d < 0 for d in vs_nm["cells"].values())
    assert sum(vs_nm["cells"].values()) / 4 == pytest.approx(nm["diff"]["mean"], abs=1e-3)
    vs = text[text.index("Against supervised training from scratch"):]
    ref = "from scratch, MAC's total steps"
    assert f"| MAC (MAC-S) | finetuned, all labels | {ref} | +0.0 [+0.0, +0.0] | 0:0, p = 1.000 | 2 x 2 |" in vs
    assert f"| no mask | finetuned, all labels | {ref} | {nm['diff']['mean']:+.1f}" in vs and "\n| from scratch" not in vs
    c = vs_nm["cells"]
    assert f"| 2 x 2 | {c['0/0']:+.1f} (0/0), {c['0/1']:+.1f} (0/1), {c['1/0']:+.1f} (1/0), {c['1/1']:+.1f} (1/1); ahead in 0 of 4 |" in vs
    # an arm evaluated on other videos than MAC is an error, not a silent mismatch
    _fake_slot(tmp_path / "bad", 0, 0, "mac", np.ones(4, bool), ["a", "b", "c", "d"])
    _fake_slot(tmp_path / "bad", 0, 1, "mac", np.ones(4, bool), ["a", "b", "c", "e"])
    with pytest.raises(ValueError, match="other videos"):
        C.build_table(tmp_path / "bad", ["mac"], [0], [0, 1], [1.0], n_boot=100)


def _fake_cell(root: Path, inst: int, seed: int, arm: str, correct: np.ndarray, names: list[str],
               cache: str = "h0", done: bool = True) -> Path:
    """A finished cell: evaluate_all (scores.npz and metrics.json with its cache hash), retrieval
    neighbours whose nearest gallery video has the query's label where ``correct`` says, slot.json."""
    _fake_slot(root, inst, seed, arm, correct, names)
    cell = root / "cells" / f"seed{inst}" / f"train{seed}" / arm
    labels = np.arange(len(names)) % 6
    (cell / "evaluate_all" / "metrics.json").write_text(json.dumps(
        {"per_class_acc": {"c0": 50.0}, "confusion": {"classes": [f"c{i}" for i in range(6)], "counts": [[1] * 6] * 6},
         "cache": {"manifest_hash": cache}}))
    (cell / "retrieve").mkdir()
    gallery = np.arange(12) % 6
    first = np.where(correct, labels, (labels + 1) % 6)       # gallery video j has label j % 6
    np.savez_compressed(cell / "retrieve" / "neighbours.npz", query_names=np.array(names), query_labels=labels,
                        gallery_names=np.array([f"g{j}" for j in range(12)]), gallery_labels=gallery,
                        neighbours=np.stack([first, (first + 6) % 12], axis=1))
    (cell / "retrieve" / "metrics.json").write_text(json.dumps({"cache": {"manifest_hash": cache}}))
    (cell / "slot.json").write_text(json.dumps({"status": "done" if done else "failed"}))
    return cell


def test_the_ledger_keeps_each_finished_cell_and_the_table_reads_it_back(tmp_path, capsys):
    """A cell's record holds what the tables need: rebuilt from the ledger alone (its run folder
    gone) the table is the same; a record is never silently replaced; a damaged record, or a cell
    measured on other frames than the instance's others, is named and left out, not pooled."""
    import shutil

    from core.flags import parse
    from train import controls as C, ledger as L

    names = [f"v{i:03d}" for i in range(40)]
    rng = np.random.default_rng(1)
    runs, book = tmp_path / "runs", tmp_path / "ledger"
    mac = [rng.random(40) < 0.8 for _ in (0, 1)]
    for seed in (0, 1):
        _fake_cell(runs, 0, seed, "mac", mac[seed], names)
        _fake_cell(runs, 0, seed, "scratch", rng.random(40) < 0.6, names)
    _fake_cell(runs, 0, 0, "no-mask", rng.random(40) < 0.3, names, done=False)     # failed: never recorded
    args = parse(C.ControlsFlags, ["--table-only", "--instances", "0", "--seeds", "0,1", "--arms", "mac,no-mask,scratch",
                                   "--label-fractions", "", "--dir", str(runs), "--ledger", str(book),
                                   "--bootstrap", "300"], prog="controls.py")
    assert C.tables(args) == 0
    assert sorted(p.name for p in book.iterdir()) == ["seed0-train0-mac.json", "seed0-train0-scratch.json",
                                                      "seed0-train1-mac.json", "seed0-train1-scratch.json"]
    fresh = json.loads((runs / "controls.json").read_text())
    rec = L.load(book / "seed0-train1-mac.json")
    assert rec["cache"] == "h0" and rec["videos"] == names and set(rec["stages"]) == {"evaluate_all", "retrieve"}
    hits = np.array(rec["stages"]["retrieve"]["labels"]) == np.array(rec["stages"]["retrieve"]["preds"])
    assert np.array_equal(hits, mac[1])
    assert fresh["metrics"]["retrieve"]["mac"]["mean"] == pytest.approx(100 * np.mean(mac))
    # the run folder gone: the ledger alone gives the same numbers, per class and time reversal included
    shutil.rmtree(runs / "cells")
    assert C.tables(args) == 0
    again = json.loads((runs / "controls.json").read_text())
    assert again["metrics"] == fresh["metrics"] and again["metrics"]["retrieve"]["mac"]["seeds"] == 2
    assert "c0,50.0,2" in (runs / "per_class.csv").read_text().replace("mac,", "")
    assert "Cells: 4 (4 from the ledger)" in (runs / "table.md").read_text()
    # cells.md: each cell's own figures (no probe or pretext stage here: '-'), a cell not recorded named
    cells = (runs / "cells.md").read_text()
    assert f"| MAC (MAC-S) | {100 * mac[0].mean():.1f} / - / - | {100 * mac[1].mean():.1f} / - / - |" in cells
    assert "| no mask |" not in cells and "| 0/0 | 0/1 |" in cells
    one = C.cells_table({(0, 1, "mac"): rec}, ["mac", "scratch"], [0], [0, 1], [1.0])
    assert f"| MAC (MAC-S) | not run | {100 * mac[1].mean():.1f} / - / - |" in one and "scratch" not in one.split("|---|")[1]
    # an existing record with other results is kept, whatever the new run says
    before = (book / "seed0-train0-mac.json").read_text()
    other = _fake_cell(tmp_path / "rerun", 0, 0, "mac", np.zeros(40, bool), names)
    with pytest.raises(ValueError, match="other results"):
        L.write(book, L.from_cell(other, 0, 0, "mac"))
    assert (book / "seed0-train0-mac.json").read_text() == before
    assert L.write(book, L.from_cell(_fake_cell(tmp_path / "same", 0, 0, "x", np.zeros(40, bool), names), 0, 0,
                                     "x"))[0] == "written"
    # a damaged record is named, the others still count
    (book / "seed0-train1-scratch.json").write_text('{"format": "mac-controls-cell/1", "instance": 0')
    assert C.tables(args) == 1
    err = capsys.readouterr().err
    assert "seed0-train1-scratch.json: not valid JSON" in err
    assert "scratch" not in json.loads((runs / "controls.json").read_text())["metrics"]["evaluate_all"]
    # a cell measured on other frames is left out of the instance, named
    (book / "seed0-train1-scratch.json").unlink()
    _fake_cell(runs, 0, 1, "scratch", np.ones(40, bool), names, cache="h1")
    recs, problems = C.gather(runs, ["mac", "scratch"], [0], [0, 1], book)
    assert (0, 1, "scratch") not in recs and len(recs) == 3
    assert len(problems) == 1 and "frame cache h1" in problems[0] and "train1/scratch" in problems[0]


def test_a_recorded_cell_is_taken_not_trained_again(tmp_path):
    """A later slice takes a cell from the ledger when its record has the run's settings hash and
    frames and the cell has no folder under --dir; other settings, other frames or a folder there
    mean it runs. MAC's cell runs beside a random arm that runs (its retrieval reads MAC's
    checkpoint). The settings hash follows the preset's files, the overrides and the fractions."""
    from core.flags import parse
    from train import controls as C, ledger as L

    book, runs = tmp_path / "ledger", tmp_path / "runs"
    argv = ["--instances", "0", "--seeds", "0", "--arms", "no-mask,displaced,random,scratch", "--dir", str(runs),
            "--ledger", str(book)]
    args = parse(C.ControlsFlags, argv, prog="controls.py")
    assert args.settings == C.settings_hash("demo", [], [1.0, 0.25])
    for other in (["--label-fractions", "0.1"], ["pretrain.lr=0.1"], ["--preset", "ucf101"]):
        assert parse(C.ControlsFlags, argv + other, prog="controls.py").settings != args.settings, other
    base = {"format": L.FORMAT, "instance": 0, "seed": 0, "videos": ["a"],
            "stages": {"evaluate_all": {"labels": [0], "preds": [0]}}, "git": "abc", "cache": "m0", "frames": "h0"}
    book.mkdir()
    for arm, extra in (("mac", {}), ("no-mask", {}), ("displaced", {"settings": "other"}), ("random", {}),
                       ("scratch", {})):
        rec = {**base, "arm": arm, "settings": args.settings, **extra}
        (book / L.file_name(0, 0, arm)).write_text(L.dumps(rec))
    (runs / "cells" / "seed0" / "train0" / "scratch").mkdir(parents=True)        # begun here: it resumes
    recorded, problems = L.load_dir(book)
    assert not problems
    take = C.cells_to_take(args, recorded, 0, 0, "h0")
    assert sorted(take) == ["mac", "no-mask", "random"] and "the same settings and frames" in take["mac"]
    assert C.cells_to_take(args, recorded, 0, 0, "h1") == {}                       # other frames
    assert C.cells_to_take(args, recorded, 0, 1, "h0") == {}                       # nothing recorded for seed 1
    (book / L.file_name(0, 0, "random")).unlink()                        # random runs; MAC stays taken
    assert sorted(C.cells_to_take(args, L.load_dir(book)[0], 0, 0, "h0")) == ["mac", "no-mask"]
    with pytest.raises(ValueError, match="'settings' must be a string"):
        L.check({**base, "arm": "mac", "settings": 3}, "f.json")


def test_the_plan_says_what_is_recorded_begun_and_left_with_the_commands(tmp_path, capsys):
    from core.flags import parse
    from train import controls as C
    from train import ledger as L

    book, runs = tmp_path / "ledger", tmp_path / "runs"
    argv = ["--instances", "0,1", "--seeds", "0", "--arms", "no-mask,displaced,scratch", "--dir", str(runs),
            "--ledger", str(book)]
    args = parse(C.ControlsFlags, argv, prog="controls.py")
    base = {"format": L.FORMAT, "seed": 0, "videos": ["a"], "git": "abc", "cache": "m0", "frames": "h0",
            "stages": {"evaluate_all": {"labels": [0], "preds": [0]}}}
    book.mkdir()
    for inst, arm, settings in ((0, "mac", args.settings), (0, "no-mask", args.settings), (0, "displaced", "other"),
                                (1, "mac", args.settings)):
        (book / L.file_name(inst, 0, arm)).write_text(L.dumps({**base, "instance": inst, "arm": arm,
                                                               "settings": settings}))
    (runs / "cells" / "seed0" / "train0" / "scratch").mkdir(parents=True)                 # begun: resumes
    done = runs / "cells" / "seed1" / "train0" / "no-mask"
    done.mkdir(parents=True)
    (done / "slot.json").write_text(json.dumps({"status": "done"}))
    (runs / "cells" / "seed1" / L.INSTANCE_FRAMES).write_text(json.dumps({"cache": "m1", "frames": "h1"}))
    text = C.plan(args)
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line.split("|")[4].strip()
            for line in text.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")}
    assert len(rows) == 8 and text.startswith("8 cells: 3 recorded or done, 5 to run, about ")
    assert rows[("0", "0", "mac")].startswith("recorded in") and "taken if the frames match" in rows[("0", "0", "mac")]
    assert rows[("0", "0", "displaced")] == "to run (recorded with other settings)"
    assert rows[("0", "0", "scratch")].startswith("begun in") and rows[("1", "0", "no-mask")].startswith("done in")
    assert rows[("1", "0", "mac")] == "to run (recorded on other frames)"      # instance 1's cache: h1, not h0
    cmds = [line.split("  #")[0].split() for line in text.splitlines() if line.startswith("  python")]
    assert [c[c.index("--instances") + 1] + ":" + c[c.index("--arms") + 1] for c in cmds] == [
        "0:displaced,scratch", "1:mac,displaced,scratch"]
    assert all(c[c.index("--ledger") + 1] == str(book) for c in cmds)
    assert C.main(argv + ["--plan"]) == 0 and capsys.readouterr().out == text and not (runs / "table.md").exists()


def test_random_features_see_the_clips_of_macs_pretraining(tmp_path):
    """The random arm's retrieval takes backbone, clip geometry and normalisation from the preset's
    pretraining (what MAC's checkpoint would give through --config-from), not from MAC's cell."""
    from train import controls as C
    from train.inference import clip_geometry
    from train.pretrain import PretrainConfig
    from core.flags import parse
    from train.retrieve import parse_args

    args = parse(C.ControlsFlags, ["--dir", str(tmp_path), "pretrain.crop=40"], prog="controls.py")
    sw = C.instance_sweep(args, 0)
    pt = parse(PretrainConfig, [*sw.config("pretrain"), "--crop", "40"], prog="pretrain.py")
    r = parse_args(C.retrieve_argv(sw, C.Slot(0, 0, "random", tmp_path), C.random_retrieval_source(sw),
                                   tmp_path / "out")[1:])
    geo = clip_geometry({}, r.frames, r.stride, r.crop)
    assert (r.init, r.backbone, r.norm) == ("random", pt.backbone, pt.norm) == ("random", "r2plus1d_10_w32",
                                                                                  "imagenet")
    assert geo == clip_geometry({"frames": pt.frames, "crop": pt.crop}) and geo["crop"] == 40


def test_a_ledger_record_is_checked():
    from train import ledger as L

    good = {"format": L.FORMAT, "instance": 0, "seed": 0, "arm": "mac", "videos": ["a", "b"],
            "stages": {"evaluate_all": {"labels": [0, 1], "preds": [0, 0]}}}
    assert L.check(good, "f.json") is good
    for bad, why in ((dict(good, format="other/1"), "not a controls cell record"),
                     (dict(good, seed="0"), "'seed'"), (dict(good, stages={}), "no stage"),
                     (dict(good, stages={"evaluate_all": {"labels": [0], "preds": [0]}}), "2 integers"),
                     (dict(good, stages={"retrieve": {"names": ["a"], "labels": [0], "preds": [1.5]}}), "1 integers")):
        with pytest.raises(ValueError, match=why):
            L.check(bad, "f.json")


def test_controls_flags_are_checked():
    from core.errors import UsageError
    from core.flags import parse
    from train.controls import ControlsFlags

    a = parse(ControlsFlags, ["--arms", "no-mask,scratch", "--label-fractions", "0.1,0.25"], prog="controls.py")
    assert a.arm_list == ["mac", "no-mask", "scratch"] and a.fractions == [1.0, 0.25, 0.1]
    for bad in (["--arms", "mac,bogus"], ["--instances", "0,0"], ["--label-fractions", "1.5"], ["--seeds", "x"]):
        with pytest.raises((UsageError, SystemExit)):
            parse(ControlsFlags, bad, prog="controls.py")


@pytest.mark.slow
def test_a_tiny_controls_run_end_to_end(tmp_path):
    """Two arms on a tiny generated instance, every stage for real: the table, per-class and
    reverse-time files, and a rerun that runs nothing again."""
    tiny = ["demo.classes=3", "demo.groups=4", "demo.clips=2", "demo.frames=24", "pretrain.epochs=1",
            "pretrain.steps-per-epoch=2", "pretrain.eval-every=1", "pretrain.eval-limit=8", "pretrain.batch-size=4",
            "finetune.batch-size=4", "finetune.epochs=1", "finetune.steps-per-epoch=2", "linear.batch-size=4",
            "linear.epochs=1", "linear.steps-per-epoch=2", "evaluate.num-clips=2", "retrieve.num-clips=2",
            "train.workers=0", "evaluate.workers=0", "retrieve.workers=0"]
    argv = [sys.executable, "train/controls.py", "--instances", "0", "--seeds", "0", "--arms", "scratch,scratch-sc",
            "--label-fractions", "", "--bootstrap", "200", "--data-root", str(tmp_path / "data"), "--cache-dir",
            str(tmp_path / "cache"), "--dir", str(tmp_path / "runs"), "--ledger", str(tmp_path / "ledger"), *tiny]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ,
                                                                             "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    root = tmp_path / "runs"
    table = (root / "table.md").read_text()
    assert "| MAC (MAC-S) | finetuned, all labels |" in table and "| from scratch, MAC's total steps |" in table
    assert "| MAC (MAC-S) | linear probe |" in table and "| MAC (MAC-S) | retrieval R@1 |" in table
    scratch_cfg = json.loads((root / "cells/seed0/train0/scratch/finetune_all/config.json").read_text())["config"]
    assert scratch_cfg["epochs"] == 2 and scratch_cfg["init"] == "random"        # 1 pretraining + 1 finetuning epoch
    # MAC-SC's compute: a pretraining step counted as its FLOPs in supervised steps (key encoder: ~4/3)
    cost = json.loads((root / "cells/seed0/train0/scratch-sc/step_cost.json").read_text())
    assert cost["matches"] == "mac-sc" and 1.2 < cost["step_cost"] < 1.5
    sc_cfg = json.loads((root / "cells/seed0/train0/scratch-sc/finetune_all/config.json").read_text())["config"]
    assert sc_cfg["epochs"] == 1 + round(cost["step_cost"]) and sc_cfg["init"] == "random"
    assert "| MAC-SC |" not in table and "| from scratch, MAC-SC's compute | finetuned, all labels |" in table
    assert "backwards" in (root / "reverse_time.md").read_text()
    assert (root / "per_class.csv").read_text().count("\n") > 3
    marks = {p: p.stat().st_mtime_ns for p in root.rglob("*.done")}
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and {p: p.stat().st_mtime_ns for p in root.rglob("*.done")} == marks
    # each finished cell was recorded as it finished; the ledger alone rebuilds the same table
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir()) == ["seed0-train0-mac.json",
                                                                        "seed0-train0-scratch-sc.json",
                                                                        "seed0-train0-scratch.json"]
    r = subprocess.run([sys.executable, "train/controls.py", "--table-only", "--instances", "0", "--seeds", "0",
                        "--arms", "scratch,scratch-sc", "--label-fractions", "", "--bootstrap", "200", "--dir",
                        str(tmp_path / "elsewhere"), "--ledger", str(tmp_path / "ledger")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    cut = table.index("| arm | metric |")
    assert (tmp_path / "elsewhere" / "table.md").read_text().endswith(table[cut:])
    assert (tmp_path / "elsewhere" / "reverse_time.md").read_text() == (root / "reverse_time.md").read_text()
    # each record names its frames by content, and so does the instance's frames.json
    frames = json.loads((root / "cells" / "seed0" / "frames.json").read_text())
    assert {json.loads(p.read_text())["frames"] for p in (tmp_path / "ledger").iterdir()} == {frames["frames"]}
    # a later sitting with the same settings (its own --dir, the same ledger) on a cache built
    # again (another machine: other shard uids, another manifest hash, the same frames) takes
    # every cell from its record and trains nothing
    swap = {str(root): str(tmp_path / "later"), str(tmp_path / "cache"): str(tmp_path / "cache2")}
    later = [swap.get(a, a) for a in argv]
    r = subprocess.run(later, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((tmp_path / "later" / "cells" / "seed0" / "frames.json").read_text())
    assert again["cache"] != frames["cache"] and again["frames"] == frames["frames"]
    assert r.stdout.count("not run again") == 3 and not list((tmp_path / "later" / "cells").glob("seed0/train*"))
    assert (tmp_path / "later" / "table.md").read_text().endswith(table[cut:])


def test_flops_per_step_mac_s_as_a_supervised_step_mac_sc_adds_its_key_encoder():
    """train/flops.py on the trainers' modules: a MAC-S step costs a supervised step (the same
    backbone, batch and clip; only the tiny head differs); MAC-SC adds the key encoder's forward
    (about a third of a forward and backward), and the symmetric loss doubles it."""
    from core.flags import parse
    from train import flops
    from train.finetune import FinetuneConfig
    from train.pretrain import PretrainConfig

    small = ["--backbone", "r2plus1d_10_w32", "--frames", "4", "--crop", "32", "--batch-size", "4"]
    ft = parse(FinetuneConfig, small, prog="finetune.py")
    cfgs = {"mac-s": ["--method", "mac-s"], "mac-sc": ["--method", "mac-sc"], "sym": ["--method", "mac-sc", "--symmetric"]}
    ratio = {k: flops.pretrain_step_ratio(parse(PretrainConfig, [*small, "--queue-size", "64", *v],
                                                prog="pretrain.py"), ft, 6) for k, v in cfgs.items()}
    assert abs(ratio["mac-s"] - 1) < 0.01
    assert 1.25 < ratio["mac-sc"] < 1.45
    assert 2.5 < ratio["sym"] < 2.9         # two queries (fwd+bwd) and two keys (fwd)
