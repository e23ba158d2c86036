"""Where the store lives: STYLIZE_HOME, or the platform's per-user folders."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import platformdirs

from stylize.errors import StylizeError

HOME_VARIABLE = "STYLIZE_HOME"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_CHUNK_BYTES = 1 << 20


def _home() -> Path | None:
    value = os.environ.get(HOME_VARIABLE, "").strip()
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """The folder that holds installed models."""
    home = _home()
    return home if home else Path(platformdirs.user_data_dir("stylize", appauthor=False))


def cache_dir() -> Path:
    """The folder for downloads in progress, training work folders and other disposable files."""
    home = _home()
    if home:
        return home / "cache"
    return Path(platformdirs.user_cache_dir("stylize", appauthor=False))


def models_dir() -> Path:
    return data_dir() / "models"


def downloads_dir() -> Path:
    """The cache folder that downloads in progress (and other scratch files of installs) go to."""
    return cache_dir() / "downloads"


def validate_name(name: str) -> str:
    """`name` when it is a valid model name, else StylizeError."""
    if not NAME_PATTERN.fullmatch(name):
        raise StylizeError(
            f"invalid model name {name!r}: use up to 64 lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return name


def model_path(name: str) -> Path:
    """Where the model `name` is (or would be) installed."""
    return models_dir() / f"{validate_name(name)}.safetensors"


def file_sha256(path: Path, on_progress: Callable[..., None] | None = None) -> str:
    """The full sha256 hex digest of a file; `on_progress(done_bytes, total_bytes)` follows."""
    import hashlib  # loads OpenSSL: ~4 MB and ~4 ms, which `apply` does without

    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    return digest.hexdigest()
