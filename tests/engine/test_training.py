"""The training engine: data stream, loop, checkpoints, exact resume, interruption."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from stylize.engine import training
from stylize.engine.runtime import Runtime
from stylize.engine.training import (
    Processes,
    TrainSettings,
    epoch_order,
    prepare_training,
    run_training,
    scan_training_data,
)
from stylize.engine.training.data import BatchOrder, CropDataset
from stylize.engine.transformer import TransformerConfig
from stylize.errors import StylizeError

TINY = TransformerConfig(channels=(8, 16, 16), residual_blocks=1)
CPU = torch.device("cpu")


def tiny_settings(**changes: object) -> TrainSettings:
    values: dict[str, object] = {
        "image_size": 32,
        "batch_size": 2,
        "style_size": 32,
        "architecture": TINY,
    }
    return TrainSettings(**{**values, **changes})  # type: ignore[arg-type]


@pytest.fixture
def vgg_weights(vgg_home: Path) -> dict[str, torch.Tensor]:
    from stylize.store.registry import load_vgg19_weights

    return load_vgg19_weights()


@pytest.fixture
def photos(make_image: Callable[..., Path], tmp_path: Path) -> Path:
    for number, size in enumerate([(48, 32), (40, 56), (36, 36)]):
        make_image(f"photos/{'nested/' * number}photo{number}.png", size=size, seed=number)
    return tmp_path / "photos"


@pytest.fixture
def style(make_image: Callable[..., Path]) -> Path:
    return make_image("style.png", size=(40, 32), seed=7)


def plan_for(style: Path, photos: Path, workdir: Path, **options: object) -> training.TrainingPlan:
    settings = options.pop("settings", tiny_settings())
    return prepare_training(
        style_image=style,
        data_folder=photos,
        workdir=workdir,
        settings=settings,  # type: ignore[arg-type]
        runtime=Runtime(CPU),
        **options,  # type: ignore[arg-type]
    )


def read_log(workdir: Path) -> list[dict[str, str]]:
    with (workdir / training.LOSS_LOG_FILE).open(newline="") as file:
        return list(csv.DictReader(file))


def test_settings_are_checked() -> None:
    with pytest.raises(StylizeError, match="multiple of 4"):
        TrainSettings(image_size=30)
    with pytest.raises(StylizeError, match=r"relu9_9.*choose from"):
        TrainSettings(style_layers=("relu9_9",))
    with pytest.raises(StylizeError, match="--style-weight must be 0 or a positive number"):
        TrainSettings(style_weight=-1.0)
    with pytest.raises(StylizeError, match="--style-size must be at least 16"):
        TrainSettings(style_size=8)
    assert TrainSettings(style_layers=("relu2_1", "relu2_1")).style_layers == ("relu2_1",)


def test_a_too_narrow_style_image_is_refused(
    make_image: Callable[..., Path], photos: Path, tmp_path: Path
) -> None:
    narrow = make_image("narrow.png", size=(200, 8))
    with pytest.raises(StylizeError, match=r"style image is 32x1 pixels at --style-size 32"):
        plan_for(narrow, photos, tmp_path / "work", steps=1)


def test_scan_finds_images_recursively_and_refuses_unusable_folders(
    photos: Path, tmp_path: Path
) -> None:
    data = scan_training_data(photos)
    assert [path.relative_to(photos).as_posix() for path in data.images] == [
        "nested/nested/photo2.png",
        "nested/photo1.png",
        "photo0.png",
    ]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StylizeError, match="no image files"):
        scan_training_data(empty)
    (empty / "notes.txt").write_text("no pictures here")
    with pytest.raises(StylizeError, match="no image files"):
        scan_training_data(empty)
    (empty / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(StylizeError, match="none of the 1 image files"):
        scan_training_data(empty)
    with pytest.raises(StylizeError, match="data folder not found"):
        scan_training_data(tmp_path / "missing")


def test_sample_stream_visits_every_image_once_per_epoch_split_between_processes() -> None:
    def batches(rank: int, first_position: int, steps: int) -> list[list[tuple[int, int]]]:
        order = BatchOrder(
            image_count=10,
            seed=3,
            batch_size=3,
            processes=Processes(rank=rank, world_size=2),
            first_position=first_position,
            steps=steps,
        )
        return list(order)

    first, second = batches(0, 0, 5), batches(1, 0, 5)
    samples = sorted(
        (sample for step in first + second for sample in step), key=lambda sample: sample[1]
    )
    assert [position for _, position in samples] == list(range(30))
    for epoch in range(3):
        images = [image for image, position in samples if position // 10 == epoch]
        assert images == list(epoch_order(3, epoch, 10))
        assert sorted(images) == list(range(10))
    assert epoch_order(3, 0, 10).tolist() != epoch_order(3, 1, 10).tolist()
    # Resuming at a later position continues the same stream.
    assert batches(1, 12, 3) == second[2:]


def test_crops_are_deterministic_and_unreadable_files_are_replaced(
    photos: Path, tmp_path: Path
) -> None:
    broken = photos / "broken.png"
    broken.write_bytes(b"not a png")
    images = scan_training_data(photos).images
    dataset = CropDataset(images, size=32, seed=0)
    wide = images.index(photos / "photo0.png")  # 48x32: 17 places for a 32x32 crop
    pixels, unreadable = dataset[(wide, 5)]
    assert pixels.shape == (32, 32, 3) and pixels.dtype == torch.uint8
    assert unreadable == []
    again, _ = dataset[(wide, 5)]
    assert torch.equal(pixels, again)
    # Each position in the stream gets its own crop.
    crops = {dataset[(wide, position)][0].numpy().tobytes() for position in range(10)}
    assert len(crops) > 3

    index = images.index(broken)
    replaced, unreadable = dataset[(index, 5)]
    assert len(unreadable) == 1 and "broken.png" in unreadable[0]
    following = dataset[((index + 1) % len(images), 5)][0]
    assert torch.equal(replaced, following)


def test_resume_after_three_steps_equals_six_uninterrupted_steps(
    style: Path, photos: Path, tmp_path: Path, vgg_weights: dict[str, torch.Tensor]
) -> None:
    straight = run_training(plan_for(style, photos, tmp_path / "straight", steps=6), vgg_weights)

    stopped = run_training(plan_for(style, photos, tmp_path / "split", steps=3), vgg_weights)
    assert stopped.step == 3
    # Loader processes do not change the data stream.
    resumed = run_training(
        plan_for(style, photos, tmp_path / "split", steps=6, resume=True),
        vgg_weights,
        workers=2,
    )
    assert straight.step == resumed.step == 6
    assert straight.tensors.keys() == resumed.tensors.keys()
    for name, tensor in straight.tensors.items():
        assert torch.equal(tensor, resumed.tensors[name]), name
    assert not torch.equal(
        stopped.tensors["conv1.conv2d.weight"], resumed.tensors["conv1.conv2d.weight"]
    )
    assert [row["loss"] for row in read_log(tmp_path / "split")] == [
        row["loss"] for row in read_log(tmp_path / "straight")
    ]


def test_loss_falls_when_overfitting_one_photo(
    style: Path,
    make_image: Callable[..., Path],
    tmp_path: Path,
    vgg_weights: dict[str, torch.Tensor],
) -> None:
    make_image("one/photo.png", size=(32, 32), seed=1)
    settings = tiny_settings(learning_rate=1e-2)
    result = run_training(
        plan_for(style, tmp_path / "one", tmp_path / "work", steps=12, settings=settings),
        vgg_weights,
    )
    losses = [float(row["loss"]) for row in read_log(tmp_path / "work")]
    assert len(losses) == 12
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
    assert result.losses["loss"] == pytest.approx(losses[-1], rel=1e-5)


def test_progress_previews_checkpoints_and_model_metadata(
    style: Path, photos: Path, tmp_path: Path, vgg_weights: dict[str, torch.Tensor]
) -> None:
    reports: list[tuple[int, int, dict[str, object]]] = []
    plan = plan_for(style, photos, tmp_path / "work", epochs=2, previews=[style, style])
    assert plan.total_steps == 3  # 2 epochs of 3 images, 2 images a step
    result = run_training(
        plan,
        vgg_weights,
        checkpoint_every=2,
        preview_every=2,
        on_progress=lambda done, total, **values: reports.append((done, total, values)),
    )
    assert [(done, total) for done, total, _ in reports] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert set(reports[-1][2]) == {
        "content",
        "style",
        "tv",
        "loss",
        "images_per_second",
        "unreadable",
    }
    previews = sorted(path.name for path in (tmp_path / "work" / "previews").iterdir())
    assert previews == [
        "style-000002.jpg",
        "style-000003.jpg",
        "style-2-000002.jpg",
        "style-2-000003.jpg",
    ]
    with Image.open(tmp_path / "work" / "previews" / "style-000003.jpg") as preview:
        assert preview.size == (40, 32)

    checkpoint = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3 and checkpoint["position"] == 6
    for name, tensor in result.tensors.items():
        assert torch.equal(checkpoint["model"][name], tensor)

    meta = result.meta
    assert meta["kind"] == "style" and meta["source"] == "trained"
    assert meta["architecture"] == TINY.to_dict()
    assert meta["style_image_sha256"] == hashlib.sha256(style.read_bytes()).hexdigest()
    assert meta["training"]["steps"] == 3 and meta["training"]["image_size"] == 32
    assert meta["training"]["final_losses"] == result.losses
    header, encoded = meta["thumbnail"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    assert len(encoded) < 8000
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as thumbnail:
        assert max(thumbnail.size) <= training.THUMBNAIL_LONG_EDGE


def test_resume_checks_that_nothing_changed(
    style: Path,
    photos: Path,
    make_image: Callable[..., Path],
    tmp_path: Path,
    vgg_weights: dict[str, torch.Tensor],
) -> None:
    workdir = tmp_path / "work"
    with pytest.raises(StylizeError, match="no checkpoint to resume"):
        plan_for(style, photos, workdir, steps=2, resume=True)
    run_training(plan_for(style, photos, workdir, steps=2), vgg_weights)

    with pytest.raises(StylizeError, match="already holds a training checkpoint"):
        plan_for(style, photos, workdir, steps=4)
    with pytest.raises(StylizeError, match=r"other settings \(style_weight 1.0 there, 2.0 now\)"):
        plan_for(
            style, photos, workdir, steps=4, resume=True, settings=tiny_settings(style_weight=2.0)
        )
    other_style = make_image("other-style.png", seed=9)
    with pytest.raises(StylizeError, match="another style image"):
        plan_for(other_style, photos, workdir, steps=4, resume=True)
    with pytest.raises(StylizeError, match="past the 1 steps"):
        plan_for(style, photos, workdir, steps=1, resume=True)
    make_image("photos/new.png", seed=5)
    with pytest.raises(StylizeError, match=r"changed since \(3 images then, 4 now\)"):
        plan_for(style, photos, workdir, steps=4, resume=True)


def test_first_ctrl_c_finishes_the_step_and_saves_a_checkpoint(
    style: Path, photos: Path, tmp_path: Path, vgg_weights: dict[str, torch.Tensor]
) -> None:
    def interrupt_at_step_two(done: int, total: int, **values: object) -> None:
        if done == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a second one does not cut the step short

    before = signal.getsignal(signal.SIGINT)
    result = run_training(
        plan_for(style, photos, tmp_path / "work", steps=50),
        vgg_weights,
        on_progress=interrupt_at_step_two,
    )
    assert signal.getsignal(signal.SIGINT) is before
    assert result.interrupted and result.step == 3
    checkpoint = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3
    resumed = plan_for(style, photos, tmp_path / "work", steps=50, resume=True)
    assert resumed.start_step == 3
