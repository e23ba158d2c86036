"""Temporal stability: flow warping, the occlusion check, the warping error, and the stabilizer
on clips with known motion, with the real 26-style network."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch
import video_clips as clips

from real_weights import TF_GRAPHDEF
from stylize.engine.inference import Stylizer
from stylize.engine.multistyle import load_multistyle
from stylize.engine.runtime import Runtime
from stylize.engine.temporal import (
    DEFAULT_WEIGHT,
    TemporalStabilizer,
    consistent,
    inside,
    warp,
    warping_error,
)
from stylize.engine.video import open_video, write_video
from stylize.store.formats.tf_graphdef import read_multistyle_graphdef

WIDTH, HEIGHT = 96, 64


def clip_error(frames: list[np.ndarray], flows: list[np.ndarray], masks=None) -> float:
    masks = masks or [None] * len(flows)
    pairs = itertools.pairwise(frames)
    errors = [warping_error(a, b, f, m) for (a, b), f, m in zip(pairs, flows, masks, strict=False)]
    return float(np.mean(errors))


def stabilize(weight: float, inputs: list[np.ndarray], stylized: list[np.ndarray]) -> list:
    stabilizer = TemporalStabilizer(weight)
    return [stabilizer(frame, styled) for frame, styled in zip(inputs, stylized, strict=True)]


def test_warp_follows_the_flow():
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3)).astype(np.float32)
    flow = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3, -2
    warped = warp(image, flow)
    # The result at p is the image at p + (3, -2).
    np.testing.assert_array_equal(warped[2:, : WIDTH - 3], image[:-2, 3:])
    assert inside(flow, WIDTH, HEIGHT).sum() == (WIDTH - 3) * (HEIGHT - 2)


def test_warping_error_is_zero_for_exact_motion_and_grows_with_flicker():
    frames, flow = clips.pan(6, WIDTH, HEIGHT, step=(2, 1))
    flows = [flow] * 5
    assert clip_error(frames, flows) < 1e-10
    noise = np.random.default_rng(1)
    flickering = [
        np.clip(frame + noise.normal(0, 8, frame.shape), 0, 255).astype(np.uint8)
        for frame in frames
    ]
    # Independent noise of sigma 8 levels in both frames: 2 * (8/255)**2 = 0.002.
    assert clip_error(flickering, flows) == pytest.approx(2 * (8 / 255) ** 2, rel=0.15)


def test_consistency_check_flags_what_the_moving_object_uncovers():
    frames, _, masks = clips.moving_object(8, 192, 128, step=4, side=40)
    stabilizer = TemporalStabilizer(0.5)
    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames[3:5]]
    backward = stabilizer._flow.calc(gray[1], gray[0], None)
    forward = stabilizer._flow.calc(gray[0], gray[1], None)
    valid = consistent(backward, forward)
    uncovered = ~masks[3]  # the strip the square left between frames 3 and 4
    assert uncovered.sum() == 4 * 40
    # DIS smooths the flow over its 8-pixel patches, so only part of the strip is caught
    # (measured: 26% of it, against 7% of the rest, motion boundaries included).
    assert (~valid[uncovered]).mean() > 3 * (~valid[masks[3]]).mean()


def test_weight_zero_is_frame_by_frame_and_arguments_are_checked():
    frames, _ = clips.pan(3, WIDTH, HEIGHT)
    styled = [np.flip(frame, 0).copy() for frame in frames]
    for output, expected in zip(stabilize(0.0, frames, styled), styled, strict=True):
        np.testing.assert_array_equal(output, expected)
    with pytest.raises(ValueError, match="below 1"):
        TemporalStabilizer(1.0)
    with pytest.raises(ValueError, match="preset"):
        TemporalStabilizer(0.5, preset="slow")
    with pytest.raises(ValueError, match="differ"):
        TemporalStabilizer(0.5)(frames[0], styled[0][:10])


def test_flicker_noise_is_averaged_along_the_motion():
    frames, flow = clips.pan(16, WIDTH, HEIGHT, step=(2, 1))
    noise = np.random.default_rng(2)
    flickering = [
        np.clip(frame + noise.normal(0, 10, frame.shape), 0, 255).astype(np.uint8)
        for frame in frames
    ]
    flows = [flow] * 15
    before = clip_error(flickering, flows)
    after = clip_error(stabilize(DEFAULT_WEIGHT, frames, flickering), flows)
    assert after < 0.5 * before


@pytest.fixture(scope="module")
def stylizer() -> Stylizer:
    weights = torch.zeros(26)
    weights[19] = 1.0
    net = load_multistyle(read_multistyle_graphdef(TF_GRAPHDEF)).bind(weights)
    return Stylizer(net, Runtime.create("cpu", "fp32"))


def stylize(stylizer: Stylizer, frames: list[np.ndarray]) -> list[np.ndarray]:
    batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    result = stylizer(batch).permute(0, 2, 3, 1).numpy()
    return list(np.clip(np.rint(result * 255), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("motion", ["pan", "zoom"])
def test_stability_lowers_the_warping_error_of_the_real_network(tmp_path, stylizer, motion):
    count = 16
    if motion == "pan":
        frames, flow = clips.pan(count, WIDTH, HEIGHT, step=(3, 1))
        flows = [flow] * (count - 1)
    else:
        frames, flows = clips.zoom(count, WIDTH, HEIGHT, factor=1.02)
    # Through H.264 and back, as a real clip: compression noise is one source of flicker.
    source = clips.write_clip(tmp_path / "in.mp4", frames)
    with open_video(source) as reader:
        decoded = [frame.image for frame in reader.frames()]
    per_frame = stylize(stylizer, decoded)
    stable = stabilize(DEFAULT_WEIGHT, decoded, per_frame)
    before, after = clip_error(per_frame, flows), clip_error(stable, flows)
    # At 640x360 the default weight halves the error (benchmarks/bench_video.py); on these
    # 96x64 frames DIS works at 24x16 and does a little worse (measured: pan 0.45, zoom 0.56).
    assert after <= 0.65 * before, (before, after)
    # The style does not wash out: each frame stays near its own stylization, and keeps its
    # fine texture (mean absolute horizontal gradient).
    pairs = zip(stable, per_frame, strict=True)
    difference = np.mean([np.abs(a.astype(float) - b).mean() for a, b in pairs])
    assert difference < 25, difference
    detail = np.mean([np.abs(np.diff(a.astype(float), axis=1)).mean() for a in stable[4:]])
    reference = np.mean([np.abs(np.diff(a.astype(float), axis=1)).mean() for a in per_frame[4:]])
    assert detail > 0.6 * reference, (detail, reference)
    # And the stabilized frames encode as a clip like any others.
    with open_video(source) as reader, write_video(tmp_path / "out.mp4", reader.info) as writer:
        for frame, image in zip(reader.frames(), stable, strict=True):
            writer.write(image, frame.pts)
    assert (tmp_path / "out.mp4").stat().st_size > 0
