"""Contact sheets: pictures in a labelled grid, to compare styles at a glance."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_GAP = 8
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


def contact_sheet(
    tiles: Sequence[tuple[str, Image.Image]], columns: int | None = None, label_size: int = 14
) -> Image.Image:
    """One image holding `tiles` (label, picture) in rows of `columns` (default: about as
    many columns as rows), each picture with its label under it. Pictures of other sizes are
    centred in a cell as large as the largest."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one picture")
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    font = _font(label_size)
    cell_width = max(image.width for _, image in tiles)
    cell_height = max(image.height for _, image in tiles)
    label_height = label_size + 6
    sheet = Image.new(
        "RGB",
        (
            columns * (cell_width + _GAP) + _GAP,
            rows * (cell_height + label_height + _GAP) + _GAP,
        ),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    for number, (label, image) in enumerate(tiles):
        row, column = divmod(number, columns)
        left = _GAP + column * (cell_width + _GAP)
        top = _GAP + row * (cell_height + label_height + _GAP)
        sheet.paste(
            image.convert("RGB"),
            (left + (cell_width - image.width) // 2, top + (cell_height - image.height) // 2),
        )
        text = _fit(draw, label, font, cell_width)
        width = draw.textlength(text, font=font)
        draw.text(
            (left + (cell_width - width) / 2, top + cell_height + 3), text, fill=_TEXT, font=font
        )
    return sheet


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        # Pillow's bundled scalable font (Pillow 10.1 and later): no system fonts needed.
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _fit(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
) -> str:
    """`text`, shortened with "..." until it fits `width` pixels (ASCII: Pillow's fallback
    bitmap font has no ellipsis character)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
