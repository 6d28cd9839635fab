"""Pictures of masks, MAC samples and finetuned models, made from the cache alone (no GPU needed).

    python train/visualize.py preview --dataset demo --lambda 10 30 60             # 2 random training videos
    python train/visualize.py preview --dataset demo --videos v_Circle_g01_c01 --strides 2 4 --gif
    python train/visualize.py preview --pretrain-config runs/demo/demo/pretrain/config.json --drawn --num-videos 4
    python train/visualize.py cam --checkpoint runs/demo/demo/finetune/last.pt --num-videos 4
    python train/visualize.py cam --checkpoint runs/demo/demo/finetune/last.pt \\
        --compare runs/demo/demo/finetune_random/last.pt --per-group 2

preview
    One PNG per video (``--gif``: also an animation over time): for each stride a block of rows,
    ``frames`` (the augmented clip the trainer builds: scale, flip, crop, colour jitter), then per
    mask set (every ``--lambda`` x ``--m``) the clip's ``mask`` and the ``MAC`` clip (blended with
    the segment alphas, written on the first frame of each segment; the block's header gives the
    alpha tuple and its pretext label). The samples are made by the trainer's own code:
    ``train.data.PretrainClips`` draws and cuts the clip and computes its masks (``--mask-source
    clip``: Algorithm 1 on the augmented clip; ``cache``: the cached per-stride mask sets), and
    ``train.mac.MACTransform`` jitters, normalises and blends it. The MAC row is the transform's
    query with the normalisation undone for display (x * std + mean), so it is exactly what the
    network receives: with the default ``--blend-space normalised`` the attenuated foreground fades
    toward the normalisation's mean colour (grey), with ``pixel`` toward black. The frames row is
    the same clip without the blend. Every draw (clip, alphas, crop, jitter) is a function of
    (``--seed``, ``--epoch``, item) and never of the mask set, so the mask sets of one block show
    the same clip. Per stride, the sample is the one the trainer would draw with ``--strides``
    restricted to that stride; ``--drawn`` instead keeps the trainer's own stride draw, so every
    block is bit for bit the sample of that item in pretraining epoch ``--epoch`` (one PNG,
    ``preview_drawn_epoch<E>.png``, one block per video). Without ``--videos`` the videos are the
    first ``--num-videos`` items of the epoch's shuffled order (the start of the first batch).
    Settings: ``--pretrain-config`` (a run's ``pretrain/config.json`` or a preset such as
    ``configs/demo/pretrain.json``) < the sample flags here (pretrain.py's names and checks).

cam
    Grad-CAM of a finetuned checkpoint (train/finetune.py) on the last convolutional stage
    (``layer4``): channel weights = the spatio-temporal mean of the gradient of the target logit
    (``--target pred``: the clip's predicted class, or ``label``), CAM = ReLU(sum_c w_c A_c),
    upsampled to T x H x W (trilinear) and divided by its maximum over the clip. Per video the
    centre clip of the checkpoint's test geometry (as train/evaluate.py cuts clips: short side,
    centre crop), rows: frames, change mask (Algorithm 1 on the clip, ``--lambda``/``--m``), and
    the CAM over the frames with the clip's prediction and the video's (from predictions.csv).
    ``--compare CKPT2`` adds the second model's row and picks the videos from both models'
    ``predictions.csv`` (default: the evaluate folder beside each checkpoint): A right and B wrong,
    A wrong and B right, both wrong; one PNG per group (the layout of the supplementary's
    Figures 2-4).

Every PNG carries its captions as PNG text (``Title``, ``Description``). Files are written
atomically; bad values end the tool with status 2 and one line (core/errors.py).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):   # run as `python train/visualize.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.checks import check_file
from core.errors import ToolError, UsageError, exit_with
from core.flags import Flags, borrowed, flag, flag_name, parse_commands
from train.options import DEVICES, ClipGeometryFlags

# The pictures are made in train/vis/ (drawing.py: layout and files; preview.py: masks and MAC
# samples; gradcam.py: Grad-CAM and the model comparison); this file is their command line. Their
# API stays importable from here (train/report.py, the tests).
from train.vis.drawing import GAP, LABEL_W, RIGHT, WRONG, Block, Row, auto_tile, cam_overlay  # noqa: F401
from train.vis.drawing import render_gif, render_grid, save_gif, save_png  # noqa: F401
from train.vis.gradcam import (CamMaker, Prediction, cam_figure, cam_strip, compare_groups,  # noqa: F401
                               default_predictions, grad_cam, load_classifier, pick, pick_balanced,
                               read_predictions)
from train.vis.preview import (SAMPLE_FIELDS, Previewer, preview_samples, preview_training_samples,  # noqa: F401
                               read_pretrain_config, sample_configs, write_previews)

__all__ = ["Block", "Row", "render_grid", "render_gif", "save_png", "save_gif", "read_pretrain_config",
           "sample_configs", "preview_samples", "write_previews", "grad_cam", "cam_overlay", "read_predictions",
           "compare_groups", "load_classifier", "cam_figure", "preview_training_samples", "cam_strip", "main"]

# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

@dataclass
class _PreviewOwn(Flags):
    """frames | mask | MAC clip of cached videos, per stride, for one or several mask sets side by
    side; made by the trainer's own sample code from the cache alone."""

    config_file = False
    pretrain_config: str = flag(None, "a run's pretrain/config.json or a preset (configs/<preset>/pretrain.json): "
                                      "the sample settings; the flags below override it", metavar="FILE")
    videos: list = flag(None, "cached videos (full name, file name or stem); default: the first --num-videos items "
                              "of the epoch's shuffled order of --part", nargs="+", type=str, metavar="NAME")
    num_videos: int = flag(2, "videos shown without --videos", lo=1)
    part: str = flag("train", "videos of the split", choices=("train", "test", "all"))
    epoch: int = flag(0, "the pretraining epoch whose draws are shown", lo=0)
    drawn: bool = flag(False, "the trainer's own stride draw instead of one block per stride: every block is that "
                              "item's sample in --epoch, all videos in one PNG")
    lams: list = flag(None, "mask thresholds, side by side (default: 30 or the config's)", name="--lambda",
                      nargs="+", type=int, metavar="LAMBDA", lo=0, hi=255)
    ms: list = flag(None, "background weights, side by side (default: 0.5 or the config's)", name="--m",
                    nargs="+", type=float, metavar="M", lo=0, hi=1)
    mask_sets: list = flag(None, "named (imported) mask sets shown beside the frame-difference ones "
                                 "(preprocess/import_masks.py; default: the config's --mask-set, if any)",
                           name="--mask-set", nargs="+", type=str, metavar="NAME")
    max_frames: int = flag(16, "frames drawn per clip (every k-th beyond)", lo=1)
    tile: int = flag(0, "tile size in px (0: the crop, enlarged to >= 96)", lo=0, hi=1024)
    gif: bool = flag(False, "also an animated GIF beside each PNG")
    palette: bool = flag(False, "256-colour PNGs (about 3x smaller), for documentation")
    out_dir: Path = flag(None, "default: runs/<dataset>/visualize", type=Path)

    def check(self) -> None:
        check_file("--pretrain-config", self.pretrain_config)
        base = read_pretrain_config(self.pretrain_config) if self.pretrain_config else {}
        given = {f: getattr(self, f, None) for f in SAMPLE_FIELDS}
        base.update({f: (tuple(v) if isinstance(v, list) else v) for f, v in given.items() if v is not None})
        lams = self.lams or [base.get("lam", 30)]
        ms = self.ms or [base.get("m", 0.5)]
        named = self.mask_sets if self.mask_sets is not None else ([base["mask_set"]] if base.get("mask_set") else [])
        self.sample_configs = sample_configs(base, lams, ms, named)    # every value checked (pretrain.py's checks)


def _preview_flags() -> type:
    """_PreviewOwn plus pretrain.py's sample flags (SAMPLE_FIELDS) with default None: not given =
    the --pretrain-config file's value, else pretrain.py's default."""
    from train.pretrain import PretrainConfig

    return dataclasses.make_dataclass("PreviewFlags", borrowed(PretrainConfig, SAMPLE_FIELDS,
                                                               ", or the --pretrain-config file's"),
                                      bases=(_PreviewOwn,))


@dataclass
class CamFlags(ClipGeometryFlags):
    """class activation maps (Grad-CAM on layer4) of a finetuned checkpoint over test clips, beside
    the frames and their change masks; --compare: two models."""

    config_file = False
    checkpoint: Path = flag(None, "a finetuning checkpoint (train/finetune.py)", type=Path, required=True)
    compare: Path = flag(None, "a second finetuning checkpoint: both side by side, videos picked from both "
                               "predictions.csv", type=Path, metavar="CKPT2")
    names: list = flag(None, "names of the two models (default: their run folders' names)", nargs=2, type=str,
                       metavar=("A", "B"))
    predictions: Path = flag(None, "predictions.csv of --checkpoint (default: the evaluate folder beside it, if "
                                   "present)", type=Path)
    compare_predictions: Path = flag(None, "predictions.csv of --compare (default: the evaluate folder beside it)",
                                     type=Path)
    videos: list = flag(None, "videos to show (default: picked)", nargs="+", type=str, metavar="NAME")
    num_videos: int = flag(4, "without --compare/--videos: videos picked (half right, half wrong when predictions "
                              "exist)", lo=1)
    per_group: int = flag(2, "with --compare: videos per group", lo=1)
    split: int = flag(None, "default: the checkpoint's", type=int, lo=1, hi=3)
    part: str = flag("test", "where videos are picked", choices=("test", "train", "all"))
    target: str = flag("pred", "the class whose evidence is mapped: the clip's prediction or the true class",
                       choices=("pred", "label"))
    lam: int = flag(30, "change mask threshold (Algorithm 1)", name="--lambda", lo=0, hi=255)
    m: float = flag(0.5, "change mask background weight (Algorithm 1)", lo=0, hi=1)
    cache_dir: str = flag(None, "default: the checkpoint's, else data_cache")
    device: str = flag("cpu", "auto | cuda | cpu", choices=DEVICES)
    seed: int = flag(0, "which videos are picked")
    max_frames: int = flag(16, "frames drawn per clip (every k-th beyond)", lo=1)
    tile: int = flag(0, "tile size in px (0: the crop, enlarged to >= 96)", lo=0, hi=1024)
    gif: bool = flag(False, "also an animated GIF beside each PNG")
    palette: bool = flag(False, "256-colour PNGs (about 3x smaller), for documentation")
    out_dir: Path = flag(None, "default: <run>/cam beside the checkpoint's stage", type=Path)
    trust_checkpoint: bool = flag(False, "allow full unpickling of the checkpoints (can run code stored in the files)")

    def check(self) -> None:
        for name in ("checkpoint", "compare", "predictions", "compare_predictions"):
            check_file(flag_name(self, name), getattr(self, name))
        super().check()
        if self.names and not self.compare:
            raise UsageError("--names", self.names, "needs --compare (names of the two models)")


def parse_args(argv=None):
    """(command, flags) of the command line; ``args.command`` is set on the flags too."""
    doc = __doc__.split("\n\n")
    command, args = parse_commands(
        {"preview": (_preview_flags(), "frames | masks | MAC clips of cached videos (the trainer's samples)"),
         "cam": (CamFlags, "Grad-CAM of finetuned checkpoints beside frames and change masks")},
        argv, description=doc[0], prog="visualize.py", epilog="\n\n".join(doc[1:]))
    args.command = command
    return args


def run_preview(args) -> list[Path]:
    cfgs = args.sample_configs
    pv = Previewer(cfgs, cfgs[0].split, args.part)
    videos = [pv.find(v) for v in args.videos] if args.videos else pv.first_items(args.num_videos, args.epoch)
    out_dir = args.out_dir or Path("runs") / cfgs[0].dataset / "visualize"
    written = write_previews(pv, videos, out_dir, args.epoch, cfgs[0].strides if not args.drawn else None,
                             args.drawn, args.gif, args.tile or None, args.max_frames, palette=args.palette)
    return written


def run_cam(args) -> list[Path]:
    from train.inference import default_out_dir, resolve_device

    device = resolve_device(args.device)
    names = args.names or [None, None]
    geo = dict(frames=args.frames, stride=args.stride, crop=args.crop, short_side=args.short_side)
    models = [load_classifier(args.checkpoint, names[0], args.trust_checkpoint, device, **geo)]
    if args.compare:
        models.append(load_classifier(args.compare, names[1], args.trust_checkpoint, device, **geo))
        if models[0].name == models[1].name:
            models[0].name, models[1].name = str(args.checkpoint), str(args.compare)
    maker = CamMaker(models, args.cache_dir, args.split, device, args.lam, args.m)
    out_dir = args.out_dir or default_out_dir(args.checkpoint, "cam")
    tile = args.tile or None
    part_names = [str(n) for n in maker.index.names[maker.index.subset(maker.split, args.part)]]
    pred_paths = [args.predictions or default_predictions(args.checkpoint)]
    if args.compare:
        pred_paths.append(args.compare_predictions or default_predictions(args.compare))
    preds = [read_predictions(p) if Path(p).is_file() else None for p in pred_paths]
    written: list[Path] = []
    if args.videos:
        videos = [maker.find(v) for v in args.videos]
        return cam_figure(maker, videos, preds, f"{len(videos)} chosen videos", out_dir / "cam_videos.png",
                          args.target, tile, args.gif, args.max_frames, args.palette)
    if not args.compare:
        chosen = (pick_balanced(preds[0], part_names, args.num_videos, args.seed) if preds[0]
                  else pick(part_names, args.num_videos, args.seed))
        if not chosen:
            raise ToolError(f"{maker.index.dataset} split {maker.split} has no '{args.part}' videos")
        what = f"{len(chosen)} {args.part} videos" + (" (right and wrong, from predictions.csv)" if preds[0] else "")
        return cam_figure(maker, [maker.find(v) for v in chosen], preds, what, out_dir / f"cam_{args.part}.png",
                          args.target, tile, args.gif, args.max_frames, args.palette)
    for p, path in zip(preds, pred_paths):
        if p is None:
            raise ToolError(f"no predictions at {path}: --compare picks videos from both models' predictions.csv; "
                            f"run python train/evaluate.py --checkpoint <ckpt> first, or pass --predictions / "
                            f"--compare-predictions")
    keep = set(part_names)
    groups = compare_groups({k: v for k, v in preds[0].items() if k in keep}, {k: v for k, v in preds[1].items() if k in keep})
    total = len(set(preds[0]) & set(preds[1]) & keep)
    a, b = models[0].name, models[1].name
    titles = {"a-right_b-wrong": f"A ({a}) right, B ({b}) wrong", "a-wrong_b-right": f"A ({a}) wrong, B ({b}) right",
              "both-wrong": "both wrong"}
    for g, members in groups.items():
        chosen = pick(members, args.per_group, args.seed)
        print(f"[visualize] {titles[g]}: {len(members)} of {total} videos" + (f", showing {len(chosen)}" if chosen else ""))
        if not chosen:
            continue
        what = f"{titles[g]}: {len(members)} of {total} {args.part} videos, showing {len(chosen)}"
        written += cam_figure(maker, [maker.find(v) for v in chosen], preds, what, out_dir / f"cam_{g}.png",
                              args.target, tile, args.gif, args.max_frames, args.palette)
    return written


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    written = run_preview(args) if args.command == "preview" else run_cam(args)
    for p in written:
        print(f"[visualize] wrote {p}")
    return written


def console() -> None:
    """The ``mac-visualize`` console command (pyproject.toml): the same as ``python train/visualize.py``."""
    exit_with(main, "visualize.py")


if __name__ == "__main__":
    console()
