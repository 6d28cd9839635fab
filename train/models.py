"""Video ResNet backbones (R(2+1)D-18, R3D-18, R(2+1)D-10) for MAC.

A re-implementation of torchvision's video ResNets (``torchvision.models.video.resnet``,
torchvision 0.26) without depending on torchvision. Module structure, parameter and buffer
names, shapes and their order are identical to torchvision's, so checkpoints move both ways:

    ours.load_state_dict(torchvision_model.state_dict(), strict=True)
    torchvision_model.load_state_dict(ours.state_dict(), strict=True)

(``tests/data/torchvision_video_resnets.json`` records torchvision's names and shapes; the
tests check against it.)

Input clips are ``[B, 3, T, H, W]``. ``forward_features`` returns the pooled, flattened
``[B, feature_dim]`` feature (512 at the standard width) used by the MAC heads and for
retrieval; ``forward`` applies ``fc`` on it.

Narrow variants: a name with a ``_w<width>`` suffix (e.g. ``r2plus1d_10_w32``) scales every stage
width by width / 64 (stem, stages 64-128-256-512 -> 32-64-128-256; feature_dim = 8 * width).
Module and parameter names stay torchvision's, only the shapes shrink. They exist for CPU-sized
runs (the built-in demo); the paper's models are the standard widths.
The models work with ``memory_format=torch.channels_last_3d``, under ``torch.autocast`` and
with ``torch.compile`` (no graph breaks).

``backbone_state_dict`` / ``load_backbone`` move the backbone (everything but ``fc``) between
models and checkpoints: DDP (``module.``), ``torch.compile`` (``_orig_mod.``) and MAC wrapper
(``backbone.``) prefixes are stripped, and a checkpoint's ``fc`` of any size is dropped and
reported.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "FEATURE_DIM",
    "BackboneLoadError",
    "BasicBlock",
    "BasicStem",
    "Conv2Plus1D",
    "Conv3DSimple",
    "LoadReport",
    "R2Plus1dStem",
    "VideoResNet",
    "backbone_state_dict",
    "build_backbone",
    "load_backbone",
    "r2plus1d_10",
    "r2plus1d_18",
    "r3d_18",
]

#: Width of the pooled feature returned by ``VideoResNet.forward_features``.
FEATURE_DIM = 512


# --------------------------------------------------------------------------------------------
# Building blocks (same classes, arguments and child order as torchvision.models.video.resnet)
# --------------------------------------------------------------------------------------------


class Conv3DSimple(nn.Conv3d):
    """Full 3x3x3 convolution (R3D)."""

    def __init__(
        self, in_planes: int, out_planes: int, midplanes: int | None = None, stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__(
            in_channels=in_planes,
            out_channels=out_planes,
            kernel_size=(3, 3, 3),
            stride=stride,
            padding=padding,
            bias=False,
        )

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class Conv2Plus1D(nn.Sequential):
    """(2+1)D convolution: spatial 1x3x3 conv -> BN -> ReLU -> temporal 3x1x1 conv.

    Children ``0`` (conv), ``1`` (BN), ``2`` (ReLU), ``3`` (conv), as in torchvision.
    """

    def __init__(
        self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1, padding: int = 1
    ) -> None:
        super().__init__(
            nn.Conv3d(
                in_planes,
                midplanes,
                kernel_size=(1, 3, 3),
                stride=(1, stride, stride),
                padding=(0, padding, padding),
                bias=False,
            ),
            nn.BatchNorm3d(midplanes),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                midplanes,
                out_planes,
                kernel_size=(3, 1, 1),
                stride=(stride, 1, 1),
                padding=(padding, 0, 0),
                bias=False,
            ),
        )

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


ConvBuilder = Callable[..., nn.Module]


class BasicBlock(nn.Module):
    """ResNet basic block with two (2+1)D or 3D convolutions.

    ``midplanes`` (the (2+1)D intermediate width, chosen so the parameter count matches a full
    3x3x3 conv) is computed once from ``inplanes`` and used for both convolutions, exactly as
    torchvision does (e.g. 230 for both convs of ``layer2.0``).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        conv_builder: ConvBuilder,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
        super().__init__()
        self.conv1 = nn.Sequential(
            conv_builder(inplanes, planes, midplanes, stride),
            nn.BatchNorm3d(planes),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        out = self.conv1(x)
        out = self.conv2(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        out = self.relu(out)
        return out


class BasicStem(nn.Sequential):
    """R3D stem: Conv3d 3->64 (3,7,7) stride (1,2,2) pad (1,3,3), BN, ReLU (64: the width)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__(
            nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )


class R2Plus1dStem(nn.Sequential):
    """R(2+1)D stem: spatial conv 3->45 (1,7,7), BN, ReLU, temporal conv 45->64 (3,1,1), BN, ReLU
    (45 and 64 scaled by width / 64 for narrow variants)."""

    def __init__(self, width: int = 64) -> None:
        mid = (45 * width) // 64
        super().__init__(
            nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )


class VideoResNet(nn.Module):
    """torchvision's ``VideoResNet`` plus ``forward_features``.

    Args:
        block: residual block class (``BasicBlock``).
        conv_makers: one conv builder per stage (``Conv2Plus1D`` or ``Conv3DSimple``).
        layers: number of blocks per stage.
        stem: stem class (``R2Plus1dStem`` or ``BasicStem``).
        num_classes: size of ``fc``. ``0`` replaces ``fc`` by ``nn.Identity`` (``forward``
            then returns the features and the state dict has no ``fc.*``; such a model is not
            torchvision-loadable with ``strict=True``, its backbone is).
        zero_init_residual: zero-init the last BN of each block (torchvision's option).
        width: the stem / first-stage width (64: torchvision's); stages are width x 1, 2, 4, 8.
    """

    def __init__(
        self,
        block: type[BasicBlock],
        conv_makers: Sequence[ConvBuilder],
        layers: Sequence[int],
        stem: Callable[[], nn.Module],
        num_classes: int = 400,
        zero_init_residual: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__()
        if len(conv_makers) != 4 or len(layers) != 4:
            raise ValueError("conv_makers and layers must have one entry per stage (4)")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.inplanes = width
        self.num_classes = num_classes
        self.feature_dim = 8 * width * block.expansion

        self.stem = stem(width) if width != 64 else stem()
        self.layer1 = self._make_layer(block, conv_makers[0], width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, conv_makers[1], 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, conv_makers[2], 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, conv_makers[3], 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc: nn.Module = (
            nn.Linear(self.feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        )

        # torchvision's initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.conv2[1].weight)

    def _make_layer(
        self,
        block: type[BasicBlock],
        conv_builder: ConvBuilder,
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            ds_stride = conv_builder.get_downsample_stride(stride)  # type: ignore[attr-defined]
            downsample = nn.Sequential(
                nn.Conv3d(
                    self.inplanes, planes * block.expansion, kernel_size=1, stride=ds_stride,
                    bias=False,
                ),
                nn.BatchNorm3d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, conv_builder, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, conv_builder))
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, 3, T, H, W]`` clips -> ``[B, feature_dim]`` globally average-pooled features."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Constructors
# --------------------------------------------------------------------------------------------


def r2plus1d_18(num_classes: int = 400, width: int = 64) -> VideoResNet:
    """R(2+1)D-18 (torchvision ``r2plus1d_18``), 31.5M parameters with a 400-way fc."""
    return VideoResNet(BasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], R2Plus1dStem, num_classes, width=width)


def r3d_18(num_classes: int = 400, width: int = 64) -> VideoResNet:
    """R3D-18 (torchvision ``r3d_18``)."""
    return VideoResNet(BasicBlock, [Conv3DSimple] * 4, [2, 2, 2, 2], BasicStem, num_classes, width=width)


def r2plus1d_10(num_classes: int = 400, width: int = 64) -> VideoResNet:
    """R(2+1)D-10: R(2+1)D with one BasicBlock per stage (layers [1, 1, 1, 1]).

    Same stem and stage widths as R(2+1)D-18; its state dict is R(2+1)D-18's restricted to the
    ``layerN.0`` blocks.
    """
    return VideoResNet(BasicBlock, [Conv2Plus1D] * 4, [1, 1, 1, 1], R2Plus1dStem, num_classes, width=width)


_BUILDERS: dict[str, Callable[..., VideoResNet]] = {
    "r2plus1d_18": r2plus1d_18,
    "r3d_18": r3d_18,
    "r2plus1d_10": r2plus1d_10,
}

#: Backbone names accepted by ``build_backbone`` (the first is the default).
BACKBONES: tuple[str, ...] = ("r2plus1d_18", "r3d_18", "r2plus1d_10")


def parse_backbone(name: str) -> tuple[str, int]:
    """(base name, width) of a backbone name: one of ``BACKBONES``, optionally with a
    ``_w<width>`` suffix (width a multiple of 8 in 8..256); ValueError otherwise."""
    base, width = str(name), 64
    head, sep, tail = base.rpartition("_w")
    if sep and tail.isdigit():
        base, width = head, int(tail)
        if not (8 <= width <= 256 and width % 8 == 0):
            raise ValueError(f"backbone {name!r}: the width must be a multiple of 8 in 8..256, got {width}")
    if base not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}, optionally narrowed "
                         f"with a _w<width> suffix (e.g. r2plus1d_10_w32)")
    return base, width


def build_backbone(name: str, num_classes: int = 400) -> VideoResNet:
    """Build a backbone by name: one of ``BACKBONES``, or a narrow variant ``<name>_w<width>``."""
    base, width = parse_backbone(name)
    return _BUILDERS[base](num_classes, width=width)


# --------------------------------------------------------------------------------------------
# Backbone state dicts
# --------------------------------------------------------------------------------------------

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
_BACKBONE_PREFIX = "backbone."
_HEAD_PREFIX = "fc."


def _unwrap(model: nn.Module) -> nn.Module:
    """Unwrap DDP / DataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
                changed = True
    return key


def backbone_state_dict(model: nn.Module) -> "OrderedDict[str, Tensor]":
    """The model's state dict without the classifier (``fc.*``), in torchvision naming.

    DDP / torch.compile wrappers are unwrapped first, so keys never carry their prefixes.
    """
    sd = _unwrap(model).state_dict()
    return OrderedDict((k, v) for k, v in sd.items() if not k.startswith(_HEAD_PREFIX))


class BackboneLoadError(RuntimeError):
    """Raised by ``load_backbone`` when a checkpoint does not match the backbone."""


@dataclass
class LoadReport:
    """What ``load_backbone`` did.

    Attributes:
        loaded: backbone keys copied into the model.
        missing: model backbone keys absent from the checkpoint.
        unexpected: checkpoint backbone keys the model does not have.
        mismatched: ``(key, checkpoint_shape, model_shape)`` for keys present in both.
        dropped: checkpoint classifier keys (``fc.*``) that were not loaded.
        ignored: checkpoint keys outside ``backbone.`` when the checkpoint is a wrapper model
            (e.g. a MAC model's heads, projection, momentum encoder, queue).
        stripped_prefixes: prefixes that were stripped (``module.``, ``_orig_mod.``,
            ``backbone.``).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    stripped_prefixes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the backbone matched exactly (nothing missing, unexpected or mismatched)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, max_keys: int = 20) -> str:
        def fmt(keys: Sequence[object]) -> str:
            shown = [str(k) for k in keys[:max_keys]]
            more = f", ... ({len(keys) - max_keys} more)" if len(keys) > max_keys else ""
            return "[" + ", ".join(shown) + more + "]"

        lines = [f"loaded {len(self.loaded)} backbone tensors"] if self.loaded else []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}): {fmt(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}): {fmt(self.unexpected)}")
        if self.mismatched:
            mm = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"shape mismatches ({len(mm)}): {fmt(mm)}")
        if self.dropped:
            lines.append(f"dropped classifier keys ({len(self.dropped)}): {fmt(self.dropped)}")
        if self.ignored:
            lines.append(f"ignored non-backbone keys ({len(self.ignored)}): {fmt(self.ignored)}")
        if self.stripped_prefixes:
            lines.append(f"stripped prefixes: {self.stripped_prefixes}")
        return "\n".join(lines) or "nothing loaded"

    def __str__(self) -> str:
        return self.summary()


def load_backbone(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> LoadReport:
    """Load a checkpoint's backbone (everything but ``fc.*``) into ``model``.

    ``state_dict`` may be ours or torchvision's (its ``fc`` of any size is dropped and
    reported), may carry DDP ``module.`` / torch.compile ``_orig_mod.`` prefixes, and may be a
    wrapper model's state dict whose backbone lives under ``backbone.``: then only the
    ``backbone.*`` keys are used and the rest is reported as ``ignored``. The model's own
    ``fc`` is left untouched. ``model`` may itself be DDP- or compile-wrapped.

    With ``strict=True`` the remaining keys and shapes must match the model's backbone exactly,
    otherwise ``BackboneLoadError`` lists the missing / unexpected / mismatched keys and nothing
    is loaded. With ``strict=False`` matching tensors are loaded and the rest is reported; a
    checkpoint sharing no backbone key with the model still raises (almost always a prefix or
    naming error).
    """
    target = _unwrap(model)
    report = LoadReport()

    # 1. strip wrapper prefixes, select the backbone of wrapper models
    stripped = OrderedDict()
    for k, v in state_dict.items():
        k2 = _strip_wrappers(k)
        if k2 != k:
            p = k[: len(k) - len(k2)]
            if p not in report.stripped_prefixes:
                report.stripped_prefixes.append(p)
        stripped[k2] = v
    if any(k.startswith(_BACKBONE_PREFIX) for k in stripped):
        selected = OrderedDict()
        for k, v in stripped.items():
            if k.startswith(_BACKBONE_PREFIX):
                selected[_strip_wrappers(k[len(_BACKBONE_PREFIX):])] = v
            else:
                report.ignored.append(k)
        report.stripped_prefixes.append(_BACKBONE_PREFIX)
        stripped = selected

    # 2. drop the checkpoint's classifier
    ckpt = OrderedDict()
    for k, v in stripped.items():
        if k.startswith(_HEAD_PREFIX):
            report.dropped.append(k)
        else:
            ckpt[k] = v

    # 3. compare with the model's backbone
    own = backbone_state_dict(target)
    for k, v in own.items():
        if k not in ckpt:
            report.missing.append(k)
        elif not isinstance(ckpt[k], Tensor):
            report.mismatched.append((k, (), tuple(v.shape)))
        elif tuple(ckpt[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(ckpt[k].shape), tuple(v.shape)))
        else:
            report.loaded.append(k)
    report.unexpected = [k for k in ckpt if k not in own]

    if strict and not report.ok:
        report.loaded = []
        raise BackboneLoadError(
            f"checkpoint does not match the backbone (strict=True): {len(report.missing)} "
            f"missing, {len(report.unexpected)} unexpected, {len(report.mismatched)} "
            "shape-mismatched keys; nothing was loaded.\n" + report.summary()
        )
    if not report.loaded:
        raise BackboneLoadError(
            "checkpoint shares no backbone tensor with the model; nothing was loaded.\n"
            + report.summary()
        )

    # 4. copy (load_state_dict handles dtype/device conversion and BN buffers)
    result = target.load_state_dict(OrderedDict((k, ckpt[k]) for k in report.loaded), strict=False)
    unexpected_after = list(result.unexpected_keys)
    assert not unexpected_after, unexpected_after  # keys were checked above
    return report
