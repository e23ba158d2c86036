"""Keeping the content image's colors: luminance-only style transfer in YCbCr."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, as used by JPEG's full-range YCbCr.
_KR, _KG, _KB = 0.299, 0.587, 0.114


def preserve_color(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The luminance of `stylized` with the chroma of `content` (resized to match), both
    (N, 3, H, W) in [0, 1]; the result is clamped to [0, 1]."""
    for name, tensor in (("stylized", stylized), ("content", content)):
        if tensor.dim() != 4 or tensor.shape[1] != 3:
            raise ValueError(f"{name} must have shape (N, 3, H, W), got {tuple(tensor.shape)}")
    if content.shape[-2:] != stylized.shape[-2:]:
        content = F.interpolate(
            content, size=stylized.shape[-2:], mode="bilinear", align_corners=False, antialias=True
        )
    # In YCbCr every RGB channel is Y plus a fixed mix of Cb and Cr, so replacing Y while keeping
    # Cb and Cr shifts all three channels by the same luma difference.
    return (content + (_luma(stylized) - _luma(content)).unsqueeze(1)).clamp(0, 1)


def _luma(image: torch.Tensor) -> torch.Tensor:
    red, green, blue = image.unbind(1)
    return _KR * red + _KG * green + _KB * blue
