import copy

import pytest
import torch

from style_nets import TINY, random_style_net, smooth_image
from stylize.engine.inference import Stylizer
from stylize.engine.transformer import TransformerNet
from stylize.errors import StylizeError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    return random_style_net()


def stylizer(net: TransformerNet, **options) -> Stylizer:
    return Stylizer(copy.deepcopy(net), CPU, **options)


def test_result_is_the_network_output_in_zero_to_one(net):
    image = smooth_image(48, 64)
    result = stylizer(net)(image)
    with torch.no_grad():
        expected = (net(image * 255) / 255).clamp(0, 1)
    assert result.dtype == torch.float32 and result.shape == image.shape
    assert result.std() > 0.1  # a real picture, not a flat or clipped one
    torch.testing.assert_close(result, expected, atol=1e-4, rtol=0)


def test_sizes_that_are_not_multiples_of_four_come_back_unchanged(net):
    image = smooth_image(37, 50)
    result = stylizer(net)(image)
    assert result.shape == image.shape
    assert result.std() > 0.1


def test_tiled_result_matches_the_untiled_one(net):
    image = smooth_image(150, 202, seed=1)
    whole = stylizer(net, tile_size=1024)(image)
    tiled = stylizer(net, tile_size=64)(image)  # 3 x 4 tiles
    assert whole.std() > 0.1
    assert (tiled - whole).abs().max() < 2e-3  # half a level of an 8-bit image


def test_tiles_in_bfloat16_stay_as_close_as_untiled_bfloat16(net):
    image = smooth_image(120, 120, seed=2)
    reference = stylizer(net)(image)
    whole = stylizer(net, dtype=torch.bfloat16, tile_size=1024)(image)
    tiled = stylizer(net, dtype=torch.bfloat16, tile_size=64)(image)
    whole_error = (whole - reference).abs().mean()
    assert whole_error < 0.02
    assert (tiled - reference).abs().mean() < 1.5 * whole_error


def test_automatic_tile_size_fits_the_cpu_memory_budget(net):
    automatic = stylizer(net)
    # 20 bytes per full-resolution channel and pixel in float32, within 1 GiB.
    assert automatic.tile_size**2 * 20 * TINY.channels[0] <= 1 << 30
    assert automatic.tile_size > 1024
    assert automatic.tile_size % 4 == 0


def test_batch_gives_the_same_results_as_single_images(net):
    images = torch.cat([smooth_image(32, 40, seed) for seed in range(3)])
    together = stylizer(net)(images)
    apart = torch.cat([stylizer(net)(image[None]) for image in images])
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=0)


def test_strength_blends_with_the_content(net):
    image = smooth_image(32, 32)
    run = stylizer(net)
    full = run(image)
    torch.testing.assert_close(run(image, strength=0.0), image)
    torch.testing.assert_close(run(image, strength=0.25), 0.75 * image + 0.25 * full)


def test_preserve_color_keeps_the_content_chroma(net):
    image = smooth_image(32, 32)
    result = stylizer(net)(image, preserve_color=True)

    def chroma(rgb: torch.Tensor) -> torch.Tensor:
        luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return rgb - luma

    # Where no channel was clipped to [0, 1], the chroma is exactly the content's.
    inside = ((result > 0.01) & (result < 0.99)).all(1, keepdim=True)
    assert inside.float().mean() > 0.5
    difference = (chroma(result) - chroma(image)).abs()
    assert difference[inside.expand_as(difference)].max() < 1e-4
    assert (chroma(stylizer(net)(image)) - chroma(image)).abs().mean() > 0.02


def test_scale_changes_the_strokes_but_not_the_size(net):
    image = smooth_image(64, 80)
    run = stylizer(net)
    normal = run(image)
    coarse = run(image, scale=0.5)
    assert coarse.shape == image.shape
    assert (coarse - normal).abs().mean() > 0.02


def test_too_small_images_are_refused_clearly(net):
    with pytest.raises(StylizeError, match="too small"):
        stylizer(net)(smooth_image(12, 40))
    with pytest.raises(StylizeError, match="after scaling"):
        stylizer(net)(smooth_image(20, 40), scale=0.5)


def test_network_moves_to_the_requested_precision(net):
    run = stylizer(net, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in run.net.parameters())
    assert run(smooth_image(32, 32)).dtype == torch.float32
