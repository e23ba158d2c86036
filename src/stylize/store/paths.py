"""Where the store lives: STYLIZE_HOME, or the platform's per-user folders."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_VARIABLE = "STYLIZE_HOME"


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
