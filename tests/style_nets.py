"""Random style networks and smooth test images shared by the inference and apply tests."""

import torch

from stylize.engine.transformer import TransformerConfig, TransformerNet

TINY = TransformerConfig(channels=(8, 16, 16), residual_blocks=2)


def random_style_net(seed: int = 0, config: TransformerConfig = TINY) -> TransformerNet:
    """Random weights scaled like a trained network's: outputs spread over [0, 255] rather than
    clipped to its ends, so comparisons of results mean something."""
    torch.manual_seed(seed)
    net = TransformerNet(config).eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.split(".")[-2].startswith("in"):
                if name.endswith("weight"):
                    parameter.uniform_(0.5, 1.5)
                else:
                    parameter.normal_(0, 0.5)
        final = net.deconv3.conv2d
        final.bias.zero_()
        spread = net(smooth_image(64, 64, seed) * 255).std()
        final.weight.mul_(60 / spread)
        final.bias.fill_(128)
    return net


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height).view(-1, 1)
    x = torch.linspace(0, 1, width).view(1, -1)
    channels = [
        0.5 + 0.4 * torch.sin(9 * x + 3 * y),
        0.5 + 0.4 * torch.cos(7 * y - 2 * x),
        (x + y) / 2,
    ]
    image = torch.stack(channels)[None]
    noise = 0.05 * torch.randn(image.shape, generator=generator)
    return (image + noise).clamp(0, 1)
