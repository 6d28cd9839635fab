"""Seeds and RNG state: derived seeds, seeding every generator, and RNG states that checkpoints
carry (every rank's) so a resumed run draws exactly what the uninterrupted one would.

Owns: ``derive_seed``, ``seed_everything``, ``rng_state`` / ``set_rng_state`` (tensors and plain
python values only, so checkpoints load with the weights-only unpickler) and their gathered forms.
Must not read or write files.
"""
from __future__ import annotations

import random
from typing import Mapping

import numpy as np
import torch
import torch.distributed as dist

from train.utils.distributed import Dist


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, ...) via numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)   # also seeds every CUDA device


def rng_state() -> dict:
    """Global RNG states as tensors and plain python values only, so that checkpoints load with
    ``torch.load(weights_only=True)`` (no numpy objects to unpickle)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": random.getstate(),
          "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Mapping) -> None:
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


def gather_rng_states(d: Dist) -> list[dict]:
    """Every rank's RNG state (rank-indexed); collective under DDP."""
    mine = rng_state()
    if not d.distributed:
        return [mine]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, mine)
    return out


def restore_rng_states(states: list[dict] | None, d: Dist) -> None:
    if states and len(states) == d.world_size:
        set_rng_state(states[d.rank])
    elif states:
        print(f"[resume] checkpoint has RNG states of {len(states)} ranks, this run has "
              f"{d.world_size}: RNG states not restored (per-epoch reseeding still applies)")

