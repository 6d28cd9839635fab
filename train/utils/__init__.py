"""Training plumbing, one concern per module (as in timm's utils): distributed.py (processes,
devices, the autocast rule, collectives), checkpoint.py (atomic save, weights-only load, the
background saver), random.py (seeds and RNG state), log.py (run directory, metrics.jsonl,
TensorBoard), guards.py (the divergence guard), optim.py (optimisers). None of them knows about
MAC; the loop (train/loop.py) and the tools compose them."""
