"""Magenta's arbitrary image stylization network (Ghiasi et al. 2017), mobile version.

Two networks, as the published TF Lite graphs (`store/formats/onnx_arbitrary.py`) show them:

- `StylePredictor`, MobileNetV2 (width 1.0) computing a painting's 100-number style vector. The
  image, RGB in [0, 1], goes in as it is (no rescaling in the graph). A 3x3 stride-2 convolution
  to 32 channels, the 17 inverted residual blocks of MobileNetV2 (1x1 expansion by 6 except in
  the first, 3x3 depthwise, 1x1 linear projection; a skip connection where the stride is 1 and
  the width unchanged), a 1x1 convolution to 1280 channels, a global average pool and a linear
  map to 100 numbers. Batch norms are folded into the convolutions' biases; every convolution
  but the projections and the last map is followed by ReLU6. Padding is TensorFlow's "SAME":
  zeros, and for stride 2 on even sizes one row and column at the bottom and right only.
  Trained on 256x256 style images.
- `ArbitraryNet`, the style transformer, a small network of the shared layout (`stylenet.py`)
  with widths 8, 16, 32: reflection-padded 9x9 convolution to 8 channels, two 3x3 stride-2
  convolutions to 16 and 32, each with its bias and a ReLU but *no* norm (TensorFlow's batch
  norms, folded); five residual blocks at 32 channels; nearest-upsample + reflection pad + 3x3
  convolutions to 16 and 8 channels, then a 9x9 convolution to 3 channels and a sigmoid, so its
  output is in [0, 1]. The 13 convolutions after the encoder are each followed by a conditional
  instance norm (biased variance, epsilon 1e-5) whose per-channel scale and shift are linear
  maps (with bias) of the style vector; these convolutions have no bias of their own. The
  published graph also resizes by 1 before the last convolution, which does nothing.

`ArbitraryNet.bind(style)` computes the 13 norms for one style vector and returns a `BoundNet`
sharing the convolutions, which inference runs like any other style network.

Native tensor names (one dictionary holds both networks): `predictor.conv1.{weight,bias}`,
`predictor.blocks.<0-16>.{expand,depthwise,project}.{weight,bias}` (block 0 has no `expand`),
`predictor.conv2.*`, `predictor.style.*` (a (100, 1280) linear map); `transformer.conv<1-3>
.conv2d.*`, `transformer.res<1-5>.conv<1-2>.conv2d.*`, `transformer.deconv<1-3>.conv2d.*` and,
for the norms, `transformer.res<1-5>.in<1-2>.{scale,shift}.{weight,bias}` and
`transformer.in<4-6>.{scale,shift}.*` ((C, 100) linear maps) after `deconv1` to `deconv3`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylize.engine.layers import ConvLayer, ResidualBlock, UpsampleConvLayer
from stylize.engine.stylenet import (
    BoundNet,
    Stage,
    affine_norm,
    check_tensors_against,
    relu,
    sigmoid,
)
from stylize.errors import StylizeError

STYLE_SIZE = 100
STYLE_IMAGE_SIZE = 256
EPSILON = 1e-5
# MobileNetV2's inverted residual blocks after its first convolution (32 channels), as TF-slim
# builds them: expansion factor, output channels and stride of each.
MOBILENET_V2_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1),
    *((6, 24, 2), (6, 24, 1)),
    *((6, 32, 2), (6, 32, 1), (6, 32, 1)),
    *((6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1)),
    *((6, 96, 1), (6, 96, 1), (6, 96, 1)),
    *((6, 160, 2), (6, 160, 1), (6, 160, 1)),
    (6, 320, 1),
)
_STEM_CHANNELS = 32
_FEATURE_CHANNELS = 1280
_TRANSFORMER_WIDTHS = (8, 16, 32)
_RESIDUAL_BLOCKS = 5
#: The transformer's convolutions in data-flow order, by native name.
TRANSFORMER_CONVS: tuple[str, ...] = (
    "conv1",
    "conv2",
    "conv3",
    *(f"res{b}.conv{c}" for b in range(1, _RESIDUAL_BLOCKS + 1) for c in (1, 2)),
    "deconv1",
    "deconv2",
    "deconv3",
)
#: The conditional norm after each convolution that has one.
CONDITIONAL_NORMS: dict[str, str] = {
    **{f"res{b}.conv{c}": f"res{b}.in{c}" for b in range(1, _RESIDUAL_BLOCKS + 1) for c in (1, 2)},
    "deconv1": "in4",
    "deconv2": "in5",
    "deconv3": "in6",
}


def mobilenet_residual_blocks() -> list[int]:
    """Indexes of the blocks with a skip connection: stride 1 and unchanged width."""
    widths = [_STEM_CHANNELS, *(out for _, out, _ in MOBILENET_V2_BLOCKS)]
    return [
        index
        for index, (_, out, stride) in enumerate(MOBILENET_V2_BLOCKS)
        if stride == 1 and widths[index] == out
    ]


def _same_padding(x: Tensor, kernel: int, stride: int) -> Tensor:
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        pads += same_padding(size, kernel, stride)
    return F.pad(x, pads)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Zero padding (before, after) as TensorFlow's "SAME" along a side of `size` pixels: the
    output has ceil(size / stride) pixels, and an odd total puts the extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SameConv(nn.Conv2d):
    """A 3x3 or 1x1 convolution padded like TensorFlow's "SAME"."""

    def forward(self, x: Tensor) -> Tensor:
        kernel, stride = self.kernel_size[0], self.stride[0]
        if stride == 1:
            # Symmetric: nn.Conv2d's own padding does it without a padded copy.
            return F.conv2d(x, self.weight, self.bias, 1, kernel // 2, 1, self.groups)
        return super().forward(_same_padding(x, kernel, stride))


class _InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, expansion: int, out_channels: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = _SameConv(in_channels, hidden, 1) if expansion != 1 else None
        self.depthwise = _SameConv(hidden, hidden, 3, stride, groups=hidden)
        self.project = _SameConv(hidden, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else F.relu6(self.expand(x))
        y = self.project(F.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class StylePredictor(nn.Module):
    """Maps style images (N, 3, H, W) in [0, 1], normally 256x256, to style vectors (N, 100)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _SameConv(3, _STEM_CHANNELS, 3, stride=2)
        blocks, channels = [], _STEM_CHANNELS
        for expansion, out_channels, stride in MOBILENET_V2_BLOCKS:
            blocks.append(_InvertedResidual(channels, expansion, out_channels, stride))
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.conv2 = _SameConv(channels, _FEATURE_CHANNELS, 1)
        self.style = nn.Linear(_FEATURE_CHANNELS, STYLE_SIZE)

    def forward(self, images: Tensor) -> Tensor:
        x = F.relu6(self.conv1(images))
        for block in self.blocks:
            x = block(x)
        features = F.relu6(self.conv2(x)).mean((2, 3))
        return self.style(features)


class _ConditionalNorm(nn.Module):
    """The scale and shift of an instance norm as linear maps of the style vector."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Linear(STYLE_SIZE, channels)
        self.shift = nn.Linear(STYLE_SIZE, channels)

    def bind(self, style: Tensor) -> nn.InstanceNorm2d:
        return affine_norm(self.scale(style), self.shift(style), EPSILON).to(style.device)


class _ConditionalResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = _ConditionalNorm(channels)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = _ConditionalNorm(channels)

    def bind(self, style: Tensor) -> ResidualBlock:
        return ResidualBlock.of(self.conv1, self.in1.bind(style), self.conv2, self.in2.bind(style))


class ArbitraryNet(nn.Module):
    """The style transformer: `bind(style)` gives the `StyleNet` of one style vector;
    `forward(images, style)` stylizes (N, 3, H, W) images in [0, 1] with it."""

    def __init__(self) -> None:
        super().__init__()
        full, half, quarter = _TRANSFORMER_WIDTHS
        self.conv1 = ConvLayer(3, full, 9)
        self.conv2 = ConvLayer(full, half, 3, stride=2)
        self.conv3 = ConvLayer(half, quarter, 3, stride=2)
        self._blocks = [_ConditionalResidualBlock(quarter) for _ in range(_RESIDUAL_BLOCKS)]
        for number, block in enumerate(self._blocks, start=1):
            self.add_module(f"res{number}", block)
        self.deconv1 = UpsampleConvLayer(quarter, half)
        self.in4 = _ConditionalNorm(half)
        self.deconv2 = UpsampleConvLayer(half, full)
        self.in5 = _ConditionalNorm(full)
        self.deconv3 = ConvLayer(full, 3, 9)
        self.in6 = _ConditionalNorm(3)

    @property
    def conditioning_size(self) -> int:
        """The length of the vector `bind` takes: a style vector."""
        return STYLE_SIZE

    def bind(self, style: Tensor) -> BoundNet:
        """The network for one style vector (100,): its norms hold the computed scales and
        shifts (float32), its convolutions are this network's own (shared, not copied)."""
        if tuple(style.shape) != (STYLE_SIZE,):
            raise StylizeError(
                f"a style vector has {STYLE_SIZE} numbers, got a tensor of shape "
                f"{list(style.shape)}"
            )
        weight = self.in4.scale.weight
        with torch.no_grad():
            style = style.detach().to(weight.device, weight.dtype)
            blocks = [block.bind(style) for block in self._blocks]
            norms = [self.in4.bind(style), self.in5.bind(style), self.in6.bind(style)]
        # The encoder's convolutions carry TensorFlow's folded batch norms: no instance norm.
        encoder = [Stage(conv, None, relu) for conv in (self.conv1, self.conv2, self.conv3)]
        decoder = [
            Stage(self.deconv1, norms[0], relu),
            Stage(self.deconv2, norms[1], relu),
            Stage(self.deconv3, norms[2], sigmoid),
        ]
        return BoundNet(encoder, blocks, decoder, pixel_scale=1.0)

    def forward(self, images: Tensor, style: Tensor) -> Tensor:
        return self.bind(style)(images)


class ArbitraryModel(nn.Module):
    """Both networks; `state_dict()` keys are the native tensor names."""

    def __init__(self) -> None:
        super().__init__()
        self.predictor = StylePredictor()
        self.transformer = ArbitraryNet()


def style_vector(predictor: StylePredictor, images: Tensor, size: int = STYLE_IMAGE_SIZE) -> Tensor:
    """The style vectors (N, 100) of style images (N, 3, H, W) in [0, 1]: their central squares
    resized to `size` pixels a side, by default the 256 the predictor was trained on (as
    Magenta's code does; smaller sizes give larger patterns)."""
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = images[..., top : top + side, left : left + side].float()
    if side != size:
        square = F.interpolate(square, size=(size, size), mode="bicubic", antialias=True).clamp_(
            0.0, 1.0
        )
    parameter = next(predictor.parameters())
    with torch.no_grad():
        return predictor(square.to(parameter.device, parameter.dtype)).float()


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The name and shape of every native tensor of both networks."""
    with torch.device("meta"):
        state = ArbitraryModel().state_dict()
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def check_tensors(tensors: Mapping[str, Tensor]) -> None:
    """StylizeError unless `tensors` has exactly the names and shapes of both networks, all
    finite floating-point numbers."""
    check_tensors_against(tensors, expected_shapes(), "arbitrary-style network pair")


def load_arbitrary(tensors: Mapping[str, Tensor]) -> tuple[StylePredictor, ArbitraryNet]:
    """Both networks, float32 in eval mode without gradients, holding `tensors` (checked)."""
    check_tensors(tensors)
    with torch.device("meta"):
        model = ArbitraryModel()
    model.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, assign=True)
    model.eval().requires_grad_(False)
    return model.predictor, model.transformer
