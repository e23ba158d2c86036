import pytest
import torch
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from stylize.engine.gatys import (
    GatysSettings,
    GatysTransfer,
    _Reports,
    blend_weights,
    default_scale_count,
    scale_edges,
    split_iterations,
)
from stylize.engine.imageio import load_image, to_tensor
from stylize.engine.runtime import Runtime
from stylize.errors import StylizeError


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {f"features.{key}": value for key, value in make_layers(cfgs["E"]).state_dict().items()}


@pytest.fixture
def content(make_image) -> Image.Image:
    return load_image(make_image("content.png", size=(48, 32), seed=1)).rgb


@pytest.fixture
def warm_style(make_image) -> Image.Image:
    """A style image with colors unlike the content's: reds and yellows only."""
    image = load_image(make_image("style-warm.png", size=(40, 40), seed=2)).rgb
    red, green, _ = image.split()
    return Image.merge(
        "RGB", (red.point(lambda v: 128 + v // 2), green, Image.new("L", image.size))
    )


@pytest.fixture
def cool_style(make_image) -> Image.Image:
    image = load_image(make_image("style-cool.png", size=(40, 40), seed=3)).rgb
    return image.transpose(Image.Transpose.ROTATE_90)


def run(content, styles, weights, **settings) -> tuple[torch.Tensor, list[dict]]:
    reports: list[dict] = []
    transfer = GatysTransfer(content, styles, GatysSettings(**{"size": 32, **settings}))
    image = transfer.run(weights, lambda completed, total, **values: reports.append(values))
    return image, reports


def chroma(image: torch.Tensor) -> torch.Tensor:
    red, green, blue = image.unbind(1)
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    return torch.stack([blue - luma, red - luma], dim=1)


def test_default_scales_start_near_256_and_double():
    assert default_scale_count(64) == 1
    assert default_scale_count(256) == 1
    assert default_scale_count(512) == 2
    assert default_scale_count(1024) == 3
    assert scale_edges(1024, 3) == [256, 512, 1024]
    assert scale_edges(600, 2) == [300, 600]


def test_iterations_halve_from_scale_to_scale():
    assert split_iterations(700, 3) == [400, 200, 100]
    assert split_iterations(500, 1) == [500]
    for total, scales in [(3, 3), (10, 4), (1001, 2)]:
        counts = split_iterations(total, scales)
        assert sum(counts) == total
        assert min(counts) >= 1
        assert counts == sorted(counts, reverse=True)
    with pytest.raises(StylizeError, match="2 iterations cannot cover 3 scales"):
        split_iterations(2, 3)


def test_blend_weights_are_normalized():
    assert blend_weights(None, 4) == [0.25] * 4
    assert blend_weights([7, 3], 2) == pytest.approx([0.7, 0.3])
    with pytest.raises(StylizeError, match="2 weight"):
        blend_weights([1, 1], 3)
    with pytest.raises(StylizeError, match="non-negative"):
        blend_weights([1, -1], 2)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_total_loss_falls(content, warm_style, weights, optimizer):
    image, reports = run(
        content, [warm_style], weights, iterations=12, optimizer=optimizer, lr=0.05
    )
    assert image.shape == (1, 3, 21, 32)
    assert [report["iteration"] for report in reports] == list(range(1, 13))
    assert reports[-1]["loss"] < 0.5 * reports[0]["loss"]
    assert reports[0]["loss"] == pytest.approx(
        reports[0]["content"] + reports[0]["style"] + reports[0]["tv"], rel=1e-5
    )


def test_coarse_to_fine_ends_at_the_requested_size(content, warm_style, weights):
    transfer = GatysTransfer(content, [warm_style], GatysSettings(size=64, scales=2, iterations=6))
    assert transfer.sizes == [(32, 21), (64, 43)]
    assert transfer.iterations == [4, 2]
    reports = []
    image = transfer.run(weights, lambda completed, total, **values: reports.append(values))
    assert image.shape == (1, 3, 43, 64)
    assert [(r["scale"], r["width"]) for r in reports] == [(1, 32)] * 4 + [(2, 64)] * 2


def test_snapshots_come_every_n_iterations(content, warm_style, weights):
    transfer = GatysTransfer(content, [warm_style], GatysSettings(size=64, scales=2, iterations=6))
    snapshots = []
    transfer.run(
        weights,
        on_snapshot=lambda iteration, image: snapshots.append((iteration, image.shape[-1])),
        snapshot_every=2,
    )
    assert snapshots == [(2, 32), (4, 32), (6, 64)]


def test_preserve_color_keeps_the_content_chroma(content, warm_style, weights):
    target = chroma(to_tensor(content.resize((32, 21), Image.Resampling.LANCZOS)))
    kept, _ = run(content, [warm_style], weights, iterations=6, preserve_color=True)
    changed, _ = run(content, [warm_style], weights, iterations=6)
    kept_error = (chroma(kept) - target).abs().mean().item()
    changed_error = (chroma(changed) - target).abs().mean().item()
    assert kept_error < 0.01
    assert changed_error > 3 * kept_error


def test_blend_weights_change_the_result(content, warm_style, cool_style, weights):
    styles = [warm_style, cool_style]
    mostly_warm, _ = run(content, styles, weights, iterations=6, style_blend=(0.9, 0.1))
    mostly_cool, _ = run(content, styles, weights, iterations=6, style_blend=(0.1, 0.9))
    same_as_warm, _ = run(content, styles, weights, iterations=6, style_blend=(9.0, 1.0))
    assert (mostly_warm - mostly_cool).abs().mean() > 0.01
    assert torch.allclose(mostly_warm, same_as_warm)


def test_noise_init_follows_the_seed(content, warm_style, weights):
    first, _ = run(content, [warm_style], weights, iterations=2, init="noise", seed=5)
    again, _ = run(content, [warm_style], weights, iterations=2, init="noise", seed=5)
    other, _ = run(content, [warm_style], weights, iterations=2, init="noise", seed=6)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_style_and_image_inits(content, warm_style, cool_style, weights):
    from_style, reports = run(content, [warm_style], weights, iterations=1, init="style")
    assert reports[0]["content"] > 0  # it did not start from the content
    _, reports = run(
        content, [warm_style], weights, iterations=1, init="style", preserve_color=True
    )
    assert reports[0]["content"] > 0
    transfer = GatysTransfer(
        content,
        [warm_style],
        GatysSettings(size=32, iterations=1, init="image"),
        init_image=cool_style,
    )
    assert transfer.run(weights).shape == from_style.shape


def test_nan_is_reported_with_the_iteration(content, warm_style, weights):
    poisoned = dict(weights, **{"features.0.bias": torch.full((64,), float("nan"))})
    with pytest.raises(StylizeError, match=r"loss became nan at iteration 1 .*nothing was saved"):
        run(content, [warm_style], poisoned, iterations=3)


def test_images_too_small_for_the_layers_are_refused_before_any_work(content, warm_style):
    with pytest.raises(StylizeError, match=r"content image is 16x11 pixels.*at least 16"):
        GatysTransfer(content, [warm_style], GatysSettings(size=16))
    with pytest.raises(StylizeError, match=r"style image is 10x10 pixels"):
        GatysTransfer(content, [warm_style], GatysSettings(size=32, style_scale=0.3))
    # Shallow layers work at sizes the default layers cannot handle.
    GatysTransfer(content, [warm_style], GatysSettings(size=16, style_layers=("relu1_1",)))


def test_bad_settings_are_refused(content, warm_style):
    for settings, message in [
        (GatysSettings(optimizer="sgd"), "--optimizer must be lbfgs or adam, got 'sgd'"),
        (GatysSettings(init="gray"), "--init must be content, noise, style or image, got 'gray'"),
        (GatysSettings(style_weight=-1), "--style-weight must be 0 or a positive number"),
        (GatysSettings(style_layers=()), "at least one style layer"),
        (GatysSettings(content_layers=("relu6_1",)), "unknown VGG19 layer 'relu6_1'"),
        (GatysSettings(style_blend=(1, 2)), "2 weight"),
        (GatysSettings(size=0), "--size must be a positive"),
        (GatysSettings(lr=float("inf")), "--lr must be a positive number, got inf"),
        (GatysSettings(lr=float("nan")), "--lr must be a positive number, got nan"),
    ]:
        with pytest.raises(StylizeError, match=message):
            GatysTransfer(content, [warm_style], settings)


def test_reduced_precision_keeps_losses_in_float32(content, warm_style, weights):
    transfer = GatysTransfer(
        content,
        [warm_style],
        GatysSettings(size=32, iterations=4),
        runtime=Runtime(torch.device("cpu"), torch.bfloat16),
    )
    reports = []
    image = transfer.run(weights, lambda completed, total, **values: reports.append(values))
    assert image.dtype == torch.float32
    assert reports[-1]["loss"] < reports[0]["loss"]


def test_exploding_loss_is_reported_with_the_iteration():
    reports = _Reports(None, 0.0, scale=0, sizes=[(32, 21)], iterations=5, weight_sum=7.0)
    for iteration, total in enumerate([3.0, 2.0, 6000.0, 9000.0], start=1):
        reports.add(torch.tensor([0.0, total, 0.0, total]), iteration, iteration)
    # The limit is 1000 times the larger of the first loss and the sum of the weights.
    with pytest.raises(StylizeError, match=r"exploded to 9000 at iteration 4 \(scale 1 of 1\)"):
        reports.flush()
