"""Grad-CAM pictures of train/visualize.py: class activation maps of finetuned checkpoints over
test clips, beside the frames and their change masks, for one model or two compared.

Owns: ``grad_cam`` (on layer4, the maps themselves), reading predictions.csv, the comparison's
groups and its seeded choice of videos (``compare_groups``, ``pick``, ``pick_balanced``), loading
a finetuning checkpoint as a ``Classifier``, ``CamMaker`` (the clips as train/evaluate.py cuts
them, and their blocks), and the report's picture (``cam_strip``). The overlay colours, layout
and files are train/vis/drawing.py's; checkpoints and the cache are only read.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.errors import ToolError, UsageError
from train.vis.drawing import RIGHT, WRONG, Block, Row, _shown, auto_tile, cam_overlay, find_video, write_figure


# --------------------------------------------------------------------------------------------
# Class activation maps (Grad-CAM) of finetuned checkpoints
# --------------------------------------------------------------------------------------------

def cam_layer(model):
    """The last convolutional stage of a VideoResNet (``layer4``)."""
    layer = getattr(model, "layer4", None)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no layer4 (the last convolutional stage Grad-CAM uses)")
    return layer


def grad_cam(model, clips, target=None, layer=None):
    """Grad-CAM of `model` on clips float [B, 3, T, H, W] (normalised as the model expects).

    target: class indices [B] (or one int), or None for each clip's predicted class. With A the
    output of `layer` (default ``model.layer4``) and g the gradient of the target logit w.r.t.
    it, w_c = mean over (t, h, w) of g_c, CAM = ReLU(sum_c w_c A_c), trilinearly upsampled to
    (T, H, W) and divided by its maximum over the clip (all zero when nothing is positive).
    The model runs in eval mode (BN running statistics), fp32. Returns (cam float32 [B, T, H, W]
    in [0, 1], logits float32 [B, C], target int64 [B])."""
    import torch
    import torch.nn.functional as F

    layer = layer if layer is not None else cam_layer(model)
    store: dict = {}
    handle = layer.register_forward_hook(lambda mod, inp, out: store.__setitem__("a", out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = clips.detach().float().requires_grad_(True)
            logits = model(x)
            a = store.pop("a")
            if target is None:
                tgt = logits.argmax(1)
            else:
                tgt = torch.as_tensor(target, device=logits.device, dtype=torch.long).reshape(-1)
                if tgt.numel() == 1 and logits.shape[0] > 1:
                    tgt = tgt.expand(logits.shape[0])
            score = logits.gather(1, tgt[:, None]).sum()
            (g,) = torch.autograd.grad(score, a)
    finally:
        handle.remove()
        model.train(was_training)
    with torch.no_grad():
        w = g.mean(dim=(2, 3, 4), keepdim=True)
        cam = F.relu((w * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(clips.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2, 3), keepdim=True)
        cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return cam.float().cpu(), logits.detach().float().cpu(), tgt.cpu()


@dataclass
class Prediction:
    label: int
    label_name: str
    correct: bool
    pred: str
    prob: float


def read_predictions(path: str | os.PathLike) -> dict:
    """predictions.csv of train/evaluate.py -> {video: Prediction} (the top-1)."""
    out = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                out[row["video"]] = Prediction(int(row["label"]), row["label_name"], row["correct"] == "1",
                                               row["pred1"], float(row["prob1"]))
    except (OSError, KeyError, ValueError) as e:
        raise ToolError(f"{path}: not a readable predictions.csv of train/evaluate.py ({type(e).__name__}: {e})") from None
    return out


COMPARE_GROUPS = (("a-right_b-wrong", True, False), ("a-wrong_b-right", False, True), ("both-wrong", False, False))


def compare_groups(pa: dict, pb: dict) -> dict:
    """{group: sorted video names} over the videos both predictions hold: A right and B wrong,
    A wrong and B right, both wrong."""
    common = sorted(set(pa) & set(pb))
    return {g: [v for v in common if pa[v].correct == ra and pb[v].correct == rb] for g, ra, rb in COMPARE_GROUPS}


def pick(names: Sequence[str], k: int, seed: int = 0) -> list[str]:
    """k of `names`, drawn without replacement by a seeded generator, in name order."""
    names = sorted(names)
    if len(names) <= k:
        return names
    rng = np.random.default_rng(seed)
    return sorted(names[i] for i in rng.choice(len(names), size=k, replace=False))


def pick_balanced(preds: dict, names: Sequence[str], k: int, seed: int = 0) -> list[str]:
    """k videos of `names`: half of them (rounded up) predicted right, the rest wrong, where
    there are enough of each."""
    right = [v for v in names if v in preds and preds[v].correct]
    wrong = [v for v in names if v in preds and not preds[v].correct]
    nw = min(len(wrong), k // 2)
    nr = min(len(right), k - nw)
    nw = min(len(wrong), k - nr)
    return pick(right, nr, seed) + pick(wrong, nw, seed)


@dataclass
class Classifier:
    path: Path
    name: str
    model: Any
    ckpt: dict
    classes: list
    geometry: dict
    norm: str


def load_classifier(path: str | os.PathLike, name: str | None = None, trust: bool = False, device="cpu",
                    frames=None, stride=None, crop=None, short_side=None) -> Classifier:
    """A finetuning checkpoint (train/finetune.py) as a model in eval mode, with its classes,
    test clip geometry and normalisation."""
    from train.inference import checkpoint_config, clip_geometry, load_checkpoint
    from train.models import build_backbone

    path = Path(path)
    ckpt = load_checkpoint(path, trust=trust)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "finetune" or not ckpt.get("classes"):
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
        raise ToolError(f"{path} is a {kind or 'foreign'} checkpoint, not a finetuning one (train/finetune.py): "
                        f"class activation maps need its classifier and class names")
    cfg = checkpoint_config(ckpt)
    classes = list(ckpt["classes"])
    model = build_backbone(ckpt["backbone_name"], num_classes=len(classes))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    geo = clip_geometry(cfg, frames, stride, crop, short_side)
    return Classifier(path, name or path.parent.name, model, ckpt, classes, geo, cfg.get("norm", "kinetics"))


class CamMaker:
    """Clips of the cache as the checkpoints' evaluation cuts them, and their Grad-CAMs."""

    def __init__(self, models: Sequence[Classifier], cache_dir: str | None = None, split: int | None = None,
                 device="cpu", lam: int = 30, m: float = 0.5):
        from train.inference import checkpoint_config, open_checkpoint_cache

        self.models = list(models)
        a = self.models[0]
        for b in self.models[1:]:
            ds_a = a.ckpt.get("dataset") or checkpoint_config(a.ckpt).get("dataset")
            ds_b = b.ckpt.get("dataset") or checkpoint_config(b.ckpt).get("dataset")
            if ds_a != ds_b or a.classes != b.classes:
                raise UsageError("--compare", b.path, f"was finetuned on {ds_b} ({len(b.classes)} classes), "
                                 f"--checkpoint on {ds_a} ({len(a.classes)} classes): compare models of one dataset")
        try:
            self.index = open_checkpoint_cache(a.ckpt, cache_dir)
        except SystemExit as e:
            raise ToolError(str(e.code)) from None
        if list(self.index.classes) != a.classes:
            raise ToolError(f"the classes of {a.path} ({len(a.classes)}) differ from those of the cache at "
                            f"{self.index.root} ({len(self.index.classes)})")
        cfg = checkpoint_config(a.ckpt)
        self.split = int(split or a.ckpt.get("split") or cfg.get("split") or 1)
        self.device = device
        self.lam, self.m = int(lam), float(m)
        self._eval: dict = {}

    def find(self, name: str) -> int:
        return find_video(self.index, name)

    def clip(self, clf: Classifier, video: int):
        """(uint8 frames [T, S, S, 3], frame indices) of the video's centre clip in `clf`'s test
        geometry (train.data.EvalClips with one clip)."""
        from train.data import EvalClips
        from train.mac import sample_clip_indices

        g = clf.geometry
        key = (g["frames"], g["stride"], g["short_side"], g["crop"])
        if key not in self._eval:
            self._eval[key] = EvalClips(self.index, self.split, "all", num_clips=1, frames=g["frames"],
                                        stride=g["stride"], short_side=g["short_side"], crop=g["crop"])
        item = self._eval[key][video]
        n = int(self.index.n_frames[video])
        idx = sample_clip_indices(n, g["frames"], g["stride"], int(item["starts"][0]))
        return item["frames"][0].numpy(), idx

    def cam(self, clf: Classifier, frames: np.ndarray, target=None):
        """(cam [T, S, S], probabilities [C], target class) of one clip."""
        import torch

        from train.mac import eval_transform

        x = eval_transform({"frames": torch.from_numpy(frames)[None, None]}, clf.norm, self.device)["clips"][:, 0]
        cam, logits, tgt = grad_cam(clf.model, x, target)
        return cam[0].numpy(), torch.softmax(logits[0], 0).numpy(), int(tgt[0])

    def block(self, video: int, preds: Sequence[dict | None], target: str = "pred", max_frames: int = 16) -> Block:
        from preprocess.masks import foreground_masks

        name = str(self.index.names[video])
        label = int(self.index.labels[video])
        frames, idx = self.clip(self.models[0], video)
        shown = _shown(len(frames), max_frames)
        change = foreground_masks(frames, self.lam, self.m)
        g = self.models[0].geometry
        rows = [Row("frames", frames[shown], {j: f"#{int(idx[t])}" for j, t in enumerate(shown)}),
                Row(f"change mask\n\u03bb {self.lam}, m {self.m:g}", change[shown])]
        for tag, clf, pr in zip("AB", self.models, preds):
            fr = frames
            if clf.geometry != self.models[0].geometry:
                fr, _ = self.clip(clf, video)
            cam, probs, tgt = self.cam(clf, fr, label if target == "label" else None)
            p = int(np.argmax(probs))
            clip_pred = f"clip: {clf.classes[p]} {probs[p]:.2f}"
            vid = pr.get(name) if pr else None
            vid_txt = f"video: {vid.pred} {RIGHT if vid.correct else WRONG}" if vid is not None else ""
            head = f"{tag}: {clf.name}" if len(self.models) > 1 else clf.name
            lines = [head, clip_pred] + ([vid_txt] if vid_txt else []) + [f"CAM of {clf.classes[tgt]}"]
            rows.append(Row("\n".join(lines), cam_overlay(fr, cam)[_shown(len(fr), max_frames)]))
        header = (f"{name}: true class {self.index.classes[label]} | centre clip, frames {int(idx[0])}..{int(idx[-1])} "
                  f"(stride {g['stride']}), short side {g['short_side']}, crop {g['crop']}")
        return Block(header, rows)

    def title(self, what: str, target: str) -> str:
        tgt = "the predicted class" if target == "pred" else "the true class"
        names = "; ".join(f"{t}: {c.path}" for t, c in zip("AB", self.models)) if len(self.models) > 1 \
            else str(self.models[0].path)
        return (f"{self.index.dataset} split {self.split}: {what}\nGrad-CAM on layer4 for {tgt}, upsampled to the "
                f"clip, divided by its maximum per clip (jet: 0 blue .. 1 red); {names}")


def cam_figure(maker: CamMaker, videos: Sequence[int], preds: Sequence[dict | None], what: str, path: Path,
               target: str = "pred", tile: int | None = None, gif: bool = False, max_frames: int = 16,
               palette: bool = False) -> list[Path]:
    blocks = [maker.block(v, preds, target, max_frames) for v in videos]
    tile = tile or auto_tile(maker.models[0].geometry["crop"])
    return write_figure(maker.title(what, target), blocks, path, tile, gif, palette)


def default_predictions(checkpoint: Path) -> Path:
    """predictions.csv of the evaluate folder beside a checkpoint's stage (finetune -> evaluate)."""
    from train.inference import default_out_dir

    return default_out_dir(Path(checkpoint), "evaluate") / "predictions.csv"


def cam_strip(checkpoint: str | os.PathLike, out_png: str | os.PathLike, predictions: str | os.PathLike | None = None,
              num: int = 3, cache_dir: str | None = None, tile: int = 64, seed: int = 0) -> Path:
    """The report's picture: Grad-CAMs of `num` test videos of a finetuned checkpoint (right and
    wrong ones, when predictions.csv says which)."""
    clf = load_classifier(checkpoint)
    maker = CamMaker([clf], cache_dir)
    names = [str(n) for n in maker.index.names[maker.index.subset(maker.split, "test")]]
    preds = read_predictions(predictions) if predictions and Path(predictions).is_file() else None
    chosen = pick_balanced(preds, names, num, seed) if preds else pick(names, num, seed)
    if not chosen:
        raise ToolError(f"{maker.index.dataset} split {maker.split} has no test videos")
    videos = [maker.find(v) for v in chosen]
    what = f"{len(videos)} test videos" + (" (right and wrong, from predictions.csv)" if preds else "")
    return cam_figure(maker, videos, [preds], what, Path(out_png), tile=tile)[0]
