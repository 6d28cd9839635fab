"""Shared fixtures: small videos and datasets generated on the fly in the real layouts."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def ffmpeg_exe() -> str:
    from preprocess.decode import ffmpeg_binary

    return ffmpeg_binary()


def moving_square_video(n_frames: int, height: int = 120, width: int = 160, seed: int = 0,
                        direction: int = 1) -> np.ndarray:
    """A textured background with a bright square moving horizontally: uint8 [T,H,W,3]."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 90, size=(height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:height, :width]
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    for t in range(n_frames):
        f = bg.copy()
        x = (10 + direction * 4 * t) % (width - 24)
        f[40:64, x:x + 24] = (230, 200, 60)
        frames[t] = f
    return frames


def write_video(path: Path, frames: np.ndarray, ffmpeg: str, fps: int = 25) -> Path:
    """Encode frames as an MPEG-4 part 2 AVI, like UCF101's files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    cmd = [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps),
           "-i", "pipe:", "-c:v", "mpeg4", "-q:v", "3", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def make_ucf_layout(root: Path, ffmpeg: str, classes=("MoveLeft", "MoveRight"), groups=3, clips=1,
                    n_frames=20) -> Path:
    """A miniature UCF101 tree: UCF-101/<Class>/v_<Class>_gNN_cNN.avi and ucfTrainTestlist/."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    entries = []
    for ci, c in enumerate(classes):
        for g in range(1, groups + 1):
            for k in range(1, clips + 1):
                rel = f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi"
                frames = moving_square_video(n_frames, seed=ci * 100 + g * 10 + k, direction=1 if ci == 0 else -1)
                write_video(root / "UCF-101" / rel, frames, ffmpeg)
                entries.append((rel, ci, g))
    for split in (1, 2, 3):
        test_group = (split - 1) % groups + 1
        (lists / f"trainlist0{split}.txt").write_text(
            "".join(f"{rel} {ci + 1}\n" for rel, ci, g in entries if g != test_group))
        (lists / f"testlist0{split}.txt").write_text("".join(f"{rel}\n" for rel, ci, g in entries if g == test_group))
    return root


@pytest.fixture
def tiny_ucf(tmp_path, ffmpeg_exe) -> Path:
    return make_ucf_layout(tmp_path / "ucf", ffmpeg_exe)
