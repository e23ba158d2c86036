"""Reading, resizing, converting and writing images.

Everything is normalized to 8-bit sRGB on the way in. torch is imported only by the tensor
helpers, so the CLI can validate paths and read images before paying for it.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stylize.atomic import atomic_write, check_target
from stylize.errors import StylizeError

if TYPE_CHECKING:
    import torch
    from PIL import ImageCms

# Formats Pillow recognizes but cannot decode on its own (stubs that need a registered handler,
# MPEG headers only, EPS needs Ghostscript, WMF needs Windows): a folder scan skips them.
_UNDECODABLE_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "MPEG", "EPS", "WMF"})


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The file suffixes of the image formats Pillow can decode (listing them loads every
    Pillow plugin, which takes longer than reading a photo: only folder scans need it)."""
    return frozenset(
        suffix
        for suffix, format_name in Image.registered_extensions().items()
        if format_name in Image.OPEN and format_name not in _UNDECODABLE_FORMATS
    )


_OUTPUT_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
OUTPUT_SUFFIXES: frozenset[str] = frozenset(_OUTPUT_FORMATS)
_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
# PNG with zlib's run-length strategy: stylized pictures are texture everywhere, so LZ77's string
# matching finds next to nothing. Measured on stylized outputs: the same size (within 0.2%) in
# 55-65% of the time of zlib's default strategy.
_SAVE_OPTIONS: dict[str, dict[str, object]] = {
    "JPEG": {"quality": 95},
    "WEBP": {"quality": 95},
    "PNG": {"compress_type": zlib.Z_RLE},
}

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class LoadedImage:
    """An image as the engine sees it: `rgb` is 8-bit sRGB, upright, flattened onto white;
    `alpha` ("L") is the transparency it had, if any, to re-attach on output."""

    rgb: Image.Image
    alpha: Image.Image | None
    path: Path


def load_image(path: str | Path) -> LoadedImage:
    """Reads any image Pillow can decode and normalizes it (see LoadedImage)."""
    path = Path(path)
    if not path.exists():
        raise StylizeError(f"image not found: {path}")
    if not path.is_file():
        raise StylizeError(f"not an image file: {path}")
    return _decode(path, path)


def load_image_data(data: bytes, name: str) -> LoadedImage:
    """`load_image` for an image's bytes (from standard input, say); `name` stands for the
    file in messages and in `LoadedImage.path`."""
    if not data:
        raise StylizeError(f"cannot read {name}: it is empty")
    return _decode(io.BytesIO(data), Path(name))


def _decode(source: Path | BinaryIO, path: Path) -> LoadedImage:
    try:
        # Pillow warns between MAX_IMAGE_PIXELS and twice that (about 179 megapixels), and raises
        # beyond. Large camera photos sit in the warning range, so only the error refuses.
        # Image.open only reads the header, so the size is checked before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                upright = ImageOps.exif_transpose(opened)
                icc_profile = opened.info.get("icc_profile")
    except Image.DecompressionBombError as error:
        raise StylizeError(f"refusing to read {path}: {error}") from None
    except UnidentifiedImageError:
        raise StylizeError(f"cannot read {path}: not an image format Pillow can decode") from None
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow reports corrupt and truncated files as OSError, some plugins as ValueError or
        # SyntaxError.
        raise StylizeError(f"cannot read {path}: {error}") from None
    color, alpha = _split_alpha(upright)
    rgb = _to_srgb(color, icc_profile)
    if alpha is not None:
        rgb = Image.composite(rgb, Image.new("RGB", rgb.size, "white"), alpha)
    return LoadedImage(rgb=rgb, alpha=alpha, path=path)


def image_to_array(image: Image.Image) -> np.ndarray:
    """A (1, 3, H, W) float32 array with values in [0, 1]: `to_tensor` without PyTorch."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return pixels_to_array(np.asarray(rgb, dtype=np.uint8))


def pixels_to_array(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB pixels (a video frame, say) as `image_to_array` gives them."""
    return pixels.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)


def array_to_image(array: np.ndarray) -> Image.Image:
    """An RGB image from a (1, 3, H, W) or (3, H, W) array in [0, 1] (values outside clamp),
    rounded as `to_image` rounds."""
    return Image.fromarray(array_to_pixels(array))


def array_to_pixels(array: np.ndarray) -> np.ndarray:
    """`array_to_image`'s pixels, HxWx3 uint8."""
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(
            f"expected an image array of shape (1, 3, H, W) or (3, H, W), got {array.shape}"
        )
    # One temporary, worked on in place: this runs after the network, when its memory is at
    # its peak, so every extra copy of the image adds to the process's peak.
    scaled = np.multiply(array, np.float32(255))
    np.clip(scaled, 0, 255, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.transpose(1, 2, 0).astype(np.uint8, order="C")


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The color channels in a mode ICC transforms accept (L, RGB, CMYK, ...) and the alpha."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _split_sixteen_bit(image)
    if image.mode in ("LA", "La"):
        return image.convert("L"), image.convert("LA").getchannel("A")
    if image.mode not in _ALPHA_MODES and "transparency" not in image.info:
        return (image.convert("RGB") if image.mode == "P" else image), None
    rgba = image.convert("RGBA")
    # L and RGB keep their mode (a color-key transparency) so their ICC profile still applies.
    color = image if image.mode in ("L", "RGB") else rgba.convert("RGB")
    return color, rgba.getchannel("A")


def _split_sixteen_bit(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    # 16-bit grayscale opens as "I;16" or "I" with values 0-65535, and Pillow's own conversion
    # to "L" clips at 255 instead of scaling.
    values = np.asarray(image).astype(np.int64)
    gray = Image.fromarray(np.round(np.clip(values, 0, 65535) / 257).astype(np.uint8))
    key = image.info.get("transparency")
    if not isinstance(key, int):
        return gray, None
    return gray, Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    if icc_profile:
        from PIL import ImageCms  # LittleCMS, loaded for images that carry a profile

        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            return ImageCms.profileToProfile(image, source, _srgb(), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            # A broken profile, or one that does not match the pixel format, is ignored, as
            # image viewers do.
            pass
    return image.convert("RGB")


def find_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (and its subfolders if `recursive`), by suffix, sorted.
    Hidden files and folders (names starting with ".") are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StylizeError(f"not a folder: {folder}")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.suffix.lower() in image_suffixes()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def resize_long_edge(image: Image.Image, long_edge: int) -> Image.Image:
    """Scales `image` so its longer side is `long_edge` pixels, keeping the aspect ratio."""
    if long_edge < 1:
        raise StylizeError(f"image size must be at least 1 pixel, got {long_edge}")
    width, height = image.size
    scale = long_edge / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return _resize(image, size)


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image.copy()
    shrinking = size[0] * size[1] < image.width * image.height
    return image.resize(size, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)


def to_tensor(image: Image.Image, device: torch.device | str | None = None) -> torch.Tensor:
    """A (1, 3, H, W) float32 tensor with values in [0, 1]."""
    import torch

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))
    # Move the 8-bit pixels and convert on the device: a quarter of the float32 transfer.
    pixels = pixels.to(device).permute(2, 0, 1).unsqueeze(0).contiguous()
    return pixels.to(torch.float32).div_(255)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """An RGB image from a (1, 3, H, W) or (3, H, W) tensor in [0, 1] (values outside clamp)."""
    import torch

    shape = tuple(tensor.shape)
    if len(shape) == 4 and shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(
            f"expected an image tensor of shape (1, 3, H, W) or (3, H, W), got {shape}"
        )
    pixels = tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


def check_output_path(path: Path, *, overwrite: bool) -> None:
    """Fails unless `save_image(..., path, overwrite=overwrite)` can write there."""
    check_target(path, OUTPUT_SUFFIXES, "image", overwrite=overwrite)
    _check_writable_folder(Path(path))


def _check_writable_folder(path: Path) -> None:
    # Creating a file is the only reliable test (permissions, read-only mounts, ACLs), and it is
    # better to fail now than after minutes of work.
    probe = path.parent / f".stylize-probe-{os.urandom(4).hex()}"
    try:
        with open(probe, "xb"):
            pass
    except OSError as error:
        raise StylizeError(f"cannot write {path}: {error.strerror or error}") from None
    probe.unlink()


def save_image(
    image: Image.Image,
    path: Path,
    *,
    alpha: Image.Image | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `image` atomically in the format its suffix names. `alpha` is resized to the image
    and re-attached where the format has transparency (PNG, WebP, TIFF), dropped for JPEG."""
    path = Path(path)
    check_output_path(path, overwrite=overwrite)
    format_name = _OUTPUT_FORMATS[path.suffix.lower()]
    try:
        with atomic_write(path, overwrite=overwrite) as file:
            _encode(image, file, format_name, alpha)
    except (OSError, ValueError) as error:
        # Pillow reports encoder limits (a WebP over 16383 pixels, say) as OSError or ValueError.
        raise StylizeError(f"cannot write {path}: {error}") from None
    return path


def encode_image(image: Image.Image, suffix: str, *, alpha: Image.Image | None = None) -> bytes:
    """`image` encoded as `save_image` would write it to a file with this suffix (".png")."""
    format_name = _OUTPUT_FORMATS.get(suffix.lower())
    if format_name is None:
        raise StylizeError(
            f"unsupported image type '{suffix}'; use one of {', '.join(sorted(OUTPUT_SUFFIXES))}"
        )
    buffer = io.BytesIO()
    try:
        _encode(image, buffer, format_name, alpha)
    except (OSError, ValueError) as error:
        raise StylizeError(f"cannot encode the image as {format_name}: {error}") from None
    return buffer.getvalue()


def _encode(
    image: Image.Image, file: BinaryIO, format_name: str, alpha: Image.Image | None
) -> None:
    image = image.convert("RGB")
    if alpha is not None and format_name in _ALPHA_FORMATS:
        image.putalpha(_resize(alpha.convert("L"), image.size))
    image.save(file, format=format_name, **_SAVE_OPTIONS.get(format_name, {}))
