"""Failures of a training run put in words: disk full, out of memory, a run that stopped.

Owns `failure_reason` (any exception as a short reason, with a full disk always worded the
same way whoever raised it, as `stylize.atomic.no_space_reason` recognizes it for the whole
program: an OSError, torch.save's stream writer, safetensors), the error a
checkpoint write raises (`CheckpointWriteError`, which the loop survives), and the error a run
that stopped raises (`TrainingStopped`, which says where the last checkpoint is and how to
resume).
"""

from __future__ import annotations

from pathlib import Path

from stylize.atomic import NO_SPACE as DISK_FULL
from stylize.atomic import error_chain
from stylize.atomic import no_space_reason as disk_full_reason
from stylize.engine.memory import out_of_memory_detail
from stylize.errors import StylizeError

__all__ = [
    "DISK_FULL",
    "CheckpointWriteError",
    "TrainingStopped",
    "disk_full_reason",
    "failure_reason",
    "resume_advice",
    "write_problem",
]

_REASON_LENGTH = 300


def failure_reason(error: BaseException, device: object = None) -> str:
    """`error` as one short line: the message of a StylizeError (already in words), "no space
    left on device", "out of memory on cuda:0", the message of an OSError, else the exception's
    type and first line."""
    if isinstance(error, StylizeError):
        return _one_line(str(error))
    full = disk_full_reason(error)
    if full is not None:
        return full
    if out_of_memory_detail(error) is not None:
        return f"out of memory on {device}" if device is not None else "out of memory"
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return _one_line(f"{error.strerror}{where}")
    text = _one_line(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def write_problem(error: BaseException) -> str:
    """Why a file could not be written, as a short reason: a full disk in the same words
    whatever raised it, else the operating system's words (even when a StylizeError wraps
    them), else the error's first line."""
    full = disk_full_reason(error)
    if full is not None:
        return full
    for cause in error_chain(error):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return _one_line(str(error)) or type(error).__name__


class CheckpointWriteError(StylizeError):
    """The checkpoint could not be written; the previous one, if any, is still there."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write checkpoint {path}: {reason}")
        self.path = path
        self.reason = reason


class TrainingStopped(StylizeError):
    """A run that failed at `step`: why, and where the last checkpoint is to resume from."""

    def __init__(self, step: int, reason: str, workdir: Path, checkpoint_step: int | None) -> None:
        super().__init__(
            f"training stopped at step {step}: {reason}; {resume_advice(workdir, checkpoint_step)}"
        )
        self.step = step
        self.reason = reason
        self.workdir = workdir
        self.checkpoint_step = checkpoint_step


def resume_advice(workdir: Path, checkpoint_step: int | None) -> str:
    """Where a stopped run can be picked up, as the end of a message."""
    if checkpoint_step is None:
        return (
            f"no checkpoint was saved in {workdir} yet, so run the same command again to start over"
        )
    return (
        f"the last checkpoint (step {checkpoint_step}) is in {workdir}: run the same command "
        "with --resume to continue from it"
    )


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _REASON_LENGTH else line[: _REASON_LENGTH - 3] + "..."
