"""Stylizing on the CPU with ONNX Runtime, without PyTorch.

Importing PyTorch takes longer than stylizing a photo with the 26-style network, and ONNX
Runtime's CPU kernels are as fast as PyTorch's in float32. So on a machine without a GPU,
`stylize apply` runs a style network's ONNX graph (written once from the native modules by
`export.py`, cached in the store) with ONNX Runtime, NumPy and Pillow only.

`OnnxStylizer` does what `inference.Stylizer` does for an image that fits in memory whole, with
the same arithmetic in float32: resize by `scale` (bicubic, antialiased), pad to a multiple of
4 by reflection, run the network, crop, resize back, clamp, keep colors, blend by strength.
Images too large to run whole go to `Stylizer`, which tiles them exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stylize.engine.color import recolor
from stylize.engine.hardware import torch_may_find_accelerator
from stylize.engine.settings import MIN_IMAGE_SIZE, SIZE_MULTIPLE
from stylize.errors import StylizeError

#: The graph's contract with `export.py`; bumped whenever the exported graphs change, so cached
#: exports are rebuilt.
GRAPH_VERSION = 3
IMAGE_INPUT, STYLE_INPUT, OUTPUT = "image", "style", "stylized"
#: The style predictor's output.
STYLE_VECTOR = "style_vector"
#: Graph metadata: the channels of the widest full-resolution tensor, which decides memory use.
CHANNELS_KEY = "full_resolution_channels"
#: Set to 0 to run every network on PyTorch (to compare the two, say).
ENGINE_VARIABLE = "STYLIZE_ONNX"
# Peak memory per pixel and per channel of the widest full-resolution tensor, measured: about
# 600 bytes a pixel for the 26-style network (32 channels), 1,300 for the pytorch/examples one
# (its last upsampling convolution reads 64 channels at full resolution).
_BYTES_PER_PIXEL_PER_CHANNEL = 20
_FATAL_ONLY = 4  # ONNX Runtime's log severity levels: 0 verbose to 4 fatal


def runs_on_onnx(device: str, precision: str) -> bool:
    """Whether `--device` and `--precision` leave the networks to ONNX Runtime: the CPU (asked
    for, or the only device PyTorch could find) in float32."""
    if os.environ.get(ENGINE_VARIABLE, "1").strip() == "0":
        return False
    return precision.strip().lower() in ("auto", "fp32") and on_cpu(device)


def on_cpu(device: str) -> bool:
    """Whether `--device` means the CPU: asked for, or the only device PyTorch could find."""
    choice = device.strip().lower()
    return choice == "cpu" or (choice == "auto" and not torch_may_find_accelerator())


class OnnxStylizer:
    """A style network's ONNX graph in an ONNX Runtime session on the CPU.

    `style` is the conditioning vector of a conditional network (style weights, a style
    vector), None for a single-style one. `threads` is the session's intra-op thread count;
    calls from several threads at once are safe (each then best uses fewer threads).
    """

    def __init__(self, graph: Path, style: Sequence[float] | None, *, threads: int) -> None:
        import onnxruntime as ort

        options = _session_options(ort, threads)
        options.inter_op_num_threads = 1
        # Planning memory by the first image's shapes keeps the largest activations allocated
        # for the whole run (measured: a third more peak memory for one photo) and does not help
        # with images of different sizes.
        options.enable_mem_pattern = False
        self.session = _cpu_session(ort, graph, options)
        metadata = self.session.get_modelmeta().custom_metadata_map
        channels = int(metadata.get(CHANNELS_KEY, "64"))
        #: What running an image whole takes, per pixel.
        self.bytes_per_pixel = _BYTES_PER_PIXEL_PER_CHANNEL * channels
        self.feeds: dict[str, np.ndarray] = {}
        if style is not None:
            self.feeds[STYLE_INPUT] = np.asarray(style, dtype=np.float32)

    def __call__(
        self,
        content: np.ndarray,
        *,
        scale: float = 1.0,
        strength: float = 1.0,
        preserve_color: bool = False,
        style: np.ndarray | None = None,
    ) -> np.ndarray:
        """Stylizes `content` (N, 3, H, W) float32 in [0, 1]; returns the same shape in [0, 1].
        `style` replaces the conditioning vector given at construction, for this call."""
        if not 0.0 <= strength <= 1.0:
            raise StylizeError(f"strength must be between 0 and 1, got {strength}")
        height, width = content.shape[-2:]
        size = scaled_size(height, width, scale)
        work = content if size == (height, width) else resize(content, size)
        padded = _pad_to_multiple(work, SIZE_MULTIPLE)
        try:
            feeds = dict(self.feeds)
            if style is not None:
                feeds[STYLE_INPUT] = np.asarray(style, dtype=np.float32)
            (raw,) = self.session.run([OUTPUT], {IMAGE_INPUT: padded, **feeds})
        except Exception as error:  # onnxruntime's own exception types are not importable
            reason = _first_line(error)
            if "allocate memory" in reason:
                reason = "out of memory"
            raise StylizeError(
                f"cannot stylize {size[1]}x{size[0]} pixels: {reason}; a smaller --max-size "
                "or --tile-size needs less memory"
            ) from None
        stylized = raw[..., : size[0], : size[1]]
        if size != (height, width):
            stylized = resize(stylized, (height, width))
        stylized = np.clip(stylized, 0.0, 1.0, out=stylized)  # ours: in place, no copy
        if preserve_color:
            stylized = recolor(stylized, content)
        if strength < 1.0:
            stylized = content + strength * (stylized - content)
        return stylized


class OnnxPredictor:
    """The arbitrary-style network's style predictor in an ONNX Runtime session: the style
    vector of a picture, from its central square resized to the size the graph was written
    for (see `engine/export.py`), as `arbitrary.style_vector` computes it."""

    def __init__(self, graph: Path, *, threads: int) -> None:
        import onnxruntime as ort

        options = _session_options(ort, threads)
        self.session = _cpu_session(ort, graph, options)
        self.size = int(self.session.get_inputs()[0].shape[-1])

    def vector_of(self, image: np.ndarray) -> np.ndarray:
        """The (100,) style vector of one image (1, 3, H, W) float32 in [0, 1]."""
        height, width = image.shape[-2:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = image[..., top : top + side, left : left + side]
        if side != self.size:
            square = resize(square, (self.size, self.size)).clip(0.0, 1.0)
        square = np.ascontiguousarray(square, dtype=np.float32)
        (vectors,) = self.session.run([STYLE_VECTOR], {IMAGE_INPUT: square})
        return vectors[0]


def _session_options(ort: Any, threads: int) -> Any:
    """Options of a session on `threads` threads that keeps ONNX Runtime's own log quiet: its
    errors reach the user as one line each, through StylizeError."""
    # Fatal only: ONNX Runtime prints errors (a failed allocation, say) on stderr unasked.
    ort.set_default_logger_severity(_FATAL_ONLY)
    options = ort.SessionOptions()
    options.log_severity_level = _FATAL_ONLY
    options.intra_op_num_threads = threads
    return options


def _cpu_session(ort: Any, graph: Path, options: Any) -> Any:
    """An ONNX Runtime session of `graph` on the CPU; StylizeError when it does not load."""
    try:
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types are not importable
        raise StylizeError(f"cannot load the network {graph}: {_first_line(error)}") from None


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size a network runs at for `--scale`; StylizeError when it is too small."""
    if scale <= 0:
        raise StylizeError(f"scale must be positive, got {scale}")
    size = (round(height * scale), round(width * scale))
    if min(size) < MIN_IMAGE_SIZE:
        raise StylizeError(
            f"image too small to stylize ({size[1]}x{size[0]} after scaling): at least "
            f"{MIN_IMAGE_SIZE} pixels a side"
        )
    return size


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) float32 images resized to `size` (height, width): Pillow's bicubic filter,
    which widens its support when shrinking (antialiasing) like PyTorch's `antialias=True`."""
    from PIL import Image

    height, width = size
    resized = np.empty((*images.shape[:2], height, width), dtype=np.float32)
    for index in np.ndindex(*images.shape[:2]):
        plane = Image.fromarray(np.ascontiguousarray(images[index], dtype=np.float32), mode="F")
        resized[index] = np.asarray(plane.resize((width, height), Image.Resampling.BICUBIC))
    return resized


def _pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    height, width = images.shape[-2:]
    bottom, right = -height % multiple, -width % multiple
    if not bottom and not right:
        return np.ascontiguousarray(images, dtype=np.float32)
    return np.pad(images, ((0, 0), (0, 0), (0, bottom), (0, right)), mode="reflect")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
