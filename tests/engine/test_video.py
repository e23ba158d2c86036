"""Video reading and writing on clips made here with PyAV: timing, audio, GIF, rotation, errors."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import video_clips as clips

from stylize.engine.video import (
    VideoInfo,
    check_video_output,
    is_video,
    open_video,
    upright,
    video_codec_for,
    write_video,
)
from stylize.errors import StylizeError

FRAMES = 24
WIDTH, HEIGHT = 96, 64


def copy_clip(source: Path, target: Path, **options: object) -> VideoInfo:
    """Reads `source` and writes its frames unchanged to `target`; returns the source's info."""
    with open_video(source) as reader, write_video(target, reader.info, **options) as writer:
        for frame in reader.frames():
            writer.write(frame.image, frame.pts)
        return reader.info


def only_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.fixture(scope="module")
def pan_frames() -> list[np.ndarray]:
    return clips.pan(FRAMES, WIDTH, HEIGHT)[0]


@pytest.fixture(scope="module")
def clip_with_sound(tmp_path_factory, pan_frames) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    return clips.write_clip(folder / "pan.mp4", pan_frames, audio="aac")


def test_reader_reports_the_clip_and_streams_its_frames(clip_with_sound, pan_frames):
    with open_video(clip_with_sound) as reader:
        info = reader.info
        assert (info.width, info.height) == (WIDTH, HEIGHT)
        assert info.frame_rate == 24 and info.codec == "h264" and info.rotation == 0
        assert info.frame_count == FRAMES
        assert info.duration == pytest.approx(FRAMES / 24, abs=1 / 24)
        assert info.audio_codecs == ("aac",)
        frames = list(reader.frames())
    assert len(frames) == FRAMES
    assert all(f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [f.pts for f in frames] == sorted({f.pts for f in frames})
    # H.264 at its default quality: close to what was encoded, not equal.
    assert np.abs(frames[5].image.astype(float) - pan_frames[5]).mean() < 6


@pytest.mark.parametrize(
    ("suffix", "codec", "audio"),
    [
        (".mp4", "libx264", "aac"),
        (".mov", "libx264", "aac"),
        (".mkv", "libx264", "libopus"),
        (".webm", "libvpx-vp9", "libopus"),
        (".avi", "mpeg4", None),
    ],
)
def test_copy_keeps_count_rate_duration_and_audio_bytes(tmp_path, pan_frames, suffix, codec, audio):
    source = clips.write_clip(tmp_path / f"in{suffix}", pan_frames, codec=codec, audio=audio)
    target = tmp_path / f"out{suffix}"
    info = copy_clip(source, target)
    with open_video(target) as result:
        out = result.info
        frames = list(result.frames())
    assert len(frames) == FRAMES
    assert out.frame_rate == info.frame_rate == 24
    assert out.codec == {".webm": "vp9", ".avi": "mpeg4"}.get(suffix, "h264")
    assert out.codec == video_codec_for(target)
    assert out.duration == pytest.approx(info.duration, abs=1.5 / 24)
    with open_video(source) as reader:
        decoded = list(reader.frames())
    assert [frame.pts * out.time_base for frame in frames] == [
        frame.pts * info.time_base for frame in decoded
    ]
    for index in (0, FRAMES // 2, FRAMES - 1):
        assert np.abs(frames[index].image.astype(float) - decoded[index].image).mean() < 4
    if audio is not None:
        packets = clips.audio_packets(source)
        assert len(packets) > 10
        assert clips.audio_packets(target) == packets  # copied, not re-encoded
    assert only_files(tmp_path) == sorted([source.name, target.name])


def test_timestamps_of_a_variable_rate_clip_are_kept(tmp_path, pan_frames):
    source = clips.write_clip(tmp_path / "in.mkv", pan_frames[:8])
    target = tmp_path / "out.mkv"
    with open_video(source) as reader, write_video(target, reader.info) as writer:
        # Frames 0, 1, 3, 4, 6, 7 of the clip's clock: two frames dropped, gaps kept.
        kept = [frame for index, frame in enumerate(reader.frames()) if index % 3 != 2]
        for frame in kept:
            writer.write(frame.image, frame.pts)
    in_times = [frame.pts * reader.info.time_base for frame in kept]
    with open_video(target) as result:
        out_times = [frame.pts * result.info.time_base for frame in result.frames()]
    assert out_times == pytest.approx([float(t) for t in in_times], abs=1e-3)


def test_gif_in_gif_out(tmp_path, pan_frames):
    source = clips.write_clip(tmp_path / "in.gif", pan_frames[:12], codec="gif", fps=10)
    target = tmp_path / "out.gif"
    info = copy_clip(source, target)
    assert info.is_gif and info.time_base == Fraction(1, 100)
    with open_video(target) as result:
        assert result.info.is_gif and (result.info.width, result.info.height) == (WIDTH, HEIGHT)
        frames = list(result.frames())
    assert len(frames) == 12
    assert [f.pts for f in frames] == [10 * index for index in range(12)]  # 10 fps kept
    with open_video(source) as reader:
        originals = [frame.image for frame in reader.frames()]
    # A palette of its own per frame: close to the 3-3-2-bit input, far from banding.
    assert np.abs(frames[6].image.astype(float) - originals[6]).mean() < 12


def test_rotation_is_kept(tmp_path, pan_frames):
    source = clips.write_clip(tmp_path / "in.mp4", pan_frames[:6])
    clips.rotate_mp4(source, 90)
    target = tmp_path / "out.mp4"
    info = copy_clip(source, target)
    assert info.rotation == 90
    with open_video(source) as reader:
        shown = [upright(frame.image, reader.info.rotation) for frame in reader.frames()]
    with open_video(target) as result:
        out = result.info
        out_shown = [upright(frame.image, out.rotation) for frame in result.frames()]
    # As a display matrix where PyAV writes one, else turned into the pixels: shown the same.
    assert out.rotation in (0, 90)
    assert out_shown[0].shape == shown[0].shape == (WIDTH, HEIGHT, 3)
    assert np.abs(out_shown[3].astype(float) - shown[3]).mean() < 6
    assert np.abs(out_shown[3].astype(float) - np.rot90(shown[3], 2)).mean() > 20


def test_odd_sizes_are_padded_for_h264_and_said(tmp_path):
    frames = clips.pan(6, 97, 63)[0]
    source = clips.write_clip(tmp_path / "in.webm", frames, codec="libvpx-vp9")
    target = tmp_path / "out.mp4"
    with open_video(source) as reader, write_video(target, reader.info) as writer:
        assert (reader.info.width, reader.info.height) == (97, 63)
        for frame in reader.frames():
            writer.write(frame.image, frame.pts)
        assert writer.size == (98, 64)
        assert writer.adjustment is not None and "97x63" in writer.adjustment
    with open_video(target) as result:
        last = list(result.frames())[-1].image
    assert last.shape == (64, 98, 3)
    assert np.abs(last[:63, :97].astype(float) - frames[-1]).mean() < 8
    # The added column repeats the last one.
    assert np.abs(last[:63, 97].astype(float) - last[:63, 96]).mean() < 3


def test_video_to_gif_drops_the_sound_and_says_so(tmp_path, clip_with_sound):
    target = tmp_path / "out.gif"
    with open_video(clip_with_sound) as reader, write_video(target, reader.info) as writer:
        for frame in reader.frames():
            writer.write(frame.image, frame.pts)
        assert writer.audio_dropped
    with open_video(target) as result:
        assert len(list(result.frames())) == FRAMES


# --- Bad input: one line, nothing written --------------------------------------------------


def make_bad(kind: str, folder: Path, pan_frames: list[np.ndarray]) -> Path:
    if kind == "not a video":
        path = folder / "noise.mp4"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif kind == "no video stream":
        path = clips.write_sound_only(folder / "sound.mka")
    elif kind == "truncated index":
        path = clips.write_clip(folder / "cut.mp4", pan_frames)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # the index (moov) comes last: gone
    elif kind == "truncated data":
        path = clips.write_clip(folder / "cut.mp4", pan_frames, options={"movflags": "faststart"})
        data = path.read_bytes()
        assert data.find(b"moov") < data.find(b"mdat")  # the index first, then the frames
        path.write_bytes(data[: (data.find(b"mdat") + len(data)) // 2])
    elif kind == "unsupported codec":
        path = clips.write_clip(folder / "odd.mkv", pan_frames[:4])
        data = path.read_bytes()
        at = data.find(b"V_MPEG4/ISO/AVC")
        path.write_bytes(data[:at] + b"V_STYLIZE_NONE!" + data[at + 15 :])
    elif kind == "too small":
        path = clips.write_clip(folder / "tiny.mp4", [frame[:12, :16] for frame in pan_frames[:4]])
    else:
        raise AssertionError(kind)
    return path


BAD = {
    "not a video": "not a video file",
    "no video stream": "no video stream",
    "truncated index": "not a video file, or corrupt",
    "truncated data": "truncated",
    "unsupported codec": "codec is not supported",
    "too small": "frames too small (16x12)",
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, pan_frames, kind):
    source = make_bad(kind, tmp_path, pan_frames)
    before = only_files(tmp_path)
    target = tmp_path / "out.mp4"
    with pytest.raises(StylizeError) as caught:
        copy_clip(source, target)
    message = str(caught.value)
    assert BAD[kind] in message and str(source) in message and "\n" not in message
    assert only_files(tmp_path) == before  # no output, no temporary


def test_missing_file(tmp_path):
    with pytest.raises(StylizeError, match="no such file"):
        open_video(tmp_path / "absent.mp4")


def test_an_error_while_writing_leaves_nothing(tmp_path, clip_with_sound):
    target = tmp_path / "out.mp4"
    with (
        pytest.raises(KeyboardInterrupt),
        open_video(clip_with_sound) as reader,
        write_video(target, reader.info) as writer,
    ):
        for index, frame in enumerate(reader.frames()):
            writer.write(frame.image, frame.pts)
            if index == 10:
                raise KeyboardInterrupt
    assert only_files(tmp_path) == []


def test_output_checks(tmp_path, clip_with_sound):
    existing = tmp_path / "out.mp4"
    existing.write_bytes(b"keep")
    with open_video(clip_with_sound) as reader:
        with (
            pytest.raises(StylizeError, match="already exists"),
            write_video(existing, reader.info),
        ):
            pass
        with pytest.raises(StylizeError, match=r"unsupported video type '\.png'"):
            check_video_output(tmp_path / "out.png")
        with (
            pytest.raises(StylizeError, match="crf must be between 0 and 51"),
            write_video(tmp_path / "new.mp4", reader.info, crf=60),
        ):
            pass
    assert existing.read_bytes() == b"keep"
    copy_clip(clip_with_sound, existing, overwrite=True, crf=30)
    assert existing.stat().st_size > 1000
    assert only_files(tmp_path) == ["out.mp4"]


def test_crf_changes_the_quality(tmp_path, pan_frames):
    source = clips.write_clip(tmp_path / "in.mp4", pan_frames)
    sizes = {}
    for crf in (10, 40):
        copy_clip(source, tmp_path / f"crf{crf}.mp4", crf=crf)
        sizes[crf] = (tmp_path / f"crf{crf}.mp4").stat().st_size
    assert sizes[10] > 2 * sizes[40]


def test_is_video():
    assert is_video("a/clip.MP4") and is_video("x.gif") and is_video("y.webm")
    assert not is_video("photo.jpg")


def test_a_frame_size_that_changes_mid_clip_is_one_line(tmp_path):
    import av

    # Two raw H.264 streams of different sizes, one after the other: the decoder follows the
    # new size mid-stream, as in a spliced broadcast recording.
    parts = []
    for index, (width, height) in enumerate([(64, 48), (96, 64)]):
        part = tmp_path / f"part{index}.h264"
        with av.open(str(part), "w", format="h264") as output:
            stream = output.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for shade in range(3):
                picture = np.full((height, width, 3), 60 * shade, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    output.mux(packet)
            for packet in stream.encode():
                output.mux(packet)
        parts.append(part.read_bytes())
    path = tmp_path / "spliced.h264"
    path.write_bytes(b"".join(parts))
    message = "frame size changes from 64x48 to 96x64"
    with open_video(path) as reader, pytest.raises(StylizeError, match=message):
        list(reader.frames())
