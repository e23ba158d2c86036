"""Shared terminal output: messages and progress on stderr, results on stdout."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr = Console(stderr=True)
_debug = os.environ.get("STYLIZE_DEBUG", "") not in ("", "0")


def set_debug(value: bool) -> None:
    global _debug
    _debug = _debug or value


def debug_enabled() -> bool:
    return _debug


def error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        stderr.print(escape(message), highlight=False, soft_wrap=True)


def result(text: str) -> None:
    """A result (a written path, a table for scripts) goes to stdout, unstyled."""
    typer.echo(text)


ProgressCallback = Callable[..., None]


@contextmanager
def progress(
    description: str, total: float | None, quiet: bool = False, fields: str = "", start: float = 0
) -> Iterator[ProgressCallback]:
    """Yields `update(completed, total=None, **values)`; `fields` is a format string of values
    shown after the bar (for example "loss {loss:.3g}"); `start` is where resumed work begins."""
    if quiet:
        yield lambda *args, **kwargs: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if fields:
        columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task(description, total=total, completed=start, status="")

        def update(completed: float, total: float | None = None, **values: object) -> None:
            status = fields.format(**values) if fields and values else ""
            if total is not None:
                bar.update(task, completed=completed, total=total, status=status)
            else:
                bar.update(task, completed=completed, status=status)

        yield update


@contextmanager
def download_progress(description: str, quiet: bool = False) -> Iterator[ProgressCallback]:
    """A byte-counting progress bar (size, speed, ETA) as a store `on_progress` callback. The bar
    appears on the first call, so nothing shows when the file is already there."""
    if quiet:
        yield lambda *args, **kwargs: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr,
    )
    task = bar.add_task(description, total=None)

    def update(completed: float, total: float | None = None, **values: object) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=completed, total=total)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()
