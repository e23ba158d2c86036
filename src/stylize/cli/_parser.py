"""The command line's parser: argparse, with Rich help from rich-argparse.

Why not Typer (which 0.1 used): a command's start-up is paid by every call of a shell loop, and
Typer 0.29 coerces every option through pydantic, which with Typer's own import took ~140 ms a
call here, more than the 26-style network takes for a 512x512 photo. argparse is imported with
Python itself in ~8 ms; rich-argparse (and Rich) load only when help is shown.

What this module adds to argparse, for every command alike:
- options and inputs in any order (`stylize apply a.jpg -s starry b.jpg`), as before;
- no abbreviated options (`--over` is not `--overwrite`);
- a usage error is one line on stderr naming the command's help, exit code 2 (`UsageError`,
  also raised by commands for what only they can check);
- a flag followed by `true`/`false` (`--quiet true`) is a usage error, not an input named true;
- help shows defaults and ranges, flags without a value.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, NoReturn, TypeVar

#: Exit code of usage errors (as Click's and argparse's).
USAGE_EXIT_CODE = 2
# A flag followed by one of these was almost certainly meant to be set with it (`--quiet true`).
_FLAG_VALUES = ("true", "false")


class UsageError(Exception):
    """A command line that cannot mean anything: reported as one line, exit code 2. `option`
    names what is wrong (`'--output'`), when one option is."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.option = option

    def __str__(self) -> str:
        return self.message if self.option is None else f"{self.option}: {self.message}"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with the behaviour above; `add_subparsers` makes subcommands of the
    same kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _help_formatter)
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("add_help", False)
        super().__init__(*args, **kwargs)
        self._intermixing = False
        self._showing = False
        self.add_argument("-h", "--help", action="help", help="Show this message and exit.")

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if "metavar" not in kwargs and hasattr(kwargs.get("type"), "metavar"):
            kwargs["metavar"] = kwargs["type"].metavar  # {auto|fp32|...} for choice()
        action = super().add_argument(*args, **kwargs)
        values = getattr(action.type, "values", None)
        if values is not None:  # shell completion offers these instead of file names
            action.completer = lambda **_: values  # type: ignore[attr-defined]
        return action

    def format_help(self) -> str:
        self._showing = True
        try:
            return super().format_help()
        finally:
            self._showing = False

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse also makes formatters to check each add_argument's metavar and, parsing
        # intermixed, to keep the usage line: plain ones, so Rich loads only for help.
        if self._showing:
            return super()._get_formatter()
        return argparse.HelpFormatter(self.prog)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # A command's own parser (one without subcommands) takes options and inputs in any
        # order; argparse's intermixed parsing calls this method again, hence the guard.
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        args = list(sys.argv[1:] if args is None else args)
        if "_ARGCOMPLETE" not in os.environ:  # completion parses half-typed lines
            refuse_flag_values(self, args)
        if self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        # After `--` everything is an input. Python before 3.12.8 mishandles `--` when
        # parsing intermixed, so such a line is parsed plainly: options, then inputs.
        self._intermixing = True
        try:
            if "--" in args:
                namespace, extras = super().parse_known_args(args, namespace)
            else:
                namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
        if extras:  # said here, where the command's help is the one to read
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --x: ..."; commands' own UsageErrors say "'--x': ...".
        message = re.sub(r"^argument (\S+): ", r"'\1': ", message)
        raise UsageError(f"{message} (see '{self.prog} -h')")


def refuse_flag_values(parser: argparse.ArgumentParser, args: Sequence[str]) -> None:
    """A usage error for a flag followed by `true` or `false` (`--preserve-color true`), which
    would be read as an input named 'true', unless a file of that name exists."""
    flags = {
        name
        for action in parser._actions
        if action.nargs == 0 and not isinstance(action, argparse._HelpAction)
        for name in action.option_strings
    }
    for index, arg in enumerate(args[:-1]):
        if arg == "--":
            return
        value = args[index + 1]
        if arg in flags and value.lower() in _FLAG_VALUES and not os.path.exists(value):
            raise UsageError(f"it is a flag, which takes no value; leave out '{value}'", f"'{arg}'")


# Value checkers for `type=`: argparse reports their ArgumentTypeError as "argument --x: ...".


class Range:
    """An int or float option within bounds, inclusive unless `below` is given instead of
    `high`. Its `str` is what help shows: `[64 <= x <= 1024]`."""

    def __init__(
        self,
        kind: type[int] | type[float],
        low: float | None = None,
        high: float | None = None,
        *,
        below: float | None = None,
    ) -> None:
        self.kind, self.low, self.high, self.below = kind, low, high, below
        self.__name__ = kind.__name__  # argparse's "invalid int value" message names the type

    def __call__(self, text: str) -> int | float:
        value = self.kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        outside = (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
            or (self.below is not None and value >= self.below)
        )
        if outside:
            raise argparse.ArgumentTypeError(f"{text} is not in the range {self}")
        return value

    def __str__(self) -> str:
        if self.high is None and self.below is None:
            return f"x >= {self.low:g}"
        low = "" if self.low is None else f"{self.low:g} <= "
        high = "" if self.high is None else f" <= {self.high:g}"
        below = "" if self.below is None else f" < {self.below:g}"
        return f"{low}x{high}{below}"


E = TypeVar("E", bound=Enum)


def choice(enum: type[E]) -> Callable[[str], E]:
    """A `type=` for one of an Enum's values (case-insensitive), named in errors and help."""
    names = "|".join(str(member.value) for member in enum)

    def parse(text: str) -> E:
        for member in enum:
            if str(member.value) == text.strip().lower():
                return member
        raise argparse.ArgumentTypeError(f"'{text}' is not one of {names.replace('|', ', ')}")

    parse.__name__ = enum.__name__
    parse.metavar = "{" + names + "}"  # type: ignore[attr-defined]
    parse.values = [str(member.value) for member in enum]  # type: ignore[attr-defined]
    return parse


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """Rich help (loaded only when help or usage is shown), with each option's default and
    range."""
    from rich_argparse import RichHelpFormatter

    class Formatter(RichHelpFormatter):
        def _get_help_string(self, action: argparse.Action) -> str | None:
            text = action.help or ""
            if action.help == argparse.SUPPRESS:
                return action.help
            extras = []
            if isinstance(action.type, Range):
                extras.append(str(action.type))
            default = action.default
            shown = default not in (None, False, argparse.SUPPRESS, [], ())
            if shown and action.option_strings and "%(default)" not in text:
                value = default.value if isinstance(default, Enum) else default
                extras.append(f"default: {value}")
            if extras:  # "\[": Rich would read "[default: 1]" as markup
                text += " \\[" + "; ".join(extras).replace("%", "%%") + "]"
            return text

    return Formatter(prog, max_help_position=30)
