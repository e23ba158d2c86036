"""The progress display: Rich's progress bars, one line per task fitted to the terminal.

Imported only when a bar is shown (see `_console.progress`), so commands that show none never
load Rich's progress machinery.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.progress import BarColumn, DownloadColumn, Progress, Task, TaskID, TransferSpeedColumn
from rich.text import Text

from stylize.cli import _console

# The progress display on stderr while one is shown: a second bar (a download during another
# bar) joins it as another line rather than starting a display of its own.
active: _Bars | None = None

_BAR_WIDTH = 40  # the widest a bar gets
# Columns left free at the end of a line: the terminal echoes Ctrl-C as "^C" after the line, and
# a line that wraps there would be drawn again below instead of over itself.
_MARGIN = 2
_PARENTHESES = re.compile(r"\s*\([^()]*\)")

STEPS, BYTES = "steps", "bytes"


@contextmanager
def task_line(
    description: str, total: float | None, *, start: float = 0, kind: str
) -> Iterator[tuple[Progress, TaskID]]:
    """A line on the progress display, which is started for it unless one is already shown; a
    line added to a shown display is printed above it in its final state when it ends."""
    global active
    bars = active
    owner = bars is None
    if bars is None:
        bars = _Bars(
            console=_console.console(),
            # Rich sends what is written to stdout through the display (above the bars): right
            # when stdout is the same terminal, wrong when it is a pipe or a file.
            redirect_stdout=_console.shares_terminal(),
        )
        bars.start()
        active = bars
    task = bars.add_task(description, total=total, completed=start, status="", kind=kind)
    try:
        yield bars, task
    finally:
        if owner:
            active = None
            bars.stop()
        else:
            line = _TaskLine(next(each for each in bars.tasks if each.id == task))
            bars.remove_task(task)
            bars.console.print(line)


class _Bars(Progress):
    """Rich's progress display with one fitted line per task (see `_TaskLine`) in place of its
    table, whose columns are cut with '…' when the terminal is narrow."""

    def get_renderables(self) -> Iterable[RenderableType]:
        for task in self.tasks:
            if task.visible:
                yield _TaskLine(task)


class _TaskLine:
    """One task as a line that fits the width it is rendered at."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        task = self.task

        def bar(width: int) -> Text:
            rendered = BarColumn(bar_width=width).render(task)
            segments = console.render(rendered, options.update_width(width))
            drawn = Text.assemble(*((s.text, s.style) for s in segments if not s.control))
            # Without colours Rich leaves out the part still to go; the line keeps its layout.
            drawn.align("left", width)
            return drawn

        width = max(1, options.max_width - _MARGIN)
        yield fit_line(*_parts(task), width=width, bar=bar)


def _parts(task: Task) -> tuple[Text, Text, Text | None, Text, str]:
    """Description, counter, elapsed time (None for downloads), time remaining, status."""
    if task.fields.get("kind") == BYTES:
        counter = DownloadColumn().render(task)
        status = TransferSpeedColumn().render(task).plain if task.speed else ""
        elapsed = None
    else:
        counter = Text(_count(task.completed, task.total), style="progress.download")
        status = str(task.fields.get("status", ""))
        seconds = task.finished_time if task.finished else task.elapsed
        elapsed = Text(_clock(seconds or 0), style="progress.elapsed")
    remaining = 0.0 if task.finished else task.time_remaining
    eta = Text(f"eta {_clock(remaining)}", style="progress.remaining")
    return Text(task.description, style="progress.description"), counter, elapsed, eta, status


def fit_line(
    description: Text,
    counter: Text,
    elapsed: Text | None,
    eta: Text,
    status: str,
    *,
    width: int,
    bar: Callable[[int], Text],
) -> Text:
    """`description bar counter elapsed eta status` in at most `width` cells. What gives way,
    in order: the status (its parenthesised parts, then all but its first `name value`), the
    bar (down to a minimum), the elapsed time, the description; `counter` and `eta` stay."""
    full = status.strip()
    brief = _PARENTHESES.sub("", full).strip()
    shortest = " ".join(brief.split()[:2])
    # (status, least bar width, elapsed shown), richest first
    levels = [(full, 20, True), (brief, 20, True), (shortest, 12, True)]
    levels += [("", 12, True), ("", 8, False)]
    for text, least, with_elapsed in levels:
        before = [description]
        after = [counter, *([elapsed] if with_elapsed and elapsed else []), eta]
        if text:
            after.append(Text(text))
        room = width - _cells([*before, *after]) - len(before) - len(after)
        if room >= least:
            return Text(" ").join([*before, bar(min(_BAR_WIDTH, room)), *after])
    # Narrower than any of that: a short description and a minimal bar, then no bar.
    room = width - _cells([counter, eta]) - 2
    if room >= 8 + 1 + 8:
        return Text(" ").join([_shortened(description, room - 8 - 1), bar(8), counter, eta])
    if room >= 4:
        return Text(" ").join([_shortened(description, room), counter, eta])
    return Text(" ").join([counter, eta])


def _shortened(text: Text, width: int) -> Text:
    """`text` in at most `width` cells, ending in '…' when cut."""
    if text.cell_len <= width:
        return text
    short = text.copy()
    short.truncate(width - 1)
    short.rstrip()
    short.append("…")
    return short


def _cells(texts: list[Text]) -> int:
    return sum(text.cell_len for text in texts)


def _count(completed: float, total: float | None) -> str:
    """`completed/total`, the completed count padded to the total's width so it stays put."""
    done = int(completed)
    if total is None:
        return str(done)
    whole = str(int(total))
    return f"{done:>{len(whole)}}/{whole}"


def _clock(seconds: float | None) -> str:
    """`m:ss` or `h:mm:ss`; `-:--` while unknown."""
    if seconds is None:
        return "-:--"
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
