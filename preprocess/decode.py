"""Video decoding with ffmpeg (through ffmpeg-python), streamed in bounded-memory chunks.

One module on purpose, over the project's ~800-line aim: the ffmpeg commands, the parsing of
ffmpeg's stderr (the stream description and the levelled error lines) and the process plumbing
(stderr drain, watchdog, pipe sizing) share private regexes and per-process state; split apart,
each half would have to export the other's internals.

Public API
----------
- ``ffmpeg_binary()``: the ``ffmpeg`` on PATH if there is one, else imageio-ffmpeg's static
  binary. ffprobe is never needed: ``probe`` parses ``ffmpeg -hide_banner -i PATH``.
- ``ffmpeg_version(binary)``: the version string from ``ffmpeg -version``.
- ``DecodeError(path, reason)``: every failure to turn a file into frames; ``reason`` is a
  specific human sentence ("file is empty (0 bytes)", "damaged or truncated: ...", ...).
- ``probe(path)`` -> ``VideoInfo(width, height, fps, duration_s, rotation)``, display size
  (after the rotation that ffmpeg applies by default).
- ``output_size(width, height, short_side)``: short side to ``short_side``, aspect kept, long side
  rounded to nearest (320x240 -> 171x128).
- ``open_video(path, short_side, chunk_frames, timeout_s, binary, strict=)`` -> ``DecodedVideo``:
  iterate it for the chunks; ONE ffmpeg process decodes the video and describes it, and
  ``.info`` (``VideoInfo``: fps for the index, ...) and ``.size`` are set before the first chunk.
- ``iter_frames(path, ...)``: yields uint8 ``[t, H, W, 3]`` RGB chunks streamed from ffmpeg's
  stdout, so memory stays bounded (one chunk) however long the video is. Without ``info`` it is
  the single-process decode (``on_info(info, size)`` reports the description); with
  ``info=probe(path)`` the two-process form (probe, then decode that stream at that size).
- ``decode_all(path, ...)``: all frames in one array (tests, small videos).
- ``CHUNK_FRAMES`` (16): default frames per chunk, about what the 1 MiB stdout pipe buffers, so
  that ffmpeg decodes the next chunk while the caller works on this one.

Decoding commands (no shell, path passed as ``file:<absolute path>`` so that names with spaces,
non-ASCII characters, colons or a leading '-' are taken literally). Single process (the
default, ``open_command``)::

    ffmpeg -nostdin -hide_banner -nostats -loglevel +level+info -i file:PATH
           -f rawvideo -an -dn -fps_mode passthrough -pix_fmt rgb24 -sn
           -vf scale=S:S:force_original_aspect_ratio=increase pipe:

Two processes (``iter_frames(..., info=probe(PATH))``, ``decode_command``)::

    ffmpeg -nostdin -hide_banner -v error -i file:PATH -map 0:<video stream>
           -f rawvideo -fps_mode passthrough -pix_fmt rgb24 -s WxH pipe:

``-fps_mode passthrough`` passes every decoded frame through exactly once: a variable-frame-rate
file gets no duplicated or dropped frames (ffmpeg's default for rawvideo output is ``cfr``, which
duplicates frames to fill timestamp gaps). ``-s WxH`` uses ffmpeg's default scaler (bicubic), so
the pixels are identical to a bare ``ffmpeg -i X -f rawvideo -pix_fmt rgb24 -s WxH`` run on a
constant-frame-rate file. Display-rotation metadata is honoured (ffmpeg autorotates; ``probe``
swaps width and height for +-90 degrees so that the output size is computed on the display size).

``yuv=True`` asks ffmpeg for full-range planar YUV 4:2:0 instead of RGB (``-pix_fmt yuv420p``
with ``scale=...:out_range=full``, the same scaler and size): what a JPEG stores, so the cache
encodes it without a colour conversion, and ffmpeg skips its RGB conversion, measured at ~40 % of
a bare RGB decode at 171x128 (docs/benchmarks.md). Chunks are then uint8 ``[t, frame bytes]``,
each frame its Y plane (H x W) then U and V (ceil(H/2) x ceil(W/2)); ``yuv420_planes`` splits them.
Decoded as JPEG (BT.601, full range) the pixels are within ~1.5 grey levels of the RGB output.

The single-process form needs no size in advance: ``scale=S:S:force_original_aspect_ratio=
increase`` scales the (autorotated) display size so that the short side is S, long side rounded
to nearest, which is exactly ``output_size`` (checked bit-identical to ``-s WxH`` for 4:3,
portrait, 16:9, 1920x1080, odd sizes, 3x2 -> 2x1, anamorphic SAR and rotated inputs); without
``short_side`` there is no filter (native size). What it decoded is read from the same
process's log, each line tagged with its level: the ``Input #0`` dump gives the ``VideoInfo``
(parsed as ``probe`` does, for the stream of the "Stream mapping" line, i.e. ffmpeg's own stream
selection), and the ``Output #0`` video stream line gives the output size (ffmpeg prints it
before the first byte of video, and keeps an output's size once set, so a mid-stream resolution
change still yields one frame shape). Only error/fatal/panic lines count for the error policy:
exactly what ``-v error`` prints.

Error policy (``strict=True``, the default): a file is rejected with ``DecodeError`` when
- it is missing, not a regular file, empty or unreadable (checked before ffmpeg runs);
- it is an AVI whose RIFF header declares more bytes than the file has (a truncated AVI: ffmpeg
  decodes such a file WITHOUT any error when the cut falls on a chunk boundary, it just returns
  fewer frames, so the header is the only reliable evidence);
- ffmpeg cannot open it or finds no video stream;
- ffmpeg prints any error while decoding (error-level lines, what ``-v error`` prints: decoder/
  demuxer errors such as "ac-tex damaged", "File ended prematurely", "partial file");
- the stream ffmpeg picks is an attached picture (cover art), i.e. there is no video;
- ffmpeg exits non-zero, or fewer than 2 frames come out;
- the timeout passes.
With ``strict=False`` only the hard failures (cannot open, no video stream, non-zero exit,
< 2 frames, timeout) raise; decoder errors and the AVI size check are tolerated and whatever frames
ffmpeg produced are returned.

Because frames are streamed, errors detected at the end of the file (a truncated tail) are raised
after earlier chunks were already yielded: consumers must treat a ``DecodeError`` as invalidating
the whole video (e.g. write results to a temporary location and commit only after the generator is
exhausted). A video with fewer than 2 frames never yields anything: the first chunk is held back
until a second frame is known to exist.

Timeout: ``timeout_s`` bounds the time spent waiting for ffmpeg (start-up plus decoding). Time the
caller spends between chunks (while the generator is suspended) is not counted, so a slow consumer
never causes a timeout. Default: ``default_timeout(info) = 120 s + 2 s per second of video``
(600 s when the duration is unknown); in the single-process form, until ffmpeg has described the
input and output (opened the file and decoded a first frame) the budget is ``PROBE_TIMEOUT_S``
(30 s, what ``probe`` allows), then ``default_timeout(info)`` counted from the start. Real
decoding runs hundreds of times faster than real time, so only a hung ffmpeg (stalled network
mount, pathological file) reaches it. On timeout, early close of the generator, or any
exception, the ffmpeg process is killed and reaped (no zombies).
"""

from __future__ import annotations

import collections
import functools
import re
import shutil
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ffmpeg  # ffmpeg-python
import numpy as np

__all__ = [
    "DecodeError",
    "VideoInfo",
    "ffmpeg_binary",
    "ffmpeg_version",
    "probe",
    "output_size",
    "default_timeout",
    "check_file",
    "decode_command",
    "open_command",
    "scale_filter",
    "iter_frames",
    "DecodedVideo",
    "open_video",
    "CHUNK_FRAMES",
    "decode_all",
    "yuv420_frame_bytes",
    "yuv420_planes",
]

PROBE_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------
# binary


def ffmpeg_binary() -> str:
    """The system ``ffmpeg`` on PATH if present, else imageio-ffmpeg's bundled static binary."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=16)
def ffmpeg_version(binary: str | None = None) -> str:
    """The version string of ``binary`` (e.g. ``'n9.0.2-17-g2a571b6068-20260930'``)."""
    binary = binary or ffmpeg_binary()
    out = subprocess.run(
        [binary, "-hide_banner", "-version"], stdin=subprocess.DEVNULL,
        capture_output=True, timeout=PROBE_TIMEOUT_S,
    )
    text = out.stdout.decode("utf-8", "replace")
    m = re.search(r"ffmpeg version (\S+)", text)
    if not m:
        raise RuntimeError(f"{binary} does not look like ffmpeg: {text[:200]!r}")
    return m.group(1)


@functools.lru_cache(maxsize=16)
def _has_fps_mode(binary: str) -> bool:
    """``-fps_mode`` exists since ffmpeg 5.1; older builds only know ``-vsync``."""
    m = re.match(r"n?(\d+)\.(\d+)", ffmpeg_version(binary))
    if not m:  # git snapshots ("N-112233-g...") are new
        return True
    return (int(m.group(1)), int(m.group(2))) >= (5, 1)


# --------------------------------------------------------------------------------------------
# errors and file checks


class DecodeError(Exception):
    """A video could not be decoded; ``reason`` says why in words."""

    def __init__(self, path, reason: str):
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode {self.path!r}: {self.reason}"


def _ffmpeg_url(path: Path) -> str:
    # "file:" stops ffmpeg from reading "a:b.avi" as protocol "a"; the file protocol does no
    # percent-decoding, so the rest of the path is taken literally.
    return "file:" + str(path.absolute())


def check_file(path, *, check_container: bool = True) -> Path:
    """Cheap checks before running ffmpeg; raises DecodeError with a specific reason.

    Missing file, not a regular file, empty, unreadable, and (``check_container``) an AVI whose
    RIFF chunk sizes run past the end of the file (truncated).
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DecodeError(path, "no such file") from None
    except NotADirectoryError:
        raise DecodeError(path, "no such file (a parent of it is not a directory)") from None
    except PermissionError:
        raise DecodeError(path, "permission denied (cannot reach the file)") from None
    except OSError as e:
        raise DecodeError(path, f"cannot stat file: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a special file"
        raise DecodeError(path, f"not a regular file ({kind})")
    if st.st_size == 0:
        raise DecodeError(path, "file is empty (0 bytes)")
    try:
        with open(p, "rb") as f:
            head = f.read(12)
            if check_container and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                _check_avi_riff(path, f, st.st_size)
    except PermissionError:
        raise DecodeError(path, "permission denied") from None
    except OSError as e:
        raise DecodeError(path, f"cannot read file: {e.strerror or e}") from None
    return p


def _check_avi_riff(path, f, size: int) -> None:
    """Walk the top-level RIFF chunks (RIFF AVI, then OpenDML RIFF AVIX segments)."""
    offset = 0
    while offset + 8 <= size:
        f.seek(offset)
        head = f.read(12)
        if head[:4] != b"RIFF":
            return  # trailing data after the last RIFF segment: not our concern
        (seg,) = struct.unpack("<I", head[4:8])
        if seg in (0, 0xFFFFFFFF):
            return  # writer never patched the size (live capture): nothing to compare
        end = offset + 8 + seg
        if end > size:
            raise DecodeError(
                path,
                f"damaged or truncated: the file has {size} bytes but its AVI (RIFF) header "
                f"declares {end}",
            )
        offset = end + (seg & 1)


# --------------------------------------------------------------------------------------------
# probe


@dataclass(frozen=True)
class VideoInfo:
    """Display geometry of the video stream ffmpeg decodes (after autorotation)."""

    width: int
    height: int
    fps: float | None
    duration_s: float | None
    rotation: float = 0.0  # display rotation in degrees, counter-clockwise, as ffmpeg reports it
    stream_index: int = 0  # index of the video stream in the container (for -map 0:N)
    codec: str = ""

    @property
    def expected_frames(self) -> int | None:
        if self.fps and self.duration_s:
            return int(round(self.fps * self.duration_s))
        return None


_STREAM_RE = re.compile(r"^\s+Stream #0:(\d+)(?:\[[^\]]*\])?(?:\([^)]*\))?: (\w+): (.*)$")
_SIZE_RE = re.compile(r"(?:^|[\s,])([1-9]\d*)x([1-9]\d*)(?=[\s,\[]|$)")
_FPS_RE = re.compile(r"(\d+(?:\.\d+)?)(k?) (fps|tbr)\b")
_DURATION_RE = re.compile(r"^\s+Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_MATRIX_RE = re.compile(r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", re.I)
_ROTATE_TAG_RE = re.compile(r"^\s+rotate\s+: (-?\d+(?:\.\d+)?)\s*$")
_ADDR_RE = re.compile(r" @ 0x[0-9a-fA-F]+\]")


def _clean(line: str) -> str:
    """Drop pointer addresses from ffmpeg log lines ("[mpeg4 @ 0x55d1...]" -> "[mpeg4]")."""
    return _ADDR_RE.sub("]", line.strip())


def _classify_open_failure(path, text: str, rc: int | None) -> DecodeError:
    lines = [_clean(l) for l in text.splitlines() if l.strip()]
    low = text.lower()
    last = lines[-1] if lines else f"ffmpeg exited with code {rc}"
    if "no such file or directory" in low:
        return DecodeError(path, "no such file")
    if "permission denied" in low:
        return DecodeError(path, "permission denied")
    if "moov atom not found" in low:
        return DecodeError(path, "damaged or truncated: moov atom not found (MP4/MOV index missing)")
    if "invalid data found when processing input" in low:
        return DecodeError(
            path, "not a video: ffmpeg could not recognise the file (Invalid data found "
            "when processing input)")
    if "does not contain any stream" in low or "matches no streams" in low:
        return DecodeError(path, "not a video: ffmpeg found no video stream")
    return DecodeError(path, f"ffmpeg failed (exit code {rc}): {last}")


def _parse_probe(path, text: str, stream_index: int | None = None) -> VideoInfo:
    """VideoInfo from an ``Input #0`` dump. ``stream_index``: the stream ffmpeg mapped (from its
    "Stream mapping" lines); None: the one ffmpeg's default selection would pick."""
    if "Input #0" not in text:
        raise _classify_open_failure(path, text, None)
    duration = None
    streams = []  # [index, kind, desc, rotation]
    current = None
    for line in text.splitlines():
        m = _DURATION_RE.match(line)
        if m and duration is None:
            h, mi, s = m.groups()
            duration = int(h) * 3600 + int(mi) * 60 + float(s)
            continue
        m = _STREAM_RE.match(line)
        if m:
            current = [int(m.group(1)), m.group(2), m.group(3), 0.0]
            streams.append(current)
            continue
        if current is not None:
            m = _MATRIX_RE.search(line)
            if m:
                current[3] = float(m.group(1))
                continue
            m = _ROTATE_TAG_RE.match(line)  # ffmpeg < 5 reported the clockwise "rotate" tag
            if m:
                current[3] = -float(m.group(1))
    video = []
    for idx, kind, desc, rot in streams:
        if kind != "Video" or "(attached pic)" in desc:
            continue
        m = _SIZE_RE.search(desc)
        if not m:
            continue
        video.append((idx, desc, int(m.group(1)), int(m.group(2)), rot))
    if stream_index is not None:  # an attached picture (cover art) is not a video either
        video = [v for v in video if v[0] == stream_index]
    if not video:
        raise DecodeError(path, "not a video: ffmpeg found no video stream")
    # ffmpeg's default selection (fftools' map_auto_video): the largest video stream, with a
    # 5e6-pixel bonus for the "default" disposition (first one on ties). The single-process
    # decode reads the stream ffmpeg actually mapped instead (stream_index).
    idx, desc, w, h, rot = max(
        video, key=lambda v: (v[2] * v[3] + 5_000_000 * ("(default)" in v[1]), -v[0]))
    fps_found = {k: float(v) * (1000 if kk else 1) for v, kk, k in _FPS_RE.findall(desc)}
    fps = fps_found.get("fps") or fps_found.get("tbr")
    rot = ((rot + 180.0) % 360.0) - 180.0  # normalise to [-180, 180)
    if abs(abs(rot) - 90.0) < 1e-6:
        w, h = h, w
    codec = desc.split(" ", 1)[0].rstrip(",")
    return VideoInfo(width=w, height=h, fps=fps, duration_s=duration, rotation=rot,
                     stream_index=idx, codec=codec)


def probe(path, binary: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> VideoInfo:
    """Describe the video stream of ``path`` from ``ffmpeg -hide_banner -i PATH`` (no ffprobe).

    Width and height are the display size: swapped when the file carries a +-90 degree display
    rotation, because ffmpeg autorotates while decoding.
    """
    p = check_file(path, check_container=False)
    binary = binary or ffmpeg_binary()
    try:
        out = subprocess.run(
            [binary, "-nostdin", "-hide_banner", "-i", _ffmpeg_url(p)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise DecodeError(path, f"timed out after {timeout:g} s (probing)") from None
    return _parse_probe(path, out.stderr.decode("utf-8", "replace"))


# --------------------------------------------------------------------------------------------
# decoding


def output_size(width: int, height: int, short_side: int | None = 128) -> tuple[int, int]:
    """(out_w, out_h): short side -> ``short_side``, aspect kept, long side rounded to nearest
    (halves round up). ``short_side=None`` keeps the native size."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    if short_side is None:
        return width, height
    s = int(short_side)
    if width <= height:
        return s, max(1, (2 * height * s + width) // (2 * width))
    return max(1, (2 * width * s + height) // (2 * height)), s


def default_timeout(info: VideoInfo) -> float:
    """120 s plus 2 s per second of video; 600 s when the duration is unknown."""
    if info.duration_s is None:
        return 600.0
    return 120.0 + 2.0 * info.duration_s


def _sync_args(binary: str) -> dict:
    return {"fps_mode": "passthrough"} if _has_fps_mode(binary) else {"vsync": "passthrough"}


def yuv420_frame_bytes(width: int, height: int) -> int:
    """Bytes of one planar YUV 4:2:0 frame: Y, then U and V at ceil(H/2) x ceil(W/2) (ffmpeg's rounding)."""
    return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)


def yuv420_planes(frames: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views Y [t, H, W], U and V [t, ceil(H/2), ceil(W/2)] of uint8 [t, frame bytes] (``yuv=True``
    chunks); each frame's plane is C-contiguous."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    t, n = len(frames), width * height
    if frames.ndim != 2 or frames.shape[1] != yuv420_frame_bytes(width, height):
        raise ValueError(f"not YUV 4:2:0 frames of {width}x{height}: shape {frames.shape}")
    return (frames[:, :n].reshape(t, height, width), frames[:, n:n + cw * ch].reshape(t, ch, cw),
            frames[:, n + cw * ch:].reshape(t, ch, cw))


def _pixels(yuv: bool) -> dict:
    return {"pix_fmt": "yuv420p" if yuv else "rgb24"}


def _decode_node(path, size: tuple[int, int], binary: str, stream_index: int | None, yuv: bool = False):
    w, h = size
    src = ffmpeg.input(_ffmpeg_url(Path(path)))
    if stream_index is not None:
        src = src[str(stream_index)]  # -map 0:N, the stream probe() described
    # -s WxH inserts the default (bicubic) scale; the same scale with full-range output for YUV
    sized = {"vf": f"scale={w}:{h}:out_range=full"} if yuv else {"s": f"{w}x{h}"}
    return src.output("pipe:", format="rawvideo", **_pixels(yuv), **sized, **_sync_args(binary))


def _global_args(binary: str) -> list[str]:
    # global options go first: ffmpeg ignores (with a warning) options after the last output,
    # which is where ffmpeg-python's .global_args() would put them
    return [binary, "-nostdin", "-hide_banner", "-v", "error"]


def decode_command(path, size: tuple[int, int], binary: str | None = None,
                   stream_index: int | None = None, yuv: bool = False) -> list[str]:
    """The argv ``iter_frames(..., info=...)`` runs (built with ffmpeg-python): the two-process
    form, whose size and stream were computed from a ``probe``. For logs and benchmarks."""
    binary = binary or ffmpeg_binary()
    return _decode_node(path, size, binary, stream_index, yuv).compile(cmd=_global_args(binary))


def scale_filter(short_side: int) -> str:
    """The ``-vf`` scale that equals ``-s WxH`` with ``(W, H) = output_size(iw, ih, short_side)``
    without knowing the input size: same default (bicubic) scaler, same rounding (nearest,
    halves up), computed on the display size (after autorotation), so bit-identical pixels."""
    s = int(short_side)
    if s < 1:
        raise ValueError(f"bad short_side {short_side}")
    return f"scale={s}:{s}:force_original_aspect_ratio=increase"


def _open_node(path, short_side: int | None, binary: str, yuv: bool = False):
    # no -map: ffmpeg's default selection (the "best" video stream; the rawvideo muxer takes no
    # audio/subtitles/data, -an -sn -dn make sure); the mapped stream is read from the log
    vf = scale_filter(short_side) if short_side is not None else ("scale=iw:ih" if yuv else None)
    extra = {"vf": vf + (":out_range=full" if yuv else "")} if vf else {}
    return ffmpeg.input(_ffmpeg_url(Path(path))).output(
        "pipe:", format="rawvideo", **_pixels(yuv), an=None, sn=None, dn=None,
        **extra, **_sync_args(binary))


def _open_global_args(binary: str) -> list[str]:
    # info level with a "[level]" tag on every line: the input/output dumps describe the video,
    # and only error/fatal/panic lines count for the error policy (what "-v error" used to print)
    return [binary, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "+level+info"]


def open_command(path, short_side: int | None = 128, binary: str | None = None, yuv: bool = False) -> list[str]:
    """The argv of the single-process decode (``open_video``, ``iter_frames`` without ``info``)."""
    binary = binary or ffmpeg_binary()
    return _open_node(path, short_side, binary, yuv).compile(cmd=_open_global_args(binary))


@functools.lru_cache(maxsize=16)
def _has_level_tags(binary: str) -> bool:
    """``-loglevel +level`` (a "[level]" tag per line) exists since ffmpeg 4.0, which is also
    when the output dump moved after "Stream mapping" (printed once the first frame is decoded)."""
    m = re.match(r"n?(\d+)\.(\d+)", ffmpeg_version(binary))
    return not m or int(m.group(1)) >= 4


_LEVEL_RE = re.compile(
    r"^((?:\[[^\]]*\] )*?)\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ?")
_ERROR_LEVELS = frozenset(("panic", "fatal", "error"))
_MAP_RE = re.compile(r"^\s+Stream #0:(\d+)\S* -> #0:0\b")


class _StderrDrain(threading.Thread):
    """Reads ffmpeg's stderr to EOF so that ffmpeg never blocks on a full pipe.

    ``levelled=False`` (``-v error``): every line is an error line. ``levelled=True``
    (``-loglevel +level+info``): lines are classified by their "[level]" tag (an untagged line
    continues the previous message and has its level); error lines are kept as before, and the
    header is parsed: the ``Input #0`` dump, the stream mapped to the output, and the output size
    from the ``Output #0`` video stream line. ``ready`` is set once that size is known, once the
    output dump ended without one, or at EOF (ffmpeg exited or was killed). The dumps are
    printed without a "[context @ 0x...]" prefix; lines with one (other threads' messages, which
    may land between two lines of a dump) are not part of them.
    """

    def __init__(self, stream, keep: int = 40, levelled: bool = False):
        super().__init__(daemon=True)
        self.stream = stream
        self.levelled = levelled
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)  # error lines
        self.count = 0
        self.first: str | None = None
        self.ready = threading.Event()
        self.input_lines: list[str] = []  # the Input #0 dump, level tags removed
        self.mapped: int | None = None
        self.out_size: tuple[int, int] | None = None
        self._section: str | None = None
        self._level = "error"
        self._context = False  # the current message has a "[context]" prefix

    def run(self) -> None:
        try:
            for raw in iter(self.stream.readline, b""):
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if self.levelled:
                    m = _LEVEL_RE.match(text)
                    if m:  # else: a continuation line of the previous message
                        self._level, self._context = m.group(2), bool(m.group(1))
                        text = m.group(1) + text[m.end():]
                    if not self.ready.is_set() and not self._context:
                        self._header(text)
                    if self._level not in _ERROR_LEVELS:
                        continue
                line = _clean(text)
                if not line:
                    continue
                if self.first is None:
                    self.first = line
                self.lines.append(line)
                self.count += 1
        except (OSError, ValueError):
            pass
        finally:
            self.ready.set()

    def _header(self, text: str) -> None:
        s = text.strip()
        if s.startswith("Input #0,"):
            self._section = "input"
            self.input_lines.append(text)
        elif s == "Stream mapping:":
            self._section = "mapping"
        elif s.startswith("Output #0,"):
            self._section = "output"
        elif self._section == "input":
            self.input_lines.append(text)
        elif self._section == "mapping":
            m = _MAP_RE.match(text)
            if m and self.mapped is None:
                self.mapped = int(m.group(1))
        elif self._section == "output":
            m = _STREAM_RE.match(text)
            if m and m.group(2) == "Video":
                sm = _SIZE_RE.search(m.group(3))
                if sm:
                    self.out_size = int(sm.group(1)), int(sm.group(2))
                    self.ready.set()
            elif not text[:1].isspace() and self._level not in _ERROR_LEVELS:
                self.ready.set()  # the dump ended without a video stream: no output size

    def info(self, path) -> VideoInfo:
        """The mapped stream's VideoInfo (raises DecodeError like ``probe``)."""
        return _parse_probe(path, "\n".join(self.input_lines), self.mapped)


class _Watchdog(threading.Thread):
    """Kills the process once ``timeout`` seconds of un-paused time have passed."""

    def __init__(self, proc: subprocess.Popen, timeout: float):
        super().__init__(daemon=True)
        self.proc = proc
        self.timeout = timeout
        self.cond = threading.Condition()
        self.deadline = time.monotonic() + timeout
        self.paused_at: float | None = None
        self.done = False
        self.fired = False

    def run(self) -> None:
        with self.cond:
            while not self.done:
                if self.paused_at is not None:
                    self.cond.wait()
                    continue
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    self.fired = True
                    _kill(self.proc)
                    return
                self.cond.wait(remaining)

    def set_timeout(self, timeout: float) -> None:
        """Replace the budget (still counted from the start, pauses excluded)."""
        with self.cond:
            if not self.fired:
                self.deadline += timeout - self.timeout
                self.timeout = timeout
            self.cond.notify()

    def pause(self) -> None:
        with self.cond:
            self.paused_at = time.monotonic()
            self.cond.notify()

    def resume(self) -> None:
        with self.cond:
            if self.paused_at is not None:
                self.deadline += time.monotonic() - self.paused_at
                self.paused_at = None
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify()


PIPE_BYTES = 1 << 20
# Frames per chunk by default: about what the 1 MiB pipe holds at 171x128, so that ffmpeg decodes
# the next chunk while the caller works on this one. With 64, ffmpeg stalls once 16 frames are
# buffered and the rest of the chunk is decoded serially (benchmarks/bench_decode.py: a consumer
# sleeping 0.4 ms a frame costs +0.11 s over 1400 frames with 16, +0.41 s with 64).
CHUNK_FRAMES = 16


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _enlarge_pipe(stream) -> None:
    """Let ffmpeg decode ahead while the consumer works on the previous chunk.

    A pipe holds 64 KiB by default, less than one 171x128 RGB frame: ffmpeg would stall whenever
    the consumer is busy. 1 MiB (Linux's default maximum) buffers ~16 such frames.
    """
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or a lower system limit: correct, just less overlap


def _read_full(stream, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def iter_frames(
    path,
    short_side: int | None = 128,
    chunk_frames: int = CHUNK_FRAMES,
    timeout_s: float | None = None,
    binary: str | None = None,
    *,
    strict: bool = True,
    info: VideoInfo | None = None,
    on_info=None,
    yuv: bool = False,
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB chunks ``[t, H, W, 3]`` (``1 <= t <= chunk_frames``) of the whole video
    (``yuv=True``: full-range YUV 4:2:0 chunks ``[t, frame bytes]``, see the module docstring).

    The short side is scaled to ``short_side`` (aspect kept; ``None``: native size). Frames are
    read from ffmpeg's stdout as they are decoded, so memory is bounded by one chunk. See the
    module docstring for the error policy and the timeout (``timeout_s=None``: scaled by the
    video's duration).

    Without ``info`` ONE ffmpeg process decodes the video and describes it (single-process
    form); ``on_info(info, (W, H))``, if given, is called with the stream's ``VideoInfo`` and the
    output size before the first chunk is yielded (never for a video that yields nothing).
    With ``info`` (a ``probe`` result) the two-process form runs: that stream, that size.
    """
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    p = check_file(path, check_container=strict)
    binary = binary or ffmpeg_binary()
    if info is None and not _has_level_tags(binary):
        info = probe(p, binary=binary)  # an ffmpeg older than 4.0: probe first
    levelled = info is None
    if levelled:
        # before the input is described: the probe's budget (or the caller's) for opening the
        # file and decoding the first frame; then default_timeout(info) from the start
        timeout = float(timeout_s) if timeout_s is not None else PROBE_TIMEOUT_S
        node, cmd = _open_node(p, short_side, binary, yuv), _open_global_args(binary)
    else:
        size = output_size(info.width, info.height, short_side)
        timeout = float(timeout_s) if timeout_s is not None else default_timeout(info)
        node, cmd = _decode_node(p, size, binary, info.stream_index, yuv), _global_args(binary)
    proc = node.run_async(cmd=cmd, pipe_stdout=True, pipe_stderr=True)
    try:
        _enlarge_pipe(proc.stdout)
        drain = _StderrDrain(proc.stderr, levelled=levelled)
        drain.start()
        dog = _Watchdog(proc, timeout)
        dog.start()
    except BaseException:
        _kill(proc)
        proc.wait()
        raise
    total = 0

    def timed_out() -> DecodeError:
        what = " (opening the file)" if info is None and timeout_s is None else ""
        return DecodeError(path, f"timed out after {dog.timeout:g} s{what}")

    def decode_failed(rc, killed: bool = False) -> DecodeError:
        text = "\n".join(drain.lines)
        if not killed and rc != 0 and total == 0:
            return _classify_open_failure(path, text, rc)
        if drain.count:
            more = f" ({drain.count} error lines, first: {drain.first})" if drain.count > 1 else ""
            return DecodeError(path, f"damaged or truncated: {drain.lines[-1]}{more}")
        return DecodeError(path, f"ffmpeg failed (exit code {rc}) after {total} frames")

    pending: list[np.ndarray] = []  # chunks held back until a second frame is known to exist
    try:
        if levelled:
            drain.ready.wait()  # the watchdog bounds this: killing ffmpeg ends stderr
            if dog.fired:
                raise timed_out()
            if drain.input_lines:
                info = drain.info(path)  # not a video (no video stream, cover art only): raises
            if info is None:  # ffmpeg could not open the file (or its log is not what we know)
                if drain.out_size is not None:
                    _kill(proc)
                rc = proc.wait()
                drain.join()
                if dog.fired:
                    raise timed_out()
                raise _classify_open_failure(path, "\n".join(drain.lines), rc)
            # no output size: ffmpeg is ending without output (then there is nothing to read),
            # or it printed no recognisable size line: output_size(info) is what the filter does
            size = drain.out_size or output_size(info.width, info.height, short_side)
            if timeout_s is None:
                dog.set_timeout(default_timeout(info))
        w, h = size
        frame_bytes = yuv420_frame_bytes(w, h) if yuv else w * h * 3
        told = on_info is None
        while True:
            buf = np.empty((chunk_frames, frame_bytes) if yuv else (chunk_frames, h, w, 3), np.uint8)
            got = _read_full(proc.stdout, memoryview(buf).cast("B"))
            n, partial = divmod(got, frame_bytes)
            if n:
                total += n
                pending.append(buf[:n] if n < chunk_frames else buf)
            eof = got < buf.nbytes
            if strict and drain.count and not eof:
                _kill(proc)  # ffmpeg already reported decode errors: stop early
                proc.wait()
                drain.join(5)
                raise timed_out() if dog.fired else decode_failed(proc.returncode, killed=True)
            if eof:
                break
            if total >= 2:
                if not told:
                    on_info(info, size)
                    told = True
                for chunk in pending:
                    dog.pause()  # the caller's time is not ffmpeg's
                    try:
                        yield chunk
                    finally:
                        dog.resume()
                pending = []
        rc = proc.wait()
        drain.join()
        dog.stop()
        if dog.fired:
            raise timed_out()
        if rc != 0 or (strict and drain.count):
            raise decode_failed(rc)
        if partial:
            raise DecodeError(path, "damaged: ffmpeg output ended in the middle of frame "
                              f"{total + 1}")
        if total < 2:
            if total == 0:
                raise DecodeError(path, "no frames decoded (need at least 2)")
            raise DecodeError(path, "only 1 frame decoded (need at least 2)")
        if not told:
            on_info(info, size)
        for chunk in pending:
            yield chunk
    finally:
        # runs on exhaustion, errors, timeout, and generator close()/garbage collection
        dog.stop()
        _kill(proc)
        try:
            proc.stdout.close()  # only this thread reads stdout
        except OSError:
            pass
        proc.wait()  # reap: no zombie
        drain.join(5)  # stderr reaches EOF once ffmpeg is gone
        try:
            proc.stderr.close()
        except OSError:
            pass


class DecodedVideo:
    """One video decoded by ONE ffmpeg process (see ``open_video``).

    Iterate it (once) for the uint8 ``[t, H, W, 3]`` chunks of ``iter_frames``. ``info`` (the
    decoded stream's ``VideoInfo``: display size, fps, duration, rotation, codec) and ``size``
    (the output ``(W, H)``) are set before the first chunk is handed over, so they are known
    whenever at least one chunk was received, in particular after a complete iteration; they
    stay None for a video that fails before any chunk. ``close()`` (or leaving a ``with`` block)
    stops ffmpeg early.
    """

    def __init__(self, path, short_side: int | None = 128, chunk_frames: int = CHUNK_FRAMES,
                 timeout_s: float | None = None, binary: str | None = None, *,
                 strict: bool = True, yuv: bool = False):
        self.path = path
        self.short_side = short_side
        self.chunk_frames = chunk_frames
        self.timeout_s = timeout_s
        self.binary = binary
        self.strict = strict
        self.yuv = yuv
        self.info: VideoInfo | None = None
        self.size: tuple[int, int] | None = None
        self._chunks = None

    def _described(self, info: VideoInfo, size: tuple[int, int]) -> None:
        self.info, self.size = info, size

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._chunks is not None:
            raise RuntimeError("a DecodedVideo can be iterated only once")
        # the module's iter_frames, looked up at call time (tests replace it to forbid ffmpeg)
        self._chunks = iter_frames(self.path, self.short_side, self.chunk_frames,
                                   self.timeout_s, self.binary, strict=self.strict,
                                   on_info=self._described, yuv=self.yuv)
        return self._chunks

    def close(self) -> None:
        if self._chunks is not None:
            self._chunks.close()

    def __enter__(self) -> "DecodedVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path, short_side: int | None = 128, chunk_frames: int = CHUNK_FRAMES,
               timeout_s: float | None = None, binary: str | None = None, *,
               strict: bool = True, yuv: bool = False) -> DecodedVideo:
    """Decode ``path`` with one ffmpeg process; nothing runs until the result is iterated::

        video = open_video(path, 128)
        for chunk in video:          # uint8 [t, H, W, 3]
            ...
        fps = video.info.fps         # set before the first chunk was handed over

    Same checks, errors, chunks and pixels as ``iter_frames(path, ..., info=probe(path))``, minus
    the probe's process.
    """
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    return DecodedVideo(path, short_side, chunk_frames, timeout_s, binary, strict=strict, yuv=yuv)


def decode_all(path, short_side: int | None = 128, **kwargs) -> np.ndarray:
    """All frames of ``path`` as one uint8 ``[T, H, W, 3]`` array (see ``iter_frames``)."""
    return np.concatenate(list(iter_frames(path, short_side, **kwargs)), axis=0)
