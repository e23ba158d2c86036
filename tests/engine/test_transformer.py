import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylize.engine.layers import instance_norm
from stylize.engine.transformer import (
    TransformerConfig,
    TransformerNet,
    check_tensors,
    expected_shapes,
    infer_config,
    load_transformer,
)
from stylize.errors import StylizeError


def pytorch_examples_keys(blocks: int = 5) -> set[str]:
    """The state dict keys of pytorch/examples' fast_neural_style TransformerNet."""
    convs = ["conv1", "conv2", "conv3", "deconv1", "deconv2", "deconv3"]
    convs += [f"res{i}.conv{j}" for i in range(1, blocks + 1) for j in (1, 2)]
    norms = ["in1", "in2", "in3", "in4", "in5"]
    norms += [f"res{i}.in{j}" for i in range(1, blocks + 1) for j in (1, 2)]
    return {f"{conv}.conv2d.{kind}" for conv in convs for kind in ("weight", "bias")} | {
        f"{norm}.{kind}" for norm in norms for kind in ("weight", "bias")
    }


def test_default_network_has_the_pytorch_examples_size_and_names():
    net = TransformerNet()
    assert sum(parameter.numel() for parameter in net.parameters()) == 1_679_235
    state = net.state_dict()
    assert set(state) == pytorch_examples_keys()
    assert state["conv1.conv2d.weight"].shape == (32, 3, 9, 9)
    assert state["conv3.conv2d.weight"].shape == (128, 64, 3, 3)
    assert state["res5.conv2.conv2d.weight"].shape == (128, 128, 3, 3)
    assert state["deconv1.conv2d.weight"].shape == (64, 128, 3, 3)
    assert state["deconv3.conv2d.weight"].shape == (3, 32, 9, 9)
    assert state["in5.weight"].shape == (32,)


def test_lighter_variant_changes_widths_and_blocks():
    config = TransformerConfig(channels=(8, 16, 24), residual_blocks=2)
    state = TransformerNet(config).state_dict()
    assert set(state) == pytorch_examples_keys(blocks=2)
    assert state["res2.in2.weight"].shape == (24,)
    assert infer_config(state) == config


def test_output_has_the_input_size_for_multiples_of_four():
    net = TransformerNet(TransformerConfig(channels=(4, 8, 8), residual_blocks=1)).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 20, 28) * 255).shape == (2, 3, 20, 28)


class PlainTransformer(nn.Module):
    """pytorch/examples' network written plainly: upsampled images, padding modules, nn norms."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        full, half, quarter = config.channels

        def conv(inputs: int, outputs: int, kernel: int, stride: int = 1) -> nn.Module:
            layer = nn.Module()
            layer.conv2d = nn.Conv2d(inputs, outputs, kernel, stride)
            return layer

        self.conv1, self.in1 = conv(3, full, 9), nn.InstanceNorm2d(full, affine=True)
        self.conv2, self.in2 = conv(full, half, 3, 2), nn.InstanceNorm2d(half, affine=True)
        self.conv3, self.in3 = conv(half, quarter, 3, 2), nn.InstanceNorm2d(quarter, affine=True)
        self.blocks = config.residual_blocks
        for number in range(1, self.blocks + 1):
            block = nn.Module()
            block.conv1, block.in1 = (
                conv(quarter, quarter, 3),
                nn.InstanceNorm2d(quarter, affine=True),
            )
            block.conv2, block.in2 = (
                conv(quarter, quarter, 3),
                nn.InstanceNorm2d(quarter, affine=True),
            )
            self.add_module(f"res{number}", block)
        self.deconv1, self.in4 = conv(quarter, half, 3), nn.InstanceNorm2d(half, affine=True)
        self.deconv2, self.in5 = conv(half, full, 3), nn.InstanceNorm2d(full, affine=True)
        self.deconv3 = conv(full, 3, 9)

    @staticmethod
    def run(layer: nn.Module, x: Tensor, upsample: bool = False) -> Tensor:
        if upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        padding = layer.conv2d.kernel_size[0] // 2
        return layer.conv2d(F.pad(x, (padding,) * 4, mode="reflect"))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.in1(self.run(self.conv1, x)))
        x = F.relu(self.in2(self.run(self.conv2, x)))
        x = F.relu(self.in3(self.run(self.conv3, x)))
        for number in range(1, self.blocks + 1):
            block = getattr(self, f"res{number}")
            y = F.relu(block.in1(self.run(block.conv1, x)))
            x = x + block.in2(self.run(block.conv2, y))
        x = F.relu(self.in4(self.run(self.deconv1, x, upsample=True)))
        x = F.relu(self.in5(self.run(self.deconv2, x, upsample=True)))
        return self.run(self.deconv3, x)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("batch", [1, 3])
def test_network_computes_the_plain_pytorch_examples_function_and_gradients(batch, memory_format):
    torch.manual_seed(0)
    config = TransformerConfig(channels=(4, 6, 8), residual_blocks=2)
    net = TransformerNet(config).double().to(memory_format=memory_format)
    plain = PlainTransformer(config).double()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0.0, 0.3)
    plain.load_state_dict(net.state_dict())
    # Not square, and the quarter-resolution grid is odd (5 x 7): edge handling shows.
    images = (torch.rand(batch, 3, 20, 28, dtype=torch.float64) * 255).contiguous(
        memory_format=memory_format
    )
    stylized = net(images)
    expected = plain(images)
    torch.testing.assert_close(stylized, expected)
    assert stylized.is_contiguous(memory_format=memory_format)

    upstream = torch.randn_like(expected)
    gradients = torch.autograd.grad(stylized, list(net.parameters()), upstream)
    expected_gradients = torch.autograd.grad(expected, list(plain.parameters()), upstream)
    for (name, _), got, want in zip(
        net.named_parameters(), gradients, expected_gradients, strict=True
    ):
        torch.testing.assert_close(got, want, msg=lambda message, name=name: f"{name}: {message}")


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_upsampling_convolution_equals_upsample_pad_and_convolve(memory_format):
    torch.manual_seed(0)
    net = TransformerNet(TransformerConfig(channels=(4, 6, 8), residual_blocks=0)).double()
    layer = net.deconv1
    features = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    features = features.contiguous(memory_format=memory_format).requires_grad_()
    upsampled = F.interpolate(features, scale_factor=2, mode="nearest")
    expected = layer.conv2d(F.pad(upsampled, (1, 1, 1, 1), mode="reflect"))
    result = layer(features)
    assert result.shape == (2, 6, 10, 14)
    torch.testing.assert_close(result, expected)

    upstream = torch.randn_like(expected)
    inputs = [features, layer.conv2d.weight, layer.conv2d.bias]
    for got, want in zip(
        torch.autograd.grad(result, inputs, upstream),
        torch.autograd.grad(expected, inputs, upstream),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("batch", [1, 3])
def test_instance_norm_shortcuts_match_instance_norm(batch):
    norm = torch.nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    features = torch.randn(batch, 6, 10, 12) * 7 + 3
    channels_last = features.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(instance_norm(norm, features), norm(features))
    torch.testing.assert_close(instance_norm(norm, channels_last), norm(features))

    upstream = torch.randn_like(features)
    parameters = [norm.weight, norm.bias]
    plain = features.clone().requires_grad_()
    expected = torch.autograd.grad(norm(plain), [plain, *parameters], upstream)
    for layout in (features, channels_last):
        layout = layout.clone().requires_grad_()
        normalized = instance_norm(norm, layout)
        assert normalized.stride() == layout.stride()
        gradients = torch.autograd.grad(normalized, [layout, *parameters], upstream)
        for got, want in zip(gradients, expected, strict=True):
            torch.testing.assert_close(got, want)


def test_a_batch_is_stylized_like_its_images_one_by_one():
    torch.manual_seed(0)
    net = TransformerNet(TransformerConfig(channels=(4, 8, 8), residual_blocks=1)).eval()
    images = torch.rand(2, 3, 16, 16) * 255
    with torch.no_grad():
        together = net(images)
        apart = torch.cat([net(images[:1]), net(images[1:])])
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-3)


def test_config_round_trips_through_a_dict():
    config = TransformerConfig(channels=(16, 32, 64), residual_blocks=3)
    assert config.to_dict() == {"channels": [16, 32, 64], "residual_blocks": 3}
    assert TransformerConfig.from_dict(config.to_dict()) == config
    assert TransformerConfig() == TransformerConfig.from_dict(
        {"channels": [32, 64, 128], "residual_blocks": 5}
    )


@pytest.mark.parametrize(
    "data",
    [
        {"channels": [32, 64], "residual_blocks": 5},
        {"channels": [32, 64, 0], "residual_blocks": 5},
        {"channels": [32, 64, 128.5], "residual_blocks": 5},
        {"channels": "32,64,128", "residual_blocks": 5},
        {"channels": [32, 64, 128], "residual_blocks": -1},
        {"channels": [32, 64, 128], "residual_blocks": True},
        {"channels": [32, 64, 128]},
        {"channels": [32, 64, 128], "residual_blocks": 5, "kernel": 3},
        [32, 64, 128],
    ],
)
def test_config_from_dict_rejects_malformed_architectures(data):
    with pytest.raises(StylizeError, match="transform network"):
        TransformerConfig.from_dict(data)


def test_expected_shapes_agree_with_the_network():
    config = TransformerConfig(channels=(4, 8, 12), residual_blocks=2)
    state = TransformerNet(config).state_dict()
    assert expected_shapes(config) == {name: tuple(t.shape) for name, t in state.items()}


def test_check_tensors_names_what_is_wrong():
    config = TransformerConfig(channels=(4, 8, 8), residual_blocks=1)
    state = TransformerNet(config).state_dict()
    check_tensors(state, config)

    with pytest.raises(StylizeError, match=r"missing in1\.bias"):
        check_tensors({k: v for k, v in state.items() if k != "in1.bias"}, config)
    with pytest.raises(StylizeError, match=r"unexpected extra\.weight"):
        check_tensors({**state, "extra.weight": torch.zeros(1)}, config)
    with pytest.raises(StylizeError, match=r"in2\.weight has shape \[9\], expected \[8\]"):
        check_tensors({**state, "in2.weight": torch.zeros(9)}, config)
    with pytest.raises(StylizeError, match="finite"):
        check_tensors({**state, "in2.weight": torch.full((8,), float("nan"))}, config)


def test_infer_config_rejects_other_networks():
    with pytest.raises(StylizeError, match=r"no convolution weight 'conv1\.conv2d\.weight'"):
        infer_config({"features.0.weight": torch.zeros(64, 3, 3, 3)})


def test_load_transformer_builds_a_frozen_float32_network():
    config = TransformerConfig(channels=(4, 8, 8), residual_blocks=1)
    state = {name: t.to(torch.float16) for name, t in TransformerNet(config).state_dict().items()}
    net = load_transformer(state, config)
    assert not net.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in net.parameters())
    torch.testing.assert_close(net.in1.weight, state["in1.weight"].float())
    with torch.no_grad():
        assert torch.isfinite(net(torch.rand(1, 3, 16, 16) * 255)).all()
