"""The residual image-transform network of Johnson et al., laid out as in pytorch/examples.

Reflection-padded convolutions, instance norm (affine) after every convolution but the last,
two stride-2 downsampling convolutions, residual blocks, two nearest-upsample + convolution
stages and a 9x9 output convolution with no activation. Inputs and outputs are in [0, 255].

The module names (`conv1.conv2d`, `in1`, `res1.conv1.conv2d`, `deconv1.conv2d`, ...) are those
of pytorch/examples, so its checkpoints load directly and `state_dict()` keys are the tensor
names of the native model file. The architecture, `TransformerConfig`, is a training setting
and lives in engine/settings.py (which imports no torch); it is imported from here as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from stylize.engine.layers import ConvLayer, ResidualBlock, UpsampleConvLayer
from stylize.engine.settings import TransformerConfig
from stylize.engine.stylenet import Stage, StyleNet, check_tensors_against, identity, relu
from stylize.errors import StylizeError


class TransformerNet(StyleNet):
    """Maps an image batch (N, 3, H, W) in [0, 255] to a stylized batch in about [0, 255].

    H and W should be multiples of 4; other sizes come back rounded up to one.
    """

    pixel_scale = 255.0

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TransformerConfig()
        full, half, quarter = config.channels
        self.conv1 = ConvLayer(3, full, 9)
        self.in1 = nn.InstanceNorm2d(full, affine=True)
        self.conv2 = ConvLayer(full, half, 3, stride=2)
        self.in2 = nn.InstanceNorm2d(half, affine=True)
        self.conv3 = ConvLayer(half, quarter, 3, stride=2)
        self.in3 = nn.InstanceNorm2d(quarter, affine=True)
        self._blocks = [ResidualBlock(quarter) for _ in range(config.residual_blocks)]
        for number, block in enumerate(self._blocks, start=1):
            self.add_module(f"res{number}", block)
        self.deconv1 = UpsampleConvLayer(quarter, half)
        self.in4 = nn.InstanceNorm2d(half, affine=True)
        self.deconv2 = UpsampleConvLayer(half, full)
        self.in5 = nn.InstanceNorm2d(full, affine=True)
        self.deconv3 = ConvLayer(full, 3, 9)

    @property
    def encoder(self) -> Sequence[Stage]:
        return (
            Stage(self.conv1, self.in1, relu),
            Stage(self.conv2, self.in2, relu),
            Stage(self.conv3, self.in3, relu),
        )

    @property
    def residual_blocks(self) -> Sequence[nn.Module]:
        return self._blocks

    @property
    def decoder(self) -> Sequence[Stage]:
        # The output layer has no norm and no activation: values are clamped after the network.
        return (
            Stage(self.deconv1, self.in4, relu),
            Stage(self.deconv2, self.in5, relu),
            Stage(self.deconv3, None, identity),
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
    check_tensors_against(tensors, expected_shapes(config), "transform network")


def load_transformer(tensors: Mapping[str, Tensor], config: TransformerConfig) -> TransformerNet:
    """A float32 network in eval mode holding `tensors` (checked against `config`)."""
    check_tensors(tensors, config)
    with torch.device("meta"):
        net = TransformerNet(config)
    net.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, assign=True)
    return net.eval().requires_grad_(False)
