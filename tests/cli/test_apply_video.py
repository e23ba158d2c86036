"""`stylize apply` on videos and animated GIFs: timing and sound kept, every style family,
temporal stability, folders mixing photos and clips, bad input, Ctrl-C, pipes and options.

The clips are made here with PyAV (tests/engine/video_clips.py), a few dozen small frames each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from real_weights import WHEEL
from stylize.cli import _stylizers, apply
from stylize.engine.onnx_run import OnnxPredictor, OnnxStylizer
from stylize.engine.temporal import DEFAULT_WEIGHT, warping_error
from stylize.engine.video import CRF_RANGE, DEFAULT_CRF, open_video
from stylize.store.registry import import_model

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
import video_clips as clips

FRAMES, WIDTH, HEIGHT = 24, 96, 64


@pytest.fixture(scope="module")
def pan_frames() -> list[np.ndarray]:
    return clips.pan(FRAMES, WIDTH, HEIGHT)[0]


@pytest.fixture
def clip(tmp_path: Path, pan_frames: list[np.ndarray]) -> Path:
    """A 24-frame 96x64 pan at 24 fps with an AAC tone."""
    return clips.write_clip(tmp_path / "pan.mp4", pan_frames, audio="aac")


def written(result) -> list[str]:
    return result.stdout.splitlines()


def files(folder: Path) -> list[str]:
    """Every file under `folder` (temporaries included), relative, sorted."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def one_line(text: str) -> str:
    return " ".join(text.split())


def decoded(path: Path) -> tuple[list[np.ndarray], object]:
    with open_video(path) as reader:
        return [frame.image for frame in reader.frames()], reader.info


# --- Outputs: timing, sound, containers ----------------------------------------------------


def test_a_clip_keeps_its_frames_rate_duration_and_audio_packets(cli, tiny, clip):
    result = cli("apply", clip, "-s", tiny)
    assert result.exit_code == 0, result.stderr
    target = clip.with_name("pan.tiny.mp4")
    assert written(result) == [str(target)]
    frames, info = decoded(target)
    _, source = decoded(clip)
    assert len(frames) == FRAMES and info.frame_count == FRAMES
    assert info.frame_rate == source.frame_rate == 24
    assert info.duration == pytest.approx(source.duration, abs=1 / 24)
    assert (info.width, info.height) == (WIDTH, HEIGHT) and info.codec == "h264"
    assert clips.audio_packets(target) == clips.audio_packets(clip)  # copied, not re-encoded
    # Stylized, not copied.
    originals, _ = decoded(clip)
    assert np.abs(frames[5].astype(float) - originals[5]).mean() > 10
    assert files(clip.parent) == ["pan.mp4", "pan.tiny.mp4"]


def test_progress_bar_counts_frames_and_shows_fps_and_quiet_silences_it(cli, tiny, clip):
    shown = cli("apply", clip, "-s", tiny)
    assert shown.exit_code == 0, shown.stderr
    assert "pan.mp4" in shown.stderr and f"{FRAMES}/{FRAMES}" in shown.stderr
    assert " fps" in shown.stderr
    quiet = cli("apply", clip, "-s", tiny, "-q", "--overwrite")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_gif_in_gif_out_and_a_still_gif_stays_an_image(cli, tiny, tmp_path, pan_frames):
    animated = clips.write_clip(tmp_path / "anim.gif", pan_frames[:10], codec="gif", fps=10)
    still = tmp_path / "still.gif"
    Image.fromarray(pan_frames[0]).save(still)
    result = cli("apply", animated, still, "-s", tiny)
    assert result.exit_code == 0, result.stderr
    assert written(result) == [str(tmp_path / "anim.tiny.gif"), str(tmp_path / "still.tiny.png")]
    frames, info = decoded(tmp_path / "anim.tiny.gif")
    assert info.is_gif and len(frames) == 10 and (info.width, info.height) == (WIDTH, HEIGHT)
    with open_video(tmp_path / "anim.tiny.gif") as reader:
        assert [frame.pts for frame in reader.frames()] == [10 * i for i in range(10)]


@pytest.mark.parametrize(
    ("suffix", "codec", "audio"),
    [(".mkv", "libx264", "libopus"), (".webm", "libvpx-vp9", "libopus"), (".avi", "mpeg4", None)],
)
def test_other_containers_keep_their_own(cli, tiny, tmp_path, pan_frames, suffix, codec, audio):
    source = clips.write_clip(tmp_path / f"in{suffix}", pan_frames[:8], codec=codec, audio=audio)
    result = cli("apply", source, "-s", tiny, "-q")
    assert result.exit_code == 0, result.stderr
    target = tmp_path / f"in.tiny{suffix}"
    assert written(result) == [str(target)]
    frames, _ = decoded(target)
    assert len(frames) == 8
    if audio:
        assert clips.audio_packets(target) == clips.audio_packets(source)


def test_output_file_may_change_the_container_and_a_gif_drops_the_sound(cli, tiny, clip):
    target = clip.with_name("out.gif")
    result = cli("apply", clip, "-s", tiny, "-o", target, "-q")
    assert result.exit_code == 0, result.stderr
    assert written(result) == [str(target)]
    assert "GIF has no sound" in one_line(result.stderr)  # a warning: -q keeps it
    frames, info = decoded(target)
    assert info.is_gif and len(frames) == FRAMES


def test_odd_frame_sides_are_noted(cli, tiny, tmp_path):
    frames = clips.pan(6, 97, 63)[0]
    source = clips.write_clip(tmp_path / "odd.webm", frames, codec="libvpx-vp9")
    result = cli("apply", source, "-s", tiny, "-o", tmp_path / "odd.mp4")
    assert result.exit_code == 0, result.stderr
    assert "note: odd.mp4: H.264 needs even frame sides: 97x63" in one_line(result.stderr)
    quiet = cli("apply", source, "-s", tiny, "-o", tmp_path / "odd.mp4", "--overwrite", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_rotation_metadata_is_kept(cli, tiny, tmp_path, pan_frames):
    source = clips.write_clip(tmp_path / "turned.mp4", pan_frames[:6])
    clips.rotate_mp4(source, 90)
    result = cli("apply", source, "-s", tiny, "-q")
    assert result.exit_code == 0, result.stderr
    _, info = decoded(tmp_path / "turned.tiny.mp4")
    # As metadata where PyAV writes a display matrix (18.1 and later), else turned into the
    # pixels (and said): displayed the same either way.
    assert (info.rotation, info.width, info.height) in (
        (90, WIDTH, HEIGHT),
        (0, HEIGHT, WIDTH),
    )


def test_max_size_shrinks_the_frames(cli, tiny, clip):
    result = cli("apply", clip, "-s", tiny, "--max-size", "48", "-q")
    assert result.exit_code == 0, result.stderr
    frames, info = decoded(clip.with_name("pan.tiny.mp4"))
    assert (info.width, info.height) == (48, 32) and len(frames) == FRAMES
    assert clips.audio_packets(clip.with_name("pan.tiny.mp4")) == clips.audio_packets(clip)


def test_crf_changes_the_size_and_is_checked_against_the_encoder(cli, tiny, clip, pan_frames):
    sizes = {}
    for crf in ("10", "40"):
        target = clip.with_name(f"crf{crf}.mp4")
        result = cli("apply", clip, "-s", tiny, "--crf", crf, "-o", target, "-q")
        assert result.exit_code == 0, result.stderr
        sizes[crf] = target.stat().st_size
    assert sizes["10"] > 1.5 * sizes["40"]
    refused = cli("apply", clip, "-s", tiny, "--crf", "60", "-o", clip.with_name("x.mp4"))
    assert refused.exit_code == 2
    assert "60 is outside 0 to 51, the range of h264" in one_line(refused.stderr)
    assert not clip.with_name("x.mp4").exists()
    silent = clips.write_clip(clip.with_name("silent.mp4"), pan_frames[:6])
    webm = cli("apply", silent, "-s", tiny, "--crf", "60", "-o", clip.with_name("x.webm"), "-q")
    assert webm.exit_code == 0, webm.stderr  # VP9 goes to 63


def test_audio_a_container_cannot_hold_is_one_line_and_writes_nothing(cli, tiny, clip):
    result = cli("apply", clip, "-s", tiny, "-o", clip.with_name("x.webm"), "-q")
    assert result.exit_code == 1
    assert "cannot copy the audio (aac) into a .webm file" in one_line(result.stderr)
    assert files(clip.parent) == ["pan.mp4"]


def test_temporal_weight_range(cli, tiny, clip):
    for value in ("1", "-0.1"):
        result = cli("apply", clip, "-s", tiny, "--temporal-weight", value)
        assert result.exit_code == 2 and "0 <= x < 1" in one_line(result.stderr)
    assert files(clip.parent) == ["pan.mp4"]


def test_option_defaults_and_help_follow_the_engine():
    assert apply._TEMPORAL_WEIGHT == DEFAULT_WEIGHT
    (h264_low, h264_high), (vp9_low, vp9_high) = CRF_RANGE["h264"], CRF_RANGE["vp9"]
    mpeg4_low, mpeg4_high = CRF_RANGE["mpeg4"]
    for text in (
        f"Default {DEFAULT_CRF['h264']} for H.264 (mp4, mov, mkv; {h264_low} to {h264_high})",
        f"{DEFAULT_CRF['vp9']} for VP9 (webm; {vp9_low} to {vp9_high})",
        f"a quantizer of {DEFAULT_CRF['mpeg4']} for avi ({mpeg4_low} to {mpeg4_high})",
    ):
        assert text in apply._CRF_HELP


# --- Style families ------------------------------------------------------------------------


def test_the_26_style_network_and_its_blends(cli, real26, clip):
    result = cli("apply", clip, "-s", "starry", "-s", "great-wave", "-q")
    assert result.exit_code == 0, result.stderr
    target = clip.with_name("pan.starry+great-wave.mp4")
    assert written(result) == [str(target)]
    frames, _ = decoded(target)
    assert len(frames) == FRAMES


def test_a_style_picture_binds_its_style_once_per_clip(
    cli, stylize_home, clip, make_image, monkeypatch
):
    assert import_model(WHEEL) == "arbitrary"
    painting = make_image("painting.jpg", size=(80, 60), seed=5)
    calls = []
    vectors = []
    # On a CPU-only machine style pictures run on ONNX Runtime, elsewhere on PyTorch.
    for engine in (_stylizers.OnnxStylizers, _stylizers.TorchStylizers):

        def counted(self, content, strength, for_photo=engine.for_photo):
            calls.append(content.shape)
            return for_photo(self, content, strength)

        monkeypatch.setattr(engine, "for_photo", counted)
    vector_of = OnnxPredictor.vector_of

    def counted_vector(self, image):
        vectors.append(image.shape)
        return vector_of(self, image)

    monkeypatch.setattr(OnnxPredictor, "vector_of", counted_vector)
    result = cli("apply", clip, "-s", painting, "--strength", "0.5", "-q")
    assert result.exit_code == 0, result.stderr
    frames, _ = decoded(clip.with_name("pan.painting.mp4"))
    assert len(frames) == FRAMES
    # The first frame's style vector for the whole clip: steady, and the predictor runs once
    # for the painting and once for the clip.
    assert calls == [(1, 3, HEIGHT, WIDTH)]
    assert vectors == [(1, 3, 60, 80), (1, 3, HEIGHT, WIDTH)]


def test_stability_lowers_the_warping_error(cli, real26, tmp_path):
    frames, flow = clips.pan(FRAMES, 128, 96, step=(2, 1))
    source = clips.write_clip(tmp_path / "pan.mp4", frames)
    errors = {}
    for weight in ("0", str(DEFAULT_WEIGHT)):
        target = tmp_path / f"w{weight}.mp4"
        args = ("apply", source, "-s", "starry", "-o", target, "--crf", "10", "-q")
        result = cli(*args, "--temporal-weight", weight)
        assert result.exit_code == 0, result.stderr
        out, _ = decoded(target)
        errors[weight] = np.mean(
            [warping_error(out[i - 1], out[i], flow) for i in range(1, len(out))]
        )
    # The default at most halves frame by frame's flicker along the true motion (0.40 here).
    assert errors[str(DEFAULT_WEIGHT)] < 0.5 * errors["0"]


# --- Folders -------------------------------------------------------------------------------


def test_a_folder_mixing_photos_and_clips_handles_each(cli, tiny, tmp_path, make_image, pan_frames):
    folder = tmp_path / "trip"
    make_image("trip/a.png")
    clips.write_clip(folder / "b.mkv", pan_frames[:6], audio="libopus")
    clips.write_clip(folder / "c.gif", pan_frames[:5], codec="gif", fps=10)
    make_image("trip/d.jpg", seed=1)
    out = tmp_path / "out"
    result = cli("apply", folder, "-s", tiny, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert written(result) == [
        str(out / name) for name in ("a.tiny.png", "b.tiny.mkv", "c.tiny.gif", "d.tiny.jpg")
    ]
    assert len(decoded(out / "b.tiny.mkv")[0]) == 6 and len(decoded(out / "c.tiny.gif")[0]) == 5
    # A rerun beside the inputs does not take its own results as inputs.
    beside = cli("apply", folder, "-s", tiny, "-q")
    assert beside.exit_code == 0, beside.stderr
    again = cli("apply", folder, "-s", tiny, "-q", "--skip-existing")
    assert again.exit_code == 0 and written(again) == []


# --- Bad input -----------------------------------------------------------------------------


def make_bad(kind: str, folder: Path, frames: list[np.ndarray]) -> Path:
    if kind == "not a video":
        path = folder / "noise.mp4"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif kind == "no video stream":
        path = clips.write_sound_only(folder / "sound.mkv")
    elif kind == "truncated":
        path = clips.write_clip(folder / "cut.mp4", frames, options={"movflags": "faststart"})
        data = path.read_bytes()
        start = data.find(b"mdat")
        # The index first, then the frames: the last tenth of them gone, found mid-clip.
        path.write_bytes(data[: start + (len(data) - start) * 9 // 10])
    elif kind == "corrupt index":
        path = clips.write_clip(folder / "cut.mp4", frames)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # the index (moov) comes last: gone
    elif kind == "unsupported codec":
        path = clips.write_clip(folder / "odd.mkv", frames[:4])
        data = path.read_bytes()
        at = data.find(b"V_MPEG4/ISO/AVC")
        path.write_bytes(data[:at] + b"V_STYLIZE_NONE!" + data[at + 15 :])
    elif kind == "too small":
        path = clips.write_clip(folder / "tiny.mp4", [frame[:12, :16] for frame in frames[:4]])
    else:
        raise AssertionError(kind)
    return path


BAD = {
    "not a video": "not a video file",
    "no video stream": "it has no video stream",
    # FFmpeg either reports the cut (older) or decodes what it can (newer, then counted).
    "truncated": "truncated",
    "corrupt index": "not a video file, or corrupt",
    "unsupported codec": "its video codec is not supported",
    "too small": "frames too small (16x12)",
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_and_writes_nothing(cli, tiny, tmp_path, pan_frames, kind):
    folder = tmp_path / "in"
    folder.mkdir()
    source = make_bad(kind, folder, pan_frames)
    before = files(tmp_path)
    result = cli("apply", source, "-s", tiny, "-q")  # -q: no progress line, only the error
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert BAD[kind] in lines[0] and source.name in lines[0]
    assert written(result) == [] and files(tmp_path) == before


def test_in_a_folder_a_bad_clip_is_reported_and_the_rest_continue(
    cli, tiny, tmp_path, pan_frames, make_image
):
    folder = tmp_path / "in"
    folder.mkdir()
    bad = make_bad("truncated", folder, pan_frames)
    clips.write_clip(folder / "good.mp4", pan_frames[:6])
    make_image("in/photo.png")
    result = cli("apply", folder, "-s", tiny, "-q")
    assert result.exit_code == 1
    assert written(result) == [str(folder / "good.tiny.mp4"), str(folder / "photo.tiny.png")]
    errors = one_line(result.stderr)
    assert f"error: cannot read {bad}: " in errors and "truncated" in errors
    assert "error: 1 of 3 inputs failed" in errors
    assert not (folder / "cut.tiny.mp4").exists()
    assert not [name for name in files(tmp_path) if name.endswith(".tmp")]


def test_an_existing_output_needs_overwrite(cli, tiny, clip):
    target = clip.with_name("pan.tiny.mp4")
    target.write_bytes(b"an earlier result")
    refused = cli("apply", clip, "-s", tiny)
    assert refused.exit_code == 1 and "--overwrite" in refused.stderr
    assert target.read_bytes() == b"an earlier result"
    skipped = cli("apply", clip, "-s", tiny, "--skip-existing")
    assert skipped.exit_code == 0 and written(skipped) == []
    replaced = cli("apply", clip, "-s", tiny, "--overwrite", "-q")
    assert replaced.exit_code == 0 and len(decoded(target)[0]) == FRAMES


def test_a_video_output_name_for_a_photo_and_an_image_name_for_a_clip(cli, tiny, clip, make_image):
    photo = make_image("photo.png")
    result = cli("apply", photo, "-s", tiny, "-o", clip.with_name("photo.mp4"))
    assert result.exit_code == 1 and "unsupported image type '.mp4'" in result.stderr
    result = cli("apply", clip, "-s", tiny, "-o", clip.with_name("frame.png"))
    assert result.exit_code == 1 and "unsupported video type '.png'" in result.stderr
    assert files(clip.parent) == ["pan.mp4", "photo.png"]


# --- Pipes ---------------------------------------------------------------------------------


def test_a_video_cannot_go_through_pipes(cli, tiny, clip):
    out = cli("apply", clip, "-s", tiny, "-o", "-")
    assert out.exit_code == 2
    assert "a video cannot be written to standard output" in one_line(out.stderr)
    into = cli("apply", "-", "-s", tiny, "-o", clip.with_name("x.mp4"), input="")
    assert into.exit_code == 2
    assert "a video cannot be read from standard input" in one_line(into.stderr)
    assert files(clip.parent) == ["pan.mp4"]


def test_a_video_on_standard_input_says_so(cli, tiny, clip):
    result = cli("apply", "-", "-s", tiny, "-o", clip.with_name("x.png"), input=clip.read_bytes())
    assert result.exit_code == 1
    assert "standard input holds a video" in one_line(result.stderr)


# --- Ctrl-C --------------------------------------------------------------------------------


def test_ctrl_c_during_a_clip_writes_nothing_says_what_was_kept_and_exits_130(
    cli, tiny, tmp_path, pan_frames, make_image, monkeypatch
):
    folder = tmp_path / "in"
    make_image("in/a.png")
    clips.write_clip(folder / "b.mp4", pan_frames, audio="aac")
    make_image("in/c.png", seed=1)
    calls = []
    call = OnnxStylizer.__call__

    def interrupted(self, content, **options):
        calls.append(content.shape)
        if len(calls) == 1 + 10:  # the photo, then ten frames of the clip
            raise KeyboardInterrupt
        return call(self, content, **options)

    monkeypatch.setattr(OnnxStylizer, "__call__", interrupted)
    result = cli("apply", folder, "-s", tiny)
    assert result.exit_code == 130
    assert written(result) == [str(folder / "a.tiny.png")]
    message = one_line(result.stderr)
    assert (
        f"warning: interrupted during {folder / 'b.mp4'}: {folder / 'b.tiny.mp4'} was not "
        f"written; kept 1 finished file(s): {folder / 'a.tiny.png'}"
    ) in message
    assert files(folder) == ["a.png", "a.tiny.png", "b.mp4", "c.png"]  # no temporary either


def test_ctrl_c_before_anything_finished(cli, tiny, clip, monkeypatch):
    def interrupted(self, content, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxStylizer, "__call__", interrupted)
    result = cli("apply", clip, "-s", tiny, "-q")
    assert result.exit_code == 130
    assert "nothing was written" in one_line(result.stderr)
    assert files(clip.parent) == ["pan.mp4"]


def test_a_real_sigint_mid_clip_stops_it_the_same_way(cli, tiny, clip, monkeypatch):
    import os
    import signal

    calls = []
    call = OnnxStylizer.__call__

    def signalled(self, content, **options):
        calls.append(1)
        if len(calls) == 6:  # on a frame thread: the main thread gets KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        return call(self, content, **options)

    monkeypatch.setattr(OnnxStylizer, "__call__", signalled)
    result = cli("apply", clip, "-s", tiny, "-q")
    assert result.exit_code == 130
    assert f"{clip.with_name('pan.tiny.mp4')} was not written" in one_line(result.stderr)
    assert files(clip.parent) == ["pan.mp4"]


def test_json_names_a_clip_a_video(cli, tiny, clip):
    import json

    result = cli("apply", clip, "-s", tiny, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["kind"] == "video" and record["status"] == "written"
    assert record["output"] == str(clip.with_name("pan.tiny.mp4"))
