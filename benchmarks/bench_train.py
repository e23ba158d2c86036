"""Training images per second of `stylize train` against a pytorch/examples-style loop, on CPU.

Target: at least 1.3x the reference's images per second at 256 px, batch 4, float32.

The reference does what pytorch/examples' fast_neural_style `train` does, written plainly:
ImageFolder with Resize + CenterCrop, a DataLoader in the main process, the transform network
built from ReflectionPad2d / Conv2d / InstanceNorm2d / interpolate modules in the default
memory layout, VGG slices run separately on the stylized and the content batch, MSE content
loss and MSE of size-normalized Gram matrices against the style Grams, Adam. It uses the VGG19
layers stylize uses by default and starts from the same transform network weights; both read
the same JPEG photos (640x480, like COCO) with loading in the main process (`--workers 0`).

Each repetition runs the reference, then stylize at float32, then (where the CPU has bf16
hardware) stylize with `--precision auto`; warm-up steps are not timed. The table shows the
best repetition of each.

    python benchmarks/bench_train.py           # 256 px, batch 4: about 4 minutes on 2 cores
    python benchmarks/bench_train.py --quick   # 64 px, tiny run, to check that it works

Uses the installed `vgg19` loss network when there is one, else random weights of the same
shape (speed does not depend on the values). Exit status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision import datasets, transforms
from torchvision.models.vgg import cfgs, make_layers

from stylize.engine import training
from stylize.engine.device import pick_device, resolve_precision
from stylize.engine.runtime import Runtime
from stylize.engine.transformer import TransformerConfig, TransformerNet

TARGET_RATIO = 1.3
PHOTO_SIZE = (640, 480)
PHOTO_COUNT = 24


# The reference: plain modules, as a tutorial writes them.
class ConvLayer(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(channels_in, channels_out, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2d(self.pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class UpsampleConvLayer(ConvLayer):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class ReferenceTransformer(nn.Module):
    """pytorch/examples' TransformerNet, with the same parameter names as stylize's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(3, 32, 9), nn.InstanceNorm2d(32, affine=True)
        self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True)
        self.res1, self.res2, self.res3, self.res4, self.res5 = (
            ResidualBlock(128) for _ in range(5)
        )
        self.deconv1 = UpsampleConvLayer(128, 64, 3)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, 3)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


class ReferenceVGG(nn.Module):
    """torchvision's VGG19 features cut into slices that end at the loss layers."""

    def __init__(self, weights: dict[str, Tensor], taps: tuple[str, ...]) -> None:
        super().__init__()
        features = make_layers(cfgs["E"])
        features.load_state_dict(
            {key.removeprefix("features."): value for key, value in weights.items()},
            strict=False,
        )
        ends = sorted(_relu_index(name) for name in taps)
        starts = [0] + [end + 1 for end in ends[:-1]]
        self.slices = nn.ModuleList(
            features[start : end + 1] for start, end in zip(starts, ends, strict=True)
        )
        for parameter in self.parameters():
            parameter.requires_grad = False

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for piece in self.slices:
            x = piece(x)
            outputs.append(x)
        return outputs


def _relu_index(name: str) -> int:
    """Index in torchvision's VGG19 `features` of the ReLU called `name`."""
    layers, block, conv = [], 1, 0
    for entry in cfgs["E"]:
        if entry == "M":
            layers.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            layers += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return layers.index(name)


def normalize_batch(batch: Tensor) -> Tensor:
    mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    return (batch / 255.0 - mean) / std


def gram_matrix(features: Tensor) -> Tensor:
    batch, channels, height, width = features.size()
    flat = features.view(batch, channels, width * height)
    return flat.bmm(flat.transpose(1, 2)) / (channels * height * width)


def reference_loop(
    photos: Path,
    style: Image.Image,
    weights: dict[str, Tensor],
    initial: dict[str, Tensor],
    settings: training.TrainSettings,
    steps: int,
    on_step: Callable[[], None],
) -> None:
    size = settings.image_size
    transform = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Lambda(lambda x: x.mul(255)),
        ]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(photos.parent), transform), batch_size=settings.batch_size
    )
    transformer = ReferenceTransformer()
    transformer.load_state_dict(initial)
    optimizer = torch.optim.Adam(transformer.parameters(), settings.learning_rate)
    mse_loss = nn.MSELoss()
    taps = tuple(dict.fromkeys(settings.style_layers + settings.content_layers))
    vgg = ReferenceVGG(weights, taps)
    ordered = sorted(taps, key=_relu_index)
    style_slots = [ordered.index(name) for name in settings.style_layers]
    content_slot = ordered.index(settings.content_layers[0])
    style_batch = transforms.ToTensor()(style).mul(255).repeat(settings.batch_size, 1, 1, 1)
    gram_style = [gram_matrix(y) for y in vgg(normalize_batch(style_batch))]
    done = 0
    while done < steps:
        for x, _ in loader:
            optimizer.zero_grad()
            y = normalize_batch(transformer(x))
            features_y = vgg(y)
            features_x = vgg(normalize_batch(x))
            content_loss = settings.content_weight * mse_loss(
                features_y[content_slot], features_x[content_slot]
            )
            style_loss = 0.0
            for slot in style_slots:
                style_loss += mse_loss(gram_matrix(features_y[slot]), gram_style[slot][: len(x)])
            total_loss = content_loss + settings.style_weight * style_loss
            total_loss.backward()
            optimizer.step()
            content_loss.item()
            done += 1
            on_step()
            if done == steps:
                return


def stylize_loop(
    photos: Path,
    style_path: Path,
    weights: dict[str, Tensor],
    settings: training.TrainSettings,
    steps: int,
    autocast_dtype: torch.dtype | None,
    on_step: Callable[[], None],
) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        plan = training.prepare_training(
            style_image=style_path,
            data_folder=photos,
            workdir=Path(workdir),
            settings=settings,
            runtime=Runtime(torch.device("cpu"), autocast_dtype),
            steps=steps,
        )
        training.run_training(
            plan,
            weights,
            on_progress=lambda done, total, **values: on_step() if done else None,
        )


def make_photo(path: Path, seed: int) -> None:
    """A smooth, colorful 640x480 JPEG with some noise, about the size of a COCO photo."""
    random = np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    y, x = np.mgrid[0:height, 0:width]
    phase = random.uniform(0, 6.28, 3)
    waves = [127 + 100 * np.sin(x / (30 + 7 * c) + y / (41 + 5 * c) + phase[c]) for c in range(3)]
    pixels = np.stack(waves, axis=-1) + random.normal(0, 12, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def vgg_weights() -> tuple[dict[str, Tensor], str]:
    from stylize.store.registry import VGG19, load_vgg19_weights, model_path

    if model_path(VGG19).exists():
        return load_vgg19_weights(), "installed vgg19"
    torch.manual_seed(0)
    state = make_layers(cfgs["E"]).state_dict()
    return {f"features.{key}": value for key, value in state.items()}, "random VGG19 weights"


def images_per_second(run: Callable[[Callable[[], None]], None], warmup: int, batch: int) -> float:
    stamps: list[float] = []
    run(lambda: stamps.append(time.perf_counter()))
    timed = stamps[warmup - 1 :]
    return (len(timed) - 1) * batch / (timed[-1] - timed[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 px, 2 timed steps, 1 repetition")
    parser.add_argument("--size", type=int, default=256, help="training crop side in pixels")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
    parser.add_argument("--repetitions", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch_size, args.steps, args.warmup, args.repetitions = 64, 2, 2, 1, 1

    device = pick_device("cpu")  # the thread settings stylize uses
    reduced = resolve_precision(device, "auto")
    weights, weights_source = vgg_weights()
    settings = training.TrainSettings(
        image_size=args.size, batch_size=args.batch_size, style_size=args.size
    )
    torch.manual_seed(settings.seed)
    initial = TransformerNet(TransformerConfig()).state_dict()
    total_steps = args.warmup + args.steps
    results: dict[str, list[float]] = {"reference (pytorch/examples loop)": []}
    results["stylize train, fp32"] = []
    if reduced is not None:
        results[f"stylize train, --precision auto ({str(reduced).removeprefix('torch.')})"] = []

    with tempfile.TemporaryDirectory() as scratch:
        # ImageFolder wants a class folder; stylize reads the same files from that folder.
        photos = Path(scratch) / "photos" / "all"
        photos.mkdir(parents=True)
        for number in range(PHOTO_COUNT):
            make_photo(photos / f"photo{number:03d}.jpg", seed=number)
        style_path = Path(scratch) / "style.jpg"
        make_photo(style_path, seed=PHOTO_COUNT)
        with Image.open(style_path) as opened:
            style = opened.convert("RGB").resize((args.size, args.size * 3 // 4))
        runs: list[Callable[[Callable[[], None]], None]] = [
            lambda on_step: reference_loop(
                photos, style, weights, initial, settings, total_steps, on_step
            ),
            lambda on_step: stylize_loop(
                photos, style_path, weights, settings, total_steps, None, on_step
            ),
            lambda on_step: stylize_loop(
                photos, style_path, weights, settings, total_steps, reduced, on_step
            ),
        ]
        for repetition in range(args.repetitions):
            for label, run in zip(results, runs, strict=False):
                results[label].append(images_per_second(run, args.warmup, args.batch_size))
                print(f"  repetition {repetition + 1}: {label}: {results[label][-1]:.2f} img/s")

    best = {label: max(values) for label, values in results.items()}
    reference = best["reference (pytorch/examples loop)"]
    print()
    print(
        f"CPU, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, best of {args.repetitions}, "
        f"{weights_source}, torch {torch.__version__}"
    )
    print()
    print("| loop | images/s | s/step | vs reference |")
    print("| --- | ---: | ---: | ---: |")
    for label, value in best.items():
        print(
            f"| {label} | {value:.2f} | {args.batch_size / value:.2f} | {value / reference:.2f}x |"
        )
    ratio = best["stylize train, fp32"] / reference
    print()
    print(f"fp32 ratio {ratio:.2f}x (target {TARGET_RATIO}x)")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
