"""Style model conversions, checked against an independent pytorch/examples-layout network."""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from stylize.engine.transformer import TransformerConfig, TransformerNet, load_transformer
from stylize.errors import StylizeError
from stylize.store.convert import convert_style_file
from stylize.store.modelfile import read_model_file, read_model_meta, write_model_file
from stylize.store.registry import import_model, install_model, model_path
from stylize.store.styles import load_styles, parse_style

TINY = (4, 8, 8)


class ExamplesConv(nn.Module):
    """pytorch/examples' ConvLayer / UpsampleConvLayer: [upsample], reflection pad, conv."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int = 1, up: bool = False):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if up else nn.Identity()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(inputs, outputs, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.pad(self.up(x)))


class ExamplesResidual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.in1 = (
            ExamplesConv(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )
        self.conv2, self.in2 = (
            ExamplesConv(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class ExamplesNet(nn.Module):
    """The fast_neural_style TransformerNet of pytorch/examples, written out independently."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128), blocks: int = 5):
        super().__init__()
        a, b, c = channels
        self.conv1, self.in1 = ExamplesConv(3, a, 9), nn.InstanceNorm2d(a, affine=True)
        self.conv2, self.in2 = ExamplesConv(a, b, 3, 2), nn.InstanceNorm2d(b, affine=True)
        self.conv3, self.in3 = ExamplesConv(b, c, 3, 2), nn.InstanceNorm2d(c, affine=True)
        self.blocks = [ExamplesResidual(c) for _ in range(blocks)]
        for number, block in enumerate(self.blocks, start=1):
            self.add_module(f"res{number}", block)
        self.deconv1, self.in4 = ExamplesConv(c, b, 3, up=True), nn.InstanceNorm2d(b, affine=True)
        self.deconv2, self.in5 = ExamplesConv(b, a, 3, up=True), nn.InstanceNorm2d(a, affine=True)
        self.deconv3 = ExamplesConv(a, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        for block in self.blocks:
            y = block(y)
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def examples_net(channels: tuple[int, int, int] = TINY, blocks: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    net = ExamplesNet(channels, blocks).eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.split(".")[-2].startswith("in") and name.endswith("weight"):
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0, 0.2)
    return net


def assert_reproduces(tensors: dict, meta: dict, reference: nn.Module) -> None:
    net = load_transformer(tensors, TransformerConfig.from_dict(meta["architecture"]))
    image = torch.rand(1, 3, 36, 44, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        expected = reference(image)
        torch.testing.assert_close(net(image), expected, rtol=1e-4, atol=1e-3 * expected.std())


def export_onnx(module: nn.Module, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and opset notes
        # The legacy (TorchScript) exporter: the default before torch 2.9, asked for by name
        # where the dynamo exporter exists.
        legacy = (
            {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        )
        torch.onnx.export(
            module, (torch.rand(1, 3, 32, 32) * 255,), buffer, opset_version=opset, **legacy
        )
    return onnx.load_from_string(buffer.getvalue())


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def like_the_model_zoo(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites an export the way 2018 exporters wrote the ONNX model zoo's files: numbered
    initializer names unrelated to the layers, every initializer also a graph input, and some
    weights held by Constant nodes instead of initializers."""
    graph = model.graph
    initializers = list(graph.initializer)
    numbers = {init.name: str(len(initializers) - index) for index, init in enumerate(initializers)}
    for node in graph.node:
        node.input[:] = [numbers.get(name, name) for name in node.input]
    constants = []
    kept = []
    for index, init in enumerate(reversed(initializers)):
        init.name = numbers[init.name]
        if index % 2:
            constants.append(helper.make_node("Constant", [], [init.name], value=init))
        else:
            kept.append(init)
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    graph.input.extend(
        helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)) for init in kept
    )
    nodes = constants + list(graph.node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    return model


def test_pytorch_examples_state_dict_reproduces_the_original(tmp_path):
    reference = examples_net(channels=(32, 64, 128), blocks=5)
    path = tmp_path / "mosaic.pth"
    torch.save(reference.state_dict(), path)
    tensors, meta = convert_style_file(path)
    assert meta["kind"] == "style"
    assert meta["architecture"] == {"channels": [32, 64, 128], "residual_blocks": 5}
    assert sum(t.numel() for t in tensors.values()) == 1_679_235
    assert_reproduces(tensors, meta, reference)


def test_2017_checkpoint_with_stale_norm_statistics_and_module_prefix(tmp_path):
    reference = examples_net()
    state = dict(reference.state_dict())
    state["in1.running_mean"] = torch.zeros(TINY[0])
    state["in1.running_var"] = torch.ones(TINY[0])
    state["res1.in2.running_mean"] = torch.zeros(TINY[2])
    state["in5.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / "udnie.model"
    torch.save(
        {f"module.{key}": value for key, value in state.items()},
        path,
        _use_new_zipfile_serialization=False,  # the pre-1.6 format of the 2017 files
    )
    tensors, meta = convert_style_file(path)
    assert not any("running" in name or "module" in name for name in tensors)
    assert_reproduces(tensors, meta, reference)


@pytest.mark.parametrize("opset", [9, 17])
def test_onnx_export_reproduces_the_original(tmp_path, opset):
    reference = examples_net(blocks=2)
    path = save_onnx(export_onnx(reference, opset), tmp_path / "candy.onnx")
    tensors, meta = convert_style_file(path)
    assert meta["original_format"] == "onnx"
    assert meta["architecture"] == {"channels": list(TINY), "residual_blocks": 2}
    assert_reproduces(tensors, meta, reference)


def test_model_zoo_style_onnx_is_mapped_by_structure_not_names(tmp_path):
    reference = examples_net(blocks=2)
    model = like_the_model_zoo(export_onnx(reference, 9))
    assert any(node.op_type == "Constant" and node.output[0].isdigit() for node in model.graph.node)
    assert all(init.name.isdigit() for init in model.graph.initializer)
    tensors, meta = convert_style_file(save_onnx(model, tmp_path / "rain-princess-9.onnx"))
    expected = reference.state_dict()
    assert set(tensors) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(tensors[name], tensor, msg=name)
    assert_reproduces(tensors, meta, reference)


class WithOutputActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = examples_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)) * 255


class WithoutResiduals(ExamplesNet):
    def __init__(self):
        super().__init__(TINY, 1)
        block = self.blocks[0]
        block.forward = lambda x: block.in2(block.conv2(torch.relu(block.in1(block.conv1(x)))))


class WithZeroPadding(ExamplesNet):
    def __init__(self):
        super().__init__(TINY, 1)
        self.conv1.pad = nn.Identity()
        self.conv1.conv2d.padding = (4, 4)


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (WithOutputActivation, "Sigmoid"),
        (WithoutResiduals, "'Add': 0"),
        (WithZeroPadding, "convolution 1 has other strides, groups or padding"),
        (
            lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.LeakyReLU(), nn.Conv2d(8, 3, 3)),
            "LeakyRelu",
        ),
        (lambda: nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU()), "1 convolutions"),
    ],
)
def test_onnx_graphs_of_other_networks_are_refused(tmp_path, module, reason):
    path = save_onnx(export_onnx(module(), 11), tmp_path / "other.onnx")
    with pytest.raises(StylizeError, match="not a supported style model") as failure:
        convert_style_file(path)
    assert reason in str(failure.value)
    assert "\n" not in str(failure.value)


def test_onnx_weights_in_external_files_are_not_followed(tmp_path):
    model = export_onnx(examples_net(), 11)
    weight = model.graph.initializer[0]
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(StylizeError, match="external files"):
        convert_style_file(save_onnx(model, tmp_path / "external.onnx"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a safetensors, PyTorch, ONNX or TensorFlow GraphDef file"),
        (
            b"this is not a model at all",
            "not a safetensors, PyTorch, ONNX or TensorFlow GraphDef file",
        ),
        ("list", "not a state dict of tensors"),
        ("vgg", "no convolution weight 'conv1.conv2d.weight'"),
        ("truncated", "damaged zip archive"),
    ],
)
def test_files_that_are_not_style_models_are_refused(tmp_path, content, message):
    path = tmp_path / "model.pth"
    if content == "list":
        torch.save([torch.zeros(3)], path)
    elif content == "vgg":
        torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    elif content == "truncated":
        torch.save(examples_net().state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(StylizeError) as failure:
        convert_style_file(path)
    assert message in str(failure.value)
    assert "\n" not in str(failure.value)


def test_native_file_keeps_its_description_and_architecture(tmp_path):
    config = TransformerConfig(channels=(4, 8, 12), residual_blocks=2)
    net = TransformerNet(config)
    path = write_model_file(
        tmp_path / "mine.safetensors",
        net.state_dict(),
        {
            "kind": "style",
            "name": "mine",
            "source": "trained",
            "architecture": config.to_dict(),
            "style_image_sha256": "ab" * 32,
            "license": "CC-BY-4.0",
        },
    )
    tensors, meta = convert_style_file(path)
    assert meta["architecture"] == config.to_dict()
    assert meta["style_image_sha256"] == "ab" * 32 and meta["license"] == "CC-BY-4.0"
    assert not {"name", "source", "format", "stylize_version"} & set(meta)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensors[name], tensor)


def test_native_file_with_a_wrong_architecture_is_refused(tmp_path):
    net = TransformerNet(TransformerConfig(channels=TINY, residual_blocks=1))
    wrong = {"channels": list(TINY), "residual_blocks": 2}
    path = write_model_file(
        tmp_path / "wrong.safetensors",
        net.state_dict(),
        {"kind": "style", "architecture": wrong},
    )
    with pytest.raises(StylizeError, match=r"missing res2\.conv1\.conv2d\.bias"):
        convert_style_file(path)


def test_bare_safetensors_state_dict_is_accepted(tmp_path):
    from safetensors.torch import save_file

    reference = examples_net()
    path = tmp_path / "bare.safetensors"
    save_file(reference.state_dict(), path)
    tensors, meta = convert_style_file(path)
    assert_reproduces(tensors, meta, reference)


def test_import_model_installs_an_onnx_style_in_the_store(tmp_path):
    reference = examples_net(blocks=2)
    path = save_onnx(like_the_model_zoo(export_onnx(reference, 9)), tmp_path / "pointilism-9.onnx")
    assert import_model(path, name="dots") == "dots"
    tensors, meta = read_model_file(model_path("dots"))
    assert meta["kind"] == "style" and meta["source"] == "imported"
    assert meta["architecture"] == {"channels": list(TINY), "residual_blocks": 2}
    assert_reproduces(tensors, meta, reference)


def load_style(text, on_progress=None):
    return load_styles([parse_style(text)], on_progress=on_progress).network


def test_load_style_by_name_path_and_catalog_entry(tmp_path, local_catalog, http_server):
    reference = examples_net(blocks=2, seed=3)
    onnx_file = save_onnx(export_onnx(reference, 9), tmp_path / "candy-9.onnx")
    local_catalog.serve("candy", onnx_file)
    image = torch.rand(1, 3, 32, 40) * 255
    with torch.no_grad():
        expected = reference(image)

    progress: list[tuple] = []
    net = load_style("candy", on_progress=lambda *args, **kw: progress.append(args))
    meta = read_model_meta(model_path("candy"))
    assert meta["source"] == "catalog" and meta["license"] == "test-license"
    assert progress and progress[-1][0] == onnx_file.stat().st_size
    load_style("candy")
    assert http_server.requests["files/candy-9.onnx"] == 1

    from_file = load_style(str(onnx_file))
    with torch.no_grad():
        for loaded in (net, from_file):
            torch.testing.assert_close(loaded(image), expected, rtol=1e-4, atol=1e-2)


def test_load_style_failures_are_clear(tmp_path, vgg_home, local_catalog):
    with pytest.raises(StylizeError, match="no style named 'nothing'"):
        load_style("nothing")
    with pytest.raises(StylizeError, match="style file not found"):
        load_style(str(tmp_path / "missing.pth"))
    with pytest.raises(StylizeError, match="'vgg19' is a loss-network, not a style model"):
        load_style("vgg19")


def test_load_style_uses_the_stored_architecture():
    config = TransformerConfig(channels=(6, 10, 14), residual_blocks=3)
    state = TransformerNet(config).state_dict()
    install_model(
        "light", state, {"kind": "style", "source": "trained", "architecture": config.to_dict()}
    )
    net = load_style("light")
    assert net.config == config
