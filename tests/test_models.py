"""Video ResNet backbones: torchvision-identical state dicts, shapes, loading helpers."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from train.models import (
    BACKBONES,
    FEATURE_DIM,
    BackboneLoadError,
    LoadReport,
    VideoResNet,
    backbone_state_dict,
    build_backbone,
    load_backbone,
    r2plus1d_10,
    r2plus1d_18,
    r3d_18,
)

FIXTURE = Path(__file__).parent / "data" / "torchvision_video_resnets.json"
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def tv_shapes() -> dict[str, list[tuple[str, list[int]]]]:
    """torchvision 0.26 state_dict() names and shapes, in order."""
    with open(FIXTURE) as f:
        data = json.load(f)
    return {name: [(k, list(s)) for k, s in entries] for name, entries in data.items()}


@pytest.fixture(scope="module")
def models() -> dict[str, VideoResNet]:
    torch.manual_seed(0)
    return {name: build_backbone(name) for name in BACKBONES}


def synth_state_dict(entries, num_classes: int | None = None, seed: int = 0):
    """Random tensors with the fixture's names and shapes (optionally another fc size)."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for k, shape in entries:
        if num_classes is not None and k == "fc.weight":
            shape = [num_classes, shape[1]]
        elif num_classes is not None and k == "fc.bias":
            shape = [num_classes]
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.randint(0, 1000, shape, generator=g, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g)
    return sd


def names_and_shapes(model: nn.Module):
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


# ------------------------------------------------------------------ torchvision compatibility


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18"])
def test_state_dict_matches_torchvision_exactly(name, models, tv_shapes):
    assert names_and_shapes(models[name]) == tv_shapes[name]


def test_fixture_spot_checks(tv_shapes):
    """Guard against a bad fixture copy: the nested (2+1)D names and torchvision's midplanes."""
    r21 = dict(tv_shapes["r2plus1d_18"])
    assert r21["layer1.0.conv1.0.0.weight"] == [144, 64, 1, 3, 3]
    assert r21["layer2.0.conv2.0.0.weight"] == [230, 128, 1, 3, 3]  # midplanes from inplanes
    assert r21["layer4.0.downsample.0.weight"] == [512, 256, 1, 1, 1]
    assert dict(tv_shapes["r3d_18"])["stem.0.weight"] == [64, 3, 3, 7, 7]


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18"])
def test_torchvision_state_dict_loads_strict(name, tv_shapes):
    sd = synth_state_dict(tv_shapes[name], seed=1)
    model = build_backbone(name)  # fresh: the shared `models` must keep sane weights
    model.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # and back: ours has exactly the keys a torchvision model expects
    assert list(model.state_dict().keys()) == [k for k, _ in tv_shapes[name]]


def test_parameter_count_matches_fixture(models, tv_shapes):
    for name in ("r2plus1d_18", "r3d_18"):
        expected = sum(
            math.prod(s) for k, s in tv_shapes[name] if not k.endswith(BUFFER_SUFFIXES)
        )
        assert sum(p.numel() for p in models[name].parameters()) == expected
    n = sum(p.numel() for p in models["r2plus1d_18"].parameters())
    assert round(n / 1e6, 1) == 31.5  # the documented size of R(2+1)D-18 with fc-400
    n_fc = 512 * 400 + 400
    assert sum(p.numel() for p in r2plus1d_18(num_classes=10).parameters()) == n - n_fc + 5130


def test_r2plus1d_10_structure(models, tv_shapes):
    m = models["r2plus1d_10"]
    for i in range(1, 5):
        assert len(getattr(m, f"layer{i}")) == 1
    # its state dict is R(2+1)D-18's restricted to the first block of every stage
    r18 = [
        (k, s)
        for k, s in tv_shapes["r2plus1d_18"]
        if not any(k.startswith(f"layer{i}.1.") for i in range(1, 5))
    ]
    assert names_and_shapes(m) == r18
    x = torch.randn(2, 3, 8, 32, 32)
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (2, 400)
        assert m.forward_features(x).shape == (2, FEATURE_DIM)


def test_build_backbone():
    assert BACKBONES == ("r2plus1d_18", "r3d_18", "r2plus1d_10")
    m = build_backbone("r3d_18", num_classes=16)
    assert m.fc.out_features == 16
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet50")


def test_init_like_torchvision():
    torch.manual_seed(0)
    m = r2plus1d_18()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm3d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
    assert torch.all(m.fc.bias == 0)
    assert abs(m.fc.weight.std().item() - 0.01) < 1e-3
    w = m.layer4[1].conv2[0][3].weight  # Conv3d 921 -> 512, (3,1,1): fan_out = 512 * 3
    assert abs(w.std().item() - math.sqrt(2.0 / (512 * 3))) < 2e-3


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_shapes_tiny(name, models):
    m = models[name].eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        f = m.forward_features(x)
        y = m(x)
    assert f.shape == (2, 512) and y.shape == (2, 400)
    torch.testing.assert_close(y, m.fc(f))


def test_forward_shapes_full_size(models):
    m = models["r2plus1d_18"].eval()
    x = torch.randn(1, 3, 16, 112, 112)
    seen = {}
    hook = m.layer4.register_forward_hook(lambda mod, inp, out: seen.update(layer4=out.shape))
    try:
        with torch.no_grad():
            f = m.forward_features(x)
    finally:
        hook.remove()
    assert seen["layer4"] == (1, 512, 2, 7, 7)  # T/8, H/16, W/16
    assert f.shape == (1, 512)
    assert m.fc(f).shape == (1, 400)


def test_num_classes_zero_is_feature_extractor():
    m = r2plus1d_10(num_classes=0).eval()
    assert not any(k.startswith("fc.") for k in m.state_dict())
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert m(x).shape == (1, 512)


@pytest.mark.parametrize("name", ["r2plus1d_10", "r3d_18"])
def test_channels_last_3d_matches_contiguous(name, models):
    m = models[name].eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        ref = m(x)
        m_cl = build_backbone(name)
        m_cl.load_state_dict(m.state_dict())
        m_cl = m_cl.eval().to(memory_format=torch.channels_last_3d)
        assert m_cl.stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
        out = m_cl(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # from mkldnn.flags
def test_autocast_bf16_and_backward():
    torch.manual_seed(0)
    m = r2plus1d_10(num_classes=16).train()
    x = torch.randn(2, 3, 4, 32, 32)
    # oneDNN's CPU bf16 Conv3d weight gradient returns inf for the (3,1,1) temporal convs when
    # T == 2 (torch 2.13 / oneDNN 3.12 on AVX-512 CPUs; CUDA is unaffected), so the CPU test
    # runs on torch's reference kernels. The model code itself is the same on every device.
    with torch.backends.mkldnn.flags(enabled=False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
            loss = nn.functional.cross_entropy(y.float(), torch.tensor([1, 3]))
        loss.backward()
    assert y.shape == (2, 16) and y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_torch_compile_fullgraph():
    """No graph breaks (aot_eager backend: traces like inductor without C++ codegen)."""
    torch._dynamo.reset()
    m = r2plus1d_10().eval()
    x = torch.randn(1, 3, 8, 32, 32)
    cm = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), m(x), rtol=1e-4, atol=1e-4)
    # a compiled model's helpers see through the wrapper
    assert list(backbone_state_dict(cm)) == list(backbone_state_dict(m))
    torch._dynamo.reset()


# ------------------------------------------------------------------ backbone helpers


def test_backbone_state_dict_drops_fc(models, tv_shapes):
    sd = backbone_state_dict(models["r2plus1d_18"])
    expected = [k for k, _ in tv_shapes["r2plus1d_18"] if not k.startswith("fc.")]
    assert list(sd) == expected


@pytest.mark.parametrize("num_classes", [400, 101, 16])
def test_load_backbone_torchvision_format(tv_shapes, num_classes):
    sd = synth_state_dict(tv_shapes["r2plus1d_18"], num_classes=num_classes, seed=2)
    m = r2plus1d_18(num_classes=51)
    fc_before = m.fc.weight.detach().clone()
    report = load_backbone(m, sd, strict=True)
    assert isinstance(report, LoadReport) and report.ok
    assert report.dropped == ["fc.weight", "fc.bias"]
    assert len(report.loaded) == len(sd) - 2
    assert report.missing == report.unexpected == report.mismatched == []
    assert torch.equal(m.layer3[1].conv2[0][0].weight, sd["layer3.1.conv2.0.0.weight"])
    assert torch.equal(m.stem[4].running_var, sd["stem.4.running_var"])
    assert torch.equal(m.fc.weight, fc_before)  # own fc untouched
    assert "dropped classifier keys (2)" in str(report)


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "module.backbone.", "_orig_mod."])
def test_load_backbone_prefixes(prefix):
    src = r3d_18()
    sd = OrderedDict((prefix + k, v) for k, v in src.state_dict().items())
    m = r3d_18()
    report = load_backbone(m, sd)
    assert report.ok and report.dropped == ["fc.weight", "fc.bias"]
    assert "".join(report.stripped_prefixes) == prefix
    for k, v in backbone_state_dict(m).items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_load_backbone_from_wrapper_model_ignores_heads():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = r2plus1d_10(num_classes=0)
            self.head = nn.Linear(512, 16)
            self.register_buffer("queue", torch.randn(8, 128))

    w = Wrapper()
    sd = OrderedDict(("module." + k, v) for k, v in w.state_dict().items())  # DDP-saved
    m = r2plus1d_10()
    report = load_backbone(m, sd)
    assert report.ok and report.dropped == []
    assert sorted(report.ignored) == ["head.bias", "head.weight", "queue"]
    assert torch.equal(m.stem[0].weight, w.backbone.stem[0].weight)


def test_load_backbone_into_wrapped_model():
    src = r2plus1d_10()
    m = r2plus1d_10()
    wrapped = nn.DataParallel(m)
    report = load_backbone(wrapped, src.state_dict())
    assert report.ok
    assert torch.equal(m.layer1[0].conv1[0][0].weight, src.layer1[0].conv1[0][0].weight)


def test_load_backbone_strict_errors(tv_shapes):
    m = r2plus1d_18()
    before = backbone_state_dict(m)
    before = OrderedDict((k, v.clone()) for k, v in before.items())

    # r3d weights into r(2+1)d: names differ and shapes differ
    with pytest.raises(BackboneLoadError) as e:
        load_backbone(m, synth_state_dict(tv_shapes["r3d_18"]))
    msg = str(e.value)
    assert "missing keys" in msg and "layer1.0.conv1.0.0.weight" in msg
    assert "unexpected keys" in msg and "layer1.0.conv1.0.weight" in msg
    assert "shape mismatches" in msg and "stem.0.weight: checkpoint [64, 3, 3, 7, 7]" in msg

    # one tensor missing, one extra, one wrong shape: each is named
    sd = synth_state_dict(tv_shapes["r2plus1d_18"])
    del sd["layer2.1.conv1.0.1.running_var"]
    sd["layer5.0.conv1.0.0.weight"] = torch.zeros(1)
    sd["layer3.0.conv1.1.weight"] = torch.zeros(255)
    with pytest.raises(BackboneLoadError) as e:
        load_backbone(m, sd)
    msg = str(e.value)
    assert "missing keys (1): [layer2.1.conv1.0.1.running_var]" in msg
    assert "unexpected keys (1): [layer5.0.conv1.0.0.weight]" in msg
    assert "layer3.0.conv1.1.weight: checkpoint [255] vs model [256]" in msg
    # strict failure loads nothing
    for k, v in backbone_state_dict(m).items():
        assert torch.equal(v, before[k]), k

    # non-strict loads what matches and reports the rest
    report = load_backbone(m, sd, strict=False)
    assert not report.ok
    assert report.missing == ["layer2.1.conv1.0.1.running_var"]
    assert report.unexpected == ["layer5.0.conv1.0.0.weight"]
    assert [k for k, _, _ in report.mismatched] == ["layer3.0.conv1.1.weight"]
    assert torch.equal(m.stem[0].weight, sd["stem.0.weight"])
    assert torch.equal(m.layer3[0].conv1[1].weight, before["layer3.0.conv1.1.weight"])

    # nothing in common is an error even when not strict
    with pytest.raises(BackboneLoadError, match="shares no backbone tensor"):
        load_backbone(m, {"encoder.weight": torch.zeros(3)}, strict=False)


def test_roundtrip_between_backbones_with_different_heads():
    torch.manual_seed(0)
    a = r2plus1d_10(num_classes=16).eval()
    b = r2plus1d_10(num_classes=101).eval()
    load_backbone(b, backbone_state_dict(a))
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.forward_features(x), b.forward_features(x))


def test_narrow_variants_keep_torchvision_names():
    """r2plus1d_10_w32 and friends: the same module and parameter names, every width scaled."""
    import torch

    from train.models import build_backbone, parse_backbone

    for base in ("r2plus1d_18", "r3d_18", "r2plus1d_10"):
        full, narrow = build_backbone(base, 5), build_backbone(f"{base}_w32", 5)
        assert list(full.state_dict()) == list(narrow.state_dict())
        assert narrow.feature_dim == 256 and narrow.fc.in_features == 256
        assert narrow.layer4[0].conv2[1].num_features == 256          # the block's BN
        x = torch.randn(2, 3, 4, 32, 32)
        assert narrow(x).shape == (2, 5) and narrow.forward_features(x).shape == (2, 256)
        assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 3
    assert parse_backbone("r2plus1d_10_w32") == ("r2plus1d_10", 32)
    assert parse_backbone("r3d_18") == ("r3d_18", 64)
    for bad in ("r2plus1d_10_w7", "r2plus1d_10_w512", "resnet50", "r3d_18_wide"):
        with pytest.raises(ValueError, match="backbone"):
            parse_backbone(bad)
