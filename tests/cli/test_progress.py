"""Progress lines that fit the terminal, and results that never land on a bar."""

from __future__ import annotations

import io
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from rich.console import Console

from stylize.cli import _bars, _console

OPTIMIZE_FIELDS = "loss {loss:.4g} (content {content:.3g}, style {style:.3g}, tv {tv:.3g})"
TRAIN_FIELDS = (
    "loss {loss:.3g} (content {content:.3g}, style {style:.3g}, tv {tv:.3g}) "
    "{images_per_second:.1f} img/s"
)
LOSSES = {"loss": 0.365712, "content": 0.1234567, "style": 0.2345678, "tv": 0.0123456}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WIDTHS = (80, 100, 160)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Callable[..., list[str]]:
    """shown(width, run): what a terminal `width` columns wide shows once `run()` has drawn its
    progress bars on stderr (times from `clock`)."""

    def show(width: int, run: Callable[[], None]) -> list[str]:
        console = Console(
            width=width,
            file=io.StringIO(),
            force_terminal=True,
            color_system="truecolor",
            get_time=clock,
        )
        monkeypatch.setattr(_console, "stderr", console)
        run()
        return [line for line in screen(console.file.getvalue(), width) if line]

    return show


def run_steps(
    update: Callable[..., None],
    clock: Clock,
    total: int,
    done: int,
    *,
    start: int = 0,
    seconds: float = 0.1,
    **values: object,
) -> None:
    for completed in range(start + 1, done + 1):
        clock.now += seconds
        update(completed, total, **values)


def eta_of(line: str) -> str:
    match = re.search(r"eta (\d+:\d\d(?::\d\d)?)(?= |$)", line)
    assert match, f"no time remaining in {line!r}"
    return match.group(1)


def check_line(line: str, width: int, counter: str) -> None:
    assert len(line) <= width, f"{len(line)} columns: {line!r}"
    assert "…" not in line, line
    assert re.search(rf"(^| ){re.escape(counter)}( |$)", line), f"no {counter} in {line!r}"
    eta_of(line)


@pytest.mark.parametrize("width", WIDTHS)
def test_an_optimize_bar_fits_with_its_counter_and_time_remaining(width, shown, clock):
    def run() -> None:
        with _console.progress("scale 1/2 512x341", 500, fields=OPTIMIZE_FIELDS) as update:
            run_steps(update, clock, 500, 123, **LOSSES)

    (line,) = shown(width, run)
    check_line(line, width, "123/500")
    assert line.startswith("scale 1/2 512x341 ")
    assert eta_of(line) == "0:38"  # 377 steps to go at 10 a second, rounded up
    assert re.search(r" 0:12 eta", line), line  # elapsed
    assert "loss 0.3657" in line
    if width >= 160:
        assert line.endswith("loss 0.3657 (content 0.123, style 0.235, tv 0.0123)")


@pytest.mark.parametrize("width", WIDTHS)
def test_a_long_training_run_shows_steps_hours_and_losses(width, shown, clock):
    values = {**LOSSES, "images_per_second": 12.345}

    def run() -> None:
        with _console.progress("training", 40_000, fields=TRAIN_FIELDS, start=1_000) as update:
            run_steps(update, clock, 40_000, 1_200, start=1_000, seconds=0.5, **values)

    (line,) = shown(width, run)
    check_line(line, width, "1200/40000")
    assert eta_of(line) == "5:23:20"  # 38,800 steps at 2 a second
    assert "loss 0.366" in line
    if width >= 160:
        assert "(content 0.123, style 0.235, tv 0.0123) 12.3 img/s" in line


@pytest.mark.parametrize("width", WIDTHS)
def test_the_apply_bar_over_many_files_fits(width, shown, clock):
    def run() -> None:
        with _console.progress("stylizing", 12_345) as update:
            run_steps(update, clock, 12_345, 67, seconds=2.0)

    (line,) = shown(width, run)
    check_line(line, width, "   67/12345")
    assert line.startswith("stylizing ")
    assert eta_of(line) == "6:49:16"  # 12,278 files at one per 2 seconds


@pytest.mark.parametrize("width", WIDTHS)
def test_a_download_bar_fits_with_sizes_and_time_remaining(width, shown, clock):
    def run() -> None:
        with _console.download_progress("downloading the style network") as update:
            for chunk in range(1, 21):
                clock.now += 0.1
                update(chunk * 1_000_000, 548_123_456)

    (line,) = shown(width, run)
    check_line(line, width, "20.0/548.1 MB")
    assert line.startswith("downloading the style network ")
    assert eta_of(line) == "0:53"  # 528.1 MB at 10 MB/s, rounded up
    assert line.endswith(" 10.0 MB/s")


def test_narrow_terminals_drop_details_before_the_counter_and_time_remaining(shown, clock):
    lines = []
    for width in (70, 60, 50, 40, 30):

        def run() -> None:
            with _console.progress("scale 1/2 512x341", 500, fields=OPTIMIZE_FIELDS) as update:
                run_steps(update, clock, 500, 123, **LOSSES)

        (line,) = shown(width, run)
        assert len(line) <= width and "123/500" in line and "eta " in line, line
        lines.append(line)
    assert "loss" in lines[0] and "loss" not in lines[-1] and "0:12" not in lines[-1]


def test_the_details_give_way_in_order():
    """The status shrinks first, then the bar narrows, then the elapsed time goes, then the
    description is shortened; the counter and the time remaining stay."""
    from rich.text import Text

    def fit(width: int) -> str:
        return _bars.fit_line(
            Text("scale 1/1 128x85"),
            Text("250/500"),
            Text("0:06"),
            Text("eta 1:08:12"),
            "loss 0.3657 (content 0.0123, style 0.234, tv 0.0121)",
            width=width,
            bar=lambda width: Text("━" * width),
        ).plain

    assert fit(200) == "scale 1/1 128x85 " + "━" * 40 + (
        " 250/500 0:06 eta 1:08:12 loss 0.3657 (content 0.0123, style 0.234, tv 0.0121)"
    )
    assert fit(100) == "scale 1/1 128x85 " + "━" * 40 + " 250/500 0:06 eta 1:08:12 loss 0.3657"
    assert fit(78) == "scale 1/1 128x85 " + "━" * 24 + " 250/500 0:06 eta 1:08:12 loss 0.3657"
    assert fit(60) == "scale 1/1 128x85 " + "━" * 18 + " 250/500 0:06 eta 1:08:12"
    assert fit(50) == "scale 1/1 128x85 " + "━" * 13 + " 250/500 eta 1:08:12"
    assert fit(40) == "scale 1/1… " + "━" * 8 + " 250/500 eta 1:08:12"
    assert fit(30) == "scale 1/1… 250/500 eta 1:08:12"
    assert fit(20) == "250/500 eta 1:08:12"


def test_a_download_during_another_bar_joins_it_and_stays_once_done(monkeypatch, clock):
    """`stylize sheet` downloads networks while its own bar is shown: no second live display
    is started (Rich 13 refuses one), and the finished download stays visible above."""
    console = Console(width=100, file=io.StringIO(), get_time=clock)  # a file: final lines only
    monkeypatch.setattr(_console, "stderr", console)
    with _console.progress("stylizing", 2) as outer:
        with _console.download_progress("downloading the style network") as fetch:
            clock.now += 1
            fetch(3_000_000, 6_700_000)
            clock.now += 1
            fetch(6_700_000, 6_700_000)
        outer(1)
        outer(2)
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("downloading the style network ") and "6.7/6.7 MB" in lines[0]
    assert lines[1].startswith("stylizing ") and " 2/2 " in lines[1]


# Results and bars on one terminal


def screen(raw: str, width: int) -> list[str]:
    """What a terminal `width` columns wide shows after `raw`: enough of a VT100 for Rich's
    live display (carriage return, newline, erase line, cursor up, colours ignored)."""
    rows: list[list[str]] = [[]]
    row = column = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|.", raw, flags=re.DOTALL):
        if token.startswith("\x1b["):
            code, argument = token[-1], token[2:-1]
            if code == "K":
                rows[row] = [] if argument == "2" else rows[row][:column]
            elif code == "A":
                row = max(0, row - int(argument or 1))
        elif token == "\r":
            column = 0
        elif token == "\n":
            row += 1
            column = 0
        else:
            if column == width:
                row, column = row + 1, 0
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            line.extend(" " * (column - len(line)))
            line[column : column + 1] = [token]
            column += 1
        while len(rows) <= row:
            rows.append([])
    return ["".join(line).rstrip() for line in rows]


@pytest.fixture
def pty_streams(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> Iterator[tuple[Callable[[bool], None], Callable[[], str]]]:
    """Points stderr (and stdout, when asked) at one pseudo-terminal; the function returned
    closes them and gives what the terminal received."""
    if sys.platform == "win32":
        pytest.skip("needs a pseudo-terminal")
    master, slave = os.openpty()
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    opened: list[io.TextIOWrapper] = []

    def stream() -> io.TextIOWrapper:
        opened.append(open(os.dup(slave), "w", encoding="utf-8", buffering=1))  # noqa: SIM115
        return opened[-1]

    def connect(stdout_too: bool) -> None:
        monkeypatch.setattr(sys, "stderr", stream())
        if stdout_too:
            monkeypatch.setattr(sys, "stdout", stream())
        console = Console(
            stderr=True, width=60, force_terminal=True, color_system="standard", get_time=clock
        )
        monkeypatch.setattr(_console, "stderr", console)

    def finish() -> str:
        for each in opened:
            each.close()
        os.close(slave)
        reader.join(5)
        os.close(master)
        return b"".join(received).decode()

    yield connect, finish


def test_results_on_the_same_terminal_are_printed_above_the_bar(pty_streams, clock):
    connect, finish = pty_streams
    connect(True)
    with _console.progress("stylizing", 3) as update:
        for index in range(3):
            clock.now += 1
            _console.result(f"styled/photo{index}.png")
            update(index + 1)
    _console.result("after.png")
    shown = [line for line in screen(finish(), 60) if line]
    assert shown[:3] == [f"styled/photo{index}.png" for index in range(3)]
    assert shown[3].startswith("stylizing ━") and " 3/3 " in shown[3]
    assert shown[4:] == ["after.png"]


def test_results_go_to_stdout_when_it_is_not_the_terminal(pty_streams, clock, monkeypatch):
    connect, finish = pty_streams
    connect(False)
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stdout", piped)
    with _console.progress("stylizing", 2) as update:
        for index in range(2):
            clock.now += 1
            _console.result(f"styled/photo{index}.png")
            update(index + 1)
    shown = [line for line in screen(finish(), 60) if line]
    assert piped.getvalue() == "styled/photo0.png\nstyled/photo1.png\n"
    assert len(shown) == 1 and shown[0].startswith("stylizing ")


def test_hashing_a_copy_already_there_is_shown_as_checking(shown, clock):
    def run() -> None:
        with _console.download_progress("downloading vgg19") as update:
            for chunk in range(1, 5):
                clock.now += 0.1
                update(chunk * 100_000_000, 574_673_361, phase="checking")

    (line,) = shown(100, run)
    assert line.startswith("checking vgg19 ") and "downloading" not in line
