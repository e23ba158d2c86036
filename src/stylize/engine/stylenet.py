"""The shape every feed-forward style network shares, and the one form inference runs.

All three families stylize in one pass with the same layout (Johnson et al. 2016): an encoder
of three reflection-padded convolutions (9x9, then two 3x3 of stride 2), residual blocks at a
quarter of the resolution, and a decoder of two nearest-upsampling 3x3 convolutions and a 9x9
output convolution. Convolutions are followed by instance norm (all of them, or all
but the output layer; the arbitrary network's encoder has none) and a ReLU, the output layer by
a sigmoid or nothing. They differ in where the norms' scales and shifts come from:

- the pytorch/examples network (`transformer.py`) learns one set;
- the 26-style network (`multistyle.py`) keeps a table of 26 and mixes rows by style weights;
- the arbitrary-style network (`arbitrary.py`) computes them from a painting's style vector.

A conditional network, given its style, *binds* into a `StyleNet` whose norms hold the mixed or
computed scales and shifts: plain instance norms. Inference, tiling, batching and precision
(`inference.py`) see only `StyleNet`, so they work the same for every family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylize.engine.layers import instance_norm
from stylize.errors import StylizeError


def relu(x: Tensor) -> Tensor:
    return F.relu(x, inplace=True)


def sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def identity(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class Stage:
    """A convolution, the instance norm after it (if any), then an activation."""

    conv: nn.Module
    norm: nn.InstanceNorm2d | None
    activation: Callable[[Tensor], Tensor]

    def __call__(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = instance_norm(self.norm, x)
        return self.activation(x)


class StyleNet(nn.Module):
    """A ready-to-run style network: image batch (N, 3, H, W) in [0, `pixel_scale`] to a
    stylized batch in about the same range.

    Subclasses provide `encoder` (three stages: full resolution, then halving twice),
    `residual_blocks` (quarter resolution, shape-preserving) and `decoder` (three stages:
    doubling twice, then full resolution). H and W should be multiples of 4.
    """

    #: Inputs and outputs are in [0, pixel_scale]: 255 for pytorch/examples, 1 for the others.
    pixel_scale: float = 255.0

    @property
    def encoder(self) -> Sequence[Stage]:
        raise NotImplementedError

    @property
    def residual_blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    @property
    def decoder(self) -> Sequence[Stage]:
        raise NotImplementedError

    @property
    def full_resolution_channels(self) -> int:
        """The widest activation at full resolution, which decides memory use per pixel."""
        widths = [_out_channels(self.encoder[0].conv), _in_channels(self.decoder[-1].conv)]
        return max(widths)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.encoder:
            x = stage(x)
        for block in self.residual_blocks:
            x = block(x)
        for stage in self.decoder:
            x = stage(x)
        return x


class BoundNet(StyleNet):
    """A `StyleNet` assembled from given parts: what conditional networks bind into.

    The convolutions are shared with the network that made it (not copied); the norms are its
    own, holding the bound style's scales and shifts.
    """

    def __init__(
        self,
        encoder: Sequence[Stage],
        residual_blocks: Sequence[nn.Module],
        decoder: Sequence[Stage],
        *,
        pixel_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.pixel_scale = pixel_scale
        self._encoder = tuple(encoder)
        self._decoder = tuple(decoder)
        self.blocks = nn.ModuleList(residual_blocks)
        # Registered so that .to(), .eval() and state_dict() reach every parameter.
        self.layers = nn.ModuleList(
            module
            for stage in (*self._encoder, *self._decoder)
            for module in (stage.conv, stage.norm)
            if module is not None
        )

    @property
    def encoder(self) -> Sequence[Stage]:
        return self._encoder

    @property
    def residual_blocks(self) -> Sequence[nn.Module]:
        return tuple(self.blocks)

    @property
    def decoder(self) -> Sequence[Stage]:
        return self._decoder


def affine_norm(weight: Tensor, bias: Tensor, eps: float = 1e-5) -> nn.InstanceNorm2d:
    """An instance norm whose scale and shift are the given (C,) tensors."""
    norm = nn.InstanceNorm2d(weight.shape[0], eps=eps, affine=True)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    return norm.requires_grad_(False)


def _out_channels(conv: nn.Module) -> int:
    return int(conv.conv2d.out_channels)  # type: ignore[union-attr]


def _in_channels(conv: nn.Module) -> int:
    return int(conv.conv2d.in_channels)  # type: ignore[union-attr]


def check_tensors_against(
    tensors: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], network: str
) -> None:
    """StylizeError unless `tensors` has exactly the `expected` names and shapes, all finite
    floating-point numbers; messages name the `network` ("26-style network", ...)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        raise StylizeError(f"not a {network} of the expected layout: {'; '.join(parts)}")
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise StylizeError(
                f"{network} tensor {name} has shape {list(tensor.shape)}, expected {list(shape)}"
            )
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise StylizeError(f"{network} tensor {name} does not hold finite numbers")


def _some(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
