"""Keeping the content image's colors: luminance-only style transfer in YCbCr.

`recolor` is plain arithmetic, the same for NumPy arrays (the ONNX Runtime path, which has no
PyTorch) and torch tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch

# ITU-R BT.601 luma weights, as used by JPEG's full-range YCbCr.
_KR, _KG, _KB = 0.299, 0.587, 0.114

_Images = TypeVar("_Images", "np.ndarray", "torch.Tensor")


def preserve_color(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The luminance of `stylized` with the chroma of `content` (resized to match), both
    (N, 3, H, W) in [0, 1]; the result is clamped to [0, 1]."""
    import torch.nn.functional as F

    for name, tensor in (("stylized", stylized), ("content", content)):
        if tensor.dim() != 4 or tensor.shape[1] != 3:
            raise ValueError(f"{name} must have shape (N, 3, H, W), got {tuple(tensor.shape)}")
    if content.shape[-2:] != stylized.shape[-2:]:
        content = F.interpolate(
            content, size=stylized.shape[-2:], mode="bilinear", align_corners=False, antialias=True
        )
    return recolor(stylized, content)


def recolor(stylized: _Images, content: _Images) -> _Images:
    """`preserve_color` for images of the same size, arrays or tensors (N, 3, H, W)."""
    # In YCbCr every RGB channel is Y plus a fixed mix of Cb and Cr, so replacing Y while keeping
    # Cb and Cr shifts all three channels by the same luma difference.
    return (content + (_luma(stylized) - _luma(content))[:, None]).clip(0, 1)


def _luma(image: _Images) -> _Images:
    return _KR * image[:, 0] + _KG * image[:, 1] + _KB * image[:, 2]
