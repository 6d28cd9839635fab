"""The flag groups several training tools share, declared once (core/flags.py composes them).

Owns: the frame-set, optimiser, system and run groups of pretrain.py / finetune.py, and the
evaluation-clip group of evaluate.py / retrieve.py / visualize.py. A tool's flag dataclass inherits
the groups it needs; where a tool's recipe needs another default (finetuning's weight decay, say)
it says so with ``core.flags.redefault``, so the spelling, help and range stay declared here.
Must not import torch: tools parse their flags before anything heavy is loaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.flags import Flags, flag

OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class FrameSetFlags(Flags):
    """The cached frame set (which dataset, and the decode parameters that key it)."""

    dataset: str = flag("ucf101", "dataset name in the cache")
    cache_dir: str = flag("data_cache", "cache root")
    short_side: int = flag(128, "frame set: cached short side", lo=16, hi=4096)
    jpeg_quality: int = flag(90, "frame set: JPEG quality", lo=1, hi=100)


@dataclass(frozen=True)
class OptimFlags(Flags):
    """Optimisation: epochs, batch, optimiser and learning-rate schedule."""

    epochs: int = flag(300, "epochs", lo=1)
    batch_size: int = flag(32, "clips per process and step", lo=1)
    optimizer: str = flag("sgd", "sgd (the paper's recipe) | adamw", choices=OPTIMIZERS)
    lr: float = flag(0.01, "learning rate", lo=0)
    momentum: float = flag(0.9, "SGD momentum", lo=0, hi=1, hi_open=True)
    weight_decay: float = flag(1e-4, "SGD weight decay", lo=0)
    milestones: tuple = flag((100, 200), "MultiStepLR epochs (none: a constant rate)", lo=1, empty_ok=True)
    lr_gamma: float = flag(0.1, "MultiStepLR factor", lo=0, hi=1, lo_open=True)
    clip_grad: float = flag(40.0, "gradient norm clip (0 = off)", lo=0, note='0 = off')


@dataclass(frozen=True)
class SystemFlags(Flags):
    """System: seed, workers, device and the CUDA switches."""

    seed: int = flag(0, "seed: data order, samples, init, dropout", lo=0)
    workers: int = flag(8, "DataLoader workers per process", lo=0)
    device: str = flag("auto", "auto | cuda | cpu", choices=DEVICES)
    bf16: bool = flag(True, "bf16 autocast (CUDA only)")
    channels_last: bool = flag(True, "channels_last_3d (CUDA only)")
    compile: bool = flag(False, "torch.compile the backbones")
    sync_bn: bool = flag(False, "SyncBN under DDP (CUDA)")
    deterministic: bool = flag(False, "deterministic CUDA kernels, no cuDNN autotuning (slower)")


@dataclass(frozen=True)
class RunFlags(Flags):
    """The run directory, resuming, logging and checkpoints."""

    run_dir: str = flag("", "default runs/<dataset>/<run-id>/<stage>")
    run_id: str = flag("", "the run id (default: derived from the settings or the --init checkpoint)")
    resume: bool = flag(False, "continue from <run-dir>/last.pt if it exists")
    log_every: int = flag(20, "steps between metrics.jsonl records", lo=1)
    tensorboard: bool = flag(False, "also log the metrics.jsonl scalars to TensorBoard (<run-dir>/tb; needs the "
                                    "tensorboard package)")
    save_every: int = flag(50, "epochs between kept epoch_XXXX.pt (last.pt: every epoch)", lo=0)
    save_every_min: float = flag(0.0, "also write last.pt mid-epoch every this many minutes (0 = at epoch ends only); "
                                      "a resumed run continues from the batch it reached", lo=0)
    steps_per_epoch: int = flag(0, "cap on steps per epoch (0 = full epoch; tests)", lo=0, note='0 = full epoch')
    max_steps: int = flag(0, "stop after this many steps in total (0 = no cap; smoke runs)", lo=0, note='0 = no cap')
    progress: bool = flag(True, "tqdm progress bar")
    stop_signals: tuple = flag(("SIGTERM", "SIGUSR1"), "signals that stop the run cleanly: finish the step, write a "
                               "mid-epoch last.pt, exit 143; --resume continues exactly (SLURM: --signal=USR1@90). "
                               "None: the signals' default action", choices=("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP"),
                               empty_ok=True)


@dataclass(frozen=True)
class ValidationFlags(Flags):
    """The validation split (train/data.py ``validation_split``): carved from the training groups
    of the split, group-disjoint and seeded, the same for every training seed and for pretraining
    and finetuning, so that every choice is made on it and the test split is read once."""

    val_fraction: float = flag(0.0, "hold out this fraction of each class's training groups as the validation "
                               "split (0 = none: finetuning validates on the test split, for monitoring only)",
                               lo=0, hi=1, hi_open=True)
    val_seed: int = flag(0, "seed of the validation carve (independent of --seed)", lo=0)


@dataclass
class ClipGeometryFlags(Flags):
    """Test-clip geometry (default: the checkpoint's config)."""

    frames: int = flag(None, "frames per clip (default: the checkpoint's config, else 16)", type=int, lo=1)
    stride: int = flag(None, "temporal stride (default: the checkpoint's config, else 2)", type=int, lo=1)
    crop: int = flag(None, "centre crop (default: the checkpoint's config, else 112)", type=int, lo=8)
    short_side: int = flag(None, "default 128 for crop 112 (scaled with the crop)", type=int, lo=8)

    def check(self) -> None:
        from core.errors import UsageError
        if self.crop is not None and self.short_side is not None and self.crop > self.short_side:
            raise UsageError("--crop", self.crop, f"must be <= --short-side ({self.short_side})")


@dataclass
class EvalClipFlags(ClipGeometryFlags):
    """Evaluation clips: how many per video, batching, device, cache and output."""

    num_clips: int = flag(10, "clips per video", lo=1)
    cache_dir: str = flag(None, "default: the checkpoint's, else data_cache")
    batch_size: int = flag(4, "videos per batch (each --num-clips clips)", lo=1)
    workers: int = flag(min(4, os.cpu_count() or 1), "DataLoader workers", lo=0)
    device: str = flag("auto", "auto | cuda | cpu", choices=DEVICES)
    limit: int = flag(None, "only the first N videos (smoke tests)", type=int, lo=1)
    out_dir: Path = flag(None, "where results are written (default: beside the checkpoint's stage directory)",
                         type=Path)
    trust_checkpoint: bool = flag(False, "allow full unpickling of the checkpoint(s) (can run code stored in the "
                                         "file; only for files you trust)")
