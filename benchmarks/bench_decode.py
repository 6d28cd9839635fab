"""Decode throughput: ``iter_frames`` against a bare ffmpeg run, same binary/size/scaler.

    .venv/bin/python benchmarks/bench_decode.py [--videos 8 --frames 175 --repeats 3]

Generates 320x240 XVID AVIs (UCF101's format and typical length, ~7 s at 25 fps) in a temporary
folder, then times, interleaved, ``repeats`` times each (the best run is reported):

- bare:   ``ffmpeg -nostdin -v error -i X -f rawvideo -pix_fmt rgb24 -s 171x128 -y /dev/null``
- probe:  ``probe(X)`` alone (the ``ffmpeg -i X`` call ``iter_frames`` makes first)
- iter_frames: probe + decode streamed into numpy chunks of 64 frames.

``bare_ffmpeg_decode_seconds(paths, size, binary)`` is importable so that other benchmarks can
compare against the same baseline.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from preprocess.decode import ffmpeg_binary, ffmpeg_version, iter_frames, output_size, probe


def bare_ffmpeg_decode_seconds(paths, size: tuple[int, int], binary: str | None = None) -> float:
    """Wall seconds for a bare ``ffmpeg -i X -f rawvideo -pix_fmt rgb24 -s WxH -y /dev/null``
    over ``paths``, one process per file, sequentially."""
    binary = binary or ffmpeg_binary()
    w, h = size
    t = time.perf_counter()
    for p in paths:
        subprocess.run([binary, "-nostdin", "-v", "error", "-i", str(p), "-f", "rawvideo",
                        "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-y", "/dev/null"],
                       check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t


def iter_frames_decode_seconds(paths, short_side: int = 128, binary: str | None = None,
                               chunk_frames: int = 64) -> tuple[float, int]:
    """(wall seconds, frames) for decoding ``paths`` with ``iter_frames`` (probe included)."""
    n = 0
    t = time.perf_counter()
    for p in paths:
        for chunk in iter_frames(p, short_side, chunk_frames=chunk_frames, binary=binary):
            n += len(chunk)
    return time.perf_counter() - t, n


def probe_seconds(paths, binary: str | None = None) -> float:
    t = time.perf_counter()
    for p in paths:
        probe(p, binary=binary)
    return time.perf_counter() - t


def make_videos(folder: Path, n: int, frames: int, binary: str) -> list[Path]:
    """320x240 25 fps XVID AVIs with moving content, ~0.75 Mb/s (UCF101 averages ~0.5)."""
    out = []
    for i in range(n):
        p = folder / f"v_Bench_g{i + 1:02d}_c01.avi"
        src = (f"testsrc2=size=320x240:rate=25,hue=h={37 * i},noise=alls=3:allf=t,"
               f"trim=end_frame={frames}")
        subprocess.run([binary, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src,
                        "-c:v", "libxvid", "-q:v", "6", str(p)], check=True)
        out.append(p)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=175)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--dir", type=Path, default=None,
                    help="benchmark the *.avi files under DIR (recursively, 320x240 assumed) "
                         "instead of generated ones, e.g. data/demo/UCF-101")
    args = ap.parse_args(argv)

    binary = ffmpeg_binary()
    size = output_size(320, 240, args.short_side)
    with tempfile.TemporaryDirectory() as d:
        if args.dir:
            paths = sorted(args.dir.rglob("*.avi"))
            total = sum(len(c) for p in paths for c in iter_frames(p, args.short_side))
            what = f"{len(paths)} videos under {args.dir}, {total} frames"
        else:
            paths = make_videos(Path(d), args.videos, args.frames, binary)
            total = args.videos * args.frames
            what = f"{args.videos} videos x {args.frames} frames"
        mb = sum(p.stat().st_size for p in paths) / 1e6
        kbps = mb * 8e3 / (total / 25)
        print(f"ffmpeg {ffmpeg_version(binary)} ({binary})")
        print(f"{what}, 320x240 XVID, {kbps:.0f} kb/s; output {size[0]}x{size[1]} rgb24; "
              f"best of {args.repeats}")
        bare, ours, probes = [], [], []
        for _ in range(args.repeats):
            bare.append(bare_ffmpeg_decode_seconds(paths, size, binary))
            s, n = iter_frames_decode_seconds(paths, args.short_side, binary)
            assert n == total, (n, total)
            ours.append(s)
            probes.append(probe_seconds(paths, binary))
        b, o, pr = min(bare), min(ours), min(probes)
        print(f"bare ffmpeg -> /dev/null : {total / b:8.0f} frames/s  ({b:.3f} s)")
        print(f"iter_frames (with probe) : {total / o:8.0f} frames/s  ({o:.3f} s)  "
              f"= {b / o:.2f}x bare")
        print(f"  of which probe         : {pr / len(paths) * 1e3:8.1f} ms per video "
              f"({pr:.3f} s)")


if __name__ == "__main__":
    main()
