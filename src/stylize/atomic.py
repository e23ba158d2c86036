"""Atomic file writes and temporary files: every file stylize writes goes through here.

The content goes to a temporary file in the target's folder, named `.{name}.{pid}.{random}.tmp`,
which is flushed to disk and then renamed over the target. A reader never sees half a file,
and a failure or an interrupt (Ctrl-C included) leaves the old file, if any, as it was and no
temporary behind. An existing target is refused unless the caller passes `overwrite`: before
any work, and again just before the rename (another process may have written it meanwhile).

`atomic_write` yields an open file; `atomic_path` yields the temporary's path, for writers
that open the file themselves (`torch.save`). Errors of the file system propagate as OSError,
for the caller to put in words; an existing target is a StylizeError. Temporaries are created
with `open`, so the file gets the usual permissions (umask), not mkstemp's owner-only ones.

Scratch files and folders that are not renamed into place (downloads, a member taken out of
an archive, pip's download folder) use the same names through `scratch_file` and
`scratch_folder`, and are removed when their block ends. Every temporary is removed however
the process ends that Python sees: an exception, Ctrl-C, `sys.exit`, the end of the
interpreter (atexit), and SIGTERM or SIGHUP once `install_sigterm_handler` has turned them into
SystemExit. What a process that was killed outright (`kill -9`, power loss) leaves behind,
`remove_stale_temporaries` finds by the process id in the name and removes.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from stylize.errors import StylizeError

_ATTEMPTS = 100
# `.{name}.{pid}.{random}.tmp`: the scheme of every temporary stylize creates.
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.(?P<token>[0-9a-f]{8})\.tmp")
# A temporary is stale when its process is gone and it has not changed for this long (the
# second condition guards against a process of another machine or container sharing the folder,
# whose id means nothing here).
STALE_AFTER_S = 600.0
# Where a process cannot be looked up (Windows), or the name holds no process id (files left by
# earlier versions), only age tells.
UNKNOWN_OWNER_STALE_AFTER_S = 24 * 3600.0
# A full disk, in the same words whoever reports it (the one place that recognizes it: the store's
# writes and downloads, and training's checkpoints, previews and loss log all ask here).
NO_SPACE = "no space left on device"
QUOTA_EXCEEDED = f"{NO_SPACE} (disk quota exceeded)"
_NO_SPACE_ERRNOS = {errno.ENOSPC: NO_SPACE}
if hasattr(errno, "EDQUOT"):
    _NO_SPACE_ERRNOS[errno.EDQUOT] = QUOTA_EXCEEDED
# How libraries that are not Python pass the system's error on, as text: safetensors (Rust)
# writes `(os error 28)` or `Os { code: 28, kind: StorageFull, ... }`, pip's output the OS's
# words.
_NO_SPACE_TEXTS = (
    NO_SPACE,
    "storagefull",
    *(f"os error {number})" for number in _NO_SPACE_ERRNOS),
    *(f"code: {number}," for number in _NO_SPACE_ERRNOS),
)
_QUOTA_TEXTS = (
    "disk quota exceeded",
    "quotaexceeded",
    *(f"{marker} {getattr(errno, 'EDQUOT', -1)}" for marker in ("os error", "code:")),
)
# torch.save's stream writer (inline_container.cc) checks its position after each record, so a
# short write on a full disk surfaces as "[enforce fail at inline_container.cc:672] . unexpected
# pos N vs M", without the system's error.
_TORCH_SHORT_WRITE = ("inline_container", "unexpected pos")

# Temporaries of this process not yet renamed or removed: what atexit cleans up.
_live: dict[Path, int] = {}
_live_lock = threading.Lock()


class NoSpaceError(StylizeError):
    """A write failed because the file system holding `folder` is full (or the quota is used
    up). The message is `{subject}: no space left on device in {folder}`."""

    def __init__(self, folder: Path, subject: str, reason: str = NO_SPACE):
        self.folder = Path(folder)
        self.subject = subject
        self.reason = reason
        super().__init__(f"{subject}: {reason} in {self.folder}")

    def about(self, subject: str) -> NoSpaceError:
        """The same failure, told about `subject` (`cannot install candy`)."""
        return NoSpaceError(self.folder, subject, self.reason)


def no_space_reason(error: BaseException) -> str | None:
    """The words for a full disk, `NO_SPACE` (`QUOTA_EXCEEDED` for a quota), when `error` or an
    error it was raised from or while handling says the disk is full; None otherwise.

    Recognized: an OSError with ENOSPC or EDQUOT; a library's error that passes the system's
    message on as text (safetensors' SafetensorError, pip's output); torch.save's short-write
    check ("inline_container ... unexpected pos")."""
    for cause in error_chain(error):
        if isinstance(cause, OSError) and cause.errno is not None:
            if cause.errno in _NO_SPACE_ERRNOS:
                return _NO_SPACE_ERRNOS[cause.errno]
            continue
        text = str(cause).lower()
        if any(marker in text for marker in _QUOTA_TEXTS):
            return QUOTA_EXCEEDED
        if any(marker in text for marker in _NO_SPACE_TEXTS):
            return NO_SPACE
        if isinstance(cause, RuntimeError) and all(part in text for part in _TORCH_SHORT_WRITE):
            return NO_SPACE
    return None


def is_no_space(error: BaseException) -> bool:
    """Whether `error` (or an error behind it) says the disk is full; see `no_space_reason`."""
    return no_space_reason(error) is not None


def no_space_error(error: BaseException, folder: Path, subject: str) -> NoSpaceError:
    """The NoSpaceError for `error`, which `is_no_space` accepted, in `folder`."""
    return NoSpaceError(folder, subject, no_space_reason(error) or NO_SPACE)


def error_chain(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from or while handling (`raise ... from None`
    hides the context from tracebacks, not from here)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def refuse_existing(path: Path, *, overwrite: bool) -> None:
    """StylizeError when `path` exists and `overwrite` is false."""
    if not overwrite and Path(path).exists():
        raise StylizeError(f"{path} already exists; pass --overwrite to replace it")


def check_target(path: Path, suffixes: Iterable[str], kind: str, *, overwrite: bool) -> None:
    """StylizeError unless a file of `kind` ("image", "video") may be written at `path`: one
    of `suffixes`, in an existing folder, not a folder itself, not an existing file unless
    `overwrite`."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise StylizeError(
            f"cannot write {path}: unsupported {kind} type '{path.suffix or '(none)'}'; "
            f"use one of {', '.join(sorted(suffixes))}"
        )
    if not path.parent.is_dir():
        raise StylizeError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise StylizeError(f"cannot write {path}: it is a folder")
    refuse_existing(path, overwrite=overwrite)


def temporary_path(path: Path) -> Path:
    """A fresh temporary name next to `path` (the scheme every temporary uses)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


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
def scratch_file(path: Path | str) -> Iterator[Path]:
    """Yields an empty temporary file named after `path` (`.{name}.{pid}.{random}.tmp`, in
    `path`'s folder), which is removed when the block ends, however it ends."""
    temporary = _create_temporary(Path(path))
    try:
        yield temporary
    finally:
        _remove(temporary)


@contextmanager
def scratch_folder(path: Path | str) -> Iterator[Path]:
    """Yields an empty temporary folder named like `scratch_file`'s files, removed with all it
    holds when the block ends."""
    temporary = _create_temporary(Path(path), folder=True)
    try:
        yield temporary
    finally:
        _remove(temporary)


def remove_stale_temporaries(
    folder: Path | str, *, legacy: re.Pattern[str] | None = None, now: float | None = None
) -> list[Path]:
    """Removes the temporaries in `folder` that processes killed outright left behind, and
    returns them: those named `.{name}.{pid}.{random}.tmp` whose process is gone and which have
    not changed for `STALE_AFTER_S`. Names that `legacy` matches (earlier versions' schemes,
    without a process id) go once unchanged for `UNKNOWN_OWNER_STALE_AFTER_S`. Best effort:
    what cannot be read or removed is left."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY_NAME.fullmatch(entry.name)
        if match is not None:
            gone = _process_gone(int(match["pid"]))
            if gone is False:
                continue
            wait = STALE_AFTER_S if gone else UNKNOWN_OWNER_STALE_AFTER_S
        elif legacy is not None and legacy.fullmatch(entry.name):
            wait = UNKNOWN_OWNER_STALE_AFTER_S
        else:
            continue
        path = Path(entry.path)
        if now - _last_change(path) < wait:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def install_sigterm_handler() -> None:
    """Makes SIGTERM (and SIGHUP, a closed terminal) end the process like `sys.exit(128 + N)`,
    so `finally` blocks and atexit run and no temporary is left. Only in the main thread, and
    only where the signal still has its default action (a handler someone installed, or
    `nohup`'s SIG_IGN, is kept). A second signal while the first is handled ends the process
    at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is None:
            continue
        try:
            if signal.getsignal(number) is signal.SIG_DFL:
                signal.signal(number, _exit_on_signal)
        except (OSError, ValueError):
            continue


def _exit_on_signal(number: int, frame: object) -> None:
    signal.signal(number, signal.SIG_DFL)
    raise SystemExit(128 + number)


@contextmanager
def _replacing(path: Path, *, overwrite: bool) -> Iterator[Path]:
    refuse_existing(path, overwrite=overwrite)
    temporary = _create_temporary(path)
    try:
        yield temporary
        refuse_existing(path, overwrite=overwrite)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    _forget(temporary)
    _sync_folder(path.parent)


def _create_temporary(path: Path, *, folder: bool = False) -> Path:
    for _ in range(_ATTEMPTS):
        temporary = temporary_path(path)
        try:
            if folder:
                temporary.mkdir()
            else:
                with open(temporary, "xb"):
                    pass
        except FileExistsError:
            continue
        with _live_lock:
            _live[temporary] = os.getpid()
        return temporary
    raise FileExistsError(f"no free temporary name next to {path}")


def _remove(temporary: Path) -> None:
    try:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
    except OSError:
        pass
    _forget(temporary)


def _forget(temporary: Path) -> None:
    with _live_lock:
        _live.pop(temporary, None)


@atexit.register
def _remove_live_temporaries() -> None:
    """What a block could not clean up (a generator never closed, a daemon thread)."""
    with _live_lock:
        # A forked child inherits the table but not the files' ownership.
        mine = [path for path, pid in _live.items() if pid == os.getpid()]
    for path in mine:
        _remove(path)


def _process_gone(pid: int) -> bool | None:
    """True when no process `pid` exists, False when one does, None when this system cannot
    tell (Windows: there, signal 0 would not probe but interrupt)."""
    if pid == os.getpid():
        return False
    if os.name != "posix" or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, as another user's
        return False
    return False


def _last_change(path: Path) -> float:
    """The latest modification time of `path` and, for a folder, of anything in it."""
    try:
        latest = path.lstat().st_mtime
    except OSError:
        return time.time()
    if path.is_dir() and not path.is_symlink():
        for root, folders, files in os.walk(path):
            for name in (*folders, *files):
                try:
                    latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    continue
    return latest


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
