"""The layers every feed-forward style network is built of.

Reflection-padded convolutions, nearest-upsampling convolutions, residual blocks and a fast
instance norm, shared by the three network families (see `stylenet.py`). The parameter names
(`conv2d.weight`, `in1.weight`, ...) are those of pytorch/examples, so its checkpoints load
directly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylize.engine.runtime import full_precision


class ConvLayer(nn.Module):
    """Reflection padding, then a convolution.

    A convolution to fewer channels than it reads (the output layer's 3) runs as the transposed
    convolution of the flipped kernel: the same sums, but oneDNN computes the weight gradient of
    a convolution with so few output channels several times slower than that of its transpose.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
    ) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        # CPU autocast runs reflection padding in float32. Padding computes nothing, so it keeps
        # the input's precision instead, saving two full-size conversions per layer.
        with full_precision(x.device.type):
            x = F.pad(x, (self.padding,) * 4, mode="reflect")
        conv = self.conv2d
        if conv.out_channels < conv.in_channels and conv.stride == (1, 1):
            flipped = conv.weight.flip(2, 3).transpose(0, 1)
            return F.conv_transpose2d(x, flipped, conv.bias, padding=conv.kernel_size[0] - 1)
        return conv(x)


class UpsampleConvLayer(nn.Module):
    """Nearest upsampling by 2, reflection padding of 1 and a 3x3 convolution, computed without
    the upsampled image.

    Each output pixel sees only a 2x2 neighbourhood of input pixels: which one, and how the 3x3
    taps add up over it, depends on the output pixel's phase (its row and column parity). So the
    layer is four 2x2 convolutions of the input, one per phase, run as one convolution with four
    times the output channels and then interleaved: 4 instead of 9 multiply-adds per output value
    and input channel, forward and backward. Reflection padding the upsampled image repeats its
    edge pixels, which are the input's: the input is padded by replication.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.conv2d.weight, self.conv2d.bias
        kernels = phase_kernels(weight)
        with full_precision(x.device.type):
            x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        phases = F.conv2d(x, kernels, bias.repeat(4))
        return _InterleavePhases.apply(phases)


def phase_kernels(weight: Tensor) -> Tensor:
    """A 3x3 convolution's (O, I, 3, 3) kernel as the four phases' 2x2 kernels, (4 O, I, 2, 2):
    phase (a, b) (output row and column parity) is output channels (2a + b) O to (2a + b + 1) O."""
    return _phase_taps(_phase_taps(weight, 3), 3).flatten(0, 2)


def _phase_taps(weight: Tensor, dim: int) -> Tensor:
    """A 3-tap kernel along `dim` as the 2-tap kernels of the even and odd output phases after
    nearest upsampling, stacked in a new leading dimension: an even output pixel sees the input
    pixels before and at its own position, an odd one those at and after it."""
    before, centre, after = weight.unbind(dim)
    even = torch.stack([before, centre + after], dim)
    odd = torch.stack([before + centre, after], dim)
    return torch.stack([even, odd])


def _phase_view(phases: Tensor, channels: int) -> Tensor:
    """(N, 4C, H+1, W+1) phase outputs as (N, H, 2, W, 2, C): element (n, i, a, j, b, c) is
    phase (a, b)'s output for pixel (2i+a, 2j+b), at (n, (2a+b)C + c, i+a, j+b)."""
    batch, _, height, width = phases.shape
    n, c, h, w = phases.stride()
    return phases.as_strided(
        (batch, height - 1, 2, width - 1, 2, channels),
        (n, h, h + 2 * channels * c, w, w + channels * c, c),
        phases.storage_offset(),
    )


def _pixel_view(image: Tensor) -> Tensor:
    """(N, C, 2H, 2W) as (N, H, 2, W, 2, C), a view of the same elements."""
    batch, channels, height, width = image.shape
    n, c, h, w = image.stride()
    return image.as_strided(
        (batch, height // 2, 2, width // 2, 2, channels),
        (n, 2 * h, h, 2 * w, w, c),
        image.storage_offset(),
    )


class _InterleavePhases(torch.autograd.Function):
    """The image whose pixels of each phase are that phase's outputs (see `_phase_view`)."""

    @staticmethod
    def forward(ctx: Any, phases: Tensor) -> Tensor:
        batch, channels, height, width = phases.shape
        ctx.phases_shape = phases.shape
        ctx.memory_format = _memory_format(phases)
        image = torch.empty(
            (batch, channels // 4, 2 * (height - 1), 2 * (width - 1)),
            dtype=phases.dtype,
            device=phases.device,
            memory_format=ctx.memory_format,
        )
        _pixel_view(image).copy_(_phase_view(phases, channels // 4))
        return image

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Each phase uses all but one row and one column of the (H+1) x (W+1) outputs.
        grad_phases = torch.empty(
            ctx.phases_shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.memory_format
        ).zero_()
        _phase_view(grad_phases, grad.shape[1]).copy_(_pixel_view(grad))
        return grad_phases


def _memory_format(x: Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    @classmethod
    def of(
        cls, conv1: nn.Module, in1: nn.InstanceNorm2d, conv2: nn.Module, in2: nn.InstanceNorm2d
    ) -> ResidualBlock:
        """A block of existing layers (shared, not copied): how conditional networks bind."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block.conv1, block.in1, block.conv2, block.in2 = conv1, in1, conv2, in2
        return block

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(instance_norm(self.in1, self.conv1(x)), inplace=True)
        return instance_norm(self.in2, self.conv2(y)) + x


def instance_norm(norm: nn.InstanceNorm2d, y: Tensor) -> Tensor:
    """`norm(y)`, keeping the memory layout, and faster."""
    # F.instance_norm reshapes its input, which copies channels-last tensors and makes it several
    # times slower on CPU. For one image, instance norm is batch norm with batch statistics; for
    # a batch, it is group norm with one group per channel. All three ways keep the memory layout.
    if y.shape[0] == 1:
        return F.batch_norm(y, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
    if y.device.type == "cpu":
        return _CPUInstanceNorm.apply(y, norm.weight, norm.bias, norm.eps)
    return F.group_norm(y, y.shape[1], norm.weight, norm.bias, norm.eps)


class _CPUInstanceNorm(torch.autograd.Function):
    """Group norm with one group per channel, differentiated image by image as batch norm.

    Both normalize each image's channels by the same statistics, but on the CPU group norm's
    backward is several times slower than batch norm's on channels-last tensors (its forward is
    as fast)."""

    @staticmethod
    def forward(
        ctx: Any, y: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        batch, channels, height, width = y.shape
        normalized, mean, inverse_std = torch.native_group_norm(
            y, weight, bias, batch, channels, height * width, channels, eps
        )
        ctx.save_for_backward(y, weight, mean, inverse_std)
        ctx.eps = eps
        return normalized

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        y, weight, mean, inverse_std = ctx.saved_tensors
        wanted = list(ctx.needs_input_grad[:3])
        per_image = [
            torch.ops.aten.native_batch_norm_backward(
                grad[index : index + 1],
                y[index : index + 1],
                weight,
                None,
                None,
                mean[index],
                inverse_std[index],
                True,
                ctx.eps,
                wanted,
            )
            for index in range(y.shape[0])
        ]
        grads_y, grads_weight, grads_bias = zip(*per_image, strict=True)
        return (
            torch.cat(grads_y) if wanted[0] else None,
            torch.stack(grads_weight).sum(0) if wanted[1] else None,
            torch.stack(grads_bias).sum(0) if wanted[2] else None,
            None,
        )
