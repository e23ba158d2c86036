"""The 26-style network of TensorFlow's Android "TF Stylize" demo (Dumoulin et al. 2017).

One network for 26 paintings: every convolution is followed by a *conditional* instance norm,
whose scale and shift come from a table with one row per style. A vector of 26 style weights
mixes the rows (scale = weights @ scale_table), so styles can be blended; the weights are used
as given, callers normalize them. The layout, as `stylize_quantized.pb` and its float32 ONNX
export `multistyle26.onnx` show it:

- encoder: 9x9 convolution 3 -> 32, two 3x3 convolutions of stride 2, 32 -> 32, each followed
  by its norm and a ReLU;
- six residual blocks at 32 channels: convolution, norm, ReLU, convolution, norm, add;
- decoder: nearest 2x upsampling and a 3x3 convolution 32 -> 8, again 8 -> 4 (norm and ReLU
  each), then a 9x9 convolution 4 -> 3, a norm and a sigmoid.

Every convolution pads by reflection (kernel // 2) and has no bias. Norms use epsilon 1e-5 and
the biased variance. Inputs and outputs are in [0, 1]. 166,104 numbers in all, 25,740 of them
in the norm tables. The GraphDef holds the convolution weights in 8 bits; the ONNX export
dequantized them otherwise than TensorFlow computes with them (see `store/formats/tf_graphdef.py`),
so the two files give slightly different networks.

Native tensor names (`state_dict()` keys), with convolution weights in PyTorch's (out, in, kh,
kw) layout and the norm tables (26, channels):

- `conv1`, `conv2`, `conv3` (encoder), `res1.conv1` ... `res6.conv2` (residual blocks) and
  `deconv1`, `deconv2`, `deconv3` (decoder): `<name>.conv2d.weight`;
- `norm1` ... `norm3` (encoder), `res<i>.norm1`, `res<i>.norm2`, `norm4` ... `norm6` (decoder):
  `<name>.scale` and `<name>.shift`.

A conditional network is not run directly: `bind(weights)` gives a plain `StyleNet` for one mix
of styles, which inference runs like any other (see `stylenet.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn

from stylize.engine.layers import ConvLayer, ResidualBlock, UpsampleConvLayer
from stylize.engine.stylenet import (
    BoundNet,
    Stage,
    StyleNet,
    affine_norm,
    check_tensors_against,
    relu,
    sigmoid,
)
from stylize.errors import StylizeError

STYLES = 26
EPSILON = 1e-5
_CHANNELS = 32
_DECODER_CHANNELS = (8, 4)
_RESIDUAL_BLOCKS = 6


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose scale and shift are rows of per-style tables, mixed by style weights."""

    def __init__(self, channels: int, styles: int = STYLES) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(styles, channels))
        self.shift = nn.Parameter(torch.zeros(styles, channels))

    def bind(self, weights: Tensor) -> nn.InstanceNorm2d:
        """A plain instance norm holding the weights' mix of scales and shifts (float32)."""
        # Mixed in float32 whatever the tables' precision: the mix is computed once per image.
        weights = weights.to(self.scale.device, torch.float32)
        scale, shift = weights @ self.scale.float(), weights @ self.shift.float()
        return affine_norm(scale, shift, EPSILON).to(self.scale.device)


_Layer = TypeVar("_Layer", ConvLayer, UpsampleConvLayer)


def _unbiased(layer: _Layer) -> _Layer:
    """The layer with its convolution's bias replaced by zeros that are not part of the state.

    The network has no biases, and needs none: a per-channel constant added before an instance
    norm is removed again by its mean. The layers' code expects a bias tensor, so it stays, as a
    non-persistent buffer that `.to()` still converts.
    """
    conv = layer.conv2d
    del conv.bias
    conv.register_buffer("bias", torch.zeros(conv.out_channels), persistent=False)
    return layer


class _ConditionalResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _unbiased(ConvLayer(channels, channels, 3))
        self.norm1 = ConditionalInstanceNorm(channels)
        self.conv2 = _unbiased(ConvLayer(channels, channels, 3))
        self.norm2 = ConditionalInstanceNorm(channels)

    def bind(self, weights: Tensor) -> ResidualBlock:
        return ResidualBlock.of(
            self.conv1, self.norm1.bind(weights), self.conv2, self.norm2.bind(weights)
        )


class MultiStyleNet(nn.Module):
    """The 26-style network's convolutions and norm tables; `bind` makes it runnable."""

    def __init__(self) -> None:
        super().__init__()
        full, (wide, narrow) = _CHANNELS, _DECODER_CHANNELS
        self.conv1 = _unbiased(ConvLayer(3, full, 9))
        self.norm1 = ConditionalInstanceNorm(full)
        self.conv2 = _unbiased(ConvLayer(full, full, 3, stride=2))
        self.norm2 = ConditionalInstanceNorm(full)
        self.conv3 = _unbiased(ConvLayer(full, full, 3, stride=2))
        self.norm3 = ConditionalInstanceNorm(full)
        self.blocks = [_ConditionalResidualBlock(full) for _ in range(_RESIDUAL_BLOCKS)]
        for number, block in enumerate(self.blocks, start=1):
            self.add_module(f"res{number}", block)
        self.deconv1 = _unbiased(UpsampleConvLayer(full, wide))
        self.norm4 = ConditionalInstanceNorm(wide)
        self.deconv2 = _unbiased(UpsampleConvLayer(wide, narrow))
        self.norm5 = ConditionalInstanceNorm(narrow)
        self.deconv3 = _unbiased(ConvLayer(narrow, 3, 9))
        self.norm6 = ConditionalInstanceNorm(3)

    @property
    def styles(self) -> int:
        return int(self.norm1.scale.shape[0])

    @property
    def conditioning_size(self) -> int:
        """The length of the vector `bind` takes: one weight per style."""
        return self.styles

    def bind(self, weights: Tensor) -> StyleNet:
        """The network for one mix of styles: `weights` (26,), used as given (one-hot for a
        single style; callers normalize blends). The convolutions are shared, not copied."""
        if not isinstance(weights, Tensor) or tuple(weights.shape) != (self.styles,):
            shape = list(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
            raise StylizeError(f"style weights must be a vector of {self.styles}, got {shape}")
        if not bool(torch.isfinite(weights).all()):
            raise StylizeError("style weights must be finite numbers")
        return BoundNet(
            (
                Stage(self.conv1, self.norm1.bind(weights), relu),
                Stage(self.conv2, self.norm2.bind(weights), relu),
                Stage(self.conv3, self.norm3.bind(weights), relu),
            ),
            [block.bind(weights) for block in self.blocks],
            (
                Stage(self.deconv1, self.norm4.bind(weights), relu),
                Stage(self.deconv2, self.norm5.bind(weights), relu),
                Stage(self.deconv3, self.norm6.bind(weights), sigmoid),
            ),
            pixel_scale=1.0,
        )


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of the network."""
    with torch.device("meta"):
        state = MultiStyleNet().state_dict()
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def check_tensors(tensors: Mapping[str, Tensor]) -> None:
    """StylizeError unless `tensors` has exactly the network's names and shapes, all finite."""
    check_tensors_against(tensors, expected_shapes(), "26-style network")


def load_multistyle(tensors: Mapping[str, Tensor]) -> MultiStyleNet:
    """A float32 network in eval mode holding `tensors` (checked first)."""
    check_tensors(tensors)
    # Built on the CPU rather than the meta device: the zero biases are not in `tensors`.
    net = MultiStyleNet()
    net.load_state_dict({name: tensor.float() for name, tensor in tensors.items()})
    return net.eval().requires_grad_(False)
