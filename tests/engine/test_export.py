"""ONNX graphs written from the native networks compute what the PyTorch modules compute."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from real_weights import ARBITRARY_PREDICT_ONNX, ARBITRARY_TRANSFORM_ONNX, TF_GRAPHDEF, wheel_member
from style_nets import TINY, random_style_net, smooth_image
from stylize.engine.arbitrary import ArbitraryNet, load_arbitrary, style_vector
from stylize.engine.export import ExportError, export_network, network_graph, predictor_graph
from stylize.engine.multistyle import MultiStyleNet, load_multistyle
from stylize.engine.onnx_run import CHANNELS_KEY, IMAGE_INPUT, OUTPUT, STYLE_INPUT, STYLE_VECTOR
from stylize.engine.stylenet import BoundNet, Stage, StyleNet
from stylize.engine.transformer import TransformerConfig
from stylize.errors import StylizeError
from stylize.store.formats.onnx_arbitrary import read_arbitrary_onnx
from stylize.store.formats.tf_graphdef import read_multistyle_graphdef

# Float32 results on [0, 1]: the graph and the module differ by rounding only.
TOLERANCE = 1e-5
SIZES = [(64, 48), (36, 52)]


@pytest.fixture(scope="module")
def multistyle() -> MultiStyleNet:
    return load_multistyle(read_multistyle_graphdef(TF_GRAPHDEF))


@pytest.fixture(scope="module")
def arbitrary() -> ArbitraryNet:
    tensors = read_arbitrary_onnx(
        wheel_member(ARBITRARY_PREDICT_ONNX), wheel_member(ARBITRARY_TRANSFORM_ONNX)
    )
    return load_arbitrary(tensors)[1]


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def run_graph(model: onnx.ModelProto, image: Tensor, style: Tensor | None = None) -> np.ndarray:
    feeds = {IMAGE_INPUT: image.numpy()}
    if style is not None:
        feeds[STYLE_INPUT] = style.numpy().astype(np.float32)
    (result,) = session(model).run([OUTPUT], feeds)
    return result


def run_module(net: StyleNet, image: Tensor) -> np.ndarray:
    """`net` on an image in [0, 1], its result back in [0, 1] (not clamped)."""
    with torch.inference_mode():
        return (net(image * net.pixel_scale) / net.pixel_scale).numpy()


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


@pytest.mark.parametrize("config", [TransformerConfig(), TINY], ids=["pytorch-examples", "tiny"])
def test_a_pytorch_examples_network(config):
    net = random_style_net(seed=3, config=config)
    model = network_graph(net)
    assert [i.name for i in model.graph.input] == [IMAGE_INPUT]
    for height, width in SIZES:
        image = smooth_image(height, width, seed=1).repeat(2, 1, 1, 1)
        image[1] = image[1].flip(-1)
        expected = run_module(net, image)
        result = run_graph(model, image)
        assert result.shape == (2, 3, height, width)
        assert expected.std() > 0.1  # a picture, not a flat or clipped one
        assert np.abs(result - expected).max() < TOLERANCE


def test_the_full_resolution_channels_are_in_the_metadata(multistyle):
    default = network_graph(random_style_net(config=TransformerConfig()))
    assert metadata(default)[CHANNELS_KEY] == "64"
    assert metadata(network_graph(multistyle))[CHANNELS_KEY] == "32"
    tiny = network_graph(random_style_net(config=TINY))
    assert metadata(tiny)[CHANNELS_KEY] == str(TINY.channels[1])


def one_hot(index: int, size: int = 26) -> Tensor:
    vector = torch.zeros(size)
    vector[index] = 1.0
    return vector


MIXES = {
    "style 0": one_hot(0),
    "starry": one_hot(19),
    "style 25": one_hot(25),
    "0.7/0.3 blend": 0.7 * one_hot(19) + 0.3 * one_hot(3),
    "three-way blend": 0.5 * one_hot(2) + 0.3 * one_hot(10) + 0.2 * one_hot(21),
}


@pytest.fixture(scope="module")
def multistyle_graph(multistyle) -> onnx.ModelProto:
    return network_graph(multistyle)


def test_the_26_style_graph_takes_the_style_weights(multistyle_graph):
    inputs = {i.name: i for i in multistyle_graph.graph.input}
    assert list(inputs) == [IMAGE_INPUT, STYLE_INPUT]
    dims = inputs[STYLE_INPUT].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [26]


@pytest.mark.parametrize("weights", MIXES.values(), ids=MIXES.keys())
def test_the_real_26_style_network_in_every_style_and_blend(multistyle, multistyle_graph, weights):
    for height, width in SIZES:
        image = smooth_image(height, width, seed=2)
        expected = run_module(multistyle.bind(weights), image)
        result = run_graph(multistyle_graph, image, weights)
        assert expected.std() > 0.05
        assert np.abs(result - expected).max() < TOLERANCE


def test_the_real_arbitrary_network_with_random_style_vectors(arbitrary):
    model = network_graph(arbitrary)
    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs) == [IMAGE_INPUT, STYLE_INPUT]
    generator = torch.Generator().manual_seed(5)
    image = smooth_image(48, 40, seed=4)
    results = []
    for _ in range(3):
        vector = torch.randn(100, generator=generator)
        expected = run_module(arbitrary.bind(vector), image)
        result = run_graph(model, image, vector)
        assert np.abs(result - expected).max() < TOLERANCE
        results.append(result)
    assert np.abs(results[0] - results[1]).max() > 0.05  # the vector matters


def test_export_network_writes_the_graph_atomically(tmp_path, multistyle):
    path = tmp_path / "multistyle26.onnx"
    export_network(multistyle, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multistyle26.onnx"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    image, weights = smooth_image(32, 32), MIXES["starry"]
    expected = run_module(multistyle.bind(weights), image)
    assert np.abs(run_graph(model, image, weights) - expected).max() < TOLERANCE


class NotAffine(nn.Module):
    """A conditional network whose norms are the squares of its vector's mixes: right at the
    zero and unit vectors, wrong anywhere else."""

    def __init__(self, multistyle: MultiStyleNet) -> None:
        super().__init__()
        self.inner = multistyle

    @property
    def conditioning_size(self) -> int:
        return self.inner.conditioning_size

    def bind(self, vector: Tensor) -> StyleNet:
        return self.inner.bind(vector**2)


def test_a_conditional_network_whose_norms_are_not_affine_is_refused(multistyle, tmp_path):
    with pytest.raises(ExportError, match="not affine"):
        network_graph(NotAffine(multistyle))
    with pytest.raises(StylizeError):
        export_network(NotAffine(multistyle), tmp_path / "graph.onnx")
    assert list(tmp_path.iterdir()) == []


def with_stage(net: StyleNet, index: int, stage: Stage) -> BoundNet:
    decoder = list(net.decoder)
    decoder[index] = stage
    return BoundNet(net.encoder, net.residual_blocks, decoder, pixel_scale=net.pixel_scale)


class Doubling(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


def test_unknown_layers_are_refused():
    net = random_style_net(config=TINY)
    last = net.decoder[-1]
    plain_conv = Stage(nn.Conv2d(TINY.channels[0], 3, 9, padding=4), last.norm, last.activation)
    with pytest.raises(ExportError, match="Conv2d"):
        network_graph(with_stage(net, -1, plain_conv))
    with pytest.raises(ExportError, match="activation"):
        network_graph(with_stage(net, -1, Stage(last.conv, last.norm, torch.tanh)))
    blocks = [*net.residual_blocks[:-1], Doubling()]
    odd_block = BoundNet(net.encoder, blocks, net.decoder, pixel_scale=net.pixel_scale)
    with pytest.raises(ExportError, match="Doubling"):
        network_graph(odd_block)
    # The network itself is fine.
    network_graph(BoundNet(net.encoder, net.residual_blocks, net.decoder, pixel_scale=255.0))


def test_the_graph_runs_on_the_oldest_supported_onnxruntime(multistyle_graph):
    assert multistyle_graph.ir_version <= 8
    assert [(o.domain, o.version) for o in multistyle_graph.opset_import] == [("", 17)]


@pytest.fixture(scope="module")
def predictor() -> nn.Module:
    tensors = read_arbitrary_onnx(
        wheel_member(ARBITRARY_PREDICT_ONNX), wheel_member(ARBITRARY_TRANSFORM_ONNX)
    )
    return load_arbitrary(tensors)[0]


@pytest.mark.parametrize("size", [256, 97, 64])
def test_the_real_style_predictor_at_even_and_odd_sizes(predictor, size):
    # TensorFlow's "SAME" padding differs between odd and even sides at every stride 2.
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    (vectors,) = session(predictor_graph(predictor, size)).run(
        [STYLE_VECTOR], {IMAGE_INPUT: images.numpy()}
    )
    expected = style_vector(predictor, images, size).numpy()
    assert vectors.shape == (2, 100)
    assert np.abs(vectors - expected).max() < 1e-4 * np.abs(expected).max()


def test_only_a_style_predictor_exports_as_one(multistyle):
    with pytest.raises(ExportError, match="not a style predictor"):
        predictor_graph(multistyle, 256)


def test_narrow_layers_below_full_resolution_keep_their_plain_form():
    # Pixel blocks need even sides; a quarter-resolution side may be odd (20 px: 5).
    net = random_style_net(config=TransformerConfig(channels=(8, 8, 4), residual_blocks=1))
    image = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    expected = run_module(net, image)
    assert np.abs(run_graph(network_graph(net), image) - expected).max() < 1e-5
