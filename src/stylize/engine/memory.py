"""How much memory a run needs, how much the device has, and what running out looks like.

`optimize_estimate` works out, from the sizes alone, what `stylize optimize` will allocate at
its largest scale, so that a run that cannot fit is refused before any work with a message that
says what would fit (`check_fits`), rather than dying minutes later in the allocator.
`available_memory` says what the device has left; `out_of_memory_detail` recognizes the ways
PyTorch, NumPy and Python report running out (for the errors that still happen).

The estimate counts the VGG19 activations of the image kept for the backward pass, layer by
layer up to the deepest layer used (`graph_elements`), and those of the no-gradient passes over
the style images (`style_pass_elements`), and scales the counts by factors measured on a CPU
with `benchmarks/memory_optimize.py` (see the constants below). Nothing here allocates a
tensor or imports torch at import time, so the command line can use it for its error messages.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stylize.engine.settings import (
    TAP_FEATURE_INDEX,
    VGG19_LAYOUT,
    TransformerConfig,
    check_taps,
)
from stylize.errors import StylizeError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Available",
    "Estimate",
    "available_memory",
    "check_fits",
    "checks_enabled",
    "format_bytes",
    "graph_elements",
    "largest_fitting",
    "optimize_estimate",
    "out_of_memory_detail",
    "round_down",
    "style_pass_elements",
    "train_estimate",
    "transform_graph_elements",
    "transform_parameters",
    "vgg_graph_bytes",
]

# Calibration: benchmarks/memory_optimize.py on a 2-core AMD EPYC (AVX-512, bf16), PyTorch
# 2.14 with oneDNN, glibc malloc. Peak resident memory of one-scale runs (Adam, 2 iterations)
# above what the process held before the run, in MiB, and per output pixel:
#
#   output      style images   float32 (MiB, bytes/px)   bfloat16 autocast (MiB, bytes/px)
#   512x341     512x512           658  3952                 488  2930
#   1024x683    256x256          1766  2648                1348  2022
#   1536x1024   384x384          3704  2470                2790  1860 (1536x1536 style)
#   2048x1365   512x512          6436  2414                4873  1828
#   256x171     1024x1024         857                       674
#   256x171     1536x1536        1786                      1321
#
# Above the fixed costs memory grows by about 2330 bytes per output pixel in float32 (1730 in
# bfloat16), while the default layers keep 389 values per pixel for the backward pass
# (`graph_elements`): 1556 bytes in float32. Autograd's gradients, the Gram matrices' backward
# and the allocator add about half again at the peak; bfloat16 autocast keeps about three
# quarters of it, as the Gram matrices and losses run on float32 copies of the tapped
# features. The style passes grow by about 740 bytes per style pixel in float32 (520 in
# bfloat16) for 169 values (`style_pass_elements`). The factors below are those, rounded up by
# about a tenth, so that the estimate stays above every measured peak (by 8 to 27%; at
# 2048x1365 by 13% in float32 and 10% in bfloat16).
BYTES_PER_GRAPH_ELEMENT = 4 * 1.65
BYTES_PER_GRAPH_ELEMENT_REDUCED = 4 * 1.2
BYTES_PER_STYLE_ELEMENT = 4 * 1.2
BYTES_PER_STYLE_ELEMENT_REDUCED = 4 * 0.85
# Fixed costs: the VGG19 weights (the file read, the network's copy, the reordered copies the
# convolutions make: 3 x 49 MiB up to conv5_1) and the allocator's and the thread pool's own,
# which weigh most at small sizes (150 MiB in all at 64 px).
WEIGHT_COPIES = 3
FIXED_BYTES = 128 * 2**20
# Optimizer state in images' worth of float32 values: L-BFGS keeps `history` pairs of
# directions and steps plus a few vectors of its own; Adam two moments and the gradient.
# Measured at 512x341 after 60 iterations (float32): L-BFGS 827 MiB, Adam 616 MiB; the
# difference, 211 MiB, is 106 image-sized vectors.
LBFGS_HISTORY = 50
LBFGS_EXTRA_VECTORS = 10
ADAM_VECTORS = 4
# The image, its normalized and channels-last copies (values per pixel of the input).
_IMAGE_VALUES = 9


@dataclass(frozen=True)
class Estimate:
    """Bytes a run needs beyond what the process holds when it is checked: `total`, and its
    parts (the largest of the image's passes with the optimizer's state, and of the style
    passes, plus the fixed costs)."""

    total: int
    image_pass: int
    optimizer_state: int
    style_pass: int
    fixed: int


@dataclass(frozen=True)
class Available:
    """Bytes a run can still allocate, and what limits them, in words that follow "is"
    ("available on this machine", "left under the memory limit of this container")."""

    bytes: int
    limit: str


def _convolutions(taps: Sequence[str]) -> list[tuple[int, int]]:
    """(output channels, poolings before it) of each VGG19 convolution up to the deepest tap."""
    deepest = max(TAP_FEATURE_INDEX[name] for name in check_taps(taps))
    convolutions: list[tuple[int, int]] = []
    index = poolings = 0
    for entry in VGG19_LAYOUT:
        if index > deepest:
            break
        if entry == "M":
            poolings += 1
            index += 1
        else:
            convolutions.append((int(entry), poolings))
            index += 2
    return convolutions


def graph_elements(taps: Sequence[str]) -> float:
    """Values per image pixel that autograd keeps for the backward pass of VGG19 up to the
    deepest of `taps`: each convolution's output (the ReLUs work in place), and each pooling's
    output with its argmax indices (int64: two values' worth)."""
    convolutions = _convolutions(taps)
    elements = float(_IMAGE_VALUES)
    for position, (channels, poolings) in enumerate(convolutions):
        elements += channels / 4**poolings
        following = convolutions[position + 1][1] if position + 1 < len(convolutions) else None
        if following is not None and following > poolings:
            elements += 3 * channels / 4**following
    return elements


def style_pass_elements(taps: Sequence[str]) -> float:
    """Values per style-image pixel at the peak of a no-gradient pass: the tapped features
    kept so far and the largest layer's input and output."""
    convolutions = _convolutions(taps)
    tapped = {TAP_FEATURE_INDEX[name] for name in check_taps(taps)}
    kept = peak = 0.0
    previous = 3.0  # the normalized image; what a layer reads, unless it is kept anyway
    for position, (channels, poolings) in enumerate(convolutions):
        size = channels / 4**poolings
        peak = max(peak, kept + previous + size)
        if _relu_index(position) in tapped:
            kept += size
            previous = 0.0
        else:
            previous = size
    return _IMAGE_VALUES + max(peak, kept)


def _relu_index(convolution: int) -> int:
    """The index in VGG19's `features` of the ReLU after the `convolution`-th convolution."""
    index = position = 0
    for entry in VGG19_LAYOUT:
        if entry == "M":
            index += 1
            continue
        if position == convolution:
            return index + 1
        position += 1
        index += 2
    raise IndexError(convolution)


def _weight_bytes(taps: Sequence[str]) -> int:
    total = 0
    inputs = 3
    for channels, _ in _convolutions(taps):
        total += (9 * inputs + 1) * channels * 4
        inputs = channels
    return total


def vgg_graph_bytes(pixels: int, taps: Sequence[str], *, reduced_precision: bool = False) -> int:
    """Peak bytes of a VGG19 pass with its backward over `pixels` input pixels (all images of
    a batch together), up to the deepest of `taps`: optimize's image, or train's batch of
    stylized images (which adds the transform network's own activations)."""
    per_element = BYTES_PER_GRAPH_ELEMENT_REDUCED if reduced_precision else BYTES_PER_GRAPH_ELEMENT
    return math.ceil(graph_elements(taps) * pixels * per_element)


def optimize_estimate(
    size: tuple[int, int],
    style_sizes: Sequence[tuple[int, int]],
    *,
    taps: Sequence[str],
    optimizer: str,
    reduced_precision: bool = False,
) -> Estimate:
    """What optimizing an image of `size` (width, height) needs, with style images of
    `style_sizes` at that scale, VGG19 up to the deepest of `taps`, `optimizer` ("lbfgs" or
    "adam") and, with `reduced_precision`, bfloat16 or float16 autocast."""
    pixels = size[0] * size[1]
    image_pass = vgg_graph_bytes(pixels, taps, reduced_precision=reduced_precision)
    vectors = 2 * LBFGS_HISTORY + LBFGS_EXTRA_VECTORS if optimizer == "lbfgs" else ADAM_VECTORS
    optimizer_state = vectors * 3 * pixels * 4
    per_style = BYTES_PER_STYLE_ELEMENT_REDUCED if reduced_precision else BYTES_PER_STYLE_ELEMENT
    style_pass = math.ceil(
        style_pass_elements(taps) * max((w * h for w, h in style_sizes), default=0) * per_style
    )
    fixed = WEIGHT_COPIES * _weight_bytes(taps) + FIXED_BYTES
    total = fixed + max(image_pass + optimizer_state, style_pass)
    return Estimate(total, image_pass, optimizer_state, style_pass, fixed)


# -- training ------------------------------------------------------------------------------------

# Calibration of `train_estimate`: benchmarks/memory_train.py on the same CPU as above (2 steps,
# style image 256 px, --workers 0). Peak resident memory above what the prepared job held, MiB:
#
#   --image-size x --batch-size   default network       tiny network (8, 16, 16; 1 block)
#                                 float32   bfloat16    float32   bfloat16
#   128 x 1                         275       267         249       249
#   256 x 1                         541       456         379       361
#   256 x 2                         885       667         553       475
#   256 x 4                        1538        -           -         -
#
# Memory grows by about 5200 bytes per crop pixel with the default network in float32 (3850 in
# bfloat16) and 2800 with the tiny one (1850): the transform networks differ by 628 kept values
# per pixel (`transform_graph_elements`), so each costs about 3.8 bytes in float32 (3.0 in
# bfloat16), one value with little on top since these activations are small next to VGG's;
# the VGG19 part then matches optimize's factors above. The factors below are those rounded
# up by about a fifth, which keeps the estimate above every peak measured.
BYTES_PER_TRANSFORM_ELEMENT = 4 * 1.15
BYTES_PER_TRANSFORM_ELEMENT_REDUCED = 4 * 0.9
# The weights read, the VGG19 modules made of them and the convolutions' reordered copies; the
# content targets' shallow VGG19 adds little (the fixed cost measured, 190 MiB, is below this).
TRAIN_WEIGHT_COPIES = WEIGHT_COPIES
# Adam keeps the parameters, their gradients and two moments.
TRAIN_PARAMETER_COPIES = 4


def transform_graph_elements(config: TransformerConfig) -> float:
    """Values per input pixel that autograd keeps for the backward pass of the transform network
    of `config` (engine/transformer.py): each convolution's padded input, and its output with
    the instance norm's and the ReLU's, at the resolution of each (1, 1/4, 1/16 of the pixels);
    the upsampling layers keep their quarter- or half-resolution input only."""
    full, half, quarter = (float(width) for width in config.channels)
    elements = 3 + 3 * full  # conv1: padded image; its output, normalized, activated
    elements += full + 3 * half / 4  # conv2 (stride 2) reads the full resolution
    elements += half / 4 + 3 * quarter / 16  # conv3
    # A residual block: two padded inputs, two outputs, two norms, the ReLU and the sum.
    elements += config.residual_blocks * 8 * quarter / 16
    elements += quarter / 16 + 3 * half / 4  # deconv1: upsampled by phases, from its input
    elements += half / 4 + 3 * full  # deconv2
    elements += full + 3  # deconv3: padded input, the output image
    return elements


def transform_parameters(config: TransformerConfig) -> int:
    """The number of parameters of the transform network of `config`."""
    full, half, quarter = config.channels
    convolutions = [
        (3, full, 9),
        (full, half, 3),
        (half, quarter, 3),
        *[(quarter, quarter, 3)] * (2 * config.residual_blocks),
        (quarter, half, 3),
        (half, full, 3),
        (full, 3, 9),
    ]
    weights = sum(
        inputs * outputs * kernel**2 + outputs for inputs, outputs, kernel in convolutions
    )
    norms = 2 * (2 * full + 2 * half + quarter + 2 * quarter * config.residual_blocks)
    return weights + norms


def train_estimate(
    image_size: int,
    batch_size: int,
    style_size: tuple[int, int],
    *,
    config: TransformerConfig,
    content_layers: Sequence[str],
    style_layers: Sequence[str],
    reduced_precision: bool = False,
) -> Estimate:
    """What one step of `stylize train` needs: a batch of `batch_size` crops of `image_size`
    pixels a side through the transform network of `config` and VGG19 (both with their backward
    passes), the content targets' pass, Adam's state, and before the first step the pass over
    the style image of `style_size` (width, height). `image_pass` is the step's activations."""
    taps = (*content_layers, *style_layers)
    pixels = batch_size * image_size**2
    per_transform = (
        BYTES_PER_TRANSFORM_ELEMENT_REDUCED if reduced_precision else BYTES_PER_TRANSFORM_ELEMENT
    )
    per_style = BYTES_PER_STYLE_ELEMENT_REDUCED if reduced_precision else BYTES_PER_STYLE_ELEMENT
    image_pass = (
        vgg_graph_bytes(pixels, taps, reduced_precision=reduced_precision)
        + math.ceil(transform_graph_elements(config) * pixels * per_transform)
        # The content targets: a no-gradient pass over the photos, its features kept.
        + math.ceil(style_pass_elements(content_layers) * pixels * per_style)
    )
    optimizer_state = TRAIN_PARAMETER_COPIES * transform_parameters(config) * 4
    style_pass = math.ceil(
        style_pass_elements(style_layers) * style_size[0] * style_size[1] * per_style
    )
    fixed = TRAIN_WEIGHT_COPIES * _weight_bytes(taps) + FIXED_BYTES
    total = fixed + max(image_pass + optimizer_state, style_pass)
    return Estimate(total, image_pass, optimizer_state, style_pass, fixed)


def largest_fitting(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest value in [low, high] for which `fits` holds, assuming that it holds up to
    some value and not above; None when it does not hold even at `low`."""
    if not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def round_down(value: int) -> int:
    """`value` rounded down to two significant digits (2937 -> 2900, 187 -> 180)."""
    if value < 100:
        return value
    unit = 10 ** (len(str(value)) - 2)
    return value // unit * unit


def format_bytes(count: float) -> str:
    """`count` bytes for people, in decimal units: 512 MB, 14.2 GB, 1.5 TB."""
    if count >= 10**12:
        return f"{count / 10**12:.1f} TB"
    if count >= 10**9:
        return f"{count / 10**9:.1f} GB"
    return f"{max(1, round(count / 10**6))} MB"


def check_fits(needed: int, available: Available | None, what: str, advice: str) -> None:
    """StylizeError "{what} needs about N GB, but M GB is {limit}: {advice}" when `needed`
    bytes exceed what is `available` (None: unknown, nothing is refused)."""
    if available is None or needed <= available.bytes:
        return
    raise StylizeError(
        f"{what} needs about {format_bytes(needed)} of memory, but "
        f"{format_bytes(available.bytes)} is {available.limit}: {advice}"
    )


def checks_enabled() -> bool:
    """False when STYLIZE_MEMORY_CHECK is 0: the guard is off, for a machine where its
    estimate is wrong (swap makes room it does not count, for one)."""
    return os.environ.get("STYLIZE_MEMORY_CHECK", "1").strip() != "0"


# -- what the device has -------------------------------------------------------------------------


def available_memory(device: torch.device) -> Available | None:
    """What `device` can still allocate, or None where that cannot be told.

    CUDA: what the driver reports free plus what PyTorch's caching allocator holds unused.
    Apple MPS: the recommended working set less what the driver has allocated. CPU: the
    smallest of the memory available on the machine (MemAvailable), what is left under the
    memory limit of the process's cgroup (its reclaimable file cache counted as free) and what
    is left of the address space under `ulimit -v`."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return Available(free + cached, f"free on {device}")
    if device.type == "mps":
        import torch

        mps = getattr(torch, "mps", None)
        if mps is None or not hasattr(mps, "recommended_max_memory"):
            return None
        left = mps.recommended_max_memory() - mps.driver_allocated_memory()
        return Available(max(0, left), "available to the GPU")
    if device.type != "cpu":
        return None
    return available_cpu_memory()


def available_cpu_memory() -> Available | None:
    """`available_memory` of the CPU, without a torch device (the ONNX Runtime path)."""
    limits = [
        each
        for each in (_meminfo_available(), _cgroup_available(), _address_space_available())
        if each is not None
    ]
    return min(limits, key=lambda each: each.bytes, default=None)


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> Available | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    if match is None:
        return None
    return Available(int(match[1]) * 1024, "available on this machine")


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> Available | None:
    """What is left under the tightest memory limit of this process's cgroup and its parents
    (cgroup v2), or of its memory cgroup (v1)."""
    limit = "left under the memory limit of this container or service"
    try:
        membership = Path("/proc/self/cgroup").read_text()
    except OSError:
        membership = ""
    found: list[int] = []
    unified = re.search(r"^0::(/.*)$", membership, re.MULTILINE)
    if unified is not None:
        folder = root / unified[1].lstrip("/")
        # Inside a container the namespace's root is the container's own group.
        for candidate in (folder, *folder.parents, root):
            if candidate == root.parent or root not in (candidate, *candidate.parents):
                continue
            left = _cgroup_left(
                candidate / "memory.max", candidate / "memory.current", candidate / "memory.stat"
            )
            if left is not None:
                found.append(left)
    v1 = root / "memory"
    left = _cgroup_left(
        v1 / "memory.limit_in_bytes",
        v1 / "memory.usage_in_bytes",
        v1 / "memory.stat",
        inactive_key="total_inactive_file",
    )
    if left is not None:
        found.append(left)
    return Available(min(found), limit) if found else None


def _cgroup_left(
    maximum: Path, current: Path, stat: Path, inactive_key: str = "inactive_file"
) -> int | None:
    try:
        limit_text = maximum.read_text().strip()
        used = int(current.read_text().strip())
    except (OSError, ValueError):
        return None
    # No limit: "max" (v2) or a number near 2**63 (v1).
    if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 2**60:
        return None
    try:
        match = re.search(rf"^{inactive_key} (\d+)$", stat.read_text(), re.MULTILINE)
        reclaimable = int(match[1]) if match else 0
    except OSError:
        reclaimable = 0
    return max(0, int(limit_text) - used + reclaimable)


def _address_space_available() -> Available | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as file:
            used = int(file.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
    return Available(max(0, soft - used), "left under the address-space limit (ulimit -v)")


# -- running out -----------------------------------------------------------------------------------

_OUT_OF_MEMORY_TEXTS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
    "defaultcpuallocator",
    "alloc_failed",
)
_TRIED_BYTES = re.compile(r"tried to allocate (\d+) bytes", re.IGNORECASE)
_TRIED_UNITS = re.compile(r"tried to allocate ([\d.]+ ?[KMGT]i?B)", re.IGNORECASE)
_NUMPY_UNITS = re.compile(r"unable to allocate ([\d.]+ ?[KMGT]i?B)", re.IGNORECASE)


def out_of_memory_detail(error: BaseException) -> str | None:
    """None unless `error` says an allocation failed: a MemoryError, torch's OutOfMemoryError,
    or a RuntimeError of an allocator ("DefaultCPUAllocator: can't allocate memory", "MPS
    backend out of memory", "CUBLAS_STATUS_ALLOC_FAILED"). Otherwise how much it asked for, in
    words ("an allocation of 1.2 GB failed"), or "an allocation failed" when it does not say."""
    message = str(error)
    if not (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or (
            isinstance(error, RuntimeError)
            and any(text in message.lower() for text in _OUT_OF_MEMORY_TEXTS)
        )
    ):
        return None
    tried = _TRIED_BYTES.search(message)
    if tried is not None:
        return f"an allocation of {format_bytes(int(tried[1]))} failed"
    named = _TRIED_UNITS.search(message) or _NUMPY_UNITS.search(message)
    if named is not None:
        return f"an allocation of {named[1]} failed"
    return "an allocation failed"
