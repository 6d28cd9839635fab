"""A single frame of the demo tells nothing about its class, and the check can fail.

The demo's classes are motions (preprocess/make_demo.py): the scene sampler never sees the
class, only the trajectories do (their per-frame statistics are not identical across classes:
docs/demo.md says where they differ, and this test measures whether a model can use that). This
checks it on the default preset's own data (``make_demo`` with its defaults: 324 videos, split 1 tests 108 of them
on unseen groups) with a small nonlinear single-frame model: a 2D CNN (four 3x3 conv layers with
batch norm and ReLU, two coordinate channels so that it can use absolute position, global average
and max pooling, a linear head) trained on random single frames of split 1's training videos
(decoded at a 32-pixel short side, 43x32), tested on split 1's test videos (a video's prediction:
the mean of its frames' class probabilities). It must stay at chance (<= 1.5x). The positive
control runs the same CNN and training on a copy of the data in which four classes carry an
injected per-frame cue of the kinds a single frame could give away (the generator's test-only
``_cue`` hook): one class's moving objects drawn smaller, one's larger, one's confined to the top
third of the picture, one's to the bottom third; it must find them (>= 2x chance; at most 5x is
possible with four of six classes cued, and the moving objects share their looks with static
distractors of the normal size anywhere, which hides part of every cue). Nothing is hard-coded: both numbers come from
training. About 80 s on two cores (about 130 s of CPU, torch on one thread), most of it rendering
and decoding the videos (make_demo renders in one process per core, and so does the control).
"""

from __future__ import annotations

import concurrent.futures
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from preprocess.decode import decode_all, ffmpeg_binary
from preprocess.make_demo import _render_and_encode, make_demo

pytestmark = pytest.mark.slow

SHORT_SIDE = 32        # decoded frames: 43x32
FRAMES = 8             # random frames per video (training and test)
EPOCHS = 10
CHANCE = 1 / 6
# the positive control's injected per-frame cues (make_demo._inject_cue): smaller, larger, top and
# bottom third of the picture
CUES = {"Circle": ("scale", 0.4), "MoveDown": ("scale", 1.9), "MoveSideways": ("band", 0.0, 1 / 3),
        "MoveUp": ("band", 2 / 3, 1.0)}


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The default preset's dataset (make_demo's defaults, seed 0), generated afresh."""
    return make_demo(tmp_path_factory.mktemp("cues") / "demo", seed=0)


def _frames(path: Path, rel: str) -> torch.Tensor:
    """FRAMES random frames of one video, float [FRAMES, 3, 32, 43]; which frames depends only on
    the video's name, so the cued copy's videos are sampled at the same frames."""
    x = decode_all(path, short_side=SHORT_SIDE)
    idx = np.sort(np.random.default_rng([0, zlib.crc32(rel.encode())]).choice(len(x), FRAMES, replace=False))
    return torch.from_numpy(x[idx]).permute(0, 3, 1, 2).float() / 255


def _split1(root: Path) -> list[tuple[str, int, bool]]:
    """(video, label 0-based, in split 1's test set) for every video of split 1's lists."""
    lists = root / "ucfTrainTestlist"
    label = {c: int(i) - 1 for i, c in (l.split(" ") for l in (lists / "classInd.txt").read_text().splitlines())}
    train = [l.split(" ")[0] for l in (lists / "trainlist01.txt").read_text().splitlines() if l]
    test = [l for l in (lists / "testlist01.txt").read_text().splitlines() if l]
    return [(rel, label[rel.split("/")[0]], rel in set(test)) for rel in train + test]


def _decode(root: Path, rels) -> dict[str, torch.Tensor]:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:   # the work is in the ffmpeg processes
        return dict(zip(rels, pool.map(lambda r: _frames(root / "UCF-101" / r, r), rels)))


@pytest.fixture(scope="module")
def data(demo):
    videos = _split1(demo)
    assert sum(t for *_, t in videos) >= 100 and len({c for _, c, _ in videos}) == 6
    return videos, _decode(demo, [rel for rel, *_ in videos])


class _FrameCNN(nn.Module):
    def __init__(self, n_classes: int = 6, w: int = 16):
        super().__init__()

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*block(5, w), *block(w, 2 * w), *block(2 * w, 4 * w),
                                  nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8 * w, n_classes)

    def forward(self, x):
        n, _, h, w = x.shape
        yy = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(n, 1, h, w)
        xx = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
        f = self.body(torch.cat([x, xx, yy], 1))
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))


def _single_frame_accuracy(videos, frames) -> tuple[float, int, float]:
    """Train the CNN on the training videos' frames; (video accuracy on the test videos, number of
    test videos, frame accuracy on the training frames)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr = torch.cat([frames[rel] for rel, _, test in videos if not test])
    ytr = torch.cat([torch.full((FRAMES,), c) for _, c, test in videos if not test])
    mu, sd = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True)
    xtr = (xtr - mu) / sd
    net = _FrameCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    batch = 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=EPOCHS * -(-len(xtr) // batch))
    net.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch):
            b = perm[i:i + batch]
            loss = F.cross_entropy(net(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        train_acc = float((net(xtr).argmax(1) == ytr).float().mean())
        hits = [int(net((frames[rel] - mu) / sd).softmax(1).mean(0).argmax()) == c for rel, c, test in videos if test]
    return sum(hits) / len(hits), len(hits), train_acc


def test_single_frame_cnn_stays_at_chance(data, one_thread):
    """Trained on single frames, the CNN fits its training frames (it memorises their scenes) but
    does no better than guessing on the test split's unseen videos."""
    videos, frames = data
    acc, n, train_acc = _single_frame_accuracy(videos, frames)
    assert train_acc > 0.5, train_acc        # it did learn something (the training scenes)
    assert acc <= 1.5 * CHANCE, (acc, n)


def test_single_frame_cnn_finds_an_injected_cue(demo, data, one_thread, tmp_path):
    """Positive control: a copy of the data in which the cued classes' videos are rendered again
    with a per-frame cue (the other videos would be byte-identical: their frames are reused), the
    same CNN and training find it."""
    videos, frames = data
    meta = json.loads((demo / "demo.json").read_text())
    seed, binary = meta["params"]["seed"], ffmpeg_binary()
    jobs = []
    for rel, n in meta["videos"].items():
        c = rel.split("/")[0]
        if c in CUES:
            (tmp_path / "UCF-101" / c).mkdir(parents=True, exist_ok=True)
            g, j = int(rel[-10:-8]), int(rel[-6:-4])
            jobs.append((c, g, j, n, seed, tmp_path / "UCF-101" / rel, binary, CUES[c]))
    with concurrent.futures.ProcessPoolExecutor(2) as pool:   # as make_demo renders: processes
        list(pool.map(_render_and_encode, *zip(*jobs)))
    cued = {**frames, **_decode(tmp_path, [rel for rel, *_ in videos if rel.split("/")[0] in CUES])}
    assert not torch.equal(cued["Circle/v_Circle_g01_c01.avi"], frames["Circle/v_Circle_g01_c01.avi"])
    acc, n, _ = _single_frame_accuracy(videos, cued)
    assert acc >= 2 * CHANCE, (acc, n)
