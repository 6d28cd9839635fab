"""Tests for preprocess.decode: small videos are generated with the same ffmpeg binary."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from preprocess.decode import (
    DecodeError,
    VideoInfo,
    check_file,
    decode_all,
    decode_command,
    default_timeout,
    ffmpeg_binary,
    ffmpeg_version,
    iter_frames,
    open_command,
    open_video,
    output_size,
    probe,
)

FF = ffmpeg_binary()


def ffmpeg(*args: str) -> None:
    subprocess.run([FF, "-nostdin", "-hide_banner", "-v", "error", "-y", *args], check=True,
                   stdin=subprocess.DEVNULL)


def make_testsrc(out: Path, size="320x240", frames=50, rate=25, codec=("-c:v", "libxvid"), extra=()):
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}",
           "-frames:v", str(frames), *codec, *extra, str(out))
    return out


def encode_frames(out: Path, frames: np.ndarray, rate=25, codec=("-c:v", "mpeg4", "-q:v", "2")):
    t, h, w, _ = frames.shape
    subprocess.run(
        [FF, "-nostdin", "-hide_banner", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt",
         "rgb24", "-s", f"{w}x{h}", "-r", str(rate), "-i", "pipe:", *codec, str(out)],
        input=np.ascontiguousarray(frames).tobytes(), check=True)
    return out


def bare_decode(path: Path, size, *extra: str) -> np.ndarray:
    w, h = size
    out = subprocess.run([FF, "-nostdin", "-v", "error", "-i", str(path), *extra, "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "pipe:"],
                         capture_output=True, check=True, stdin=subprocess.DEVNULL).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


def child_pids() -> list[int]:
    """Processes (running or zombie) whose parent is this test process."""
    me, kids = os.getpid(), []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            kids.append(int(d))
    return kids


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("vids")
    v = {}
    v["xvid"] = make_testsrc(d / "xvid.avi", frames=50)  # UCF101-like: XVID in AVI, 25 fps
    v["mpeg4"] = make_testsrc(d / "mpeg4.avi", frames=37, codec=("-c:v", "mpeg4", "-vtag", "XVID"))
    v["long"] = make_testsrc(d / "long.avi", frames=400, codec=("-c:v", "mpeg4", "-q:v", "10"))
    # variable frame rate: 30 frames, frame i a flat grey of level 20 + 7 i, whose timestamps
    # have two gaps (0.3 s after frame 9, 0.5 s more after frame 19)
    grey = (20 + 7 * np.arange(30, dtype=np.uint8))[:, None, None, None]
    ts = "(N*0.04+if(gte(N\\,10)\\,0.3\\,0)+if(gte(N\\,20)\\,0.5\\,0))/TB"
    encode_frames(d / "vfr.mkv", np.broadcast_to(grey, (30, 120, 160, 3)),
                  codec=("-vf", f"setpts='{ts}'", "-fps_mode", "vfr", "-c:v", "mpeg4", "-q:v", "2"))
    v["vfr"] = d / "vfr.mkv"
    return v


# ------------------------------------------------------------------------------------------


def test_binary_and_version():
    assert os.access(FF, os.X_OK)
    assert ffmpeg_version(FF)[0].isalnum()


@pytest.mark.parametrize("w,h,s,expected", [
    (320, 240, 128, (171, 128)), (240, 320, 128, (128, 171)), (1920, 1080, 128, (228, 128)),
    (1080, 1920, 128, (128, 228)), (128, 128, 128, (128, 128)), (400, 300, 112, (149, 112)),
    (320, 240, None, (320, 240)), (3, 2, 1, (2, 1)),  # 1.5 rounds up
])
def test_output_size(w, h, s, expected):
    assert output_size(w, h, s) == expected


def test_probe_cfr_avi(vids):
    info = probe(vids["xvid"])
    assert info == VideoInfo(320, 240, 25.0, 2.0, 0.0, 0, "mpeg4")
    assert info.expected_frames == 50


def test_cfr_avi_exact_frames_and_identical_to_bare_ffmpeg(vids):
    for key, n in (("xvid", 50), ("mpeg4", 37)):
        frames = decode_all(vids[key])
        assert frames.shape == (n, 128, 171, 3) and frames.dtype == np.uint8
        # same binary, same size, same (default) scaler: bit-identical to the bare command
        np.testing.assert_array_equal(frames, bare_decode(vids[key], (171, 128)))


def test_vfr_passthrough_no_duplicates(vids):
    frames = decode_all(vids["vfr"], short_side=None)
    assert frames.shape == (30, 120, 160, 3)
    levels = frames.reshape(30, -1).mean(1)
    np.testing.assert_allclose(levels, 20 + 7 * np.arange(30), atol=3)  # each source frame once
    # ffmpeg's default for rawvideo output (cfr) fills the two timestamp gaps with duplicates
    naive = bare_decode(vids["vfr"], (160, 120))
    assert len(naive) == 50
    assert (np.diff(naive.reshape(50, -1).mean(1)) == 0).sum() == 20
    cfr = bare_decode(vids["vfr"], (160, 120), "-fps_mode", "cfr")
    assert len(cfr) == 50


@pytest.mark.parametrize("size,out", [("320x240", (128, 171)), ("240x320", (171, 128)),
                                      ("320x180", (128, 228))])
def test_output_sizes_by_aspect(tmp_path, size, out):
    p = make_testsrc(tmp_path / "a.avi", size=size, frames=3, codec=("-c:v", "mpeg4"))
    assert decode_all(p).shape == (3, *out, 3)


def test_display_rotation_swaps_size(vids, tmp_path):
    p = tmp_path / "rot.mp4"
    try:
        ffmpeg("-display_rotation", "90", "-i", str(vids["mpeg4"]), "-c", "copy", str(p))
    except subprocess.CalledProcessError:
        pytest.skip("this ffmpeg has no -display_rotation")
    info = probe(p)
    assert (info.width, info.height, abs(info.rotation)) == (240, 320, 90.0)
    frames = decode_all(p)
    assert frames.shape == (37, 171, 128, 3)
    np.testing.assert_array_equal(frames, bare_decode(p, (128, 171)))


@pytest.mark.parametrize("chunk", [1, 2, 7, 10, 49, 50, 51, 64])
def test_chunking(vids, chunk):
    full = decode_all(vids["xvid"], chunk_frames=64)
    chunks = list(iter_frames(vids["xvid"], chunk_frames=chunk))
    assert [len(c) for c in chunks[:-1]] == [chunk] * (len(chunks) - 1)
    assert 1 <= len(chunks[-1]) <= chunk
    np.testing.assert_array_equal(np.concatenate(chunks), full)


def test_solid_colour_pixels(tmp_path):
    colour = np.array([200, 60, 30], np.uint8)
    frames = np.broadcast_to(colour, (5, 96, 128, 3)).copy()
    p = encode_frames(tmp_path / "solid.avi", frames)
    out = decode_all(p, short_side=96)
    assert out.shape == (5, 96, 128, 3)
    err = np.abs(out.astype(int) - colour).max()
    assert err <= 4, err


# --- bad inputs -----------------------------------------------------------------------------


def reason(path, **kw) -> str:
    with pytest.raises(DecodeError) as ei:
        decode_all(path, **kw)
    e = ei.value
    assert e.path == str(path) and str(path) in str(e) and e.reason in str(e)
    return e.reason


def test_missing_file(tmp_path):
    assert reason(tmp_path / "nope.avi") == "no such file"
    with pytest.raises(DecodeError, match="no such file"):
        probe(tmp_path / "nope.avi")


def test_not_regular_file(tmp_path):
    assert reason(tmp_path).startswith("not a regular file")


def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.avi"
    p.touch()
    assert reason(p) == "file is empty (0 bytes)"


def test_text_file_renamed_avi(tmp_path):
    p = tmp_path / "notes.avi"
    p.write_text("this is not a video\n" * 20)
    assert reason(p).startswith("not a video")


def test_audio_only_file_has_no_video_stream(tmp_path):
    p = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.2", str(p))
    assert reason(p) == "not a video: ffmpeg found no video stream"


def test_permission_denied_reason_when_open_fails(vids, monkeypatch):
    """An unreadable file (mode 000 for an ordinary user; simulated, since tests may run as root,
    who reads anything): open() raising PermissionError gives the specific reason."""
    import preprocess.decode as dec

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dec, "open", deny, raising=False)
    with pytest.raises(DecodeError) as ei:
        check_file(vids["mpeg4"])
    assert ei.value.reason == "permission denied"


def test_truncated_avi_cut_in_half(vids, tmp_path):
    data = vids["xvid"].read_bytes()
    p = tmp_path / "half.avi"
    p.write_bytes(data[: len(data) // 2])
    r = reason(p)
    assert r.startswith("damaged or truncated") and "declares" in r
    # What ffmpeg itself does with it: exit status 0, about half the frames, and a decoder
    # error for the cut frame ("ac-tex damaged" / "Error at MB" at -v error). Non-strict mode
    # hands those frames over only if ffmpeg's complaint is tolerated.
    out = subprocess.run([FF, "-nostdin", "-v", "error", "-i", str(p), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-s", "171x128", "pipe:"], capture_output=True)
    assert out.returncode == 0
    n = len(out.stdout) // (171 * 128 * 3)
    assert 10 < n < 50
    frames = decode_all(p, strict=False)
    assert len(frames) == n


def test_truncated_avi_on_chunk_boundary_is_silent_in_ffmpeg(vids, tmp_path):
    """Cut exactly before a frame chunk: ffmpeg decodes the rest with no message at all, exit
    0, so only the RIFF size check in check_file catches it."""
    data = vids["xvid"].read_bytes()
    movi = data.index(b"movi") + 4
    offs, i = [], movi
    while data[i:i + 4] != b"idx1":
        offs.append(i)
        size = int.from_bytes(data[i + 4:i + 8], "little")
        i += 8 + size + (size & 1)
    p = tmp_path / "cut.avi"
    p.write_bytes(data[: offs[25]])
    out = subprocess.run([FF, "-nostdin", "-v", "warning", "-i", str(p), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-s", "171x128", "pipe:"], capture_output=True)
    assert out.returncode == 0 and out.stderr == b""
    assert len(out.stdout) == 25 * 171 * 128 * 3
    with pytest.raises(DecodeError, match="damaged or truncated: the file has"):
        check_file(p)
    assert reason(p).startswith("damaged or truncated")


def test_corrupted_middle_raises_and_stops(vids, tmp_path):
    data = bytearray(vids["xvid"].read_bytes())
    mid = len(data) // 2
    data[mid:mid + 1500] = np.random.default_rng(0).integers(0, 256, 1500, np.uint8).tobytes()
    p = tmp_path / "corrupt.avi"
    p.write_bytes(bytes(data))
    assert reason(p).startswith("damaged or truncated: [mpeg4]")
    # tolerated on request: ffmpeg conceals the damage and every frame still comes out
    assert len(decode_all(p, strict=False)) >= 45


def test_truncated_mkv_reports_ffmpeg_error(vids, tmp_path):
    data = vids["vfr"].read_bytes()
    p = tmp_path / "half.mkv"
    p.write_bytes(data[: len(data) // 2])
    r = reason(p)
    assert r.startswith("damaged or truncated:") and "File ended prematurely" in r


def test_one_frame_video(tmp_path):
    p = make_testsrc(tmp_path / "one.avi", frames=1)
    assert reason(p) == "only 1 frame decoded (need at least 2)"
    # nothing is yielded before the verdict, even with 1-frame chunks
    got = []
    with pytest.raises(DecodeError):
        for c in iter_frames(p, chunk_frames=1):
            got.append(c)
    assert got == []


def test_two_frame_video_with_one_frame_chunks(tmp_path):
    p = make_testsrc(tmp_path / "two.avi", frames=2)
    assert [len(c) for c in iter_frames(p, chunk_frames=1)] == [1, 1]


@pytest.mark.parametrize("name", ["vidéo ü 1.avi", "a:b -x.avi", "-lead.avi"])
def test_awkward_paths(vids, tmp_path, name):
    d = tmp_path / "dir with spaces ñ"
    d.mkdir()
    p = d / name
    shutil.copy(vids["mpeg4"], p)
    assert probe(p).width == 320
    assert decode_all(p).shape == (37, 128, 171, 3)
    assert decode_command(p, (171, 128))[6] == "file:" + str(p)
    cmd = open_command(p)
    assert cmd[cmd.index("-i") + 1] == "file:" + str(p)
    video = open_video(p)
    assert sum(map(len, video)) == 37 and video.info.width == 320


@pytest.mark.parametrize("two_process", [False, True])
def test_timeout_kills_process(vids, two_process):
    info = probe(vids["long"]) if two_process else None
    before = child_pids()
    t = time.monotonic()
    with pytest.raises(DecodeError, match=r"timed out after 0\.01 s"):
        decode_all(vids["long"], timeout_s=0.01, info=info)
    assert time.monotonic() - t < 10
    assert child_pids() == before


def test_default_timeout_while_opening(vids, tmp_path, monkeypatch):
    """Until ffmpeg has described the input, the default budget is the probe's (30 s): here an
    ffmpeg that takes 1 s to start against a 0.2 s budget."""
    import preprocess.decode as dec

    slow = tmp_path / "slow-ffmpeg"
    slow.write_text(f'#!/bin/sh\nsleep 1\nexec "{FF}" "$@"\n')
    slow.chmod(0o755)
    monkeypatch.setattr(dec, "_has_level_tags", lambda binary: True)
    monkeypatch.setattr(dec, "_has_fps_mode", lambda binary: True)
    monkeypatch.setattr(dec, "PROBE_TIMEOUT_S", 0.2)
    before = child_pids()
    t = time.monotonic()
    with pytest.raises(DecodeError, match=r"timed out after 0\.2 s \(opening the file\)"):
        decode_all(vids["long"], binary=str(slow))
    assert time.monotonic() - t < 10
    assert child_pids() == before


def test_slow_consumer_does_not_time_out(vids):
    n = 0
    for c in iter_frames(vids["xvid"], chunk_frames=10, timeout_s=1.0):
        time.sleep(0.3)  # 1.5 s spent by the consumer in total, more than the timeout
        n += len(c)
    assert n == 50


def test_early_close_and_consumer_exception_leave_no_process(vids):
    before = child_pids()
    g = iter_frames(vids["long"], chunk_frames=4)
    assert next(g).shape == (4, 128, 171, 3)
    g.close()
    assert child_pids() == before
    with pytest.raises(KeyError):
        for _ in iter_frames(vids["long"], chunk_frames=4):
            raise KeyError("consumer failed")
    assert child_pids() == before
    with open_video(vids["long"], chunk_frames=4) as video:
        assert next(iter(video)).shape == (4, 128, 171, 3)
        assert len(child_pids()) == len(before) + 1
    assert child_pids() == before and video.info.fps == 25.0


def test_decode_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(DecodeError("/x/y.avi", "file is empty (0 bytes)")))
    assert (e.path, e.reason) == ("/x/y.avi", "file is empty (0 bytes)")


# --- one ffmpeg process per video -----------------------------------------------------------


def two_process(path, short_side=128, **kw):
    """The old way: probe, then decode exactly that stream at the size computed from it."""
    info = probe(path)
    return info, np.concatenate(list(iter_frames(path, short_side, info=info, **kw)))


@pytest.fixture(scope="module")
def shapes(vids, tmp_path_factory):
    """4:3, portrait, 16:9, 1920x1080, odd sizes, anamorphic, rotated (90 and 180), and two
    video streams where ffmpeg picks the smaller "default" one."""
    d = tmp_path_factory.mktemp("shapes")
    v = {}
    for size in ("320x240", "240x320", "320x180", "1920x1080", "333x199", "199x333"):
        v[size] = make_testsrc(d / f"{size}.mkv", size=size, frames=4,
                               codec=("-c:v", "mpeg4", "-q:v", "3"))
    v["sar"] = make_testsrc(d / "sar.avi", size="720x576", frames=4,
                            codec=("-c:v", "mpeg4"), extra=("-vf", "setsar=64/45"))
    for rot in ("90", "180"):
        p = d / f"rot{rot}.mp4"
        try:
            ffmpeg("-display_rotation", rot, "-i", str(v["320x180"]), "-c", "copy", str(p))
        except subprocess.CalledProcessError:
            continue
        v["rot" + rot] = p
    p = d / "two.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-f", "lavfi", "-i",
           "testsrc2=size=320x240:rate=25", "-frames:v", "5", "-map", "0:v", "-map", "1:v",
           "-c:v", "mpeg4", str(p))
    v["two"] = p
    p = d / "audio_first.mkv"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.3", "-f", "lavfi", "-i",
           "testsrc2=size=320x240:rate=25", "-frames:v", "5", "-map", "0:a", "-map", "1:v",
           "-c:v", "mpeg4", str(p))
    v["audio_first"] = p
    v["xvid"] = vids["xvid"]
    return v


@pytest.mark.parametrize("key,out_wh", [
    ("xvid", (171, 128)), ("320x240", (171, 128)), ("240x320", (128, 171)),
    ("320x180", (228, 128)), ("1920x1080", (228, 128)), ("333x199", (214, 128)),
    ("199x333", (128, 214)), ("sar", (160, 128)), ("rot90", (128, 228)), ("rot180", (228, 128)),
    ("two", (171, 128)), ("audio_first", (171, 128)),
])
def test_single_process_identical_to_two_process(shapes, key, out_wh):
    if key not in shapes:
        pytest.skip("this ffmpeg has no -display_rotation")
    p = shapes[key]
    info, expected = two_process(p)
    video = open_video(p, chunk_frames=3)
    got = np.concatenate(list(video))
    assert video.info == info and video.size == out_wh
    assert info.stream_index == (1 if key == "audio_first" else 0)
    assert got.shape == (len(expected), out_wh[1], out_wh[0], 3)
    np.testing.assert_array_equal(got, expected)
    # and both equal the bare command at that size (ffmpeg's own stream selection)
    np.testing.assert_array_equal(got, bare_decode(p, out_wh))


@pytest.mark.parametrize("key", ["320x240", "rot90", "333x199"])
def test_single_process_native_size(shapes, key):
    if key not in shapes:
        pytest.skip("this ffmpeg has no -display_rotation")
    info, expected = two_process(shapes[key], short_side=None)
    video = open_video(shapes[key], short_side=None)
    np.testing.assert_array_equal(np.concatenate(list(video)), expected)
    assert video.size == (info.width, info.height)


def test_single_process_vfr_and_fps(vids):
    video = open_video(vids["vfr"], short_side=None)
    frames = np.concatenate(list(video))
    assert frames.shape == (30, 120, 160, 3)  # passthrough: no duplicated frames
    np.testing.assert_allclose(frames.reshape(30, -1).mean(1), 20 + 7 * np.arange(30), atol=3)
    assert video.info == probe(vids["vfr"]) and video.info.fps
    np.testing.assert_array_equal(frames, two_process(vids["vfr"], short_side=None)[1])
    v = open_video(vids["xvid"])
    assert sum(map(len, v)) == 50
    assert v.info == VideoInfo(320, 240, 25.0, 2.0, 0.0, 0, "mpeg4") and v.info.fps == 25.0


def test_info_is_known_with_the_first_chunk(vids):
    video = open_video(vids["xvid"], chunk_frames=1)
    assert video.info is None and video.size is None  # nothing runs before iterating
    seen = []
    for chunk in video:
        seen.append((video.info, video.size, chunk.shape))
    assert len(seen) == 50
    expected = (probe(vids["xvid"]), (171, 128), (1, 128, 171, 3))
    assert all(s == expected for s in seen)
    with pytest.raises(RuntimeError):
        iter(video)
    calls = []
    chunks = list(iter_frames(vids["mpeg4"], chunk_frames=64,
                              on_info=lambda i, s: calls.append((i, s))))
    assert len(chunks) == 1 and calls == [(probe(vids["mpeg4"]), (171, 128))]


@pytest.fixture
def popen_calls(vids, monkeypatch):
    """argv of every process started through subprocess (ffmpeg-python's run_async and
    subprocess.run both go through subprocess.Popen)."""
    calls = []
    real = subprocess.Popen

    class Counting(real):
        def __init__(self, args, *a, **k):
            calls.append(list(args))
            super().__init__(args, *a, **k)

    decode_all(vids["mpeg4"])  # fill the per-binary caches (ffmpeg -version runs once a process)
    monkeypatch.setattr(subprocess, "Popen", Counting)
    return calls


def test_one_ffmpeg_process_per_video(vids, popen_calls):
    paths = [vids["xvid"], vids["mpeg4"], vids["vfr"]]
    for p in paths:
        video = open_video(p)
        assert sum(map(len, video)) > 2 and video.info.fps
    assert len(popen_calls) == len(paths)
    assert all(c[0] == FF and "-i" in c for c in popen_calls)
    popen_calls.clear()
    decode_all(vids["xvid"])  # iter_frames without info: single process too
    assert len(popen_calls) == 1
    popen_calls.clear()
    two_process(vids["xvid"])  # the old way: probe + decode
    assert len(popen_calls) == 2


def test_failures_through_open_video(vids, tmp_path):
    bad = tmp_path / "notes.avi"
    bad.write_text("this is not a video\n" * 20)
    video = open_video(bad)
    with pytest.raises(DecodeError, match="not a video"):
        list(video)
    assert video.info is None
    data = vids["xvid"].read_bytes()
    half = tmp_path / "half.avi"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="damaged or truncated"):
        list(open_video(half))
    assert len(list(open_video(half, strict=False))) > 0


def test_cover_art_is_not_a_video(tmp_path):
    """An audio file with an attached picture: ffmpeg would 'decode' the picture as 1 frame."""
    p = tmp_path / "song.mp3"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-f", "lavfi", "-i",
           "testsrc=size=64x64:rate=1", "-frames:v", "1", "-map", "0:a", "-map", "1:v",
           "-c:v", "mjpeg", "-disposition:v", "attached_pic", "-c:a", "mp3", str(p))
    with pytest.raises(DecodeError, match="not a video: ffmpeg found no video stream"):
        probe(p)
    assert reason(p) == "not a video: ffmpeg found no video stream"


def test_resolution_change_mid_stream_keeps_the_first_size(tmp_path):
    """ffmpeg keeps an output's size once it is set: the scale filter's expression is evaluated
    for the first frames only, so chunks keep one shape (like -s WxH)."""
    segs = []
    for i, size in enumerate(("320x240", "320x180")):
        segs.append(make_testsrc(tmp_path / f"s{i}.ts", size=size, frames=10,
                                 codec=("-c:v", "mpeg2video")))
    p = tmp_path / "change.ts"
    p.write_bytes(segs[0].read_bytes() + segs[1].read_bytes())
    got = decode_all(p, strict=False)
    _, old = two_process(p, strict=False)
    assert got.shape[1:] == old.shape[1:] == (128, 171, 3)
    assert len(got) == len(old) >= 18
    np.testing.assert_array_equal(got[:9], old[:9])


def test_default_timeout_applies_once_described(vids, monkeypatch):
    """The opening budget is replaced by default_timeout(info), counted from the start."""
    import preprocess.decode as dec

    seen = []
    real = dec._Watchdog.set_timeout

    def spy(self, t):
        seen.append(t)
        real(self, t)

    monkeypatch.setattr(dec._Watchdog, "set_timeout", spy)
    assert len(decode_all(vids["xvid"])) == 50
    assert seen == [default_timeout(probe(vids["xvid"]))] == [124.0]
    seen.clear()
    decode_all(vids["xvid"], timeout_s=50)  # the caller's budget is never replaced
    assert seen == []


def test_log_parsing_levels_and_interleaved_messages():
    """Only error/fatal/panic lines (and their untagged continuation lines) count; another
    thread's message between two lines of the output dump does not end the dump."""
    import io

    from preprocess.decode import _StderrDrain

    log = b"""[mpeg4 @ 0x55d1] [warning] ignored warning
[info] Input #0, avi, from 'file:/x/a b.avi':
[info]   Duration: 00:00:02.00, start: 0.000000, bitrate: 270 kb/s
[info]   Stream #0:0: Video: mpeg4 (Simple Profile) (xvid / 0x64697678), yuv420p, 320x240 [SAR 1:1 DAR 4:3], 247 kb/s, 25 fps, 25 tbr, 25 tbn
[info]   Stream #0:1: Audio: mp3, 44100 Hz, mono, fltp, 64 kb/s
[info] Stream mapping:
[info]   Stream #0:0 -> #0:0 (mpeg4 (native) -> rawvideo (native))
[info] Output #0, rawvideo, to 'pipe:':
[mpeg4 @ 0x55d1] [error] ac-tex damaged at 3 6
    Last message repeated 1 times
[mpeg4 @ 0x55d1] [info] concealing 226 DC, 226 AC, 226 MV errors in I frame
[info]   Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(pc, gbr/unknown/unknown, progressive), 171x128 [SAR 512:513 DAR 4:3], q=2-31, 13132 kb/s, 25 fps, 25 tbn
[vist#0:0/mpeg4 @ 0x55d2] [dec:mpeg4 @ 0x55d3] [warning] corrupt decoded frame
[fatal] Something fatal
"""
    d = _StderrDrain(io.BytesIO(log), levelled=True)
    d.run()
    assert d.ready.is_set() and d.out_size == (171, 128) and d.mapped == 0
    assert list(d.lines) == ["[mpeg4] ac-tex damaged at 3 6", "Last message repeated 1 times",
                             "Something fatal"]
    assert d.count == 3 and d.first == "[mpeg4] ac-tex damaged at 3 6"
    assert d.info("/x/a b.avi") == VideoInfo(320, 240, 25.0, 2.0, 0.0, 0, "mpeg4")


# ------------------------------------------------------------------------------------------
# yuv=True: full-range YUV 4:2:0, what the cache encodes its JPEGs from


@pytest.mark.parametrize("size, out", [("320x240", (171, 128)), ("240x320", (128, 171))])   # odd chroma sizes
def test_yuv_output_is_the_rgb_pictures_as_a_jpeg_stores_them(tmp_path, size, out):
    from preprocess.cache import DecodeParams, decode_frame, encode_frame, encode_frame_yuv
    from preprocess.decode import yuv420_frame_bytes, yuv420_planes

    p = make_testsrc(tmp_path / "a.avi", size=size, frames=12, codec=("-c:v", "mpeg4", "-q:v", "2"))
    rgb = decode_all(p, 128)
    video = open_video(p, 128, yuv=True, chunk_frames=5)
    yuv = np.concatenate(list(video))
    w, h = out
    assert video.size == out and yuv.shape == (12, yuv420_frame_bytes(w, h))
    y, u, v = yuv420_planes(yuv, w, h)
    assert y.shape == (12, h, w) and u.shape == v.shape == (12, (h + 1) // 2, (w + 1) // 2)
    assert y.min() < 16 and y.max() > 235          # full range, as a JPEG stores it (not 16-235)
    # the same pictures: as close to ffmpeg's RGB output, decoded as a JPEG (BT.601 full range),
    # as a JPEG encoded from that RGB (4:2:0 both: testsrc2's sharp colour edges cost both alike)
    q100 = DecodeParams(jpeg_quality=100)
    from_yuv = np.stack([decode_frame(encode_frame_yuv(*planes, q100)) for planes in zip(y, u, v)]).astype(int)
    from_rgb = np.stack([decode_frame(encode_frame(f, q100)) for f in rgb]).astype(int)
    err_yuv, err_rgb = np.abs(from_yuv - rgb).mean(), np.abs(from_rgb - rgb).mean()
    grey = lambda x: x @ np.array([0.299, 0.587, 0.114])      # what the masks are computed on
    grey_yuv, grey_rgb = np.abs(grey(from_yuv) - grey(rgb)).mean(), np.abs(grey(from_rgb) - grey(rgb)).mean()
    print(f"mean abs error to ffmpeg's RGB: from YUV {err_yuv:.2f} (grey {grey_yuv:.2f}), from RGB {err_rgb:.2f} "
          f"(grey {grey_rgb:.2f})")
    assert err_yuv < err_rgb + 1.5 and grey_yuv < grey_rgb + 1.0, (err_yuv, err_rgb, grey_yuv, grey_rgb)
    assert abs((from_yuv - rgb).mean()) < 1.0          # no shift of brightness (a range error would be ~10)
    # the two-process form (a probe first) gives the same bytes
    two = np.concatenate(list(iter_frames(p, 128, info=probe(p), yuv=True)))
    np.testing.assert_array_equal(two, yuv)
    with pytest.raises(ValueError, match="not YUV 4:2:0 frames"):
        yuv420_planes(yuv[:, :-1], w, h)


def test_yuv_output_keeps_the_error_policy(vids, tmp_path):
    """The same checks and errors whatever the pixel format: a decoder error mid-file, a truncated
    mkv (ffmpeg's own error), one frame."""
    data = bytearray(vids["xvid"].read_bytes())
    mid = len(data) // 2
    data[mid:mid + 1500] = np.random.default_rng(0).integers(0, 256, 1500, np.uint8).tobytes()
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(bytes(data))
    half = tmp_path / "half.mkv"
    half.write_bytes(vids["vfr"].read_bytes()[: vids["vfr"].stat().st_size // 2])
    one = make_testsrc(tmp_path / "one.avi", frames=1)
    for path, message in ((corrupt, "damaged or truncated: [mpeg4]"), (half, "File ended prematurely"),
                          (one, "only 1 frame decoded")):
        for yuv in (False, True):
            with pytest.raises(DecodeError) as e:
                list(open_video(path, 128, yuv=yuv))
            assert message in str(e.value), (path, yuv)
