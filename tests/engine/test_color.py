"""Color preservation: the stylized luma with the content's chroma (BT.601 full-range YCbCr)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stylize.engine.color import preserve_color


def ycbcr(image: torch.Tensor) -> torch.Tensor:
    """JPEG's full-range YCbCr (ITU-R BT.601), written out from the standard's matrix."""
    matrix = torch.tensor(
        [
            [0.299, 0.587, 0.114],
            [-0.168736, -0.331264, 0.5],
            [0.5, -0.418688, -0.081312],
        ],
        dtype=torch.float64,
    )
    return torch.einsum("oc,nchw->nohw", matrix, image.double())


def test_output_has_stylized_luma_and_content_chroma() -> None:
    generator = torch.Generator().manual_seed(0)
    # Mid-range values keep every result inside [0, 1], so no clamping blurs the comparison.
    stylized = 0.35 + 0.3 * torch.rand(2, 3, 16, 24, generator=generator)
    content = 0.4 + 0.2 * torch.rand(2, 3, 16, 24, generator=generator)

    result = preserve_color(stylized, content)

    assert result.shape == stylized.shape
    assert result.min() > 0 and result.max() < 1
    expected_luma = ycbcr(stylized)[:, 0]
    expected_chroma = ycbcr(content)[:, 1:]
    assert torch.allclose(ycbcr(result)[:, 0], expected_luma, atol=1e-5)
    assert torch.allclose(ycbcr(result)[:, 1:], expected_chroma, atol=1e-5)
    assert not torch.allclose(result, stylized, atol=1e-2)


def test_matches_pillows_ycbcr_conversion() -> None:
    stylized = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).repeat(1, 1, 4, 4)
    content = torch.tensor([0.6, 0.45, 0.3]).view(1, 3, 1, 1).repeat(1, 1, 4, 4)

    result = preserve_color(stylized, content)

    def pillow_ycbcr(tensor: torch.Tensor) -> np.ndarray:
        rgb = (tensor[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        return np.asarray(Image.fromarray(rgb).convert("YCbCr"))[0, 0].astype(int)

    y, cb, cr = pillow_ycbcr(result)
    assert abs(y - pillow_ycbcr(stylized)[0]) <= 1
    assert np.abs(np.array([cb, cr]) - pillow_ycbcr(content)[1:]).max() <= 1


def test_content_of_another_size_is_resized() -> None:
    stylized = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(1)) * 0.4 + 0.3
    color = torch.tensor([0.7, 0.5, 0.3])
    content = color.view(1, 3, 1, 1).repeat(1, 1, 30, 50)

    result = preserve_color(stylized, content)

    assert result.shape == (1, 3, 12, 20)
    chroma = ycbcr(result)[:, 1:]
    assert torch.allclose(chroma, ycbcr(color.view(1, 3, 1, 1))[:, 1:].expand_as(chroma), atol=1e-5)


def test_out_of_gamut_results_are_clamped() -> None:
    white = torch.ones(1, 3, 2, 2)
    saturated_red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
    result = preserve_color(white, saturated_red)
    # Red at white's luma needs R = 1 + (1 - 0.299), beyond the range; G and B fit.
    assert torch.allclose(result[0, :, 0, 0], torch.tensor([1.0, 0.701, 0.701]), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 1, 8, 8)])
def test_rejects_tensors_that_are_not_rgb_batches(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="must have shape"):
        preserve_color(torch.rand(*shape), torch.rand(1, 3, 8, 8))
