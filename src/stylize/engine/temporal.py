"""Temporal stability for video: stylized frames that follow the motion instead of flickering.

A feed-forward style network sees each frame alone, so small changes between frames (noise,
motion, compression) move its brush texture around: the clip shimmers. `TemporalStabilizer`
carries the previous output along the motion of the INPUT clip: DIS optical flow (OpenCV, CPU)
between consecutive input frames warps the previous output frame onto the current one, and
where the flow is trustworthy the two are blended,

    out = where(valid, w * warped + (1 - w) * stylized, stylized)

with temporal weight `w` (0: plain frame by frame). `valid` excludes pixels whose forward and
backward flows disagree and motion boundaries (occlusions and disocclusions, as in Ruder et
al., "Artistic style transfer for videos", 2016), and pixels from outside the previous frame.
Since the previous output already holds its own predecessors, the texture is an average along
each motion path, decaying as w**age. The repeated bilinear warps also soften it: the cost that
keeps the default weight low (see DEFAULT_WEIGHT).

`warping_error` is the flicker metric of Lai et al. ("Learning blind video temporal
consistency", ECCV 2018): the mean squared difference between an output frame and the previous
output frame warped by the true motion, over the pixels that motion does not occlude.

OpenCV is imported when a stabilizer is made, so the CLI starts without it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# Chosen by benchmarks/bench_video.py (640x360 pan and zoom, 26-style network, style 19): 0.3 is
# the lightest weight measured that halves the frame-by-frame warping error on both clips (0.41
# and 0.44 of it with "fast"), and the heavier ones blur the texture more (fine detail 0.71 of
# the per-frame stylization's at 0.3, 0.54 at 0.5, 0.40 at 0.7). "fast" flags a sixth as many
# pixels inconsistent as "ultrafast" (1.3% against 7.8% on the pan) and flickers less, for
# well under a tenth of the stylization's time; "medium" costs twice as much for nothing measurable.
DEFAULT_WEIGHT = 0.3
DEFAULT_PRESET = "fast"
PRESETS = ("ultrafast", "fast", "medium")
# Ruder et al.'s forward-backward test: the round trip must return within 1% of the squared
# flow lengths plus half a pixel squared.
_CONSISTENCY_RELATIVE = 0.01
_CONSISTENCY_ABSOLUTE = 0.5
# Their motion-boundary test: DIS smooths the flow across an object's edge, so the background an
# object uncovers gets part of the object's motion and can pass the round trip; a steep flow
# gradient (squared, per pixel) marks those edges.
_BOUNDARY_RELATIVE = 0.01
_BOUNDARY_ABSOLUTE = 0.002


class TemporalStabilizer:
    """Stabilizes a stream of stylized frames; call it with each (input, stylized) pair in order.

    Frames are HxWx3 arrays, uint8 or float in [0, 255]; the result is uint8. The state is one
    float32 frame and one grayscale frame, so memory does not grow with the clip. `reset()`
    starts over (a new clip, or a cut).
    """

    def __init__(self, weight: float = DEFAULT_WEIGHT, *, preset: str = DEFAULT_PRESET) -> None:
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"temporal weight must be at least 0 and below 1, got {weight}")
        if preset not in PRESETS:
            raise ValueError(f"DIS preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        self.weight = weight
        self.preset = preset
        self._flow: Any = None
        if weight > 0:
            import cv2

            constant = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}")
            self._flow = cv2.DISOpticalFlow_create(constant)
        self.reset()

    def reset(self) -> None:
        self._previous_gray: np.ndarray | None = None
        self._previous_output: np.ndarray | None = None
        self.valid_fraction: float | None = None

    def __call__(self, input_frame: np.ndarray, stylized: np.ndarray) -> np.ndarray:
        """The stabilized version of `stylized`, the stylization of `input_frame`."""
        if input_frame.shape[:2] != stylized.shape[:2]:
            raise ValueError(
                f"input frame {input_frame.shape} and stylized frame {stylized.shape} differ"
            )
        if self._flow is None:
            return stylized if stylized.dtype == np.uint8 else _to_uint8(stylized)
        current = stylized.astype(np.float32)
        gray = _gray(input_frame)
        previous_gray, previous_output = self._previous_gray, self._previous_output
        if (
            previous_gray is not None
            and previous_output is not None
            and previous_gray.shape == gray.shape
        ):
            backward = self._flow.calc(gray, previous_gray, None)
            forward = self._flow.calc(previous_gray, gray, None)
            valid = consistent(backward, forward)
            self.valid_fraction = float(valid.mean())
            warped = warp(previous_output, backward)
            blended = self.weight * warped + (1.0 - self.weight) * current
            current = np.where(valid[..., None], blended, current)
        self._previous_gray, self._previous_output = gray, current
        return _to_uint8(current)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` (HxW or HxWxC) resampled along a backward `flow` (HxWx2, x then y): the result
    at p is image(p + flow(p)), bilinear, with the border pixels repeated outside."""
    import cv2

    grid_x, grid_y = _grid(*flow.shape[:2])
    map_x = grid_x + flow[..., 0].astype(np.float32)
    map_y = grid_y + flow[..., 1].astype(np.float32)
    return cv2.remap(
        np.ascontiguousarray(image, dtype=np.float32),
        map_x,
        map_y,
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def consistent(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """The pixels p of the current frame where following `backward` (current -> previous) and
    then `forward` (previous -> current) returns to p, away from motion boundaries, and whose
    source lies inside the previous frame: HxW bool. Elsewhere the pixel was occluded or
    uncovered, or its flow is not to be trusted."""
    height, width = backward.shape[:2]
    returned = warp(forward, backward)
    round_trip = backward + returned
    tolerance = _CONSISTENCY_RELATIVE * (np.square(backward).sum(-1) + np.square(returned).sum(-1))
    agree = np.square(round_trip).sum(-1) <= tolerance + _CONSISTENCY_ABSOLUTE
    steepness = sum(
        np.square(gradient)
        for channel in (0, 1)
        for gradient in np.gradient(backward[..., channel])
    )
    smooth = steepness <= _BOUNDARY_RELATIVE * np.square(backward).sum(-1) + _BOUNDARY_ABSOLUTE
    return agree & smooth & inside(backward, width, height)


def inside(flow: np.ndarray, width: int, height: int) -> np.ndarray:
    """Where p + flow(p) lies within a `width` x `height` frame: HxW bool."""
    columns, rows = _grid(*flow.shape[:2])
    x = columns + flow[..., 0]
    y = rows + flow[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def warping_error(
    previous: np.ndarray, current: np.ndarray, flow: np.ndarray, valid: np.ndarray | None = None
) -> float:
    """Lai et al.'s warping error of one frame pair: the squared difference between `current`
    and `previous` warped by the true backward `flow` (current -> previous), colors scaled to
    [0, 1], averaged over the channels and over the `valid` pixels (default: those whose source
    lies inside the frame). A clip's error is the mean over its consecutive pairs."""
    height, width = flow.shape[:2]
    if valid is None:
        valid = inside(flow, width, height)
    warped = warp(previous, flow)
    difference = (current.astype(np.float32) - warped) / 255.0
    squares = np.square(difference).mean(-1) if difference.ndim == 3 else np.square(difference)
    count = int(valid.sum())
    if count == 0:
        raise ValueError("no valid pixel to measure the warping error on")
    return float(squares[valid].sum() / count)


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's x and y, HxW float32 each (read-only: shared by every frame of a size)."""
    grid_x, grid_y = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    grid_x.flags.writeable = grid_y.flags.writeable = False
    return grid_x, grid_y


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)
