"""The residual image-transform network of Johnson et al., laid out as in pytorch/examples.

Reflection-padded convolutions, instance norm (affine) after every convolution but the last,
two stride-2 downsampling convolutions, residual blocks, two nearest-upsample + convolution
stages and a 9x9 output convolution with no activation. Inputs and outputs are in [0, 255].

The module names (`conv1.conv2d`, `in1`, `res1.conv1.conv2d`, `deconv1.conv2d`, ...) are those
of pytorch/examples, so its checkpoints load directly and `state_dict()` keys are the tensor
names of the native model file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylize.errors import StylizeError

_MAX_CHANNELS = 1024
_MAX_RESIDUAL_BLOCKS = 64


@dataclass(frozen=True)
class TransformerConfig:
    """Channel widths of the full-, half- and quarter-resolution stages, and residual blocks.

    The default is the pytorch/examples network (1,679,235 parameters).
    """

    channels: tuple[int, int, int] = (32, 64, 128)
    residual_blocks: int = 5

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or not all(
            _is_int(width) and 1 <= width <= _MAX_CHANNELS for width in self.channels
        ):
            raise StylizeError(
                f"transform network channels must be three integers from 1 to {_MAX_CHANNELS}, "
                f"got {list(self.channels)}"
            )
        if not (
            _is_int(self.residual_blocks) and 0 <= self.residual_blocks <= _MAX_RESIDUAL_BLOCKS
        ):
            raise StylizeError(
                f"transform network residual_blocks must be an integer from 0 to "
                f"{_MAX_RESIDUAL_BLOCKS}, got {self.residual_blocks!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "residual_blocks": self.residual_blocks}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformerConfig:
        """Reads `to_dict()` output (for example the `architecture` field of a model file)."""
        if not isinstance(data, Mapping):
            raise StylizeError(f"transform network architecture must be an object, got {data!r}")
        fields = {"channels", "residual_blocks"}
        if set(data) != fields:
            raise StylizeError(
                f"transform network architecture must have exactly the fields "
                f"{', '.join(sorted(fields))}, got {', '.join(sorted(map(str, data))) or 'none'}"
            )
        channels = data["channels"]
        if not isinstance(channels, (list, tuple)):
            raise StylizeError(f"transform network channels must be a list, got {channels!r}")
        return cls(channels=tuple(channels), residual_blocks=data["residual_blocks"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _ConvLayer(nn.Module):
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
        with torch.autocast(x.device.type, enabled=False):
            x = F.pad(x, (self.padding,) * 4, mode="reflect")
        conv = self.conv2d
        if conv.out_channels < conv.in_channels and conv.stride == (1, 1):
            flipped = conv.weight.flip(2, 3).transpose(0, 1)
            return F.conv_transpose2d(x, flipped, conv.bias, padding=conv.kernel_size[0] - 1)
        return conv(x)


class _UpsampleConvLayer(nn.Module):
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
        kernels = _phase_taps(_phase_taps(weight, 3), 3).flatten(0, 2)
        with torch.autocast(x.device.type, enabled=False):
            x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        phases = F.conv2d(x, kernels, bias.repeat(4))
        return _InterleavePhases.apply(phases)


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


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _ConvLayer(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = _ConvLayer(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(instance_norm(self.in1, self.conv1(x)), inplace=True)
        return instance_norm(self.in2, self.conv2(y)) + x


class TransformerNet(nn.Module):
    """Maps an image batch (N, 3, H, W) in [0, 255] to a stylized batch in about [0, 255].

    H and W should be multiples of 4; other sizes come back rounded up to one.
    """

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TransformerConfig()
        full, half, quarter = config.channels
        self.conv1 = _ConvLayer(3, full, 9)
        self.in1 = nn.InstanceNorm2d(full, affine=True)
        self.conv2 = _ConvLayer(full, half, 3, stride=2)
        self.in2 = nn.InstanceNorm2d(half, affine=True)
        self.conv3 = _ConvLayer(half, quarter, 3, stride=2)
        self.in3 = nn.InstanceNorm2d(quarter, affine=True)
        self.residual_blocks = [_ResidualBlock(quarter) for _ in range(config.residual_blocks)]
        for number, block in enumerate(self.residual_blocks, start=1):
            self.add_module(f"res{number}", block)
        self.deconv1 = _UpsampleConvLayer(quarter, half)
        self.in4 = nn.InstanceNorm2d(half, affine=True)
        self.deconv2 = _UpsampleConvLayer(half, full)
        self.in5 = nn.InstanceNorm2d(full, affine=True)
        self.deconv3 = _ConvLayer(full, 3, 9)

    @property
    def encoder(self) -> list[tuple[_ConvLayer, nn.InstanceNorm2d]]:
        """The convolutions down to quarter resolution, each with the norm that follows it."""
        return [(self.conv1, self.in1), (self.conv2, self.in2), (self.conv3, self.in3)]

    @property
    def decoder(self) -> list[tuple[nn.Module, nn.InstanceNorm2d | None]]:
        """The convolutions back up to full resolution, each with the norm that follows it."""
        return [(self.deconv1, self.in4), (self.deconv2, self.in5), (self.deconv3, None)]

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in self.encoder:
            x = F.relu(instance_norm(norm, conv(x)), inplace=True)
        for block in self.residual_blocks:
            x = block(x)
        for conv, norm in self.decoder:
            x = conv(x)
            if norm is not None:
                x = F.relu(instance_norm(norm, x), inplace=True)
        return x


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


def expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a network of this configuration."""
    with torch.device("meta"):
        state = TransformerNet(config).state_dict()
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def infer_config(tensors: Mapping[str, Tensor]) -> TransformerConfig:
    """The configuration whose network has exactly these tensor names and shapes, or a
    StylizeError saying why none does."""
    widths = []
    for name in ("conv1.conv2d.weight", "conv2.conv2d.weight", "conv3.conv2d.weight"):
        if name not in tensors or tensors[name].dim() != 4:
            raise StylizeError(f"not a transform network: no convolution weight {name!r}")
        widths.append(int(tensors[name].shape[0]))
    blocks = 0
    while f"res{blocks + 1}.conv1.conv2d.weight" in tensors:
        blocks += 1
    config = TransformerConfig(channels=(widths[0], widths[1], widths[2]), residual_blocks=blocks)
    check_tensors(tensors, config)
    return config


def check_tensors(tensors: Mapping[str, Tensor], config: TransformerConfig) -> None:
    """StylizeError unless `tensors` has exactly the names and shapes of `config`'s network."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        raise StylizeError(f"not a transform network of the expected layout: {'; '.join(parts)}")
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise StylizeError(
                f"transform network tensor {name} has shape {list(tensor.shape)}, "
                f"expected {list(shape)}"
            )
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise StylizeError(f"transform network tensor {name} does not hold finite numbers")


def _some(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_transformer(tensors: Mapping[str, Tensor], config: TransformerConfig) -> TransformerNet:
    """A float32 network in eval mode holding `tensors` (checked against `config`)."""
    check_tensors(tensors, config)
    with torch.device("meta"):
        net = TransformerNet(config)
    net.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, assign=True)
    return net.eval().requires_grad_(False)
