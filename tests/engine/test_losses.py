import pytest
import torch

from stylize.engine.losses import content_loss, gram_matrix, style_loss, total_variation_loss

# Two channels over a 1x2 image: channel 0 is [1, 2], channel 1 is [3, 4].
FEATURES = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])


def test_gram_matrix_by_hand():
    # F F^T = [[1+4, 3+8], [3+8, 9+16]], divided by C*H*W = 2*1*2.
    expected = torch.tensor([[[1.25, 2.75], [2.75, 6.25]]])
    assert torch.allclose(gram_matrix(FEATURES), expected)


def test_gram_matrix_does_not_depend_on_image_size():
    torch.manual_seed(0)
    features = torch.rand(1, 8, 5, 7)
    tiled = features.repeat(1, 1, 3, 2)
    assert torch.allclose(gram_matrix(tiled), gram_matrix(features), rtol=1e-5)


def test_gram_matrix_is_float32_for_reduced_precision_features():
    assert gram_matrix(FEATURES.to(torch.bfloat16)).dtype == torch.float32


def test_content_loss_by_hand():
    target = torch.tensor([1.0, 2.0, 3.0, 6.0])
    features = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # MSE (0 + 0 + 0 + 4) / 4 = 1, relative to mean(target^2) = (1 + 4 + 9 + 36) / 4 = 12.5.
    assert content_loss(features, target).item() == pytest.approx(0.08)


def test_content_loss_does_not_depend_on_activation_scale():
    torch.manual_seed(0)
    features, target = torch.rand(1, 4, 6, 6), torch.rand(1, 4, 6, 6)
    scaled = content_loss(features * 1000, target * 1000)
    assert scaled.item() == pytest.approx(content_loss(features, target).item(), rel=1e-5)


def test_style_loss_by_hand():
    target = torch.tensor([[[1.0, 3.0], [3.0, 6.0]]])
    # The Gram matrix differs by 0.25 everywhere: MSE 0.0625, relative to
    # mean(target^2) = (1 + 9 + 9 + 36) / 4 = 13.75.
    assert style_loss(FEATURES, target).item() == pytest.approx(0.0625 / 13.75)


def test_style_loss_is_zero_for_the_style_itself_and_positive_otherwise():
    torch.manual_seed(0)
    features = torch.rand(1, 6, 8, 8)
    assert style_loss(features, gram_matrix(features)).item() == pytest.approx(0, abs=1e-12)
    assert style_loss(torch.rand(1, 6, 8, 8), gram_matrix(features)).item() > 0


def test_style_loss_does_not_depend_on_image_size_or_activation_scale():
    torch.manual_seed(0)
    features, target = torch.rand(1, 4, 6, 6), gram_matrix(torch.rand(1, 4, 9, 9))
    base = style_loss(features, target).item()
    assert style_loss(features.repeat(1, 1, 2, 2), target).item() == pytest.approx(base, rel=1e-5)
    assert style_loss(features * 10, target * 100).item() == pytest.approx(base, rel=1e-5)


def test_total_variation_by_hand():
    image = torch.tensor([[[[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]]]])
    # Across: differences 1, 2, 0, 0 -> mean square 5/4. Down: 0, -1, -3 -> 10/3.
    assert total_variation_loss(image).item() == pytest.approx(5 / 4 + 10 / 3)


def test_total_variation_of_a_flat_image_is_zero():
    assert total_variation_loss(torch.full((1, 3, 4, 5), 0.3)).item() == 0


def test_losses_pass_gradients_to_the_features():
    features = FEATURES.clone().requires_grad_(True)
    loss = content_loss(features, FEATURES * 2) + style_loss(features, gram_matrix(FEATURES * 2))
    loss.backward()
    assert features.grad is not None
    assert torch.all(features.grad < 0)  # both pull the features up towards the target


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_gram_matrix_gradient_is_that_of_the_plain_product(memory_format):
    torch.manual_seed(0)
    features = torch.randn(2, 5, 4, 6).contiguous(memory_format=memory_format)
    features.requires_grad_()
    flat = features.flatten(2)
    plain = flat @ flat.mT / (5 * 4 * 6)
    gram = gram_matrix(features)
    torch.testing.assert_close(gram, plain)
    # Not symmetric, unlike the style loss's, so both halves of the product's gradient show.
    upstream = torch.randn(2, 5, 5)
    (got,) = torch.autograd.grad(gram, features, upstream)
    (want,) = torch.autograd.grad(plain, features, upstream)
    torch.testing.assert_close(got, want)
