"""VGG19 feature extractor for the content and style losses, with named ReLU taps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from stylize.errors import StylizeError

# torchvision's VGG19 ("E") up to conv5_1, the deepest layer the losses use; the stored loss
# network keeps exactly these weights.
_FOURTH_POOL = [index for index, entry in enumerate(cfgs["E"]) if entry == "M"][3]
_VGG19_CONFIG: list[int | str] = list(cfgs["E"][: _FOURTH_POOL + 2])

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = ("max", "avg")

DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def _tap_layout() -> tuple[dict[str, int], dict[str, int]]:
    """Index in `features` and number of poolings before it, for each ReLU."""
    indices: dict[str, int] = {}
    poolings: dict[str, int] = {}
    block, conv, index = 1, 0, 0
    for entry in _VGG19_CONFIG:
        if entry == "M":
            block, conv, index = block + 1, 0, index + 1
            continue
        conv += 1
        name = f"relu{block}_{conv}"
        indices[name] = index + 1
        poolings[name] = block - 1
        index += 2
    return indices, poolings


_TAP_INDEX, _TAP_POOLINGS = _tap_layout()
TAP_NAMES: tuple[str, ...] = tuple(_TAP_INDEX)


def check_taps(taps: Sequence[str]) -> tuple[str, ...]:
    """The tap names, deduplicated in order; StylizeError for an unknown one."""
    unknown = [name for name in taps if name not in _TAP_INDEX]
    if unknown:
        raise StylizeError(
            f"unknown VGG19 layer {', '.join(repr(name) for name in unknown)}: "
            f"choose from {', '.join(TAP_NAMES)}"
        )
    return tuple(dict.fromkeys(taps))


def min_input_size(taps: Sequence[str]) -> int:
    """The smallest image side that still gives the deepest tap at least one pixel."""
    return 2 ** max((_TAP_POOLINGS[name] for name in check_taps(taps)), default=0)


class VGGFeatures(nn.Module):
    """VGG19 convolutions up to the deepest requested tap, frozen, with ImageNet normalization.

    `weights` uses torchvision's keys (`features.N.weight`, `features.N.bias`); keys for layers
    past the deepest tap are ignored. `forward` takes images (N, 3, H, W) in [0, 1] and returns
    the requested ReLU outputs by name.
    """

    def __init__(
        self, weights: Mapping[str, Tensor], taps: Sequence[str], pooling: str = "max"
    ) -> None:
        super().__init__()
        self.taps = check_taps(taps)
        if not self.taps:
            raise StylizeError("at least one VGG19 layer is needed")
        if pooling not in POOLINGS:
            raise StylizeError(f"unknown pooling '{pooling}': choose from {', '.join(POOLINGS)}")
        last = max(_TAP_INDEX[name] for name in self.taps)
        layers = make_layers(_VGG19_CONFIG)[: last + 1]
        if pooling == "avg":
            for index, layer in enumerate(layers):
                if isinstance(layer, nn.MaxPool2d):
                    layers[index] = nn.AvgPool2d(kernel_size=2, stride=2)
        layers.load_state_dict(_select_weights(weights, layers))
        # channels_last lets oneDNN and cuDNN pick their fastest convolution kernels.
        self.layers = layers.to(memory_format=torch.channels_last).eval().requires_grad_(False)
        self._tap_at = {_TAP_INDEX[name]: name for name in self.taps}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        x = ((image - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        features: dict[str, Tensor] = {}
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self._tap_at:
                features[self._tap_at[index]] = x
        return features


def _select_weights(weights: Mapping[str, Tensor], layers: nn.Sequential) -> dict[str, Tensor]:
    selected: dict[str, Tensor] = {}
    for key, expected in layers.state_dict().items():
        source_key = f"features.{key}"
        tensor = weights.get(source_key)
        if not isinstance(tensor, Tensor):
            raise StylizeError(f"VGG19 weights are incomplete: {source_key} is missing")
        if tensor.shape != expected.shape:
            raise StylizeError(
                f"VGG19 weight {source_key} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected.shape)}"
            )
        selected[key] = tensor.to(torch.float32)
    return selected
