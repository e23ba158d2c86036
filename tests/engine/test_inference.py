import copy

import pytest
import torch

from style_nets import TINY, random_style_net, smooth_image
from stylize.engine.device import _cpu_runs_float16
from stylize.engine.inference import Stylizer, _largest_indexable_tile, _Moments
from stylize.engine.runtime import Runtime
from stylize.engine.transformer import TransformerNet
from stylize.errors import StylizeError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    return random_style_net()


def stylizer(net: TransformerNet, dtype: torch.dtype | None = None, **options) -> Stylizer:
    return Stylizer(copy.deepcopy(net), Runtime(CPU, dtype), **options)


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


class Float32Statistics(Runtime):
    """The CPU with statistics in float32, as on Apple's MPS, which has no float64."""

    @property
    def statistics_dtype(self) -> torch.dtype:
        return torch.float32


def test_tiles_need_no_float64(net):
    image = smooth_image(200, 240, seed=4)
    whole = stylizer(net, tile_size=1024)(image)
    tiled = Stylizer(copy.deepcopy(net), Float32Statistics(CPU), tile_size=64)(image)
    torch.testing.assert_close(tiled, whole, atol=2e-4, rtol=0)


def test_float32_moments_survive_a_large_mean():
    # Values near 1000 with a spread of 0.01: a sum of squares in float32 would cancel to noise.
    generator = torch.Generator().manual_seed(0)
    values = 1000 + 0.01 * torch.randn(1, 3, 64, 96, generator=generator, dtype=torch.float64)
    moments = _Moments(torch.float32)
    for piece in values.float().split(8, dim=2):
        moments.add(piece)
    mean, variance = moments.result()
    expected_variance = values.var(dim=(0, 2, 3), unbiased=False).float()
    torch.testing.assert_close(mean, values.mean(dim=(0, 2, 3)).float())
    torch.testing.assert_close(variance, expected_variance, rtol=1e-3, atol=0)


def test_automatic_tiles_stay_within_what_gpu_kernels_can_index(net, monkeypatch):
    monkeypatch.setattr(Stylizer, "_largest_tile", lambda self, channels: 100_000)
    run = stylizer(net)
    channels = net.full_resolution_channels
    assert channels * (run.tile_size + 8) ** 2 < 2**31
    assert run.tile_size == _largest_indexable_tile(channels) > 1000


@pytest.mark.skipif(
    not _cpu_runs_float16(), reason="this PyTorch lacks fp16 CPU kernels; the CLI refuses fp16"
)
def test_float16_apply_is_close_to_float32(net):
    image = smooth_image(64, 80, seed=5)
    reference = stylizer(net)(image)
    for tile_size in (1024, 64):
        half = stylizer(net, dtype=torch.float16, tile_size=tile_size)(image)
        assert torch.isfinite(half).all()
        assert (half - reference).abs().mean() < 0.01
