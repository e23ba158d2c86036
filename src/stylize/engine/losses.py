"""Content, style and total variation losses, computed in float32.

Content and style losses are relative errors: the squared error divided by the squared size of
the target. That makes them independent of the image size and of how strongly a VGG layer
responds (activation scales differ by orders of magnitude between layers and between weight
sets), so one set of default weights balances content against style for any `--size` and any
choice of layers. See docs/optimize.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from stylize.engine.runtime import full_precision

# Only guards against dividing by zero for an all-zero target (a layer that never fires).
_TINY = 1e-30


def gram_matrix(features: Tensor) -> Tensor:
    """(N, C, H, W) features -> (N, C, C) channel correlations in float32, divided by C*H*W so
    they do not depend on the image size.

    Computed with autocast off whatever the caller's state: under float16 autocast the product
    would be cast back to float16, whose range the sums of a large image overflow."""
    batch, channels, height, width = features.shape
    with full_precision(features.device.type):
        # Pixels-by-channels order is a free view of channels-last features (the VGG's layout),
        # so the gradient flows back channels-last too instead of through a copy.
        flat = features.float().permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        return _Gram.apply(flat) / (channels * height * width)


class _Gram(torch.autograd.Function):
    """`flat.mT @ flat`, differentiated with one matrix product instead of autograd's two."""

    @staticmethod
    def forward(ctx: Any, flat: Tensor) -> Tensor:
        ctx.save_for_backward(flat)
        return flat.mT @ flat

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (flat,) = ctx.saved_tensors
        # The product's gradient dF^T F + F^T dF takes flat @ (grad + grad^T) to pull back.
        return flat @ (grad + grad.mT).to(flat.dtype)


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """Mean squared feature error relative to the target's mean square."""
    target = target.float()
    error = (features.float() - target).pow(2).mean()
    return error / target.pow(2).mean().clamp_min(_TINY)


def style_loss(features: Tensor, target_gram: Tensor) -> Tensor:
    """Mean squared error between the Gram matrix of `features` and `target_gram`, relative to
    the target's mean square."""
    target_gram = target_gram.float()
    error = (gram_matrix(features) - target_gram).pow(2).mean()
    return error / target_gram.pow(2).mean().clamp_min(_TINY)


def total_variation_loss(image: Tensor) -> Tensor:
    """Mean squared difference between horizontally plus vertically neighbouring pixels."""
    image = image.float()
    across = image[..., :, 1:] - image[..., :, :-1]
    down = image[..., 1:, :] - image[..., :-1, :]
    return across.pow(2).sum() / max(across.numel(), 1) + down.pow(2).sum() / max(down.numel(), 1)
