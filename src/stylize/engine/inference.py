"""Running a transform network on images: precision, memory format, batching and tiling.

Images too large for the device's memory budget run in tiles. Instance norm needs statistics
of the whole image, so tiling works stage by stage: the full- and half-resolution convolutions,
where nearly all the memory goes, run tile by tile, while the quarter-resolution residual blocks
(a sixteenth of the pixels) run on the whole image. Each tiled pass either accumulates the exact
mean and variance the next instance norm needs, or, once all are known, produces its slice of the
output. Tiles overlap by the reach of the convolutions in a pass and keep only their centre, so
the result equals the untiled one up to rounding: no seams, no color shifts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylize.engine import memory
from stylize.engine.color import preserve_color as keep_content_colors
from stylize.engine.runtime import Runtime
from stylize.engine.stylenet import StyleNet
from stylize.errors import StylizeError

MIN_TILE_SIZE = 64
MIN_IMAGE_SIZE = 16
# The network halves the size twice and doubles it twice: sizes padded to a multiple of 4 come
# back unchanged, and tiles starting at multiples of 4 sample the same grid as the whole image.
_ALIGN = 4
# Context computed around each tile and then dropped, in quarter-resolution pixels: the encoder's
# convolutions reach 7 full-resolution pixels, the decoder's 2 quarter-resolution ones.
_HALO = 2
# Each stage's output size in quarter-resolution pixels: the encoder halves the size twice, the
# decoder doubles it twice.
_ENCODER_SCALES = (4, 2, 1)
# The first layer's 9x9 convolution pads its input by 4 pixels a side.
_FIRST_LAYER_PADDING = 4
_DECODER_SCALES = (2, 4, 4)
# Measured peak memory of a forward pass, per pixel and per full-resolution channel (those
# stages dominate): about 600 bytes a pixel for the default network in float32, 400 in bfloat16.
_BYTES_PER_PIXEL_PER_CHANNEL = {4: 20, 2: 14}
_CPU_MEMORY_BUDGET = 1 << 30
_GPU_FREE_MEMORY_SHARE = 0.5
# Besides the network's activations, float32 images on the host, in values per pixel: the
# resized and padded input, the raw output and the result with its clamped, color-preserved
# and blended copies. Tiled, the quarter-resolution trunk also runs whole through the residual
# blocks: the trunk, a block's input kept for the sum and its latest output. Measured with
# benchmarks/memory_apply.py (default network, float32, CPU): 118 bytes a pixel in tiles of
# 128 above a fixed 69 MiB (1024x768 to 2048x1024), against 168 estimated; with
# --preserve-color, 150. The fixed part is the allocator's and the thread pool's own.
_HOST_VALUES_PER_PIXEL = 3 * 6
_TRUNK_COPIES = 3
_FIXED_BYTES = 64 << 20


class OutOfMemory(StylizeError):
    """An image that does not fit in memory, refused before the work or failed during it."""


Statistics = tuple[Tensor, Tensor]
"""Per-channel mean and (biased) variance of one instance norm's input."""


class Stylizer:
    """A style network placed on a runtime's device, ready to stylize image batches.

    The network computes in the runtime's compute dtype and memory layout; it is moved there,
    not copied. Images with more than `tile_size`**2 pixels run in tiles of that side; None
    picks the largest that fits the device's memory.
    """

    def __init__(self, net: StyleNet, runtime: Runtime, *, tile_size: int | None = None) -> None:
        self.runtime = runtime
        self.device = runtime.device
        self.dtype = runtime.compute_dtype
        self.memory_format = runtime.memory_format
        self.net = net.eval().requires_grad_(False)
        self.net.to(device=self.device, dtype=self.dtype, memory_format=self.memory_format)
        channels = net.full_resolution_channels
        # Chosen: the user's tiles, kept; automatic ones shrink to what an image leaves room for.
        self.tile_size_given = tile_size is not None
        if tile_size is None:
            tile_size = self._largest_tile(channels)
        if tile_size < MIN_TILE_SIZE:
            raise StylizeError(f"tile size must be at least {MIN_TILE_SIZE}, got {tile_size}")
        self.tile_size = min(tile_size, _largest_indexable_tile(channels))
        self.tile_size -= self.tile_size % _ALIGN

    def __call__(
        self,
        content: Tensor,
        *,
        scale: float = 1.0,
        strength: float = 1.0,
        preserve_color: bool = False,
    ) -> Tensor:
        """Stylizes `content` (N, 3, H, W) in [0, 1]; returns float32 (N, 3, H, W) in [0, 1] on
        the CPU.

        The network runs on the content resized by `scale` (below 1: larger brush strokes
        relative to the image), and its result is resized back. `preserve_color` keeps the
        content's colors; `strength` blends the result with the content (1: fully stylized).
        """
        if not 0.0 <= strength <= 1.0:
            raise StylizeError(f"strength must be between 0 and 1, got {strength}")
        if scale <= 0:
            raise StylizeError(f"scale must be positive, got {scale}")
        height, width = content.shape[-2:]
        size = (round(height * scale), round(width * scale))
        if min(size) < MIN_IMAGE_SIZE:
            raise StylizeError(
                f"image too small to stylize ({size[1]}x{size[0]} after scaling): at least "
                f"{MIN_IMAGE_SIZE} pixels a side"
            )
        tile_size = self._tile_for(tuple(content.shape), scale)
        try:
            return self._stylize(content, size, tile_size, strength, preserve_color)
        except Exception as error:
            detail = memory.out_of_memory_detail(error)
            if detail is None:
                raise
            message = (
                f"ran out of memory on {self.device} stylizing {_describe(content.shape, size)} "
                f"in tiles of {tile_size} pixels ({detail}): use a smaller --tile-size or "
                "--max-size"
            )
        # Raised outside the handler, so the failed allocation's tensors can go at once.
        raise OutOfMemory(message)

    def memory_needed(
        self, shape: Sequence[int], *, scale: float = 1.0, tile_size: int | None = None
    ) -> int:
        """Bytes that stylizing a batch of `shape` (N, 3, H, W) at `scale` in tiles of
        `tile_size` (default: this stylizer's) needs, on the host and the device together."""
        return sum(self._needs(shape, scale, self.tile_size if tile_size is None else tile_size))

    def _needs(self, shape: Sequence[int], scale: float, tile: int) -> tuple[int, int]:
        """(host bytes, device bytes): the images, and the network's activations for the whole
        images, or for one tile and the quarter-resolution trunk."""
        batch, _, height, width = shape
        rows, columns = round(height * scale), round(width * scale)
        rows, columns = rows + -rows % _ALIGN, columns + -columns % _ALIGN
        element = torch.empty((), dtype=self.dtype).element_size()
        per_pixel = _BYTES_PER_PIXEL_PER_CHANNEL[element] * self.net.full_resolution_channels
        host = batch * max(rows * columns, height * width) * _HOST_VALUES_PER_PIXEL * 4
        host += _FIXED_BYTES
        if rows * columns <= tile**2:
            at_once = min(batch, max(1, tile**2 // (rows * columns)))
            return host, at_once * rows * columns * per_pixel
        quarter = _out_channels(self.net.encoder[-1].conv)
        trunk = _TRUNK_COPIES * quarter * (rows // _ALIGN) * (columns // _ALIGN) * element
        side = tile + 2 * _HALO * _ALIGN
        return host, trunk + side**2 * per_pixel

    def _tile_for(self, shape: tuple[int, ...], scale: float) -> int:
        """The tile size for a batch of `shape`: this stylizer's, or for automatic tiles the
        largest that leaves room for the images. OutOfMemory before any work when the batch
        does not fit in the tiles the user chose, or even in the smallest tiles."""
        if not memory.checks_enabled():
            return self.tile_size
        on_host = memory.available_memory(torch.device("cpu"))
        on_device = on_host if self.device.type == "cpu" else memory.available_memory(self.device)
        if on_device is None:
            return self.tile_size
        short = on_device

        def fits(tile: int, batch_shape: Sequence[int] = shape) -> bool:
            nonlocal short
            host, device = self._needs(batch_shape, scale, tile)
            if self.device.type == "cpu":
                return host + device <= on_device.bytes
            if on_host is not None and host > on_host.bytes:
                short = on_host
                return False
            return device <= on_device.bytes

        if fits(self.tile_size):
            return self.tile_size
        quarters = memory.largest_fitting(
            lambda value: fits(value * _ALIGN), MIN_TILE_SIZE // _ALIGN, self.tile_size // _ALIGN
        )
        if quarters is not None and not self.tile_size_given:
            return quarters * _ALIGN  # automatic tiles: as large as memory allows
        batch, _, height, width = shape
        advice = ""
        if quarters is not None:
            advice = f"use --tile-size {quarters * _ALIGN} or smaller"
        else:
            # Even the smallest tiles leave the whole images and the trunk: smaller images fit.
            def fits_edge(edge: int) -> bool:
                ratio = edge / max(height, width)
                smaller = (batch, 3, max(1, round(height * ratio)), max(1, round(width * ratio)))
                return fits(MIN_TILE_SIZE, smaller)

            edge = memory.largest_fitting(fits_edge, MIN_IMAGE_SIZE, max(height, width))
            if edge is not None:
                advice = f"use --max-size {memory.round_down(edge)} or smaller"
        tiles = self.tile_size if quarters is not None else MIN_TILE_SIZE
        fits(tiles)  # which memory is short, for the message
        host, device = self._needs(shape, scale, tiles)
        if self.device.type == "cpu":
            needed = host + device
        else:
            needed = device if short is on_device else host
        size = (round(height * scale), round(width * scale))
        raise OutOfMemory(
            f"stylizing {_describe(shape, size)} needs about {memory.format_bytes(needed)} of "
            f"memory {'' if quarters is not None else 'even '}in tiles of {tiles} pixels, but "
            f"{memory.format_bytes(short.bytes)} is {short.limit}: "
            + (advice or "close other programs to free memory")
        )

    def _stylize(
        self,
        content: Tensor,
        size: tuple[int, int],
        tile_size: int,
        strength: float,
        preserve_color: bool,
    ) -> Tensor:
        content = content.detach().float().cpu()
        height, width = content.shape[-2:]
        with torch.inference_mode():
            work = content if size == (height, width) else _resize(content, size)
            padded = _pad_to_multiple(work * self.net.pixel_scale, _ALIGN)
            if padded.shape[-2] * padded.shape[-1] <= tile_size**2:
                chunks = self._chunks(padded, tile_size)
                raw = torch.cat([self._run_whole(chunk) for chunk in chunks])
            else:
                raw = torch.cat([self._run_tiled(image[None], tile_size) for image in padded])
            stylized = raw[..., : size[0], : size[1]] / self.net.pixel_scale
            if size != (height, width):
                stylized = _resize(stylized, (height, width))
            stylized = stylized.clamp_(0.0, 1.0)
            if preserve_color:
                stylized = keep_content_colors(stylized, content)
            if strength < 1.0:
                stylized = torch.lerp(content, stylized, strength)
            return stylized

    def _chunks(self, images: Tensor, tile_size: int) -> tuple[Tensor, ...]:
        per_chunk = max(1, tile_size**2 // (images.shape[-2] * images.shape[-1]))
        return images.split(per_chunk)

    def _to_device(self, images: Tensor) -> Tensor:
        return images.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)

    def _run_whole(self, images: Tensor) -> Tensor:
        return self.net(self._to_device(images)).float().cpu()

    def _run_tiled(self, image: Tensor, tile_size: int) -> Tensor:
        """One image (1, 3, H, W) in [0, pixel_scale], H and W multiples of 4, stage by stage."""
        net = self.net
        grid = _Grid(image.shape[-2] // _ALIGN, image.shape[-1] // _ALIGN, tile_size)

        def encode(tile: _Tile, statistics: Sequence[Statistics | None]) -> Tensor:
            """The encoder up to the first norm without statistics, before that norm."""
            x = self._to_device(tile.crop(image, _ALIGN))
            for stage, known in zip(net.encoder, statistics, strict=False):
                x = stage.activation(_fixed_norm(stage.norm, stage.conv(x), known))
            return net.encoder[len(statistics)].conv(x)

        encoder_statistics: list[Statistics | None] = []
        for stage, scale in zip(net.encoder[:-1], _ENCODER_SCALES[:-1], strict=True):
            if stage.norm is None:
                # Nothing to measure: the stage runs tile by tile as it is.
                encoder_statistics.append(None)
                continue
            moments = _Moments(self.runtime.statistics_dtype)
            for tile in grid:
                moments.add(tile.core(encode(tile, encoder_statistics), scale))
            encoder_statistics.append(moments.result())
        moments = _Moments(self.runtime.statistics_dtype)
        trunk: Tensor | None = None
        for tile in grid:
            core = tile.core(encode(tile, encoder_statistics), 1)
            if trunk is None:
                trunk = core.new_empty((1, core.shape[1], grid.height, grid.width))
                trunk = trunk.contiguous(memory_format=self.memory_format)
            trunk[tile.index(1)] = core
            moments.add(core)
        assert trunk is not None
        last = net.encoder[-1]
        trunk = last.activation(_fixed_norm(last.norm, trunk, moments.result()))
        for block in net.residual_blocks:
            trunk = block(trunk)

        def decode(tile: _Tile, statistics: Sequence[Statistics]) -> Tensor:
            """The decoder up to the first norm without statistics, before that norm."""
            x = tile.crop(trunk, 1)
            for stage, known in zip(net.decoder, statistics, strict=False):
                x = stage.activation(_fixed_norm(stage.norm, stage.conv(x), known))
            return net.decoder[len(statistics)].conv(x)

        decoder_statistics: list[Statistics] = []
        for stage, scale in zip(net.decoder, _DECODER_SCALES, strict=True):
            if stage.norm is None:
                break
            moments = _Moments(self.runtime.statistics_dtype)
            for tile in grid:
                moments.add(tile.core(decode(tile, decoder_statistics[:2]), scale))
            decoder_statistics.append(moments.result())
        output = torch.empty_like(image)
        last = net.decoder[-1]
        for tile in grid:
            y = decode(tile, decoder_statistics[:2])
            if last.norm is not None:
                y = _fixed_norm(last.norm, y, decoder_statistics[2])
            output[tile.index(_ALIGN)] = tile.core(last.activation(y), _ALIGN)
        return output

    def _largest_tile(self, full_resolution_channels: int) -> int:
        element_size = torch.empty((), dtype=self.dtype).element_size()
        bytes_per_pixel = _BYTES_PER_PIXEL_PER_CHANNEL[element_size] * full_resolution_channels
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * _GPU_FREE_MEMORY_SHARE)
        else:
            budget = _CPU_MEMORY_BUDGET
        side = int(math.sqrt(budget / bytes_per_pixel))
        return max(MIN_TILE_SIZE, side - side % _ALIGN)


def _describe(shape: Sequence[int], size: tuple[int, int]) -> str:
    """The batch in words, `a 4000x3000 image` or `4 images of 4000x3000`, with the size the
    network runs at when --scale changes it."""
    batch, _, height, width = shape
    what = f"a {width}x{height} image" if batch == 1 else f"{batch} images of {width}x{height}"
    if size != (height, width):
        what += f" (run at {size[1]}x{size[0]})"
    return what


def _out_channels(conv: nn.Module) -> int:
    return int(conv.conv2d.out_channels)  # type: ignore[union-attr]


def _largest_indexable_tile(channels: int) -> int:
    """The largest tile whose widest activation (`channels` at full resolution, with the 9x9
    convolution's padding) stays below 2**31 elements, the most cuDNN and many CUDA kernels
    index."""
    side = int(math.sqrt((2**31 - 1) / channels)) - 2 * _FIRST_LAYER_PADDING
    return side - side % _ALIGN


def _fixed_norm(norm: nn.InstanceNorm2d | None, y: Tensor, statistics: Statistics | None) -> Tensor:
    """Instance norm with given statistics instead of the input's own; `y` itself for a stage
    without a norm."""
    if norm is None or statistics is None:
        return y
    mean, variance = statistics
    # Batch norm in inference mode is exactly that. CPU and CUDA kernels take float32 parameters
    # with reduced-precision inputs, which keeps large means exact.
    dtype = torch.float32 if y.device.type in ("cpu", "cuda") else y.dtype
    return F.batch_norm(
        y,
        mean.to(y.device, dtype),
        variance.to(y.device, dtype),
        norm.weight.to(dtype),
        norm.bias.to(dtype),
        False,
        0.0,
        norm.eps,
    )


class _Moments:
    """Per-channel mean and variance of a tensor seen in pieces, kept in `dtype`.

    Pieces merge by their counts, means and sums of squared deviations (Chan, Golub and
    LeVeque's pairwise update), never by sums of squares: that cancels catastrophically when
    the mean is large against the spread, which float32 (on devices without float64) could not
    afford.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.count = 0
        self.mean: Tensor | None = None
        self.deviations: Tensor | None = None  # sum of squared deviations from the mean

    def add(self, piece: Tensor) -> None:
        # Batch norm's statistics kernel is the fastest per-channel mean and variance on CPU
        # (several times faster than sum or var_mean on channels-last bfloat16).
        _, mean, inverse_std = torch.native_batch_norm(
            piece, None, None, None, None, True, 0.0, 0.0
        )
        count = piece.shape[0] * piece.shape[2] * piece.shape[3]
        mean = mean.to(self.dtype)
        deviations = inverse_std.to(self.dtype).pow(-2) * count
        if self.mean is None or self.deviations is None:
            self.count, self.mean, self.deviations = count, mean, deviations
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.deviations = (
            self.deviations + deviations + delta.square() * (self.count * count / total)
        )
        self.count = total

    def result(self) -> Statistics:
        assert self.mean is not None and self.deviations is not None
        variance = (self.deviations / self.count).clamp_(min=0.0)
        return self.mean.float(), variance.float()


@dataclass(frozen=True)
class _Tile:
    """A rectangle of the quarter-resolution grid, with the context around it that is computed
    too and then dropped."""

    top: int
    left: int
    bottom: int
    right: int
    context_top: int
    context_left: int
    context_bottom: int
    context_right: int

    def index(self, scale: int) -> tuple[object, slice, slice]:
        """Indexes the tile (without context) in a tensor at `scale` times quarter resolution."""
        rows = slice(self.top * scale, self.bottom * scale)
        return ..., rows, slice(self.left * scale, self.right * scale)

    def crop(self, tensor: Tensor, scale: int) -> Tensor:
        """The tile with its context from a tensor at `scale` times quarter resolution."""
        return tensor[
            ...,
            self.context_top * scale : self.context_bottom * scale,
            self.context_left * scale : self.context_right * scale,
        ]

    def core(self, computed: Tensor, scale: int) -> Tensor:
        """The tile without its context from a result computed on `crop(...)`, at `scale`."""
        top = (self.top - self.context_top) * scale
        left = (self.left - self.context_left) * scale
        return computed[
            ...,
            top : top + (self.bottom - self.top) * scale,
            left : left + (self.right - self.left) * scale,
        ]


@dataclass(frozen=True)
class _Grid:
    """Tiles covering a quarter-resolution grid of `height` x `width`, at most `tile_size`
    full-resolution pixels a side."""

    height: int
    width: int
    tile_size: int

    def __iter__(self) -> Iterator[_Tile]:
        for top, bottom in _split(self.height, self.tile_size // _ALIGN):
            for left, right in _split(self.width, self.tile_size // _ALIGN):
                yield _Tile(
                    top,
                    left,
                    bottom,
                    right,
                    max(0, top - _HALO),
                    max(0, left - _HALO),
                    min(self.height, bottom + _HALO),
                    min(self.width, right + _HALO),
                )


def _split(length: int, most: int) -> list[tuple[int, int]]:
    """`length` cut into the fewest equal-as-possible spans of at most `most`."""
    count = -(-length // most)
    bounds = [length * index // count for index in range(count + 1)]
    return list(itertools.pairwise(bounds))


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def _pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    height, width = images.shape[-2:]
    bottom, right = -height % multiple, -width % multiple
    if not bottom and not right:
        return images
    return F.pad(images, (0, right, 0, bottom), mode="reflect")
