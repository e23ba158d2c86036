"""The `stylize` command line. Heavy imports (torch, torchvision) happen inside commands."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from stylize import __version__
from stylize.cli import _console, _options
from stylize.errors import StylizeError

try:
    _TYPER_ERROR: type[Exception] = typer.TyperException
except AttributeError:  # Typer before its own exceptions used click's
    from click import ClickException as _TYPER_ERROR


class _ReportingGroup(TyperGroup):
    """Turns expected failures into one line on stderr and exit code 1 (traceback with --debug)."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, _TYPER_ERROR, KeyboardInterrupt, BrokenPipeError):
            raise
        except StylizeError as error:
            if _console.debug_enabled():
                raise
            _console.error(str(error))
            raise typer.Exit(1) from None
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
            raise typer.Exit(1) from None

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        # Before any parsing: --help may be among the arguments.
        _options.plain_flags(self, ctx)
        if not ctx.resilient_parsing:  # shell completion parses half-typed lines
            _options.refuse_flag_values(self, ctx, args)
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_ReportingGroup,
    name="stylize",
    help="Neural style transfer: optimize an image, apply a fast style model, or train one.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"stylize {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for errors.")
    ] = False,
) -> None:
    _console.set_debug(debug)


def _register() -> None:
    from stylize.cli import apply, models, optimize, sheet, train

    app.command("optimize", help="Stylize one image by optimizing its pixels (Gatys et al.).")(
        optimize.optimize
    )
    app.command("train", help="Train a fast style model from an artwork and a photo folder.")(
        train.train
    )
    app.command("apply", help="Stylize images in one pass: a style network or any picture.")(
        apply.apply
    )
    app.command("sheet", help="Show one photo in many styles on one labelled contact sheet.")(
        sheet.sheet
    )
    app.add_typer(models.app, name="models", help="List, download, import and remove models.")


_register()


def main() -> None:
    """Console entry point."""
    from stylize.atomic import install_sigterm_handler

    install_sigterm_handler()  # SIGTERM ends stylize like Ctrl-C does: no temporaries left
    app()
