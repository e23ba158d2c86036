"""The `stylize` command line. Heavy imports (torch, torchvision) happen inside commands."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from stylize import __version__
from stylize.cli import _console
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
            _console.error(
                f"unexpected {type(error).__name__}: {error} "
                "(for details, run again as 'stylize --debug COMMAND ...')"
            )
            raise typer.Exit(1) from None


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
    app()
