"""`stylize sheet`: one photo in many styles, as one labelled contact sheet."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stylize.cli import _console
from stylize.cli._options import Precision, add_device, add_precision, add_quiet, not_stdout
from stylize.cli._parser import Range
from stylize.errors import StylizeError

MULTISTYLE_NETWORK = "multistyle26"
_DESCRIPTION = """Render one photo in many styles as one labelled image, to choose a style. Prints
the path of the sheet it writes."""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "sheet",
        help="Show one photo in many styles on one labelled contact sheet.",
        description=_DESCRIPTION,
    )
    parser.add_argument("photo", type=_not_a_folder, metavar="PHOTO", help="The photo to stylize.")
    parser.add_argument(
        "--style",
        "-s",
        dest="styles",
        action="append",
        metavar="STYLE",
        help="A style to show (any --style of 'stylize apply'; repeat for more). Default: "
        "the 26 styles of multistyle26 and every installed style network.",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=not_stdout,
        metavar="PATH",
        help="Where to write the sheet. Default: STEM.sheet.jpg beside the photo.",
    )
    parser.add_argument(
        "--size",
        type=Range(int, 32, 1024),
        default=256,
        metavar="N",
        help="Long edge of each picture, in pixels.",
    )
    parser.add_argument(
        "--columns",
        type=Range(int, 1),
        metavar="N",
        help="Pictures per row. Default: about as many as rows.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing sheet.")
    add_device(parser)
    add_precision(parser, stylizing=True)
    add_quiet(parser)
    parser.set_defaults(run=sheet)


def _not_a_folder(text: str) -> Path:
    """`type=` of the photo: a folder is a usage error; a missing file is reported on loading."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a folder, not a file")
    return path


def sheet(
    photo: Path,
    styles: list[str] | None = None,
    output: Path | None = None,
    size: int = 256,
    columns: int | None = None,
    overwrite: bool = False,
    device: str = "auto",
    precision: Precision = Precision.auto,
    quiet: bool = False,
) -> None:
    """Render one photo in many styles as one labelled image, to choose a style.

    Prints the path of the sheet it writes.
    """
    from stylize.engine.imageio import check_output_path, load_image, resize_long_edge

    target = output or photo.with_name(f"{photo.stem}.sheet.jpg")
    check_output_path(target, overwrite=overwrite)
    original = load_image(photo).rgb
    if max(original.size) > size:
        original = resize_long_edge(original, size)
    chosen = list(styles) if styles else _default_styles()

    from stylize.cli._stylizers import make_stylizers
    from stylize.engine.imageio import array_to_image, image_to_array, save_image
    from stylize.engine.settings import DEFAULT_STYLE_SIZE
    from stylize.engine.sheet import contact_sheet
    from stylize.store.styles import parse_style

    content = image_to_array(original)
    refs = [parse_style(text) for text in chosen]
    tiles = [("original", original)]
    with _console.progress("stylizing", len(refs), quiet) as on_progress:
        for done, ref in enumerate(refs):
            # The engine apply would use for this style: ONNX Runtime on a CPU-only machine.
            stylizers = make_stylizers(
                [ref],
                None,
                device=device,
                precision=precision.value,
                tile_size=None,
                style_size=DEFAULT_STYLE_SIZE,
                strength=1.0,
                batch_size=1,
                jobs=1,
                quiet=quiet,
            )
            try:
                stylize, _ = stylizers.for_photo(content, 1.0)
                result = stylize(content)
            except StylizeError as error:
                raise StylizeError(f"{photo}: {error}") from None
            tiles.append((_label(ref.text, ref.label), array_to_image(result)))
            on_progress(done + 1)
    save_image(contact_sheet(tiles, columns), target, overwrite=overwrite)
    _console.result(str(target))


def _default_styles() -> list[str]:
    """Every style of the catalog's multi-style network, then the installed style networks
    of one style each."""
    from stylize.store.registry import list_models

    rows = list_models()
    singles = [
        row.name
        for row in rows
        if row.installed
        and row.kind == "style"
        and row.path is not None
        and _single_style(Path(row.path))
    ]
    from stylize.store import catalog

    # The catalog knows its number of styles without loading it.
    styles = catalog.load_catalog()[MULTISTYLE_NETWORK].styles
    return [f"{MULTISTYLE_NETWORK}:{index}" for index in range(styles)] + singles


def _single_style(path: Path) -> bool:
    from stylize.store.convert import JOHNSON, family_of
    from stylize.store.modelfile import read_model_meta

    return family_of(read_model_meta(path)) == JOHNSON


def _label(text: str, label: str) -> str:
    """`19 starry` for a named index of a multi-style network, else the style's own label."""
    from stylize.store.styles import parse_style, style_names

    ref = parse_style(text)
    if ref.index is None or ref.network is None:
        return label
    name = style_names(ref.network).get(ref.index)
    number = str(ref.index) if ref.network == MULTISTYLE_NETWORK else ref.text
    return f"{number} {name}" if name else number
