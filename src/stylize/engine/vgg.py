"""VGG19 feature extractor for the content and style losses, with named ReLU taps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.vgg import make_layers

from stylize.engine.settings import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    POOLINGS,
    TAP_FEATURE_INDEX,
    TAP_NAMES,
    VGG19_LAYOUT,
    check_taps,
    min_input_size,
)
from stylize.errors import StylizeError

__all__ = [
    "DEFAULT_CONTENT_LAYERS",
    "DEFAULT_STYLE_LAYERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POOLINGS",
    "TAP_NAMES",
    "VGGFeatures",
    "check_taps",
    "min_input_size",
]

# The layout lives with the settings, which name its layers without importing torch.
_VGG19_CONFIG: list[int | str] = list(VGG19_LAYOUT)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        last = max(TAP_FEATURE_INDEX[name] for name in self.taps)
        layers = make_layers(_VGG19_CONFIG)[: last + 1]
        if pooling == "avg":
            for index, layer in enumerate(layers):
                if isinstance(layer, nn.MaxPool2d):
                    layers[index] = nn.AvgPool2d(kernel_size=2, stride=2)
        layers.load_state_dict(_select_weights(weights, layers))
        # channels_last lets oneDNN and cuDNN pick their fastest convolution kernels.
        self.layers = layers.to(memory_format=torch.channels_last).eval().requires_grad_(False)
        self._tap_at = {TAP_FEATURE_INDEX[name]: name for name in self.taps}
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
