"""What a training run leaves in its work folder to be resumed: the checkpoint and the loss log.

Owns the checkpoint's format (what it holds, read back and checked against the run that wants
to resume it), its atomic writing, the random number generators' states in it, and
losses.csv, one row per step.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stylize.atomic import atomic_path, atomic_write
from stylize.engine.settings import TrainSettings
from stylize.engine.training.data import TrainingData
from stylize.engine.training.failures import CheckpointWriteError, write_problem
from stylize.errors import StylizeError, torch_load_refusal

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
LOSS_LOG_FILE = "losses.csv"
LOSS_LOG_COLUMNS = (
    "step",
    "images",
    "content",
    "style",
    "tv",
    "loss",
    "images_per_second",
    "unreadable",
)
_REQUIRED = ("step", "position", "settings", "style_sha256", "data", "model", "optimizer")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`; StylizeError when it is not one of this version."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise StylizeError(f"cannot read checkpoint {path}: {torch_load_refusal(error)}") from None
    if (
        not isinstance(state, dict)
        or state.get("format") != CHECKPOINT_FORMAT
        or any(key not in state for key in _REQUIRED)
    ):
        raise StylizeError(f"{path} is not a stylize training checkpoint of this version")
    return state


def check_resumable(
    checkpoint: Mapping[str, Any],
    path: Path,
    settings: TrainSettings,
    style_sha256: str,
    data: TrainingData,
    steps: int,
) -> None:
    """StylizeError unless the run that wrote `checkpoint` had these settings, this style
    image and these data files, and stopped within `steps`."""
    saved = checkpoint["settings"]
    differences = [
        f"{name} {saved.get(name)!r} there, {value!r} now"
        for name, value in settings.to_dict().items()
        if saved.get(name) != value
    ]
    if differences:
        raise StylizeError(
            f"cannot resume from {path}: it was trained with other settings "
            f"({'; '.join(differences)}); pass the options of the run that wrote it"
        )
    if checkpoint["style_sha256"] != style_sha256:
        raise StylizeError(f"cannot resume from {path}: it was trained on another style image")
    if checkpoint["data"]["fingerprint"] != data.fingerprint:
        raise StylizeError(
            f"cannot resume from {path}: the files in {data.folder} changed since "
            f"({checkpoint['data']['image_count']} images then, {len(data.images)} now)"
        )
    if checkpoint["step"] > steps:
        raise StylizeError(
            f"cannot resume from {path}: it is at step {checkpoint['step']}, past the "
            f"{steps} steps asked for; ask for more steps"
        )


def write_checkpoint(
    path: Path,
    *,
    step: int,
    position: int,
    settings: TrainSettings,
    style_sha256: str,
    data: TrainingData,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    losses: Mapping[str, float],
) -> None:
    """Saves the run after `step` steps and `position` samples, atomically: when that fails
    (CheckpointWriteError, a full disk worded as such), the previous checkpoint is unchanged."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "position": position,
        "settings": settings.to_dict(),
        "style_sha256": style_sha256,
        "data": {"image_count": len(data.images), "fingerprint": data.fingerprint},
        "model": {name: tensor.detach().cpu() for name, tensor in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": _random_states(device),
        "losses": dict(losses),
    }
    try:
        with atomic_path(path, overwrite=True) as temporary:
            torch.save(state, temporary)
    except (OSError, RuntimeError) as error:
        # torch.save reports a short write as a RuntimeError of its stream writer.
        raise CheckpointWriteError(path, write_problem(error)) from error


def restore_checkpoint(
    checkpoint: Mapping[str, Any],
    path: Path,
    *,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> tuple[int, int, dict[str, float]]:
    """Loads the weights, the optimizer and the random states of `checkpoint` (read from
    `path`); returns its step, stream position and losses."""
    try:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise StylizeError(f"cannot resume from {path}: {error}") from None
    _restore_random_states(checkpoint.get("rng", {}), device)
    losses = {name: float(value) for name, value in checkpoint.get("losses", {}).items()}
    return int(checkpoint["step"]), int(checkpoint["position"]), losses


def _random_states(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
    }


def _restore_random_states(states: Mapping[str, Any], device: torch.device) -> None:
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    cuda_states = states.get("cuda", [])
    if device.type == "cuda" and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


class LossLog:
    """losses.csv in the work folder, one row per step. On resume, rows past the checkpoint
    (from steps that were trained but not saved) and rows cut short by a failed write are
    dropped first. A write that fails raises a StylizeError naming the file and the reason."""

    def __init__(self, path: Path, resume_step: int, *, enabled: bool) -> None:
        self.path = path
        self.resume_step = resume_step
        self.enabled = enabled
        self._file: io.TextIOWrapper | None = None
        self._writer: Any = None

    def __enter__(self) -> LossLog:
        if not self.enabled:
            return self
        kept: list[dict[str, str]] = []
        if self.resume_step and self.path.exists():
            with self.path.open(newline="") as file:
                kept = [
                    row
                    for row in csv.DictReader(file)
                    if row.get("step", "").isdigit()
                    and int(row["step"]) <= self.resume_step
                    and all(row.get(column) for column in LOSS_LOG_COLUMNS)
                ]
        try:
            with atomic_write(self.path, "w", overwrite=True, newline="") as file:
                writer = csv.DictWriter(file, LOSS_LOG_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)
            self._file = self.path.open("a", newline="")
        except OSError as error:
            raise StylizeError(f"cannot write {self.path}: {write_problem(error)}") from error
        self._writer = csv.DictWriter(self._file, LOSS_LOG_COLUMNS)
        return self

    def write(self, **row: float) -> None:
        if self._file is None:
            return
        try:
            self._writer.writerow(
                {
                    name: f"{value:.6g}" if isinstance(value, float) else value
                    for name, value in row.items()
                }
            )
            self._file.flush()
        except OSError as error:
            raise StylizeError(f"cannot write {self.path}: {write_problem(error)}") from error

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            # Closing fails only after a write that failed (each row is flushed): reported.
            with contextlib.suppress(OSError):
                file.close()
