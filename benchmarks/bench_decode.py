"""Decode throughput: bare ffmpeg vs probe + decode (two processes) vs one process per video.

    .venv/bin/python benchmarks/bench_decode.py [--videos 8 --frames 175 --repeats 5]

Generates 320x240 XVID AVIs (UCF101's format and typical length, ~7 s at 25 fps) in a temporary
folder, then times, interleaved in the same run, ``repeats`` rounds of each (best round reported,
and the median):

- bare:  ``ffmpeg -nostdin -v error -i X -f rawvideo -pix_fmt rgb24 -s 171x128 -y /dev/null``
- old:   ``probe(X)`` then ``iter_frames(X, info=info)``: two ffmpeg processes per video
- new:   ``open_video(X)``: one ffmpeg process, which also describes the video (``.info.fps``)
  (both with the default ``CHUNK_FRAMES`` and no consumer work)
- probe: ``probe(X)`` alone (what "new" saves)

then, with a consumer that does the cache builder's per-chunk work (JPEG-encode every frame and
decode it back, ``preprocess.cache.encode_video`` without mask sets), ``open_video`` with
``--chunks`` frames per chunk (default 16 and 64): whether smaller chunks overlap ffmpeg's
decoding with the consumer better (the pipe holds 1 MiB, ~16 frames of 171x128). The same with a
consumer that sleeps ``--sleep-ms`` per frame instead (default 0.4, about ffmpeg's decode time
per frame): it uses no CPU, so it isolates the overlap from CPU contention on a busy machine;
perfect overlap would make those rows as fast as "new" alone.

``bare_ffmpeg_decode_seconds(paths, size, binary)`` is importable so that other benchmarks can
compare against the same baseline.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):   # run as `python benchmarks/bench_decode.py`, installed or not: the checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.flags import Flags, flag, parse
from preprocess.decode import (CHUNK_FRAMES, ffmpeg_binary, ffmpeg_version, iter_frames,
                               open_video, output_size, probe)


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


def probe_decode_seconds(paths, short_side: int = 128, binary: str | None = None,
                         chunk_frames: int = CHUNK_FRAMES, consume=None) -> tuple[float, int]:
    """(wall seconds, frames): ``probe`` + ``iter_frames(info=...)``, two processes a video."""
    n = 0
    t = time.perf_counter()
    for p in paths:
        info = probe(p, binary=binary)
        for chunk in iter_frames(p, short_side, chunk_frames=chunk_frames, binary=binary,
                                 info=info):
            n += len(chunk)
            if consume:
                consume(chunk)
        assert info.fps
    return time.perf_counter() - t, n


def open_video_seconds(paths, short_side: int = 128, binary: str | None = None,
                       chunk_frames: int = CHUNK_FRAMES, consume=None) -> tuple[float, int]:
    """(wall seconds, frames): ``open_video``, one process a video."""
    n = 0
    t = time.perf_counter()
    for p in paths:
        video = open_video(p, short_side, chunk_frames=chunk_frames, binary=binary)
        for chunk in video:
            n += len(chunk)
            if consume:
                consume(chunk)
        assert video.info.fps
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


def jpeg_consumer():
    """The cache builder's per-chunk work without mask sets: JPEG encode + decode back."""
    from preprocess.cache import DecodeParams, encode_video

    params = DecodeParams()
    return lambda chunk: encode_video(chunk, params, {})


@dataclass
class DecodeBenchFlags(Flags):
    """The flags of bench_decode.py."""

    config_file = False
    videos: int = flag(8, "generated videos", lo=1)
    frames: int = flag(175, "frames per generated video", lo=1)
    repeats: int = flag(5, "interleaved rounds (the best and the median are reported)", lo=1)
    short_side: int = flag(128, "decoded short side", lo=16, hi=4096)
    chunks: list = flag([16, 64], "chunk sizes timed with the JPEG consumer (none: skip that part)", lo=1,
                        empty_ok=True)
    sleep_ms: float = flag(0.4, "per-frame sleep of the CPU-free consumer (0: skip those rows)", lo=0)
    dir: Path = flag(None, "benchmark the *.avi files under DIR (recursively, 320x240 assumed) instead of generated "
                           "ones, e.g. data/demo/UCF-101", type=Path, metavar="DIR")


def parse_args(argv=None) -> DecodeBenchFlags:
    return parse(DecodeBenchFlags, argv, description=__doc__.split("\n\n")[0], prog="bench_decode.py")


def main(argv=None) -> None:
    args = parse_args(argv)

    binary = ffmpeg_binary()
    size = output_size(320, 240, args.short_side)
    ss = args.short_side
    with tempfile.TemporaryDirectory() as d:
        if args.dir:
            paths = sorted(args.dir.rglob("*.avi"))
            total = sum(len(c) for p in paths for c in open_video(p, ss))
            what = f"{len(paths)} videos under {args.dir}, {total} frames"
        else:
            paths = make_videos(Path(d), args.videos, args.frames, binary)
            total = args.videos * args.frames
            what = f"{args.videos} videos x {args.frames} frames"
        mb = sum(p.stat().st_size for p in paths) / 1e6
        kbps = mb * 8e3 / (total / 25)
        print(f"ffmpeg {ffmpeg_version(binary)} ({binary})")
        print(f"{what}, 320x240 XVID, {kbps:.0f} kb/s; output {size[0]}x{size[1]} rgb24; "
              f"{args.repeats} interleaved rounds, best (median)")
        consume = jpeg_consumer() if args.chunks else None
        sleeper = lambda chunk: time.sleep(len(chunk) * args.sleep_ms / 1e3)  # noqa: E731
        times: dict[str, list[float]] = {}

        def timed(name, fn):
            out = fn()
            s, n = out if isinstance(out, tuple) else (out, total)
            assert n == total, (name, n, total)
            times.setdefault(name, []).append(s)

        for _ in range(args.repeats):
            timed("bare ffmpeg -> /dev/null",
                  lambda: bare_ffmpeg_decode_seconds(paths, size, binary))
            timed("old: probe + iter_frames", lambda: probe_decode_seconds(paths, ss, binary))
            timed("new: open_video (1 proc)", lambda: open_video_seconds(paths, ss, binary))
            timed("  probe alone", lambda: probe_seconds(paths, binary))
            for c in args.chunks:
                timed(f"jpeg consumer, old, chunk {c:3d}",
                      lambda c=c: probe_decode_seconds(paths, ss, binary, c, consume))
                timed(f"jpeg consumer, new, chunk {c:3d}",
                      lambda c=c: open_video_seconds(paths, ss, binary, c, consume))
                if args.sleep_ms > 0:
                    timed(f"sleep consumer, new, chunk {c:3d}",
                          lambda c=c: open_video_seconds(paths, ss, binary, c, sleeper))
        bare = min(times["bare ffmpeg -> /dev/null"])
        if args.chunks and args.sleep_ms > 0:
            print(f"(sleep consumer: {args.sleep_ms:g} ms per frame = "
                  f"{total * args.sleep_ms / 1e3:.3f} s of sleeping in all)")
        for name, ts in times.items():
            b, med = min(ts), statistics.median(ts)
            line = (f"{name:33s}: {total / b:7.0f} frames/s  {b / len(paths) * 1e3:6.1f} ms/video"
                    f"  ({b:.3f} s; median {med:.3f} s)")
            if not name.startswith("  probe") and not name.startswith("bare"):
                line += f"  {bare / b:.2f}x bare"
            print(line)


if __name__ == "__main__":
    main()
