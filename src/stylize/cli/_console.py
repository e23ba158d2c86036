"""Shared terminal output: messages and progress on stderr, results on stdout."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

#: The console on stderr, made on first use: a run that prints nothing styled never loads Rich.
stderr: Console | None = None
_debug = os.environ.get("STYLIZE_DEBUG", "") not in ("", "0")


def set_debug(value: bool) -> None:
    global _debug
    _debug = _debug or value


def debug_enabled() -> bool:
    return _debug


def console() -> Console:
    """The Rich console on stderr."""
    global stderr
    if stderr is None:
        from rich.console import Console

        stderr = Console(stderr=True)
    return stderr


def error(message: str) -> None:
    _print(f"[bold red]error:[/] {_escape(message)}")


def warn(message: str) -> None:
    _print(f"[yellow]warning:[/] {_escape(message)}")


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        _print(_escape(message))


def _print(markup: str) -> None:
    console().print(markup, highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


ProgressCallback = Callable[..., None]


@contextmanager
def progress(
    description: str, total: float | None, quiet: bool = False, fields: str = "", start: float = 0
) -> Iterator[ProgressCallback]:
    """Yields `update(completed, total=None, **values)`; `fields` is a format string of values
    shown after the bar (for example "loss {loss:.3g}"); `start` is where resumed work begins.

    Each line fits the terminal: when it is narrow the values shrink first (parenthesised
    parts, then all but the first value), then the bar narrows, then the elapsed time goes;
    the step counter (N/M) and the time remaining always stay."""
    if quiet:
        yield lambda *args, **kwargs: None
        return
    from stylize.cli import _bars

    with _bars.task_line(description, total, start=start, kind=_bars.STEPS) as (bars, task):

        def update(completed: float, total: float | None = None, **values: object) -> None:
            status = fields.format(**values) if fields and values else ""
            if total is not None:
                bars.update(task, completed=completed, total=total, status=status)
            else:
                bars.update(task, completed=completed, status=status)

        yield update


@contextmanager
def download_progress(description: str, quiet: bool = False) -> Iterator[ProgressCallback]:
    """A byte-counting progress bar (size, speed, ETA) as a store `on_progress` callback. The bar
    appears on the first call, so nothing shows when the file is already there."""
    if quiet:
        yield lambda *args, **kwargs: None
        return
    with ExitStack() as stack:
        shown: list[tuple[Any, Any]] = []  # the display and the task, once shown

        def update(completed: float, total: float | None = None, **values: object) -> None:
            # The store hashes a copy it already has (torch hub's) as phase "checking".
            checking = values.get("phase") == "checking"
            label = description.replace("downloading", "checking", 1) if checking else description
            if not shown:
                from stylize.cli import _bars

                shown.append(stack.enter_context(_bars.task_line(label, total, kind=_bars.BYTES)))
            bars, task = shown[0]
            bars.update(task, completed=completed, total=total, description=label)

        yield update


def result(text: str) -> None:
    """A result (a written path, a table for scripts) goes to stdout, unstyled. While a progress
    bar is shown on the same terminal, the result is printed above it, never glued to it."""
    shown = sys.modules.get("stylize.cli._bars")
    bars = None if shown is None else shown.active
    if bars is not None and bars.live.is_started and console().is_terminal and shares_terminal():
        console().print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
    else:
        sys.stdout.write(f"{text}\n")
        sys.stdout.flush()


def shares_terminal() -> bool:
    """Whether stdout and stderr are the same terminal (results would land on the bars)."""
    try:
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
        return os.isatty(out) and os.isatty(err) and os.path.samestat(os.fstat(out), os.fstat(err))
    except (AttributeError, OSError, ValueError):
        return False
