"""The training engine: data stream, loop, checkpoints, exact resume, interruption."""

from __future__ import annotations

import base64
import csv
import errno
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


# -- failures: a full disk, a preview too small, a run that stops -----------------------------


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_checkpoints_and_previews_that_cannot_be_written_are_warnings(
    style: Path,
    photos: Path,
    tmp_path: Path,
    vgg_weights: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stylize.engine.training import loop

    workdir = tmp_path / "work"
    saves: list[int] = []

    def save(state: dict[str, object], path: Path) -> None:
        saves.append(int(state["step"]))  # type: ignore[call-overload]
        if state["step"] == 1:
            return real_save(state, path)
        Path(path).write_bytes(b"half a checkpoint")
        if state["step"] == 2:
            raise _no_space()
        # What torch.save's stream writer says when the disk fills up under it.
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    def save_image(image: Image.Image, path: Path, **options: object) -> Path:
        if "000002" in path.name:
            try:
                raise _no_space()
            except OSError:
                raise StylizeError(f"cannot write {path}: no room") from None
        return real_save_image(image, path, **options)

    real_save, real_save_image = torch.save, loop.save_image
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(loop, "save_image", save_image)
    warnings: list[str] = []
    plan = plan_for(style, photos, workdir, steps=3, previews=[style])
    result = run_training(
        plan, vgg_weights, checkpoint_every=1, preview_every=2, on_warning=warnings.append
    )

    assert saves == [1, 2, 3]
    assert result.step == 3 and not result.interrupted and result.tensors
    assert warnings == [
        f"could not write preview {workdir / 'previews' / 'style-000002.jpg'} at step 2 "
        "(no space left on device); training goes on",
        "could not write the checkpoint of step 2 (no space left on device); training goes on; "
        f"the last checkpoint (step 1) stays in {workdir}",
    ]
    # The final checkpoint's failure is the caller's to report (the model gets installed).
    assert result.checkpoint_step == 1
    assert result.checkpoint_problem == "no space left on device"
    assert torch.load(workdir / "checkpoint.pt", weights_only=True)["step"] == 1
    assert sorted(path.name for path in workdir.iterdir()) == [
        "checkpoint.pt",
        "losses.csv",
        "previews",
    ]
    assert [path.name for path in (workdir / "previews").iterdir()] == ["style-000003.jpg"]


def test_previews_too_small_for_the_network_are_refused_before_training(
    style: Path, photos: Path, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    from stylize.engine.transformer import TransformerNet

    # 9x9 convolutions pad by 4 at full resolution, 3x3 ones by 1 at a quarter of it.
    assert training.min_network_input(TINY) == training.min_network_input(TransformerConfig()) == 5
    net = TransformerNet(TINY).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 5, 40)).shape == (1, 3, 8, 40)
        with pytest.raises(RuntimeError, match="Padding size should be less than"):
            net(torch.rand(1, 3, 4, 40))

    workdir = tmp_path / "work"
    dot = make_image("dot.png", size=(1, 1))
    with pytest.raises(
        StylizeError,
        match=r"preview image .*dot.png is 1x1 pixels, too small for the style network: it "
        r"needs at least 5 pixels a side",
    ):
        plan_for(style, photos, workdir, steps=1, previews=[style, dot])
    strip = make_image("strip.png", size=(2048, 16))
    with pytest.raises(StylizeError, match=r"is 512x4 pixels once scaled to 512 pixels on its"):
        plan_for(style, photos, workdir, steps=1, previews=[strip])
    assert not workdir.exists()


def test_an_unwritable_previews_folder_is_refused_before_training(
    style: Path, photos: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "previews").write_text("a file where the previews go")
    with pytest.raises(StylizeError, match=r"cannot use previews folder .*previews: "):
        plan_for(style, photos, workdir, steps=1, previews=[style])
    plan_for(style, photos, workdir, steps=1)  # without previews, the folder does not matter
    assert sorted(path.name for path in workdir.iterdir()) == ["previews"]  # no probe left


def _fail_at_step_three(failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from stylize.engine.training import loop
    from stylize.engine.training.checkpoints import LossLog

    real_step, real_write = loop._Trainer._step, LossLog.write

    def step(self: object, *args: object) -> tuple[dict[str, float], bool]:
        losses, stop = real_step(self, *args)  # type: ignore[arg-type]
        if self.step == 2:  # type: ignore[attr-defined]
            if failure == "out of memory":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if failure == "nan":
                losses = dict.fromkeys(losses, float("nan"))
        return losses, stop

    def write(self: LossLog, **row: float) -> None:
        if row["step"] == 3 and failure == "disk full":

            def no_space(row: object) -> None:
                raise _no_space()

            self._writer = type("FullDisk", (), {"writerow": staticmethod(no_space)})()
        real_write(self, **row)

    monkeypatch.setattr(loop._Trainer, "_step", step)
    monkeypatch.setattr(LossLog, "write", write)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (
            "out of memory",
            "out of memory on cpu training batches of 2 crops of 32x32 pixels (an allocation "
            "of 2.00 GiB failed: close other programs, or start over with a smaller "
            "--batch-size or --image-size)",
        ),
        ("disk full", "cannot write {workdir}/losses.csv: no space left on device"),
        (
            "nan",
            "the loss became nan (a smaller --lr, starting over, or --precision fp32 may avoid it)",
        ),
    ],
)
def test_a_failure_stops_the_run_where_it_can_resume(
    style: Path,
    photos: Path,
    tmp_path: Path,
    vgg_weights: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
    reason: str,
) -> None:
    workdir = tmp_path / "work"
    with monkeypatch.context() as patches:
        _fail_at_step_three(failure, patches)
        with pytest.raises(training.TrainingStopped) as stopped:
            run_training(plan_for(style, photos, workdir, steps=4), vgg_weights, checkpoint_every=2)
    assert str(stopped.value) == (
        f"training stopped at step 3: {reason.format(workdir=workdir)}; the last checkpoint "
        f"(step 2) is in {workdir}: run the same command with --resume to continue from it"
    )
    assert (stopped.value.step, stopped.value.checkpoint_step) == (3, 2)
    assert torch.load(workdir / "checkpoint.pt", weights_only=True)["step"] == 2
    if failure != "out of memory":
        return
    assert [row["step"] for row in read_log(workdir)] == ["1", "2"]
    resumed = run_training(plan_for(style, photos, workdir, steps=4, resume=True), vgg_weights)
    assert resumed.step == 4 and resumed.checkpoint_step == 4
    assert [row["step"] for row in read_log(workdir)] == ["1", "2", "3", "4"]


def test_a_failure_before_the_first_checkpoint_says_to_start_over(
    style: Path,
    photos: Path,
    tmp_path: Path,
    vgg_weights: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stylize.engine.training import loop

    def step(self: object, *args: object) -> tuple[dict[str, float], bool]:
        raise RuntimeError("something broke\nwith a second line")

    monkeypatch.setattr(loop._Trainer, "_step", step)
    workdir = tmp_path / "work"
    with pytest.raises(training.TrainingStopped) as stopped:
        run_training(plan_for(style, photos, workdir, steps=4), vgg_weights)
    assert str(stopped.value) == (
        f"training stopped at step 1: RuntimeError: something broke; no checkpoint was saved in "
        f"{workdir} yet, so run the same command again to start over"
    )
    # Starting over is not refused: there is no checkpoint to protect.
    plan_for(style, photos, workdir, steps=4)


def test_full_disks_are_worded_the_same_whoever_reports_them() -> None:
    from safetensors import SafetensorError

    from stylize.engine.training import disk_full_reason, failure_reason

    full = "no space left on device"
    assert failure_reason(_no_space()) == full
    assert failure_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == (
        f"{full} (disk quota exceeded)"
    )
    assert (
        failure_reason(
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7 vs 5")
        )
        == full
    )
    assert (
        failure_reason(
            SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        )
        == full
    )
    try:
        try:
            raise _no_space()
        except OSError:
            raise StylizeError("cannot write model.safetensors: No space left on device") from None
    except StylizeError as error:
        # A StylizeError is in words already; the full disk behind it is still recognized.
        assert failure_reason(error) == str(error)
        assert disk_full_reason(error) == full
    assert failure_reason(OSError(errno.EACCES, "Permission denied", "x.pt")) == (
        "Permission denied (x.pt)"
    )
    assert failure_reason(MemoryError(), "cpu") == "out of memory on cpu"
    assert failure_reason(ValueError("")) == "ValueError"


def test_a_checkpoint_holding_objects_is_refused_without_advice_to_unpickle(tmp_path: Path) -> None:
    from stylize.engine.training.checkpoints import read_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "step": 3, "settings": Path("x")}, path)  # a Path is no tensor
    with pytest.raises(StylizeError) as refused:
        read_checkpoint(path)
    message = str(refused.value)
    assert "\n" not in message and "weights_only" not in message
    assert "holds Python objects other than tensors" in message
