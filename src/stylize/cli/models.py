"""`stylize models`: the model store."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("path")
def path() -> None:
    """Print the store folder."""
    from stylize.store.paths import data_dir

    typer.echo(str(data_dir()))
