"""train/visualize.py: the preview on a tiny generated demo cache (files written, image sizes,
labels drawn, the very samples the trainer builds), Grad-CAM against cases with a known answer,
the --compare picking, and the pictures of the run report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core import errors as cli
from train import visualize as V

FLAGS = ["--frames", "8", "--crop", "32", "--scales", "32", "36", "--n", "2", "--k", "2"]


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    """The demo generator at a tiny size (2 classes x 3 groups x 1 clip of <= 16 frames), its
    frames and the lambda-30 mask sets of strides 1 and 2, as the README's commands make them."""
    from preprocess import extract_masks
    from preprocess.make_demo import make_demo

    root = tmp_path_factory.mktemp("viz")
    make_demo(root / "demo", seed=0, classes=2, groups=3, clips=1, frames=16)
    assert extract_masks.main(["--dataset", "demo", "--data-root", str(root / "demo"), "--cache-dir",
                               str(root / "cache"), "--lambda", "30", "--m", "0.5", "--strides", "1", "2",
                               "--workers", "1"]) == 0
    return root / "cache"


def _index(cache):
    from preprocess.cache import MaskParams, open_cache

    return open_cache(cache, "demo", masks=MaskParams(30, 0.5), strides=())


def _dark_pixels(im: Image.Image, box) -> int:
    return int((np.asarray(im.convert("L").crop(box)) < 128).sum())


# --------------------------------------------------------------------------------------------
# preview


def test_preview_png_and_gif_per_video(demo_cache, tmp_path):
    index = _index(demo_cache)
    name = str(index.names[0])
    out = tmp_path / "out"
    written = V.main(["preview", "--dataset", "demo", "--cache-dir", str(demo_cache), "--videos", Path(name).stem,
                      "--lambda", "10", "30", "--strides", "1", "2", "--gif", "--out-dir", str(out), *FLAGS])
    stem = Path(name).stem
    assert written == [out / f"preview_{stem}.png", out / f"preview_{stem}.gif"]
    im = Image.open(written[0])
    tile = V.auto_tile(32)                                     # 32 px crops drawn 3x: 96 px tiles
    assert tile == 96 and im.size[0] == V.LABEL_W + 8 * (tile + V.GAP) + 6     # short labels: the narrowest
    rows = 2 * (1 + 2 * 2)                                     # 2 strides x (frames + 2 sets x (mask, MAC))
    assert rows * (tile + V.GAP) < im.size[1] < rows * (tile + V.GAP) + 400
    # the captions are drawn (dark text in the label column and the title) and stored as PNG text
    assert _dark_pixels(im, (0, 0, im.size[0], 30)) > 100
    assert _dark_pixels(im, (0, 60, V.LABEL_W - 4, im.size[1])) > 500
    text = im.text["Description"]
    cls = index.classes[int(index.labels[0])]
    assert f"{name}, class {cls}" in text and "stride 1:" in text and "stride 2:" in text
    assert "\u03bb 10, m 0.5" in text and "\u03bb 30, m 0.5" in text
    assert "alphas (" in text and "pretext label" in text and "of 4 (k 2, n 2)" in text
    assert "[0: \u03b1 " in text and "[4: \u03b1 " in text           # alpha on each segment's first frame
    gif = Image.open(written[1])
    assert gif.n_frames == 8 and gif.size[0] >= 5 * tile        # one frame per clip frame, 5 columns


def test_preview_shows_the_trainers_samples(demo_cache):
    """--drawn: each block is exactly the trainer's sample (PretrainClips + MACTransform) of that
    item in that epoch; the default videos are the start of the trainer's first batch."""
    from train.data import PretrainClips, make_loader, set_loader_epoch
    from train.mac import NORMS, MACTransform
    from train.pretrain import PretrainConfig, mac_config

    base = {"dataset": "demo", "cache_dir": str(demo_cache), "frames": 8, "crop": 32, "scales": (32, 36), "n": 2,
            "k": 2, "seed": 3}
    cfgs = V.sample_configs(base, [30, 10], [0.5])
    pv = V.Previewer(cfgs, 1, "train")
    ds = PretrainClips(_index(demo_cache), 1, "train", mac_config(PretrainConfig(**base)))
    loader = make_loader(ds, batch_size=2, workers=0, shuffle=True, seed=3)
    set_loader_epoch(loader, 1)
    first = next(iter(loader))
    videos = pv.first_items(2, epoch=1)
    assert videos == first["video"].tolist()
    tf = MACTransform(mac_config(PretrainConfig(**base)), "cpu")
    query = tf(first)["query"]
    for b, v in enumerate(videos):
        s = pv.sample(v, epoch=1)                       # the trainer's stride draw
        assert s.part == "train" and [s.start, s.stride] == first["clip"][b].tolist()
        np.testing.assert_array_equal(s.masks[(30, 0.5)], first["masks"][b].numpy())
        torch.testing.assert_close(torch.from_numpy(s.query[(30, 0.5)]), query[b], rtol=0, atol=0)
        assert s.alpha_label == int(first["label"][b])
        # display = query * std + mean, as uint8
        nm = NORMS["imagenet"]
        px = query[b] * torch.tensor(nm.std).view(3, 1, 1, 1) + torch.tensor(nm.mean).view(3, 1, 1, 1)
        expect = px.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
        np.testing.assert_array_equal(s.blended[(30, 0.5)], expect)
        # another lambda: the same clip and draws, other masks
        assert s.blended[(10, 0.5)].shape == expect.shape
        assert (s.masks[(10, 0.5)] > 0).sum() > (s.masks[(30, 0.5)] > 0).sum()    # a lower threshold keeps more
    # per stride: the stride is fixed, the rest drawn as the trainer draws
    for stride in (1, 2):
        s = pv.sample(videos[0], epoch=1, stride=stride)
        assert s.stride == stride and np.all(np.diff(s.indices) <= stride)


def test_preview_drawn_one_file(demo_cache, tmp_path):
    written = V.main(["preview", "--dataset", "demo", "--cache-dir", str(demo_cache), "--drawn", "--num-videos", "3",
                      "--epoch", "2", "--tile", "32", "--out-dir", str(tmp_path), *FLAGS])
    assert written == [tmp_path / "preview_drawn_epoch2.png"]
    im = Image.open(written[0])
    assert im.size[0] == V.LABEL_W + 8 * (32 + V.GAP) + 6
    assert im.text["Description"].count("item ") == 3 and "epoch 2" in im.text["Description"]


def test_preview_cache_masks_need_their_sets(demo_cache, tmp_path, capsys):
    ok = V.main(["preview", "--dataset", "demo", "--cache-dir", str(demo_cache), "--mask-source", "cache",
                 "--strides", "1", "2", "--num-videos", "1", "--out-dir", str(tmp_path), *FLAGS])
    assert len(ok) == 1 and "--mask-source cache" in Image.open(ok[0]).text["Description"]
    status = cli.run(V.main, "visualize.py", ["preview", "--dataset", "demo", "--cache-dir", str(demo_cache),
                                              "--mask-source", "cache", "--lambda", "10", "--strides", "1",
                                              "--out-dir", str(tmp_path), *FLAGS])
    err = capsys.readouterr().err
    assert status == 2 and "python preprocess/extract_masks.py" in err and "--lambda 10" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, expected", [
    (["preview", "--lambda", "300"], "--lambda 300: must be one or more values, each an integer in [0, 255]"),
    (["preview", "--k", "1"], "--k 1: must be an integer >= 2 (the paper's: 2..6)"),
    (["preview", "--frames", "9", "--n", "2"], "--frames 9: must be a multiple of --n 2"),
    (["preview", "--num-videos", "0"], "--num-videos 0: must be an integer >= 1"),
    (["cam", "--checkpoint", "nowhere.pt"], "--checkpoint nowhere.pt: no such file"),
])
def test_bad_values_exit_2_with_one_line(argv, expected, capsys):
    assert cli.run(V.main, "visualize.py", argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("visualize.py: error: ") and expected in err, err


def test_pretrain_config_files(tmp_path):
    """A run's config.json (field names) and a preset (flag names) give the same sample settings."""
    run = tmp_path / "config.json"
    run.write_text(json.dumps({"config": {"dataset": "demo", "lam": 10, "frames": 8, "scales": [48, 54],
                                          "crop": 48, "batch_size": 8, "unknown_later_field": 1}}))
    preset = tmp_path / "pretrain.json"
    preset.write_text(json.dumps({"dataset": "demo", "lambda": 10, "frames": 8, "scales": [48, 54], "crop": 48,
                                  "batch-size": 8}))
    a, b = V.read_pretrain_config(run), V.read_pretrain_config(preset)
    assert a == b == {"dataset": "demo", "lam": 10, "frames": 8, "scales": (48, 54), "crop": 48, "batch_size": 8}
    cfg = V.sample_configs(a, [a["lam"]], [0.5])[0]
    assert (cfg.lam, cfg.crop, cfg.scales) == (10, 48, (48, 54))


# --------------------------------------------------------------------------------------------
# Grad-CAM: known answers


class LocalEvidence(nn.Module):
    """A model whose logits see the input only through local, non-negative features: layer4 is
    one 1x4x4 convolution (stride (2, 4, 4)) with positive weights and a ReLU, pooled, then fc.
    Class 0 has positive fc weights (its evidence is wherever the input is bright), class 1
    negative ones (no positive evidence anywhere)."""

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Sequential(nn.Conv3d(3, 4, (1, 4, 4), stride=(2, 4, 4), bias=False), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.layer4[0].weight.copy_(0.05 + 0.1 * torch.rand(self.layer4[0].weight.shape,
                                                                 generator=torch.Generator().manual_seed(0)))
            self.fc.weight.copy_(torch.tensor([[1.0, 0.5, 2.0, 1.5], [-1.0, -0.5, -2.0, -1.5]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.avgpool(self.layer4(x)).flatten(1))


def _quadrant_mass(cam: torch.Tensor) -> list[float]:
    """Share of a CAM [T, H, W] in each quadrant: top-left, top-right, bottom-left, bottom-right."""
    T, H, W = cam.shape
    tot = float(cam.sum())
    return [float(cam[:, (q // 2) * H // 2:(q // 2 + 1) * H // 2, (q % 2) * W // 2:(q % 2 + 1) * W // 2].sum()) / tot
            for q in range(4)]


def _patch_clip(q: int, T: int = 8, S: int = 32, first_half: bool = False) -> torch.Tensor:
    x = torch.zeros(1, 3, T, S, S)
    oy, ox = (q // 2) * S // 2, (q % 2) * S // 2
    x[:, :, :T // 2 if first_half else T, oy + S // 8:oy + 3 * S // 8, ox + S // 8:ox + 3 * S // 8] = 2.0
    return x


@pytest.mark.parametrize("q", range(4))
def test_grad_cam_finds_the_one_region_of_evidence(q):
    """The evidence is a bright patch in quadrant q during the first half of the clip: the CAM
    of the class that counts it lies there, in space and in time; the class that counts against
    it has no positive evidence at all."""
    model = LocalEvidence()
    x = _patch_clip(q, first_half=True)
    cam, logits, tgt = V.grad_cam(model, x)                 # target: the predicted class
    assert int(tgt[0]) == 0 and logits[0, 0] > 0 > logits[0, 1]
    c = cam[0]
    assert c.shape == (8, 32, 32) and float(c.max()) == pytest.approx(1.0) and float(c.min()) >= 0
    assert _quadrant_mass(c)[q] > 0.97
    assert float(c[:4].sum()) / float(c.sum()) > 0.8           # the patch is in frames 0-3
    cam1, _, _ = V.grad_cam(model, x, target=1)
    assert float(cam1.abs().max()) == 0.0


def test_grad_cam_restores_mode_and_needs_no_grad_state():
    model = LocalEvidence().train()
    with torch.no_grad():
        cam, _, _ = V.grad_cam(model, _patch_clip(0))
    assert model.training and float(cam.max()) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tiny_backbone():
    from train.models import build_backbone

    torch.manual_seed(0)
    return build_backbone("r2plus1d_10_w8", num_classes=3).eval()


def test_grad_cam_of_a_backbone_is_its_class_activation_map(tiny_backbone):
    """For a network that pools layer4 globally into a linear classifier, Grad-CAM's channel
    weights are fc.weight[k] / (t h w), so the map is the CAM of Zhou et al., ReLU(W_k . A):
    computed here independently from the layer4 activations."""
    import torch.nn.functional as F

    m = tiny_backbone
    x = torch.randn(3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = m.layer4(m.layer3(m.layer2(m.layer1(m.stem(x)))))
        maps = F.relu(torch.einsum("kc,bcthw->bkthw", m.fc.weight, a))        # every class's CAM
        target = maps.sum(dim=(2, 3, 4)).argmax(1)                          # one with evidence
        ref = maps[torch.arange(3), target]
        assert (ref.amax(dim=(1, 2, 3)) > 0).all()
        ref = F.interpolate(ref[:, None], size=(8, 32, 32), mode="trilinear", align_corners=False)[:, 0]
        ref = ref / ref.amax(dim=(1, 2, 3), keepdim=True)
    cam, logits, tgt = V.grad_cam(m, x, target=target)
    with torch.no_grad():
        torch.testing.assert_close(logits, m(x))
    assert tgt.tolist() == target.tolist()
    torch.testing.assert_close(cam, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("q", range(4))
def test_grad_cam_of_a_backbone_points_at_the_evidence(tiny_backbone, q):
    """A real backbone (R(2+1)D-10, width 8) whose classifier is set analytically: class 0 sums
    all layer4 activations, class 1 subtracts them. On a clip that is black except a patch in
    quadrant q (bias-free convolutions and fresh BN: black stays exactly zero), class 0's
    evidence is only what the patch excites: its CAM is largest in quadrant q (seeds 0-7 of the
    backbone measured: 0.43-0.86 of the mass there, chance 0.25); class 1's CAM is empty."""
    from train.models import build_backbone

    torch.manual_seed(0)
    m = build_backbone("r2plus1d_10_w8", num_classes=2).eval()
    with torch.no_grad():
        m.fc.weight.zero_()
        m.fc.bias.zero_()
        m.fc.weight[0] = 1.0
        m.fc.weight[1] = -1.0
    x = _patch_clip(q, S=64)
    cam, _, tgt = V.grad_cam(m, x)
    assert int(tgt[0]) == 0
    mass = _quadrant_mass(cam[0])
    assert max(range(4), key=lambda k: mass[k]) == q and mass[q] > 0.4, mass
    cam1, _, _ = V.grad_cam(m, x, target=1)
    assert float(cam1.max()) == 0.0


def test_cam_overlay_colours():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    cam = np.zeros((2, 4, 4))
    cam[:, 0, 0] = 1.0
    out = V.cam_overlay(frames, cam, weight=1.0)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert out[0, 0, 0, 0] > 100 and out[0, 0, 0, 2] < 50        # 1: red end of jet
    assert out[0, 1, 1, 2] > 100 and out[0, 1, 1, 0] < 50        # 0: blue end


# --------------------------------------------------------------------------------------------
# cam on checkpoints: --compare picking and the figures


def _finetune_checkpoint(path: Path, cache: Path, seed: int) -> Path:
    from train.models import build_backbone

    torch.manual_seed(seed)
    model = build_backbone("r2plus1d_10_w8", num_classes=2)
    index = _index(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "finetune", "model": model.state_dict(), "backbone_name": "r2plus1d_10_w8",
                "classes": list(index.classes), "dataset": "demo", "split": 1,
                "config": {"dataset": "demo", "cache_dir": str(cache), "split": 1, "frames": 8, "stride": 2,
                           "crop": 32, "norm": "imagenet"}}, path)
    return path


def _predictions(path: Path, index, right: set) -> Path:
    """predictions.csv (train/evaluate.py's writer) where exactly the videos in `right` are right."""
    from train.evaluate import save_scores

    test = index.subset(1, "test")
    names = index.names[test].astype(str)
    labels = index.labels[test]
    probs = np.zeros((len(test), len(index.classes)))
    for i, (n, y) in enumerate(zip(names, labels)):
        probs[i, y if n in right else 1 - y] = 0.9
        probs[i, 1 - y if n in right else y] = 0.1
    path.mkdir(parents=True, exist_ok=True)
    save_scores(path, names, labels, probs, list(index.classes))
    return path / "predictions.csv"


def test_compare_groups_and_picks():
    P = V.Prediction
    pa = {"a": P(0, "x", True, "x", 0.9), "b": P(0, "x", True, "x", 0.9), "c": P(0, "x", False, "y", 0.6),
          "d": P(0, "x", False, "y", 0.6), "e": P(1, "y", True, "y", 0.8)}
    pb = {"a": P(0, "x", False, "y", 0.5), "b": P(0, "x", True, "x", 0.9), "c": P(0, "x", True, "x", 0.7),
          "d": P(0, "x", False, "z", 0.6)}
    g = V.compare_groups(pa, pb)
    assert g == {"a-right_b-wrong": ["a"], "a-wrong_b-right": ["c"], "both-wrong": ["d"]}
    names = [f"v{i:02d}" for i in range(20)]
    assert V.pick(names, 3, seed=1) == V.pick(list(reversed(names)), 3, seed=1) and len(V.pick(names, 3)) == 3
    preds = {n: P(0, "x", i % 4 == 0, "x", 0.5) for i, n in enumerate(names)}
    chosen = V.pick_balanced(preds, names, 4)
    assert sum(preds[n].correct for n in chosen) == 2 and len(chosen) == 4


def test_cam_compare_writes_one_figure_per_group(demo_cache, tmp_path):
    index = _index(demo_cache)
    test = [str(n) for n in index.names[index.subset(1, "test")]]
    assert len(test) == 2                                       # 2 classes x 1 test group x 1 clip
    a = _finetune_checkpoint(tmp_path / "run" / "finetune" / "last.pt", demo_cache, 0)
    b = _finetune_checkpoint(tmp_path / "run" / "finetune_random" / "last.pt", demo_cache, 1)
    _predictions(tmp_path / "run" / "evaluate", index, right={test[0]})            # A: right on video 0
    _predictions(tmp_path / "run" / "evaluate_random", index, right={test[1]})     # B: right on video 1
    written = V.main(["cam", "--checkpoint", str(a), "--compare", str(b), "--names", "mac", "scratch"])
    out = tmp_path / "run" / "cam"                                              # beside the checkpoints
    assert written == [out / "cam_a-right_b-wrong.png", out / "cam_a-wrong_b-right.png"]   # nobody both wrong
    for path, video in zip(written, test):
        im = Image.open(path)
        text = im.text["Description"]
        assert f"{video}: true class" in text and text.count(": true class") == 1
        assert "A: mac" in text and "B: scratch" in text and "change mask" in text
        assert 0 <= im.size[0] - (V.LABEL_W + 8 * (V.auto_tile(32) + V.GAP) + 6) <= V.LABEL_W   # + long labels
    ok = Image.open(written[0]).text["Description"]
    assert "video: " in ok and V.RIGHT in ok and V.WRONG in ok


def test_cam_single_model_and_missing_predictions(demo_cache, tmp_path, capsys):
    a = _finetune_checkpoint(tmp_path / "finetune" / "last.pt", demo_cache, 0)
    b = _finetune_checkpoint(tmp_path / "other" / "last.pt", demo_cache, 1)
    written = V.main(["cam", "--checkpoint", str(a), "--num-videos", "2", "--target", "label", "--gif",
                      "--out-dir", str(tmp_path / "o")])
    assert [p.name for p in written] == ["cam_test.png", "cam_test.gif"]
    assert "for the true class" in Image.open(written[0]).text["Description"]
    status = cli.run(V.main, "visualize.py", ["cam", "--checkpoint", str(a), "--compare", str(b),
                                              "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and "no predictions at" in err and "evaluate.py" in err


# --------------------------------------------------------------------------------------------
# the run report's pictures


def test_report_embeds_pictures_and_survives_failures(demo_cache, tmp_path):
    from train import report

    run = tmp_path / "runs" / "demo" / "r"
    (run / "pretrain").mkdir(parents=True)
    cfg = {"dataset": "demo", "cache_dir": str(demo_cache), "lam": 30, "m": 0.5, "frames": 8, "crop": 32,
           "scales": [32, 36], "n": 2, "k": 2, "method": "mac-s", "strides": [1, 2, 3, 4]}
    (run / "pretrain" / "config.json").write_text(json.dumps({"config": cfg}))
    index = _index(demo_cache)
    _finetune_checkpoint(run / "finetune" / "last.pt", demo_cache, 0)
    test = [str(n) for n in index.names[index.subset(1, "test")]]
    _predictions(run / "evaluate", index, right={test[0]})
    Image.new("RGB", (8, 8)).save(run / "evaluate" / "confusion.png")
    report.write_report(report.collect(run))
    md = (run / "summary.md").read_text()
    assert "## Pictures" in md and "![training samples](preview_train.png)" in md
    assert "![confusion](evaluate/confusion.png)" in md and "![class activation maps](cam_test.png)" in md
    pre, cam = Image.open(run / "preview_train.png"), Image.open(run / "cam_test.png")
    assert pre.text["Description"].count("item ") == 3 and "epoch 0" in pre.text["Description"]
    assert all(t in cam.text["Description"] for t in test)
    # a picture that cannot be drawn leaves a warning line; the report is written all the same
    cfg["cache_dir"] = str(tmp_path / "no_cache")
    (run / "pretrain" / "config.json").write_text(json.dumps({"config": cfg}))
    (run / "finetune" / "last.pt").write_bytes(b"not a checkpoint")
    report.write_report(report.collect(run))
    md = (run / "summary.md").read_text()
    assert "- (training-sample preview not drawn: ToolError: cannot open the cache" in md
    assert "- (class activation maps not drawn: CheckpointError:" in md
    assert "![confusion](evaluate/confusion.png)" in md and "| stage | wall time |" in md
