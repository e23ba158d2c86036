"""The `stylize` command line. Heavy imports (torch, NumPy, Rich) happen inside commands.

Each subcommand's module has `add_parser(commands)`, which declares its arguments and sets
`run` to the function that does the work, called with the parsed options as keywords (a group
such as `models` sets its own help as `run`, for when no subcommand is given).
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from stylize import __version__
from stylize.cli import _console
from stylize.cli._parser import USAGE_EXIT_CODE, Parser, UsageError
from stylize.errors import StylizeError

_SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")
_DESCRIPTION = "Neural style transfer: optimize an image, apply a fast style model, or train one."


def build_parser() -> Parser:
    """The whole command line: `stylize [--version] [--debug] COMMAND ...`."""
    from stylize.cli import apply, models, optimize, sheet, train

    parser = Parser(prog="stylize", description=_DESCRIPTION)
    parser.add_argument(
        "--version", action="version", version=f"stylize {__version__}",
        help="Print the version and exit.",
    )
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    parser.add_argument(
        "--show-completion",
        choices=_SHELLS,
        metavar="SHELL",
        help=f"Print the code that completes stylize's commands and options in SHELL "
        f"({', '.join(_SHELLS)}), for the shell's start-up file (see README.md).",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for module in (optimize, train, apply, sheet, models):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: parses `argv` (the process's arguments by default), runs the
    command, and exits: 0 when it worked, 1 for an error (one line on stderr; a traceback with
    --debug), 2 for a usage error, 130 when interrupted."""
    from stylize.atomic import install_sigterm_handler

    install_sigterm_handler()  # SIGTERM ends stylize like Ctrl-C does: no temporaries left
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _complete(parser)
    if not args:
        parser.print_help()
        return
    try:
        options = vars(parser.parse_args(args))
    except UsageError as error:
        _console.error(str(error))
        raise SystemExit(USAGE_EXIT_CODE) from None
    _console.set_debug(options.pop("debug"))
    shell = options.pop("show_completion")
    if shell is not None:
        import argcomplete

        _console.result(argcomplete.shellcode(["stylize"], shell=shell))
        return
    options.pop("command", None)
    if options.get("run") is None:  # no command: `stylize --debug`
        parser.print_help()
        return
    _run(options.pop("run"), options)


def console_main() -> None:
    """The `stylize` command: `main()`, then the process ends at once, without the
    interpreter's teardown (freeing every module, ONNX Runtime's threads and arena: ~35 ms, a
    tenth of stylizing a photo, paid by every call of a shell loop). Output is flushed and
    atexit callbacks run first; anything unusual (an exception, a message as the exit code,
    a thread still working) ends the usual way."""
    try:
        main()
        code: object = 0
    except BrokenPipeError:  # the reader went away (`stylize ... | head -1`): silent, exit 1
        _silence_stdout()
        os._exit(1)
    except SystemExit as exit:
        code = exit.code or 0
        if not isinstance(code, int):
            raise
    if not _may_end_at_once():
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None  # Python reports a closed pipe its own way
    atexit._run_exitfuncs()  # type: ignore[attr-defined]
    try:
        sys.stdout.flush()  # what atexit callbacks printed
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _may_end_at_once() -> bool:
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    working = any(t.is_alive() and not t.daemon for t in others)
    return not working and hasattr(atexit, "_run_exitfuncs")


def _run(run: Callable[..., Any], options: dict[str, Any]) -> None:
    """Runs a command; expected failures become one line on stderr and exit code 1."""
    try:
        run(**options)
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # Ctrl-C where a command has no message of its own
    except (BrokenPipeError, SystemExit):
        raise
    except UsageError as error:
        _console.error(str(error))
        raise SystemExit(USAGE_EXIT_CODE) from None
    except StylizeError as error:
        if _console.debug_enabled():
            raise
        _console.error(str(error))
        raise SystemExit(1) from None
    except Exception as error:
        if _console.debug_enabled():
            raise
        from stylize.engine.memory import out_of_memory_detail

        detail = out_of_memory_detail(error)
        if detail is not None:
            # MemoryError's message is often empty, an allocator's is a C++ assertion.
            _console.error(
                f"out of memory: {detail}; use a smaller size or close other programs "
                "(for details, run again as 'stylize --debug COMMAND ...')"
            )
        else:
            _console.error(
                f"unexpected {type(error).__name__}: {error} "
                "(for details, run again as 'stylize --debug COMMAND ...')"
            )
        raise SystemExit(1) from None


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answers the shell's completion request (argcomplete's protocol: the code printed by
    --show-completion runs stylize with _ARGCOMPLETE set) and exits; does nothing otherwise."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)
