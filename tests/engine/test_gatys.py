import re

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
from stylize.engine.settings import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from stylize.errors import StylizeError

DEFAULT_TAPS = DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS


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


# -- memory ---------------------------------------------------------------------------------------


@pytest.fixture
def available(monkeypatch):
    """Sets what the memory guard sees as available: available(9.1e9)."""
    from stylize.engine import memory

    def set_available(bytes_: float, limit: str = "available on this machine") -> None:
        value = memory.Available(int(bytes_), limit)
        monkeypatch.setattr(memory, "available_memory", lambda device: value)

    monkeypatch.delenv("STYLIZE_MEMORY_CHECK", raising=False)
    return set_available


def test_a_run_too_large_for_memory_is_refused_with_a_size_that_fits(
    content, warm_style, available
):
    available(9.1e9)
    with pytest.raises(StylizeError) as refused:
        GatysTransfer(content, [warm_style], GatysSettings(size=4000, scales=1))
    message = str(refused.value)
    match = re.fullmatch(
        r"optimize at 4000x2667 needs about (\d+\.\d) GB of memory, but 9\.1 GB is available on "
        r"this machine: use --size (\d+) or smaller",
        message,
    )
    assert match, message
    assert float(match[1]) > 9.1
    # The size it suggests passes the same check, with the same default scale count.
    suggested = int(match[2])
    assert 1500 < suggested < 4000
    GatysTransfer(content, [warm_style], GatysSettings(size=suggested, scales=1))


def test_adam_is_suggested_where_it_fits_and_the_check_can_be_turned_off(
    content, warm_style, available, monkeypatch
):
    from stylize.engine import memory

    lbfgs = memory.optimize_estimate(
        (2000, 1333), [(2000, 2000)], taps=DEFAULT_TAPS, optimizer="lbfgs"
    ).total
    adam = memory.optimize_estimate(
        (2000, 1333), [(2000, 2000)], taps=DEFAULT_TAPS, optimizer="adam"
    ).total
    available((lbfgs + adam) / 2)
    with pytest.raises(StylizeError, match=r"or --optimizer adam, which keeps no L-BFGS history"):
        GatysTransfer(content, [warm_style], GatysSettings(size=2000))
    GatysTransfer(content, [warm_style], GatysSettings(size=2000, optimizer="adam"))
    monkeypatch.setenv("STYLIZE_MEMORY_CHECK", "0")
    GatysTransfer(content, [warm_style], GatysSettings(size=2000))


def test_huge_style_images_are_refused_with_a_style_scale_that_fits(content, warm_style, available):
    available(2e9)
    with pytest.raises(StylizeError) as refused:
        GatysTransfer(content, [warm_style], GatysSettings(size=256, style_scale=100))
    match = re.search(r"--style-scale (\d+(\.\d+)?) or less", str(refused.value))
    assert match, refused.value
    GatysTransfer(content, [warm_style], GatysSettings(size=256, style_scale=float(match[1])))


ALLOCATOR_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 14231732224 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize(
    ("error", "stage", "message"),
    [
        (
            RuntimeError(ALLOCATOR_FAILURE),
            "image",
            "ran out of memory at 64x43 (scale 2 of 2) on cpu: an allocation of 14.2 GB failed; "
            "use a smaller --size, or --optimizer adam",
        ),
        (
            MemoryError(),
            "image",
            "ran out of memory at 64x43 (scale 2 of 2) on cpu: an allocation failed; use a "
            "smaller --size, or --optimizer adam",
        ),
        (
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."),
            "style",
            "ran out of memory computing the style targets at 64x43 (scale 2 of 2) on cpu, style "
            "images up to 64x64: an allocation of 2.00 GiB failed; use a smaller --style-scale "
            "or --size",
        ),
    ],
)
def test_running_out_of_memory_names_the_size_that_failed(
    content, warm_style, weights, monkeypatch, error, stage, message
):
    from stylize.engine import gatys

    class FailingAtTheLargestScale(gatys.VGGFeatures):
        def forward(self, image):
            at_stage = image.requires_grad == (stage == "image")
            if image.shape[-1] == 64 and at_stage:
                raise error
            return super().forward(image)

    monkeypatch.setattr(gatys, "VGGFeatures", FailingAtTheLargestScale)
    transfer = GatysTransfer(content, [warm_style], GatysSettings(size=64, scales=2, iterations=4))
    with pytest.raises(StylizeError) as failed:
        transfer.run(weights)
    assert str(failed.value) == message
    assert failed.value.__cause__ is None and failed.value.__context__ is None


def test_other_runtime_errors_pass_through(content, warm_style, weights, monkeypatch):
    from stylize.engine import gatys

    class Broken(gatys.VGGFeatures):
        def forward(self, image):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(gatys, "VGGFeatures", Broken)
    transfer = GatysTransfer(content, [warm_style], GatysSettings(size=32, iterations=2))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        transfer.run(weights)
