"""`stylize train` as users run it: in-process, under Ctrl-C, and under torchrun."""

from __future__ import annotations

import csv
import errno
import inspect
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

FAST = ("--image-size", "32", "--batch-size", "2", "--style-size", "32", "--workers", "0")
FAST += ("--device", "cpu", "--precision", "fp32")


@pytest.fixture
def photos(make_image: Callable[..., Path], tmp_path: Path) -> Path:
    make_image("photos/a.png", size=(48, 32), seed=1)
    make_image("photos/more/b.jpg", size=(32, 40), seed=2)
    return tmp_path / "photos"


@pytest.fixture
def art(make_image: Callable[..., Path]) -> Path:
    return make_image("Starry Night.png", size=(40, 32), seed=3)


def log_rows(workdir: Path) -> list[dict[str, str]]:
    with (workdir / "losses.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_trained_model_is_registered_and_apply_uses_it(
    cli, vgg_home: Path, photos: Path, art: Path, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    from stylize.store.modelfile import read_model_meta

    workdir = tmp_path / "work"
    preview = make_image("preview.png", size=(36, 28), seed=4)
    result = cli(
        "train", "--style", art, "--data", photos, "--steps", "2", "--workdir", workdir,
        "--preview", preview, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # The name comes from the style image's file name.
    installed = vgg_home / "models" / "starry-night.safetensors"
    assert result.stdout.strip() == str(installed)
    assert "only 2 images" in result.stderr

    meta = read_model_meta(installed)
    assert (meta["kind"], meta["source"], meta["name"]) == ("style", "trained", "starry-night")
    assert meta["style_image"] == "Starry Night.png"
    assert meta["training"]["steps"] == 2 and meta["training"]["batch_size"] == 2
    assert [row["step"] for row in log_rows(workdir)] == ["1", "2"]
    assert (workdir / "previews" / "preview-000002.jpg").is_file()

    output = tmp_path / "stylized.png"
    applied = cli("apply", preview, "--style", "starry-night", "-o", output, "--device", "cpu")
    assert applied.exit_code == 0, applied.stderr
    with Image.open(output) as stylized, Image.open(preview) as original:
        assert stylized.size == original.size
        assert stylized.tobytes() != original.convert(stylized.mode).tobytes()


def test_default_work_folder_resume_and_overwrite(
    cli, vgg_home: Path, photos: Path, art: Path
) -> None:
    from stylize.store.modelfile import read_model_meta

    first = cli("train", "-s", art, "--data", photos, "--name", "night", "--steps", "2", *FAST)
    assert first.exit_code == 0, first.stderr
    workdir = vgg_home / "cache" / "train" / "night"
    assert (workdir / "checkpoint.pt").is_file()

    again = cli("train", "-s", art, "--data", photos, "--name", "night", "--steps", "4", *FAST)
    assert again.exit_code == 1
    assert "already installed" in again.stderr

    extend = ("train", "-s", art, "--data", photos, "--name", "night", "--steps", "4", *FAST)
    refused = cli(*extend, "--overwrite")
    assert refused.exit_code == 1
    assert "add --resume to continue it" in refused.stderr

    changed = cli(*extend, "--overwrite", "--resume", "--lr", "0.01")
    assert changed.exit_code == 1
    assert "learning_rate 0.001 there, 0.01 now" in changed.stderr

    extended = cli(*extend, "--overwrite", "--resume")
    assert extended.exit_code == 0, extended.stderr
    assert read_model_meta(vgg_home / "models" / "night.safetensors")["training"]["steps"] == 4
    assert [row["step"] for row in log_rows(workdir)] == ["1", "2", "3", "4"]

    # Resuming a finished run trains nothing and installs the checkpoint's model again.
    (vgg_home / "models" / "night.safetensors").unlink()
    reinstalled = cli(*extend, "--resume")
    assert reinstalled.exit_code == 0, reinstalled.stderr
    assert read_model_meta(vgg_home / "models" / "night.safetensors")["training"]["steps"] == 4
    assert len(log_rows(workdir)) == 4


def test_unreadable_photos_are_skipped_and_counted(
    cli, vgg_home: Path, photos: Path, art: Path, tmp_path: Path
) -> None:
    (photos / "more" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    workdir = tmp_path / "work"
    result = cli("train", "-s", art, "--data", photos, "--epochs", "2", "--workdir", workdir, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "skipped 1 unreadable file(s)" in result.stderr
    assert "truncated.jpg" in result.stderr
    rows = log_rows(workdir)
    assert len(rows) == 3  # 2 epochs of 3 files, 2 a step
    assert rows[-1]["unreadable"] == "1"


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing style", "image not found"),
        ("missing data", "data folder not found"),
        ("data is a file", "is a file, not a folder"),
        ("style is a folder", "not an image file"),
        ("empty data", "no image files"),
        ("no images in data", "no image files"),
        ("unwritable workdir", "cannot use work folder"),
        ("style named after a catalog style", "'candy' is a catalog style"),
        ("style model named vgg19", "'vgg19' is the catalog's loss-network"),
        ("missing preview", "image not found"),
        ("one-pixel preview", "is 1x1 pixels, too small for the style network"),
        ("resume without checkpoint", "no checkpoint to resume"),
    ],
)
def test_bad_input_fails_before_training(
    cli,
    vgg_home: Path,
    photos: Path,
    art: Path,
    make_image: Callable[..., Path],
    tmp_path: Path,
    problem: str,
    message: str,
) -> None:
    workdir = tmp_path / "work"
    vgg19_before = (vgg_home / "models" / "vgg19.safetensors").read_bytes()
    options: dict[str, object] = {"--style": art, "--data": photos, "--workdir": workdir}
    extra: list[object] = []
    if problem == "missing style":
        options["--style"] = tmp_path / "nowhere.png"
    elif problem == "missing data":
        options["--data"] = tmp_path / "nowhere"
    elif problem == "data is a file":
        options["--data"] = photos / "a.png"
    elif problem == "style is a folder":
        # A model named after the folder exists: the bad image must be what is reported.
        (tmp_path / "style").mkdir()
        options["--style"] = tmp_path / "style"
        shutil.copy(
            vgg_home / "models" / "vgg19.safetensors", vgg_home / "models" / "style.safetensors"
        )
    elif problem == "empty data":
        (tmp_path / "empty").mkdir()
        options["--data"] = tmp_path / "empty"
    elif problem == "no images in data":
        (tmp_path / "texts").mkdir()
        (tmp_path / "texts" / "readme.txt").write_text("no photos")
        options["--data"] = tmp_path / "texts"
    elif problem == "unwritable workdir":
        (tmp_path / "a-file").write_text("")
        options["--workdir"] = workdir = tmp_path / "a-file" / "work"
    elif problem == "style named after a catalog style":
        options["--style"] = shutil.copy(art, tmp_path / "candy.jpg")
    elif problem == "style model named vgg19":
        extra = ["--name", "vgg19", "--overwrite"]
    elif problem == "missing preview":
        extra = ["--preview", tmp_path / "nowhere.jpg"]
    elif problem == "one-pixel preview":
        extra = ["--preview", make_image("dot.png", size=(1, 1))]
    elif problem == "resume without checkpoint":
        extra = ["--resume"]
    arguments = [item for pair in options.items() for item in pair]
    result = cli("train", *arguments, "--steps", "2", "--device", "cpu", *extra)
    assert result.exit_code == 1, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "losses.csv").exists()
    installed = {path.name: path.read_bytes() for path in (vgg_home / "models").iterdir()}
    assert sorted(installed) in (["vgg19.safetensors"], ["style.safetensors", "vgg19.safetensors"])
    assert installed["vgg19.safetensors"] == vgg19_before


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--image-size", "30", "'--image-size': must be a multiple of 4"),
        ("--lr", "0", "'--lr': must be a positive number"),
        ("--lr", "nan", "'--lr': must be a positive number"),
        ("--style-weight", "-1", "'--style-weight': must be 0 or a positive number"),
        ("--content-layers", "relu9_1", "unknown VGG19 layer 'relu9_1'"),
        ("--style-layers", "relu1_1,relu6_1", "unknown VGG19 layer 'relu6_1'"),
    ],
)
def test_bad_option_values_are_usage_errors(
    cli, tmp_path: Path, photos: Path, art: Path, option: str, value: str, message: str
) -> None:
    workdir = tmp_path / "work"
    result = cli("train", "-s", art, "--data", photos, "--workdir", workdir, option, value)
    assert result.exit_code == 2, result.stderr
    assert message in " ".join(result.stderr.replace("│", " ").split())
    assert option in result.stderr
    assert not workdir.exists()


def test_steps_and_epochs_together_are_a_usage_error(cli, photos: Path, art: Path) -> None:
    result = cli("train", "-s", art, "--data", photos, "--steps", "2", "--epochs", "1")
    assert result.exit_code == 2
    assert "--steps or --epochs" in result.stderr


def test_cli_defaults_match_the_engine() -> None:
    from stylize.cli.train import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, train
    from stylize.engine.training import TrainSettings

    defaults = {
        name: parameter.default for name, parameter in inspect.signature(train).parameters.items()
    }
    settings = TrainSettings()
    assert defaults["image_size"] == settings.image_size
    assert defaults["batch_size"] == settings.batch_size
    assert defaults["lr"] == settings.learning_rate
    assert defaults["content_weight"] == settings.content_weight
    assert defaults["style_weight"] == settings.style_weight
    assert defaults["tv_weight"] == settings.tv_weight
    assert defaults["style_size"] == settings.style_size
    assert defaults["seed"] == settings.seed
    assert DEFAULT_CONTENT_LAYERS.split(",") == list(settings.content_layers)
    assert DEFAULT_STYLE_LAYERS.split(",") == list(settings.style_layers)


def _environment(home: Path) -> dict[str, str]:
    # One thread per process: the tests' processes share a couple of cores.
    return {**os.environ, "STYLIZE_HOME": str(home), "OMP_NUM_THREADS": "1"}


def test_ctrl_c_saves_a_checkpoint_and_exits_130(
    vgg_home: Path, photos: Path, art: Path, tmp_path: Path
) -> None:
    import torch

    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "stylize", "train", "-s", str(art), "--data", str(photos)]
    command += ["--steps", "100000", "--workdir", str(workdir), "-q", *FAST]
    process = subprocess.Popen(
        command, env=_environment(vgg_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if (workdir / "losses.csv").exists() and len(log_rows(workdir)) >= 2:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr.decode()
    assert "checkpoint saved" in stderr.decode() and "--resume" in stderr.decode()
    assert stdout == b""  # nothing was installed
    checkpoint = torch.load(workdir / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == len(log_rows(workdir)) >= 2


def test_torchrun_trains_with_two_processes(
    vgg_home: Path, photos: Path, art: Path, tmp_path: Path
) -> None:
    import torch

    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "stylize", "train", "-s", str(art)]
    command += ["--data", str(photos), "--steps", "2", "--workdir", str(workdir), "-q", *FAST]
    completed = subprocess.run(
        command, env=_environment(vgg_home), capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr
    # Only the first process writes: one model, one log, one result line.
    assert completed.stdout.strip().splitlines() == [
        str(vgg_home / "models" / "starry-night.safetensors")
    ]
    assert [row["images"] for row in log_rows(workdir)] == ["4", "8"]  # 2 processes x 2 images
    checkpoint = torch.load(workdir / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 2 and checkpoint["position"] == 8


# -- failures: the work folder or the store full, a run that stops ----------------------------

TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def test_a_full_work_folder_does_not_keep_the_model_from_the_store(
    cli, vgg_home: Path, photos: Path, art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from stylize.store.modelfile import read_model_meta

    def full_disk(state: object, path: Path) -> None:
        Path(path).write_bytes(b"the start of a checkpoint")
        raise RuntimeError(TORCH_DISK_FULL)

    monkeypatch.setattr(torch, "save", full_disk)
    workdir = tmp_path / "work"
    result = cli(
        "train", "-s", art, "--data", photos, "--steps", "2", "--checkpoint-every", "1",
        "--workdir", workdir, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    installed = vgg_home / "models" / "starry-night.safetensors"
    assert result.stdout.strip() == str(installed)
    assert read_model_meta(installed)["training"]["steps"] == 2
    stderr = " ".join(result.stderr.split())
    assert (
        "warning: could not write the checkpoint of step 1 (no space left on device); training "
        f"goes on; there is no checkpoint in {workdir} yet"
    ) in stderr
    assert (
        f"warning: the final checkpoint could not be written in {workdir} (no space left on "
        "device); the model was installed anyway"
    ) in stderr
    assert "unexpected" not in stderr
    # Nothing half-written stays behind.
    assert sorted(path.name for path in workdir.iterdir()) == ["losses.csv"]


def test_a_failed_step_says_how_to_resume_and_resuming_finishes_the_run(
    cli, vgg_home: Path, photos: Path, art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stylize.engine.training import loop
    from stylize.store.modelfile import read_model_meta

    real_step = loop._Trainer._step

    def step(self: loop._Trainer, *args: object) -> tuple[dict[str, float], bool]:
        if self.step == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return real_step(self, *args)  # type: ignore[arg-type]

    workdir = tmp_path / "work"
    command = ("train", "-s", art, "--data", photos, "--steps", "4", "--workdir", workdir, *FAST)
    with monkeypatch.context() as patches:
        patches.setattr(loop._Trainer, "_step", step)
        stopped = cli(*command, "--checkpoint-every", "2")
    assert stopped.exit_code == 1
    assert " ".join(stopped.stderr.split()).endswith(
        "error: training stopped at step 3: RuntimeError: CUDA error: an illegal memory access "
        f"was encountered; the last checkpoint (step 2) is in {workdir}: run the same command "
        "with --resume to continue from it"
    )
    assert "Traceback" not in stopped.stderr
    assert stopped.stdout == ""
    assert not (vgg_home / "models" / "starry-night.safetensors").exists()

    resumed = cli(*command, "--checkpoint-every", "2", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    meta = read_model_meta(vgg_home / "models" / "starry-night.safetensors")
    assert meta["training"]["steps"] == 4
    assert [row["step"] for row in log_rows(workdir)] == ["1", "2", "3", "4"]


def test_a_full_store_says_where_the_trained_model_is(
    cli, vgg_home: Path, photos: Path, art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stylize.store import registry

    def full_store(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    workdir = tmp_path / "work"
    command = ("train", "-s", art, "--data", photos, "--steps", "1", "--workdir", workdir, *FAST)
    with monkeypatch.context() as patches:
        patches.setattr(registry, "write_model_file", full_store)
        failed = cli(*command)
    assert failed.exit_code == 1
    models = vgg_home / "models"
    assert " ".join(failed.stderr.split()).endswith(
        f"error: cannot install starry-night: no space left on device in {models}; the trained "
        f"model is in the checkpoint of step 1 in {workdir}: run the same command with --resume "
        "to install it"
    )
    assert sorted(path.name for path in models.iterdir()) == ["vgg19.safetensors"]

    reinstalled = cli(*command, "--resume")
    assert reinstalled.exit_code == 0, reinstalled.stderr
    assert reinstalled.stdout.strip() == str(models / "starry-night.safetensors")


def test_ctrl_c_when_the_checkpoint_cannot_be_written_names_the_last_one(
    cli, vgg_home: Path, photos: Path, art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from stylize.engine.training import loop

    real_save, real_step = torch.save, loop._Trainer._step

    def save(state: dict[str, object], path: Path) -> None:
        if state["step"] != 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(state, path)

    def step(self: loop._Trainer, *args: object) -> tuple[dict[str, float], bool]:
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 2
        return real_step(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(loop._Trainer, "_step", step)
    workdir = tmp_path / "work"
    result = cli(
        "train", "-s", art, "--data", photos, "--steps", "50", "--checkpoint-every", "1",
        "--workdir", workdir, "-q", *FAST,
    )  # fmt: skip
    assert result.exit_code == 130, result.stderr
    assert " ".join(result.stderr.split()).endswith(
        "warning: interrupted at step 2, but its checkpoint could not be written (no space left "
        f"on device); the last checkpoint (step 1) is in {workdir}: run the same command with "
        "--resume to continue from it"
    )
    assert result.stdout == ""
    assert torch.load(workdir / "checkpoint.pt", weights_only=True)["step"] == 1


def test_a_batch_too_large_for_memory_is_one_line_before_any_work(
    cli, photos: Path, art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stylize.engine import memory

    available = memory.Available(int(3e9), "available on this machine")
    monkeypatch.setattr(memory, "available_memory", lambda device: available)
    monkeypatch.delenv("STYLIZE_MEMORY_CHECK", raising=False)
    result = cli(
        "train", "-s", art, "--data", photos, "--workdir", tmp_path / "work", "--workers", "0",
        "--device", "cpu", "--precision", "fp32", "--image-size", "512", "--batch-size", "8",
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: training with --batch-size 8 and --image-size 512 on cpu needs about "
    ), result.stderr
    assert "is available on this machine: use --batch-size" in lines[0]
    # Refused before VGG19 is fetched (no store has it here) or anything is trained.
    assert "vgg19" not in result.stderr and not (tmp_path / "work" / "losses.csv").exists()
