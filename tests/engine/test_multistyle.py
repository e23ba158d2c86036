"""The native 26-style network against onnxruntime on the real export, and as a `StyleNet`."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from real_weights import MULTISTYLE_ONNX, extract
from style_nets import smooth_image
from stylize.engine.inference import Stylizer
from stylize.engine.multistyle import (
    MultiStyleNet,
    check_tensors,
    expected_shapes,
    load_multistyle,
)
from stylize.engine.runtime import Runtime
from stylize.errors import StylizeError
from stylize.store.formats.onnx_multistyle import read_multistyle_onnx

ort = pytest.importorskip("onnxruntime")

MIXES = {
    "style 0": {0: 1.0},
    "style 19": {19: 1.0},
    "style 25": {25: 1.0},
    "0.7/0.3 blend": {0: 0.7, 3: 0.3},
    "three-way blend": {2: 0.5, 10: 0.3, 21: 0.2},
}


def mix(weights: dict[int, float]) -> Tensor:
    vector = torch.zeros(26)
    for index, weight in weights.items():
        vector[index] = weight
    return vector


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract(MULTISTYLE_ONNX, tmp_path_factory.mktemp("multistyle"))


@pytest.fixture(scope="module")
def tensors(onnx_path: Path) -> dict[str, Tensor]:
    return read_multistyle_onnx(onnx_path)


@pytest.fixture
def net(tensors: dict[str, Tensor]) -> MultiStyleNet:
    """A fresh network per test: binding shares its convolutions, which `.to()` converts."""
    return load_multistyle(tensors)


@pytest.fixture(scope="module")
def session(onnx_path: Path) -> object:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("size", [(64, 48), (100, 76)], ids=["64x48", "100x76"])
@pytest.mark.parametrize("weights", MIXES.values(), ids=MIXES.keys())
def test_matches_onnxruntime_on_the_real_export(net, session, size, weights):
    width, height = size
    image = smooth_image(height, width, seed=1)
    vector = mix(weights)
    (expected,) = session.run(None, {"image": image.numpy(), "style_weights": vector.numpy()})
    with torch.inference_mode():
        result = net.bind(vector)(image)
    assert result.shape == (1, 3, height, width)
    # Measured: at most 3.2e-5.
    assert np.abs(result.numpy() - expected).max() < 1e-4


def test_tensor_names_and_sizes():
    shapes = expected_shapes()
    assert len(shapes) == 18 + 2 * 18
    assert shapes["conv1.conv2d.weight"] == (32, 3, 9, 9)
    assert shapes["conv3.conv2d.weight"] == (32, 32, 3, 3)
    assert shapes["res6.conv2.conv2d.weight"] == (32, 32, 3, 3)
    assert shapes["res6.norm2.shift"] == (26, 32)
    assert shapes["deconv1.conv2d.weight"] == (8, 32, 3, 3)
    assert shapes["deconv2.conv2d.weight"] == (4, 8, 3, 3)
    assert shapes["deconv3.conv2d.weight"] == (3, 4, 9, 9)
    assert shapes["norm6.scale"] == (26, 3)
    assert not any(name.endswith("bias") for name in shapes)
    assert sum(np.prod(shape) for shape in shapes.values()) == 166_104
    assert MultiStyleNet().styles == 26


def test_bound_net_shares_convolutions_and_holds_the_mixed_norms(net):
    weights = mix(MIXES["three-way blend"])
    bound = net.bind(weights)
    assert bound.pixel_scale == 1.0
    assert bound.encoder[0].conv is net.conv1
    assert bound.decoder[-1].conv is net.deconv3
    assert bound.residual_blocks[5].conv2 is net.res6.conv2
    shared = {parameter.data_ptr() for parameter in net.parameters()}
    assert all(
        parameter.data_ptr() in shared
        for name, parameter in bound.named_parameters()
        if "conv2d" in name
    )
    torch.testing.assert_close(bound.encoder[0].norm.weight, weights @ net.norm1.scale)
    torch.testing.assert_close(bound.decoder[-1].norm.bias, weights @ net.norm6.shift)
    assert bound.residual_blocks[0].in1.eps == 1e-5


def test_bind_rejects_wrong_weight_vectors(net):
    with pytest.raises(StylizeError, match="vector of 26"):
        net.bind(torch.ones(25))
    with pytest.raises(StylizeError, match="finite"):
        net.bind(torch.full((26,), float("nan")))


def test_reduced_precision_and_channels_last_stay_close(net):
    image = smooth_image(96, 64, seed=3)
    weights = mix(MIXES["0.7/0.3 blend"])
    bound = net.bind(weights)
    with torch.inference_mode():
        reference = bound(image)
        channels_last = bound(image.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = bound(image.contiguous(memory_format=torch.channels_last)).float()
        halved = bound.to(torch.bfloat16)(image.bfloat16()).float()
    torch.testing.assert_close(channels_last, reference, rtol=0, atol=1e-5)
    # bfloat16 keeps 8 bits: measured mean errors about 0.005, the largest about 0.12, where
    # the network is steep (it is sensitive even to its own 8-bit weight quantization).
    for result in (autocast, halved):
        assert (result - reference).abs().mean() < 0.02
        assert (result - reference).abs().max() < 0.25


def test_tiles_match_the_whole_image_with_the_final_norm_and_sigmoid(net):
    image = smooth_image(152, 200, seed=2)
    weights = mix(MIXES["0.7/0.3 blend"])
    whole = Stylizer(net.bind(weights), Runtime(torch.device("cpu")))(image)
    tiled = Stylizer(net.bind(weights), Runtime(torch.device("cpu")), tile_size=64)(image)
    assert (tiled - whole).abs().max() < 1e-4  # measured 8e-6


def test_check_tensors_names_the_problem(tensors):
    with pytest.raises(StylizeError, match=r"missing norm3\.scale"):
        check_tensors({k: v for k, v in tensors.items() if k != "norm3.scale"})
    with pytest.raises(StylizeError, match=r"unexpected conv1\.conv2d\.bias"):
        check_tensors({**tensors, "conv1.conv2d.bias": torch.zeros(32)})
    wrong = {**tensors, "deconv2.conv2d.weight": torch.zeros(8, 8, 3, 3)}
    with pytest.raises(StylizeError, match=r"deconv2\.conv2d\.weight has shape \[8, 8, 3, 3\]"):
        load_multistyle(wrong)
    broken = {**tensors, "res2.norm1.shift": torch.full((26, 32), float("inf"))}
    with pytest.raises(StylizeError, match=r"res2\.norm1\.shift does not hold finite numbers"):
        load_multistyle(broken)


def test_loaded_network_is_float32_eval_and_frozen(tensors):
    net = load_multistyle({name: tensor.double() for name, tensor in tensors.items()})
    assert not net.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in net.parameters())
    assert net.conv1.conv2d.bias.count_nonzero() == 0
