"""Atomic file writes: every file stylize writes goes through here.

The content goes to a temporary file in the target's folder, named `.{name}.{random}.tmp`,
which is flushed to disk and then renamed over the target. A reader never sees half a file,
and a failure or an interrupt (Ctrl-C included) leaves the old file, if any, as it was and no
temporary behind. An existing target is refused unless the caller passes `overwrite`: before
any work, and again just before the rename (another process may have written it meanwhile).

`atomic_write` yields an open file; `atomic_path` yields the temporary's path, for writers
that open the file themselves (`torch.save`, safetensors' `save_file`). Errors of the file
system propagate as OSError, for the caller to put in words; an existing target is a
StylizeError. Temporaries are created with `open`, so the file gets the usual permissions
(umask), not mkstemp's owner-only ones.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from stylize.errors import StylizeError

_ATTEMPTS = 100


def refuse_existing(path: Path, *, overwrite: bool) -> None:
    """StylizeError when `path` exists and `overwrite` is false."""
    if not overwrite and Path(path).exists():
        raise StylizeError(f"{path} already exists; pass --overwrite to replace it")


def temporary_path(path: Path) -> Path:
    """A fresh temporary name next to `path` (the scheme every atomic write uses)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_write(
    path: Path | str,
    mode: str = "wb",
    *,
    overwrite: bool = False,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Yields a file open for writing (`mode` "wb" or "w") that replaces `path` when the block
    ends without an exception; see the module docstring."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode 'wb' or 'w', not {mode!r}")
    with (
        _replacing(Path(path), overwrite=overwrite) as temporary,
        open(temporary, mode, encoding=encoding, newline=newline) as file,
    ):
        yield file
        file.flush()
        os.fsync(file.fileno())


@contextmanager
def atomic_path(path: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields the path of an empty temporary file next to `path` for a writer that opens files
    itself; it replaces `path` when the block ends without an exception."""
    with _replacing(Path(path), overwrite=overwrite) as temporary:
        yield temporary
        with open(temporary, "r+b") as file:
            os.fsync(file.fileno())


@contextmanager
def _replacing(path: Path, *, overwrite: bool) -> Iterator[Path]:
    refuse_existing(path, overwrite=overwrite)
    temporary = _create_temporary(path)
    try:
        yield temporary
        refuse_existing(path, overwrite=overwrite)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _create_temporary(path: Path) -> Path:
    for _ in range(_ATTEMPTS):
        temporary = temporary_path(path)
        try:
            with open(temporary, "xb"):
                return temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def _sync_folder(folder: Path) -> None:
    """Makes the rename itself durable where the system allows it (POSIX); best effort."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
