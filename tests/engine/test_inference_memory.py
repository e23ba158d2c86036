"""The memory guard of apply's torch path: tiles as large as memory allows, images that cannot
fit refused before any work, allocation failures as one line naming the image."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import pytest
import torch

from style_nets import random_style_net, smooth_image
from stylize.engine import memory
from stylize.engine.inference import MIN_TILE_SIZE, OutOfMemory, Stylizer
from stylize.engine.runtime import Runtime
from stylize.engine.transformer import TransformerNet
from stylize.errors import StylizeError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    return random_style_net()


def stylizer(net: TransformerNet, **options: object) -> Stylizer:
    return Stylizer(copy.deepcopy(net), Runtime(CPU), **options)  # type: ignore[arg-type]


@pytest.fixture
def available(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Sets what the memory guard sees as available: available(1.2e9)."""

    def set_available(bytes_: float, limit: str = "available on this machine") -> None:
        value = memory.Available(int(bytes_), limit)
        monkeypatch.setattr(memory, "available_memory", lambda device: value)

    monkeypatch.delenv("STYLIZE_MEMORY_CHECK", raising=False)
    return set_available


def test_the_estimate_stays_above_measured_peaks() -> None:
    # benchmarks/memory_apply.py, default network, float32, CPU: (size, tile) -> peak MiB.
    measured = {((512, 512), 1024): 142, ((1024, 768), 1024): 343, ((1024, 768), 128): 157}
    measured[(2048, 1024), 128] = 305
    run = Stylizer(TransformerNet(), Runtime(CPU, None), tile_size=1024)
    for ((width, height), tile), peak in measured.items():
        estimate = run.memory_needed((1, 3, height, width), tile_size=tile) / 2**20
        assert peak < estimate < 2 * peak


def test_automatic_tiles_shrink_to_what_the_image_leaves(net, available) -> None:
    image = smooth_image(150, 202, seed=1)
    whole = stylizer(net)(image)
    run = stylizer(net)
    # Room for the image and small tiles, not for the whole image at once.
    available(run.memory_needed(image.shape, tile_size=96))
    tiled = run(image)
    assert (tiled - whole).abs().max() < 2e-3  # the tiles' result is the whole image's


def test_an_image_too_large_even_for_the_smallest_tiles_is_refused_first(
    net, available, monkeypatch
) -> None:
    run = stylizer(net)
    shape = (1, 3, 30000, 40000)
    needed = run.memory_needed(shape, tile_size=MIN_TILE_SIZE)
    available(needed / 4)
    image = torch.zeros(1, 3, 1, 1).expand(shape)  # no memory of its own

    def no_work(*args: object) -> None:
        raise AssertionError("refused images are not stylized")

    monkeypatch.setattr(Stylizer, "_stylize", no_work)
    with pytest.raises(OutOfMemory) as refused:
        run(image)
    message = str(refused.value)
    match = re.fullmatch(
        r"stylizing a 40000x30000 image needs about (\d+\.\d) GB of memory even in tiles of 64 "
        r"pixels, but (\d+\.\d) GB is available on this machine: use --max-size (\d+) or smaller",
        message,
    )
    assert match, message
    assert isinstance(refused.value, StylizeError)  # the CLI reports it as one line
    edge = int(match[3])
    assert 10000 < edge < 40000
    assert run.memory_needed((1, 3, edge * 3 // 4, edge), tile_size=MIN_TILE_SIZE) <= needed / 4


def test_tiles_the_user_chose_are_kept_or_refused_with_a_size_that_fits(net, available) -> None:
    image = smooth_image(300, 400)
    run = stylizer(net, tile_size=1024)
    available(run.memory_needed(image.shape, tile_size=128))
    with pytest.raises(OutOfMemory) as refused:
        run(image)
    match = re.fullmatch(
        r"stylizing a 400x300 image needs about \d+ MB of memory in tiles of 1024 pixels, but "
        r"\d+ MB is available on this machine: use --tile-size (\d+) or smaller",
        str(refused.value),
    )
    assert match, str(refused.value)
    assert 128 <= int(match[1]) < 1024
    stylizer(net, tile_size=int(match[1]))(image)


def test_an_allocation_failure_during_apply_is_one_line_naming_the_image(net, monkeypatch) -> None:
    run = stylizer(net)

    def no_memory(self: Stylizer, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 3000000000 bytes. Error code 12"
        )

    monkeypatch.setattr(Stylizer, "_run_whole", no_memory)
    with pytest.raises(OutOfMemory) as failed:
        run(smooth_image(40, 60), scale=0.5)
    assert str(failed.value) == (
        f"ran out of memory on cpu stylizing a 60x40 image (run at 30x20) in tiles of "
        f"{run.tile_size} pixels (an allocation of 3.0 GB failed): use a smaller --tile-size or "
        "--max-size"
    )
    # Other errors pass through as they are.
    monkeypatch.setattr(Stylizer, "_run_whole", lambda self, images: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run(smooth_image(40, 60))
