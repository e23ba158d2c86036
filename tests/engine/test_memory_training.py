"""The memory guard of `stylize train`: the estimate against measured peaks, the refusal before
step 1 with settings that fit, and running out of memory anyway as one line."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from stylize.engine import memory, training
from stylize.engine.runtime import Runtime
from stylize.engine.settings import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    TrainSettings,
    TransformerConfig,
)
from stylize.errors import StylizeError

TINY = TransformerConfig(channels=(8, 16, 16), residual_blocks=1)
# Peak resident memory (MiB) of two CPU training steps, measured with
# benchmarks/memory_train.py (style image 256 px): (image size, batch size, network, reduced
# precision) -> MiB. The table in stylize/engine/memory.py.
MEASURED = {
    (128, 1, TransformerConfig(), False): 275,
    (256, 1, TransformerConfig(), False): 541,
    (256, 2, TransformerConfig(), False): 885,
    (256, 4, TransformerConfig(), False): 1538,
    (256, 4, TransformerConfig(), True): 1058,
    (256, 2, TransformerConfig(), True): 667,
    (256, 2, TINY, False): 553,
    (256, 4, TINY, False): 909,
    (256, 4, TINY, True): 713,
}


@pytest.mark.parametrize(("run", "peak"), MEASURED.items())
def test_the_training_estimate_stays_just_above_measured_peaks(
    run: tuple[int, int, TransformerConfig, bool], peak: int
) -> None:
    image_size, batch_size, config, reduced = run
    estimate = memory.train_estimate(
        image_size,
        batch_size,
        (256, 256),
        config=config,
        content_layers=DEFAULT_CONTENT_LAYERS,
        style_layers=DEFAULT_STYLE_LAYERS,
        reduced_precision=reduced,
    )
    assert peak < estimate.total / 2**20 < 1.6 * peak


def test_the_transform_network_is_counted_from_its_configuration() -> None:
    from stylize.engine.transformer import TransformerNet

    for config in (TransformerConfig(), TINY, TransformerConfig((16, 32, 48), 3)):
        parameters = sum(each.numel() for each in TransformerNet(config).parameters())
        assert memory.transform_parameters(config) == parameters
    assert memory.transform_graph_elements(TransformerConfig()) > memory.transform_graph_elements(
        TINY
    )


@pytest.fixture
def available(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Sets what the memory guard sees as available: available(1.2e9)."""

    def set_available(bytes_: float, limit: str = "available on this machine") -> None:
        value = memory.Available(int(bytes_), limit)
        monkeypatch.setattr(memory, "available_memory", lambda device: value)

    monkeypatch.delenv("STYLIZE_MEMORY_CHECK", raising=False)
    return set_available


@pytest.fixture
def photos(make_image: Callable[..., Path], tmp_path: Path) -> Path:
    make_image("photos/a.png", size=(48, 32), seed=1)
    make_image("photos/b.png", size=(40, 56), seed=2)
    return tmp_path / "photos"


@pytest.fixture
def style(make_image: Callable[..., Path]) -> Path:
    return make_image("style.png", size=(40, 32), seed=7)


def plan(style: Path, photos: Path, workdir: Path, settings: TrainSettings, **options: object):
    return training.prepare_training(
        style_image=style,
        data_folder=photos,
        workdir=workdir,
        settings=settings,
        runtime=Runtime(torch.device("cpu")),
        steps=4,
        **options,  # type: ignore[arg-type]
    )


def test_a_batch_too_large_for_memory_is_refused_before_training_with_sizes_that_fit(
    style: Path, photos: Path, tmp_path: Path, available: Callable[..., None]
) -> None:
    settings = TrainSettings(image_size=512, batch_size=8, style_size=32)
    available(2.5e9)
    with pytest.raises(StylizeError) as refused:
        plan(style, photos, tmp_path / "work", settings)
    message = str(refused.value)
    match = re.fullmatch(
        r"training with --batch-size 8 and --image-size 512 on cpu needs about (\d+\.\d) GB of "
        r"memory, but 2\.5 GB is available on this machine: use --batch-size (\d), or "
        r"--image-size (\d+) or smaller",
        message,
    )
    assert match, message
    assert float(match[1]) > 2.5
    # Each suggestion passes the same check.
    smaller_batch = TrainSettings(image_size=512, batch_size=int(match[2]), style_size=32)
    plan(style, photos, tmp_path / "work", smaller_batch)
    smaller_crops = TrainSettings(image_size=int(match[3]), batch_size=8, style_size=32)
    plan(style, photos, tmp_path / "work", smaller_crops)
    assert int(match[3]) % 4 == 0 and 128 <= int(match[3]) < 512
    # Nothing to suggest when even the fixed costs do not fit; the guard can be switched off.
    available(1e8)
    with pytest.raises(StylizeError, match=r"is available on this machine: close other programs"):
        plan(style, photos, tmp_path / "work", settings)


def test_the_guard_can_be_switched_off(
    style: Path,
    photos: Path,
    tmp_path: Path,
    available: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    available(1e8)
    monkeypatch.setenv("STYLIZE_MEMORY_CHECK", "0")
    plan(style, photos, tmp_path / "work", TrainSettings(image_size=32, batch_size=2))


def test_processes_training_on_one_cpu_share_its_memory(
    style: Path,
    photos: Path,
    tmp_path: Path,
    available: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = TrainSettings(image_size=256, batch_size=4, style_size=32)
    needed = memory.train_estimate(
        256, 4, (32, 26), config=settings.architecture,
        content_layers=settings.content_layers, style_layers=settings.style_layers,
    ).total  # fmt: skip
    available(needed * 1.5)
    plan(style, photos, tmp_path / "work", settings)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(StylizeError, match=r"available on this machine, for each of 2 processes"):
        plan(style, photos, tmp_path / "work", settings)


# -- running out anyway ----------------------------------------------------------------------------

CPU_ALLOCATOR_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.fixture
def vgg_weights(vgg_home: Path) -> dict[str, torch.Tensor]:
    from stylize.store.registry import load_vgg19_weights

    return load_vgg19_weights()


def test_an_allocation_failure_during_training_names_the_batch_and_keeps_the_checkpoint(
    style: Path,
    photos: Path,
    tmp_path: Path,
    vgg_weights: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stylize.engine.training import loop

    real_step = loop._Trainer._step

    def step(self: loop._Trainer, *args: object) -> tuple[dict[str, float], bool]:
        if self.step == 2:
            raise RuntimeError(CPU_ALLOCATOR_FAILURE)
        return real_step(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop._Trainer, "_step", step)
    workdir = tmp_path / "work"
    settings = TrainSettings(image_size=32, batch_size=2, style_size=32, architecture=TINY)
    with pytest.raises(training.TrainingStopped) as stopped:
        training.run_training(
            plan(style, photos, workdir, settings), vgg_weights, checkpoint_every=2
        )
    assert str(stopped.value) == (
        "training stopped at step 3: out of memory on cpu training batches of 2 crops of 32x32 "
        "pixels (an allocation of 2.1 GB failed: close other programs, or start over with a "
        f"smaller --batch-size or --image-size); the last checkpoint (step 2) is in {workdir}: "
        "run the same command with --resume to continue from it"
    )
    assert torch.load(workdir / "checkpoint.pt", weights_only=True)["step"] == 2


def test_running_out_of_memory_while_setting_up_names_the_style_image(
    style: Path,
    photos: Path,
    tmp_path: Path,
    vgg_weights: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stylize.engine.training import loop

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError()

    monkeypatch.setattr(loop.VGGFeatures, "__init__", no_memory)
    settings = TrainSettings(image_size=32, batch_size=2, style_size=32, architecture=TINY)
    with pytest.raises(StylizeError) as failed:
        training.run_training(plan(style, photos, tmp_path / "work", settings), vgg_weights)
    assert str(failed.value) == (
        "ran out of memory on cpu setting up training (VGG19 and the style image at 32x26): an "
        "allocation failed; close other programs, or use a smaller --style-size"
    )
