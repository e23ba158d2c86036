"""The GPU tier: the numerical oracles of the CPU suite, rerun on CUDA and Apple MPS.

`pytest -m gpu` runs only these. Each test runs once per accelerator type and is skipped, with
the reason, where that accelerator is absent (always in CI, which has none). The oracles:
tiling equals untiled inference, the accelerator agrees with the CPU on the real networks, every
precision the device can pick by default computes finite losses close to float32, and resumed
training equals uninterrupted training.
"""

import copy
import os
from pathlib import Path

import pytest
import torch

from real_weights import TF_GRAPHDEF, WHEEL
from style_nets import random_style_net, smooth_image
from stylize.engine.device import resolve_precision
from stylize.engine.inference import Stylizer
from stylize.engine.runtime import Runtime

pytestmark = pytest.mark.gpu


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    return torch.backends.mps.is_available()


# STYLIZE_GPU_TIER_DEVICES=cpu runs the tier on the CPU instead: a check of the tests themselves.
DEVICES = os.environ.get("STYLIZE_GPU_TIER_DEVICES", "cuda,mps").split(",")


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    if request.param != "cpu" and not _available(request.param):
        pytest.skip(f"no {request.param.upper()} device on this machine")
    return torch.device(request.param)


def precisions(device: torch.device) -> list[torch.dtype | None]:
    """float32 and the reduced precisions this device runs."""
    chosen = [None, resolve_precision(device, "auto")]
    if device.type == "cuda":
        chosen.append(torch.float16)
    return list(dict.fromkeys(chosen))


def networks() -> dict[str, torch.nn.Module]:
    from real_weights import ARBITRARY_PREDICT_ONNX, ARBITRARY_TRANSFORM_ONNX, wheel_member
    from stylize.engine.arbitrary import load_arbitrary
    from stylize.engine.multistyle import load_multistyle
    from stylize.store.formats.onnx_arbitrary import read_arbitrary_onnx
    from stylize.store.formats.tf_graphdef import read_multistyle_graphdef

    mix = torch.zeros(26)
    mix[19] = 1.0
    predictor, transformer = load_arbitrary(
        read_arbitrary_onnx(
            wheel_member(ARBITRARY_PREDICT_ONNX), wheel_member(ARBITRARY_TRANSFORM_ONNX)
        )
    )
    with torch.inference_mode():
        style = predictor(smooth_image(256, 256, seed=3))[0]
    return {
        "pytorch-examples": random_style_net(),
        "multistyle26": load_multistyle(read_multistyle_graphdef(TF_GRAPHDEF)).bind(mix),
        "arbitrary": transformer.bind(style),
    }


@pytest.fixture(scope="module")
def nets() -> dict[str, torch.nn.Module]:
    assert TF_GRAPHDEF.is_file() and WHEEL.is_file()
    return networks()


@pytest.mark.parametrize("family", ["pytorch-examples", "multistyle26", "arbitrary"])
def test_tiles_equal_the_whole_image_on_the_device(device, nets, family):
    image = smooth_image(200, 264, seed=1)
    exact = None
    for dtype in precisions(device):
        runtime = Runtime(device, dtype)
        whole = Stylizer(copy.deepcopy(nets[family]), runtime, tile_size=1024)(image)
        tiled = Stylizer(copy.deepcopy(nets[family]), runtime, tile_size=64)(image)
        if dtype is None:
            exact = whole
            assert (tiled - whole).abs().max() < 1e-3, family
        else:
            # Reduced precision: tiles stay as close to float32 as the whole image does.
            assert exact is not None
            whole_error = (whole - exact).abs().mean()
            assert (tiled - exact).abs().mean() < 1.5 * whole_error + 1e-4, (family, dtype)


@pytest.mark.parametrize("family", ["pytorch-examples", "multistyle26", "arbitrary"])
def test_the_device_agrees_with_the_cpu(device, nets, family):
    image = smooth_image(128, 160, seed=2)
    expected = Stylizer(copy.deepcopy(nets[family]), Runtime(torch.device("cpu")))(image)
    for dtype in precisions(device):
        result = Stylizer(copy.deepcopy(nets[family]), Runtime(device, dtype))(image)
        assert torch.isfinite(result).all()
        mean_error = (result - expected).abs().mean().item()
        # Reduced precision: the bound of the CPU suite (test_inference, about 5/255).
        assert mean_error < (1e-4 if dtype is None else 0.02), (family, dtype, mean_error)


def test_every_precision_keeps_optimize_finite_and_close(device):
    from PIL import Image

    from stylize.engine.gatys import GatysSettings, GatysTransfer

    weights = random_vgg_weights()
    content = Image.new("RGB", (512, 384), (250, 245, 240))
    style = Image.effect_noise((256, 256), 120).convert("RGB")
    settings = GatysSettings(size=512, scales=1, iterations=3, optimizer="adam")
    results = {}
    for dtype in precisions(device):
        transfer = GatysTransfer(content, [style], settings, runtime=Runtime(device, dtype))
        losses = run_losses(transfer, weights)
        assert all(torch.isfinite(torch.tensor(losses))), dtype
        results[dtype] = losses[0]
    for dtype, first in results.items():
        assert abs(first - results[None]) / results[None] < 0.03, dtype


def test_resumed_training_equals_uninterrupted_training(device, tmp_path: Path, make_image):
    from stylize.engine.settings import TrainSettings
    from stylize.engine.training import prepare_training, run_training
    from stylize.engine.transformer import TransformerConfig

    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
    photos = tmp_path / "photos"
    for number in range(3):
        make_image(f"photos/photo{number}.png", size=(48, 40), seed=number)
    style = make_image("style.png", size=(40, 32), seed=7)
    settings = TrainSettings(
        image_size=32,
        batch_size=2,
        style_size=32,
        architecture=TransformerConfig(channels=(8, 16, 16), residual_blocks=1),
    )
    weights = random_vgg_weights()

    def plan(workdir: Path, steps: int, resume: bool = False):
        return prepare_training(
            style_image=style,
            data_folder=photos,
            workdir=workdir,
            settings=settings,
            runtime=Runtime(device),
            steps=steps,
            resume=resume,
        )

    straight = run_training(plan(tmp_path / "straight", 6), weights)
    run_training(plan(tmp_path / "split", 3), weights)
    resumed = run_training(plan(tmp_path / "split", 6, resume=True), weights)
    for name, tensor in straight.tensors.items():
        torch.testing.assert_close(resumed.tensors[name], tensor, rtol=1e-4, atol=1e-5)


def run_losses(transfer, weights: dict[str, torch.Tensor]) -> list[float]:
    losses: list[float] = []
    transfer.run(weights, lambda completed, total, **values: losses.append(values["loss"]))
    return losses


def random_vgg_weights() -> dict[str, torch.Tensor]:
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    return {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}
