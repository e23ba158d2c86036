import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from stylize.engine.vgg import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    TAP_NAMES,
    VGGFeatures,
    check_taps,
    min_input_size,
)
from stylize.errors import StylizeError


@pytest.fixture(scope="module")
def full_vgg() -> nn.Sequential:
    """torchvision's complete VGG19 feature stack with random weights."""
    torch.manual_seed(0)
    return make_layers(cfgs["E"]).eval()


@pytest.fixture(scope="module")
def weights(full_vgg: nn.Sequential) -> dict[str, torch.Tensor]:
    return {f"features.{key}": value for key, value in full_vgg.state_dict().items()}


def test_tap_names_cover_every_relu_up_to_relu5_1():
    assert TAP_NAMES[0] == "relu1_1"
    assert TAP_NAMES[-1] == "relu5_1"
    assert len(TAP_NAMES) == 13
    assert set(DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS) <= set(TAP_NAMES)


def test_features_match_torchvision_vgg19(full_vgg, weights):
    taps = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    vgg = VGGFeatures(weights, taps)
    image = torch.rand(1, 3, 32, 48)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = {}
    x = (image - mean) / std
    with torch.no_grad():
        for index, layer in enumerate(full_vgg):
            x = layer(x)
            expected[index] = x.clone()
    features = vgg(image)
    assert list(features) == taps
    for name, index in zip(taps, [1, 6, 11, 20, 22, 29], strict=True):
        assert features[name].shape == expected[index].shape
        assert torch.allclose(features[name], expected[index], atol=1e-5, rtol=1e-4), name


def test_network_stops_at_the_deepest_tap_and_needs_only_its_weights(weights):
    shallow = {key: value for key, value in weights.items() if int(key.split(".")[1]) <= 5}
    vgg = VGGFeatures(shallow, ["relu2_1", "relu1_1"])
    assert len(vgg.layers) == 7  # conv1_1 ... relu2_1
    features = vgg(torch.rand(1, 3, 16, 16))
    assert features["relu2_1"].shape == (1, 128, 8, 8)


def test_parameters_are_frozen_but_the_image_gets_gradients(weights):
    vgg = VGGFeatures(weights, DEFAULT_STYLE_LAYERS)
    assert not any(parameter.requires_grad for parameter in vgg.parameters())
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    sum(feature.sum() for feature in vgg(image).values()).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in vgg.parameters())


def test_average_pooling(weights):
    max_pooled = VGGFeatures(weights, ["relu3_1"])
    avg_pooled = VGGFeatures(weights, ["relu3_1"], pooling="avg")
    kinds = {type(layer) for layer in avg_pooled.layers}
    assert nn.AvgPool2d in kinds and nn.MaxPool2d not in kinds
    image = torch.rand(1, 3, 16, 16)
    assert not torch.allclose(max_pooled(image)["relu3_1"], avg_pooled(image)["relu3_1"])


def test_unknown_tap_lists_the_valid_names(weights):
    with pytest.raises(StylizeError, match=r"'relu9_9'.*relu1_1.*relu5_1"):
        VGGFeatures(weights, ["relu1_1", "relu9_9"])
    with pytest.raises(StylizeError, match="unknown VGG19 layer 'conv1_1'"):
        check_taps(["conv1_1"])


def test_missing_or_misshapen_weights_are_refused(weights):
    missing = {key: value for key, value in weights.items() if key != "features.10.weight"}
    with pytest.raises(StylizeError, match=r"features\.10\.weight is missing"):
        VGGFeatures(missing, ["relu3_1"])
    misshapen = dict(weights, **{"features.0.bias": torch.zeros(3)})
    with pytest.raises(StylizeError, match=r"features\.0\.bias has shape \(3,\)"):
        VGGFeatures(misshapen, ["relu1_1"])


def test_unknown_pooling_is_refused(weights):
    with pytest.raises(StylizeError, match="unknown pooling 'l2'"):
        VGGFeatures(weights, ["relu1_1"], pooling="l2")


def test_min_input_size_counts_the_poolings_before_the_deepest_tap():
    assert min_input_size(["relu1_1"]) == 1
    assert min_input_size(["relu1_2", "relu3_4"]) == 4
    assert min_input_size(DEFAULT_STYLE_LAYERS) == 16
