"""torch Datasets over the frame/mask cache (preprocess.cache) and the DataLoader helper.

Design (fastMRI SliceDataset style):
- The index (`CacheIndex`, numpy arrays) is built once in the main process; each dataset keeps
  only its video subset as an int64 array. Datasets hold no open file: the HDF5 shards are opened
  lazily by a `ClipReader` on first read in each process (a reader inherited through fork is
  replaced, and pickling - spawn - drops it), so num_workers 0..N work under fork and spawn.
- Every random draw of item `i` comes from its own generator seeded by (seed, epoch, i, stream):
  a sample is a pure function of (seed, epoch, i), identical for any num_workers, fork or spawn,
  and after resuming. The epoch lives in a shared-memory tensor, so `set_epoch` reaches
  persistent workers too (call it before iterating the loader for that epoch; `set_loader_epoch`
  does it together with the sampler's epoch).
- Workers do the integer work (JPEG decode, temporal sampling, crop/resize/flip on uint8) and
  return uint8 tensors plus the drawn parameters; the float work runs batched on the device
  (`train.mac.MACTransform`, `clip_transform`, `eval_transform`).

Collated batch keys
-------------------
PretrainClips (MACConfig cfg, S = cfg.crop, n = cfg.n):
    frames uint8 [B,T,S,S,3], masks uint8 [B,T,S,S], alpha float32 [B,n] (blend factors),
    alpha_idx int64 [B,n], label int64 [B] (alpha-tuple class; -1 for loss "mse-n"),
    alpha_target float32 [B,n], jitter float32 [B,5], spatial int64 [B,5], clip int64 [B,2]
    (start, stride), video int64 [B]; with cfg.key_view (MAC-SC) also key_frames uint8 [B,T,S,S,3],
    key_jitter float32 [B,5], key_spatial int64 [B,5].
LabelledClips (ClipConfig cfg): frames uint8 [B,T,S,S,3], jitter float32 [B,5], label int64 [B]
    (action class), video, clip, spatial.
EvalClips: frames uint8 [B,N,T,S,S,3], label int64 [B], video int64 [B], starts int64 [B,N].
"""
from __future__ import annotations

import os
import random
import re
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from train.mac import (
    ClipConfig, MACConfig, apply_spatial, centre_spatial, clip_masks, draw_alphas, draw_clip, draw_jitter,
    draw_spatial, max_clip_start, sample_clip_indices, uniform_clip_starts, vary_masks,
)

__all__ = ["PretrainClips", "LabelledClips", "EvalClips", "EpochSampler", "label_subset", "make_loader",
           "set_loader_epoch", "worker_init_fn", "item_rng", "video_groups", "validation_split"]

# Distinct random streams per dataset kind, so that e.g. a finetuning clip of video i does not
# reuse the draws of the pretraining clip of the same item.
_STREAM_PRETRAIN, _STREAM_LABELLED, _STREAM_EVAL = 1, 2, 3


def label_subset(videos: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A seeded, class-balanced subset of `videos` (indices into `labels`) for label-efficient
    finetuning: from each class, round(fraction * its count) videos (at least one), drawn
    without replacement by a generator of (seed, "labels"); the subset of a smaller fraction is
    not nested in a larger one's. Returned in the input's order."""
    videos = np.asarray(videos, dtype=np.int64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x1abe1])))
    keep = []
    for c in np.unique(labels[videos]):
        members = videos[labels[videos] == c]
        k = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=k, replace=False))
    chosen = set(np.concatenate(keep).tolist()) if keep else set()
    return np.array([v for v in videos if v in chosen], dtype=np.int64)


_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)


def video_groups(names) -> np.ndarray:
    """The group of each video, for group-disjoint splits: UCF101's (and the demo's) ``_gNN_cNN``
    (the clips of one group come from one long recording: same people, same scene), prefixed by the
    class folder so that groups of different classes never merge; a name without one (HMDB51,
    Kinetics, folders) is its own group."""
    out = []
    for name in names:
        name = str(name)
        m = _GROUP.search(name)
        out.append(f"{name.rsplit('/', 1)[0] if '/' in name else ''}/g{int(m.group(1))}" if m else name)
    return np.array(out, dtype=object)


def validation_split(index, split: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) video indices: the training part of ``split`` with a validation part carved out
    of it, for every choice a run makes (best epoch, learning rates, design), so the test part is
    read once, at the end.

    Group-disjoint and class-stratified: from each class, ``max(1, round(fraction * G))`` of its G
    training groups (``video_groups``), drawn by a generator of (seed, "val"), and every video of a
    drawn group is validation. The carve depends on the split's lists, ``fraction`` and ``seed``
    only (not on a training seed): runs with different training seeds, MAC and its baselines, share
    one validation split. A class with a single training group keeps it for training."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    train = np.asarray(index.subset(split, "train"), dtype=np.int64)
    groups = video_groups(index.names[train])
    labels = np.asarray(index.labels)[train]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x7a1])))
    held = np.zeros(len(train), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        uniq = sorted(set(groups[members].tolist()))
        if len(uniq) < 2:
            continue
        k = min(len(uniq) - 1, max(1, int(round(fraction * len(uniq)))))
        chosen = set(rng.choice(np.array(uniq, dtype=object), size=k, replace=False).tolist())
        held[members] = [g in chosen for g in groups[members]]
    return train[~held], train[held]


def item_rng(seed: int, epoch: int, idx: int, stream: int = 0) -> np.random.Generator:
    """The generator of item `idx` in `epoch`: a pure function of its arguments."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), int(idx), int(stream)])))


def _default_reader_factory(index):
    from preprocess.cache import ClipReader

    return ClipReader(index)


class _CacheClips(Dataset):
    """Shared plumbing: video subset, lazy per-process reader, shared epoch, per-item RNG."""

    _stream = 0

    def __init__(self, index, split: int, part: str, seed: int = 0,
                 reader_factory: Callable[[Any], Any] | None = None):
        self.index = index
        self.split, self.part = int(split), str(part)
        self.videos = np.asarray(index.subset(self.split, self.part), dtype=np.int64)
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._reader_factory = reader_factory
        self._reader = None
        self._reader_pid: int | None = None

    def __len__(self) -> int:
        return len(self.videos)

    # epoch (shared with worker processes, persistent ones included)
    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    # reader: one per process, opened lazily
    @property
    def reader(self):
        if self._reader is None or self._reader_pid != os.getpid():
            factory = self._reader_factory or _default_reader_factory
            self._reader = factory(self.index)   # an inherited (forked) reader is dropped, not reused
            self._reader_pid = os.getpid()
        return self._reader

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_reader_pid"] = None
        return state

    def rng(self, i: int) -> np.random.Generator:
        return item_rng(self.seed, self.epoch, i, self._stream)

    def _check_item(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self.videos):
            raise IndexError(f"item {i} out of range for {len(self.videos)} videos")
        return i

    def _read(self, video: int, indices: np.ndarray) -> np.ndarray:
        """Frames at `indices`, each distinct frame read and decoded once."""
        uniq, inv = np.unique(indices, return_inverse=True)
        fr = self.reader.frames(video, uniq)
        if len(uniq) != len(indices) or not np.array_equal(uniq, indices):
            fr = fr[inv]
        return fr

    def _hw(self, video: int) -> tuple[int, int]:
        return int(self.index.heights[video]), int(self.index.widths[video])


class PretrainClips(_CacheClips):
    """MAC pretraining clips: per item one clip of a video of `index.subset(split, part)`,
    with its masks, the drawn alpha tuple and colour jitter, and (MAC-SC) a key view.

    Masks (cfg.mask_source): "clip" runs Algorithm 1 on the augmented frames
    (`preprocess.masks.foreground_masks`, the reference exactly; lambda and m from
    ``index.masks``, no mask set needed); "cache" reads the clip's thresholded differences from
    the mask set of its stride (the index must be opened with every stride of cfg.strides) and
    makes the masks over the crop (`train.mac.clip_masks`).

    `mask_set` NAME (a named set imported by preprocess/import_masks.py; the index must be opened
    with open_cache(..., mask_set=NAME)) replaces both: the set's final masks are read at the
    clip's frame indices and cropped, resized and flipped together with the frames
    (`train.mac.apply_spatial`), with no stretch, dilation or first-mask rule (cfg.mask_source,
    mask_mode and dilate are not used)."""

    _stream = _STREAM_PRETRAIN

    def __init__(self, index, split: int, part: str, cfg: MACConfig,
                 reader_factory: Callable[[Any], Any] | None = None, mask_set: str = ""):
        self.mask_set = str(mask_set or "")
        if self.mask_set and getattr(index, "mask_set_name", "") != self.mask_set:
            raise ValueError(f"mask_set {self.mask_set!r} needs the cache opened with it: "
                             f"open_cache(..., mask_set={self.mask_set!r}) (opened with "
                             f"{getattr(index, 'mask_set_name', '') or 'none'})")
        if getattr(index, "masks", None) is None:
            raise ValueError("PretrainClips needs the mask parameters: open the cache with "
                             "open_cache(..., masks=MaskParams(lam, m))")
        if cfg.mask_source == "cache" and not self.mask_set:
            missing = sorted(set(cfg.strides) - set(getattr(index, "strides", ())))
            if missing:
                raise ValueError(f"mask_source 'cache' needs the mask sets of strides {missing}: open the cache "
                                 f"with open_cache(..., strides={tuple(cfg.strides)}) after extracting them")
        super().__init__(index, split, part, cfg.seed, reader_factory)
        self.cfg = cfg

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = self._check_item(i)
        cfg = self.cfg
        rng = self.rng(i)
        v = int(self.videos[i])
        n = int(self.index.n_frames[v])
        h, w = self._hw(v)
        # Draw everything first, in a fixed order (the data never influences the draws).
        start, stride = draw_clip(rng, n, cfg.frames, cfg.strides)
        alpha_idx, alpha, label, target = draw_alphas(rng, cfg.k, cfg.n, cfg.loss)
        sq = draw_spatial(rng, h, w, cfg.scales, cfg.crop, cfg.flip_p)
        jq = draw_jitter(rng, cfg.colour)
        if cfg.key_view:
            sk = draw_spatial(rng, h, w, cfg.scales, cfg.crop, cfg.flip_p)
            jk = draw_jitter(rng, cfg.key_jitter)

        idx = sample_clip_indices(n, cfg.frames, stride, start)
        frames = self._read(v, idx)
        if self.mask_set:       # imported final masks: the frames' own crop, resize and flip
            qf, qm = apply_spatial(frames, self.reader.named_masks(v, idx), sq)
        else:
            qf, _ = apply_spatial(frames, None, sq)
            qm = self._masks(v, idx, frames, qf, sq)
        qm = vary_masks(qm, cfg.mask_variant)       # a control changes the masks, never the draws
        item = {
            "frames": torch.from_numpy(qf), "masks": torch.from_numpy(qm),
            "alpha": torch.from_numpy(alpha), "alpha_idx": torch.from_numpy(alpha_idx),
            "label": torch.tensor(label, dtype=torch.int64),
            "alpha_target": torch.from_numpy(target), "jitter": torch.from_numpy(jq),
            "spatial": torch.from_numpy(sq.as_array()),
            "clip": torch.tensor([start, stride], dtype=torch.int64),
            "video": torch.tensor(v, dtype=torch.int64),
        }
        if cfg.key_view:
            kf, _ = apply_spatial(frames, None, sk)
            item.update({"key_frames": torch.from_numpy(kf), "key_jitter": torch.from_numpy(jk),
                         "key_spatial": torch.from_numpy(sk.as_array())})
        return item

    def _masks(self, video: int, idx: np.ndarray, frames: np.ndarray, augmented: np.ndarray,
               sp) -> np.ndarray:
        """uint8 [T, S, S] masks of the augmented clip (see the class docstring)."""
        cfg = self.cfg
        if cfg.mask_source == "clip":
            from preprocess.masks import foreground_masks

            mp = self.index.masks
            return foreground_masks(augmented, mp.lam, mp.m, cfg.mask_mode, cfg.dilate)
        diffs = self.reader.clip_diffs(video, idx, frames)
        return clip_masks(diffs, sp, cfg.mask_mode, cfg.dilate)


class LabelledClips(_CacheClips):
    """Finetuning clips: one random stride-`cfg.stride` clip per video and epoch, scale/flip/crop
    and (drawn here, applied on the device) light colour jitter; frames only."""

    _stream = _STREAM_LABELLED

    def __init__(self, index, split: int, part: str, cfg: ClipConfig = ClipConfig(),
                 reader_factory: Callable[[Any], Any] | None = None):
        super().__init__(index, split, part, cfg.seed, reader_factory)
        self.cfg = cfg

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = self._check_item(i)
        cfg = self.cfg
        rng = self.rng(i)
        v = int(self.videos[i])
        n = int(self.index.n_frames[v])
        h, w = self._hw(v)
        start = int(rng.integers(0, max_clip_start(n, cfg.frames, cfg.stride) + 1))
        sp = draw_spatial(rng, h, w, cfg.scales, cfg.crop, cfg.flip_p)
        jit = draw_jitter(rng, cfg.colour)
        frames = self._read(v, sample_clip_indices(n, cfg.frames, cfg.stride, start))
        fr, _ = apply_spatial(frames, None, sp)
        return {
            "frames": torch.from_numpy(fr), "jitter": torch.from_numpy(jit),
            "label": torch.tensor(int(self.index.labels[v]), dtype=torch.int64),
            "video": torch.tensor(v, dtype=torch.int64),
            "clip": torch.tensor([start, cfg.stride], dtype=torch.int64),
            "spatial": torch.from_numpy(sp.as_array()),
        }


class EvalClips(_CacheClips):
    """Test videos: per video `num_clips` uniformly spaced clips of `frames` frames at `stride`,
    short side `short_side`, centre crop `crop` (deterministic; no random draws)."""

    _stream = _STREAM_EVAL

    def __init__(self, index, split: int, part: str, num_clips: int = 10, frames: int = 16, stride: int = 2,
                 short_side: int = 128, crop: int = 112,
                 reader_factory: Callable[[Any], Any] | None = None):
        super().__init__(index, split, part, 0, reader_factory)
        self.num_clips, self.frames, self.stride = int(num_clips), int(frames), int(stride)
        self.short_side, self.crop = int(short_side), int(crop)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = self._check_item(i)
        v = int(self.videos[i])
        n = int(self.index.n_frames[v])
        h, w = self._hw(v)
        starts = uniform_clip_starts(n, self.frames, self.stride, self.num_clips)
        idx = np.concatenate([sample_clip_indices(n, self.frames, self.stride, s) for s in starts])
        frames = self._read(v, idx)                                       # [N*T,H,W,3]
        fr, _ = apply_spatial(frames, None, centre_spatial(h, w, self.short_side, self.crop))
        return {
            "frames": torch.from_numpy(fr).view(self.num_clips, self.frames, self.crop, self.crop, 3),
            "label": torch.tensor(int(self.index.labels[v]), dtype=torch.int64),
            "video": torch.tensor(v, dtype=torch.int64),
            "starts": torch.from_numpy(starts),
        }


# --------------------------------------------------------------------------------------------
# Loader


def worker_init_fn(worker_id: int) -> None:
    """Seed the global RNGs of a worker from its torch seed (the samples themselves use per-item
    generators and do not depend on this), keep each worker on one thread, and let a scheduler's
    stop signal reach the main process only (train/utils/preemption.py)."""
    from train.utils.preemption import ignore_in_workers

    ignore_in_workers(("SIGTERM", "SIGUSR1", "SIGUSR2"))   # the main process checkpoints, then ends them
    seed = torch.initial_seed()
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
    torch.set_num_threads(1)


class EpochSampler(DistributedSampler):
    """DistributedSampler (order a pure function of seed + epoch) whose epoch can start part-way
    through, for resuming mid-epoch: `set_epoch(epoch, start)` skips this replica's first `start`
    indices of that epoch only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = max(0, int(start))

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def make_loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool, distributed: bool = False,
                seed: int = 0, persistent_workers: bool = True, multiprocessing_context=None, *,
                drop_last: bool | None = None, pin_memory: bool | None = None,
                prefetch_factor: int | None = None, num_replicas: int | None = None,
                rank: int | None = None) -> DataLoader:
    """A DataLoader whose order is a pure function of (seed, epoch).

    Always uses an EpochSampler (a DistributedSampler; num_replicas=1, rank=0 when not
    distributed): its permutation is seeded by seed + epoch, so a resumed run sees the same order.
    Call `set_loader_epoch(loader, epoch[, start_batch])` before iterating each epoch. With distributed=True the
    replica count and rank come from torch.distributed unless given; the sampler pads the last
    round with repeated items (evaluation should deduplicate on the "video" key).
    drop_last defaults to `shuffle` (training batches of constant size).
    """
    if distributed:
        import torch.distributed as dist

        if num_replicas is None:
            num_replicas = dist.get_world_size()
        if rank is None:
            rank = dist.get_rank()
    else:
        num_replicas, rank = 1, 0
    sampler = EpochSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                           drop_last=False)
    workers = int(workers)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=persistent_workers, worker_init_fn=worker_init_fn,
                      multiprocessing_context=multiprocessing_context)
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        drop_last=shuffle if drop_last is None else drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=torch.Generator().manual_seed(int(seed)), **kwargs)


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Set the epoch of the loader's sampler and dataset (before iterating it). `start_batch`
    (make_loader's EpochSampler only) resumes part-way: this epoch then yields its batches
    start_batch, start_batch + 1, ... exactly as an uninterrupted run would have."""
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.set_epoch(epoch, start_batch * loader.batch_size)
    elif start_batch:
        raise ValueError("start_batch needs a loader built by make_loader (EpochSampler)")
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
