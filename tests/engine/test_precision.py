"""Every precision a device can pick by default computes the same losses: Gram matrices and
losses stay float32 under float16 and bfloat16 autocast, and optimize runs in float16 without
overflowing (it stopped with "the loss became nan at iteration 1" before)."""

import math

import pytest
import torch
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from stylize.engine.gatys import GatysSettings, GatysTransfer
from stylize.engine.losses import gram_matrix
from stylize.engine.objective import PerceptualObjective
from stylize.engine.runtime import Runtime
from stylize.engine.vgg import VGGFeatures

REDUCED = [torch.float16, torch.bfloat16]
# Measured: float16 agrees with float32 to about 0.1%, bfloat16 to about 1% on these images.
LOSS_TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.03}


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {f"features.{key}": value for key, value in make_layers(cfgs["E"]).state_dict().items()}


def textured(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).view(-1, 1)
    x = torch.linspace(0, 1, width).view(1, -1)
    base = (
        torch.stack([torch.sin(11 * x + 5 * y), torch.cos(9 * y + 0 * x), x * y])[None] * 0.4 + 0.5
    )
    return (base + 0.1 * torch.rand(base.shape, generator=generator)).clamp(0, 1)


@pytest.mark.parametrize("dtype", REDUCED)
def test_gram_matrices_are_float32_under_autocast(dtype):
    # Activations as large as relu1_1's on a bright 512x384 image: their Gram sums overflow
    # float16 (largest 65504) when the product runs in it.
    features = torch.rand(1, 64, 96, 128) * 40
    expected = gram_matrix(features.to(dtype).float())
    with torch.autocast("cpu", dtype=dtype):
        gram = gram_matrix(features.to(dtype))
    assert gram.dtype == torch.float32
    assert torch.isfinite(gram).all()
    torch.testing.assert_close(gram, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", REDUCED)
def test_losses_agree_with_float32(weights, dtype):
    vgg = VGGFeatures(weights, ["relu2_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1"])
    objective = PerceptualObjective(
        ["relu2_2"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1"], 1.0, 1.0, 5.0
    )
    content, style, image = textured(96, 128, 0), textured(80, 80, 1), textured(96, 128, 2)

    def losses(runtime: Runtime) -> torch.Tensor:
        with torch.no_grad(), runtime.autocast():
            content_targets = objective.content_targets(vgg(content))
            style_targets = objective.style_targets([vgg(style)])
            features = vgg(image)
        return objective(image, features, content_targets, style_targets)

    cpu = torch.device("cpu")
    exact = losses(Runtime(cpu))
    reduced = losses(Runtime(cpu, dtype))
    assert reduced.dtype == torch.float32
    assert torch.isfinite(reduced).all()
    relative = ((reduced - exact).abs() / exact.abs()).max().item()
    assert relative < LOSS_TOLERANCE[dtype], f"{dtype}: {relative:.4f}"


def test_float16_optimize_at_512_pixels_runs_without_overflow(weights):
    content = Image.new("RGB", (512, 384), (250, 245, 240))  # bright: large activations
    style = Image.effect_noise((256, 256), 120).convert("RGB")
    transfer = GatysTransfer(
        content,
        [style],
        # relu1_1 is where the Gram sums are largest; stopping the VGG there keeps this fast
        # (float16 arithmetic is emulated on most CPUs).
        GatysSettings(
            size=512,
            scales=1,
            iterations=1,
            optimizer="adam",
            content_layers=("relu1_1",),
            style_layers=("relu1_1",),
        ),
        runtime=Runtime(torch.device("cpu"), torch.float16),
    )
    reports = []
    image = transfer.run(weights, lambda completed, total, **values: reports.append(values))
    assert torch.isfinite(image).all()
    assert reports and all(math.isfinite(report["loss"]) for report in reports)
