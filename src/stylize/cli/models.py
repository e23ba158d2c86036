"""`stylize models`: list, download, import, inspect and remove models."""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stylize.cli import _console
from stylize.cli._options import add_json, add_quiet, existing_file, model_name
from stylize.cli._parser import UsageError

_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>[A-Za-z0-9+/=\s]*)")


def add_parser(commands: Any) -> None:
    """`stylize models COMMAND`; `stylize models` alone prints its help."""
    text = "List, download, import and remove models."
    group = commands.add_parser("models", help=text, description=text)
    group.set_defaults(run=group.print_help)
    # No dest: the chosen subcommand is known by the `run` it sets.
    subcommands = group.add_subparsers(title="commands", metavar="COMMAND")

    def add(name: str, run: Any, line: str) -> Any:
        parser = subcommands.add_parser(name, help=line, description=line)
        parser.set_defaults(run=run)
        return parser

    parser = add("list", list_models, "List catalog entries and installed models.")
    add_json(parser)

    parser = add("pull", pull, "Download and install catalog entries (see 'stylize models list').")
    parser.add_argument("names", nargs="+", metavar="NAME", help="Catalog entries.")
    add_quiet(parser)

    parser = add(
        "import",
        import_model,
        "Register a local model file in the store; its kind is detected from its contents.",
    )
    parser.add_argument(
        "path",
        type=existing_file,
        metavar="PATH",
        help="A torchvision VGG19 state dict, or a style model (native, .pth or ONNX).",
    )
    parser.add_argument(
        "--name",
        type=model_name,
        metavar="NAME",
        help="Store name (default: vgg19, or the file name).",
    )
    parser.add_argument(
        "--trust",
        action="store_true",
        help="Accept a VGG19 whose checksum differs from the published.",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace an installed model of that name."
    )

    parser = add(
        "info", info, "Show everything known about a model: file, checksum, license, metadata."
    )
    _add_name(parser)
    add_json(parser)

    parser = add(
        "remove", remove, "Delete an installed model (catalog entries can be pulled again)."
    )
    _add_name(parser)

    add("path", path, "Print the store folder.")


def _add_name(parser: Any) -> None:
    parser.add_argument("name", type=model_name, metavar="NAME", help="The model's name.")


def list_models(as_json: bool = False) -> None:
    """List catalog entries and installed models."""
    from rich import box
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Column, Table

    from stylize.store import registry

    rows = registry.list_models()
    if as_json:
        _console.result(json.dumps([asdict(row) for row in rows], indent=2))
        return
    models = [row for row in rows if not _is_named_style(row)]
    table = Table(
        # The name is what users type next, so it is never shortened.
        Column("name", no_wrap=True, min_width=max((len(row.name) for row in models), default=4)),
        *(Column(header, no_wrap=True) for header in ("kind", "source", "installed")),
        Column("size", no_wrap=True, justify="right"),
        Column("license", no_wrap=True),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        caption="(size): download size of a model not yet installed",
    )
    for row in models:
        if row.size is not None:
            size = decimal(row.size)
        else:
            size = f"({decimal(row.download_size)})" if row.download_size else ""
        table.add_row(
            row.name, row.kind, row.source, "yes" if row.installed else "no", size, row.license
        )
    console = Console(highlight=False, markup=False)
    console.print(table)
    named = [row for row in rows if _is_named_style(row)]
    if named:
        styles = Table(
            Column("named style", no_wrap=True),
            Column("is", no_wrap=True),
            Column("painting"),
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
        )
        for row in named:
            styles.add_row(row.name, row.source, row.description)
        console.print()
        console.print(styles)
    for row in rows:
        if row.problem:
            _console.warn(row.problem)


def pull(names: list[str], quiet: bool = False) -> None:
    """Download and install catalog entries (see 'stylize models list')."""
    from stylize.errors import StylizeError
    from stylize.store import catalog

    entries = catalog.load_catalog()
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise UsageError(
            f"not in the catalog: {', '.join(unknown)} (available: {', '.join(entries)})", "'NAME'"
        )
    names = list(dict.fromkeys(names))
    failed = []
    for name in names:
        try:
            path = _pull_one(name, quiet)
        except StylizeError as error:
            # One entry's failure does not stop the others; the exit code tells at the end.
            if len(names) == 1:
                raise
            _console.error(str(error))
            failed.append(name)
            continue
        _console.result(str(path))
    if failed:
        raise StylizeError(
            f"{len(failed)} of {len(names)} models could not be installed: {', '.join(failed)}"
        )


def _pull_one(name: str, quiet: bool) -> Path:
    from stylize.store import registry

    path = registry.model_path(name)
    if path.exists():
        _console.info(f"{name} is already installed", quiet)
        return path
    with _PhasedProgress(name, quiet) as update:
        pulled = registry.pull_model(
            name,
            update,
            on_warning=_console.warn,
            on_info=lambda message: _console.info(message, quiet),
        )
    if pulled.installed:
        _console.info(f"Installed {name}", quiet)
    else:
        _console.info(f"{name} is already installed (by another process meanwhile)", quiet)
    return pulled.path


class _PhasedProgress:
    """A pull's byte progress bar, labelled with what is being done: "downloading NAME", or
    "checking NAME" while the checksum of a copy already on disk is computed (the store reports
    `phase="checking"`); each phase gets a bar of its own."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name, self.quiet = name, quiet
        self.phase: str | None = None
        self.context: AbstractContextManager[Any] | None = None
        self.update: Any = None

    def __enter__(self) -> _PhasedProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close()

    def __call__(self, completed: float, total: float | None = None, **values: object) -> None:
        phase = str(values.get("phase", "downloading"))
        if phase != self.phase:
            self._close()
            self.context = _console.download_progress(f"{phase} {self.name}", self.quiet)
            self.update = self.context.__enter__()
            self.phase = phase
        self.update(completed, total)

    def _close(self) -> None:
        context, self.context = self.context, None
        if context is not None:
            context.__exit__(None, None, None)


def import_model(
    path: Path, name: str | None = None, trust: bool = False, overwrite: bool = False
) -> None:
    """Register a local model file in the store; its kind is detected from its contents."""
    from rich.markup import escape

    from stylize.store import registry
    from stylize.store.modelfile import read_model_meta

    imported = registry.import_model(path, name, trust=trust, overwrite=overwrite)
    installed = registry.model_path(imported)
    meta = read_model_meta(installed)
    if meta.get("trusted") is False:
        _console.warn(
            f"{escape(path.name)} is not torchvision's published VGG19 (its checksum differs); "
            "it will be used, but results will differ from the reference weights"
        )
    _console.info(f"Imported {imported} ({meta['kind']})")
    _console.result(str(installed))


def info(name: str, as_json: bool = False) -> None:
    """Show everything known about a model: file, checksum, license, metadata."""
    from stylize.store.registry import describe_model

    description = describe_model(name)
    if as_json:
        _console.result(json.dumps(description, indent=2))
        return
    for key, value in description.items():
        if isinstance(value, dict) and value:
            _console.result(f"{key}:")
            for inner_key, inner_value in value.items():
                _console.result(f"  {inner_key}: {_plain(inner_value)}")
        else:
            _console.result(f"{key}: {_plain(value)}")


def remove(name: str) -> None:
    """Delete an installed model (catalog entries can be pulled again)."""
    from stylize.store.registry import remove_model

    remove_model(name)
    _console.info(f"Removed {name}")


def path() -> None:
    """Print the store folder."""
    from stylize.store.paths import data_dir

    _console.result(str(data_dir()))


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return _data_uri_summary(value) or value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def _data_uri_summary(value: str) -> str | None:
    """`(JPEG image, 1.8 kB; in --json)` for an embedded picture (a trained model's style
    thumbnail, `data:image/jpeg;base64,...`), which would fill the screen; None for other text."""
    match = _DATA_URI.fullmatch(value)
    if match is None:
        return None
    from rich.filesize import decimal

    payload = match["data"].strip()
    size = len(payload) * 3 // 4 - payload.count("=", len(payload) - 2)
    kind = match["mime"].rpartition("/")[2].upper() or "data"
    noun = "image" if match["mime"].startswith("image/") else "data"
    return f"({kind} {noun}, {decimal(size)}; in --json)"


def _is_named_style(row: Any) -> bool:
    """A named style of a multi-style network: its source is NETWORK:N."""
    return ":" in row.source
