"""Image reading (every mode Pillow hands back), resizing, tensors and atomic writing."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylize.engine.imageio import (
    OUTPUT_SUFFIXES,
    check_output_path,
    find_images,
    image_suffixes,
    load_image,
    resize_long_edge,
    save_image,
    to_image,
    to_tensor,
)
from stylize.errors import StylizeError


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def uniform_pixel(image: Image.Image) -> tuple[int, ...]:
    colors = image.getcolors()
    assert colors is not None and len(colors) == 1, colors
    return colors[0][1]


# --- reading ---------------------------------------------------------------------------------


def test_rgb_image_loads_unchanged(make_image: Callable[..., Path]) -> None:
    path = make_image("photo.png", size=(48, 32))
    loaded = load_image(path)
    assert loaded.rgb.mode == "RGB"
    assert loaded.rgb.size == (48, 32)
    assert loaded.alpha is None
    assert loaded.path == path
    assert np.array_equal(pixels(loaded.rgb), pixels(Image.open(path)))


def test_grayscale_becomes_equal_rgb_channels(make_image: Callable[..., Path]) -> None:
    path = make_image("gray.png", mode="L")
    loaded = load_image(path)
    gray = pixels(Image.open(path))
    assert loaded.rgb.mode == "RGB"
    for channel in range(3):
        assert np.array_equal(pixels(loaded.rgb)[..., channel], gray)


def test_palette_with_transparency_keeps_alpha_and_flattens_onto_white(tmp_path: Path) -> None:
    image = Image.new("P", (8, 4), 1)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.paste(0, (4, 0, 8, 4))
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)

    loaded = load_image(path)
    assert loaded.rgb.mode == "RGB"
    assert loaded.rgb.getpixel((1, 1)) == (0, 0, 255)
    assert loaded.rgb.getpixel((6, 1)) == (255, 255, 255)
    assert loaded.alpha is not None and loaded.alpha.mode == "L"
    assert loaded.alpha.getpixel((1, 1)) == 255
    assert loaded.alpha.getpixel((6, 1)) == 0


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.gif"
    Image.new("RGB", (8, 8), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    loaded = load_image(path)
    assert loaded.alpha is None
    assert uniform_pixel(loaded.rgb) == (0, 128, 255)


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    image = Image.new("CMYK", (8, 4), (255, 0, 0, 0))
    image.paste((0, 255, 255, 0), (4, 0, 8, 4))
    image.save(path)
    loaded = load_image(path)
    assert loaded.rgb.getpixel((1, 1)) == (0, 255, 255)
    assert loaded.rgb.getpixel((6, 1)) == (255, 0, 0)


@pytest.mark.parametrize(("mode", "name"), [("I;16", "deep.png"), ("I", "deep.tif")])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path, mode: str, name: str) -> None:
    values = np.array([[0, 300, 128 * 257, 65535]], dtype=np.uint16)
    path = tmp_path / name
    Image.fromarray(values).convert(mode).save(path)
    assert Image.open(path).mode == mode

    loaded = load_image(path)
    assert pixels(loaded.rgb)[0].tolist() == [[v, v, v] for v in (0, 1, 128, 255)]


def test_sixteen_bit_color_key_transparency(tmp_path: Path) -> None:
    values = np.array([[1000, 1001, 65535]], dtype=np.uint16)
    path = tmp_path / "key.png"
    Image.fromarray(values).save(path, transparency=1000)
    loaded = load_image(path)
    assert loaded.alpha is not None
    assert pixels(loaded.alpha)[0].tolist() == [0, 255, 255]
    assert pixels(loaded.rgb)[0].tolist() == [[255, 255, 255], [4, 4, 4], [255, 255, 255]]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_and_flattened_onto_white(tmp_path: Path, mode: str) -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(200, 200, 200, 255), (200, 200, 200, 0), (0, 0, 0, 128)])
    path = tmp_path / "alpha.png"
    rgba.convert(mode).save(path)

    loaded = load_image(path)
    assert loaded.alpha is not None
    assert pixels(loaded.alpha)[0].tolist() == [255, 0, 128]
    # Half-transparent black over white: 255 * (255 - 128) / 255 = 127.
    assert np.abs(pixels(loaded.rgb)[0] - [[200] * 3, [255] * 3, [127] * 3]).max() <= 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (48, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (24, 0, 48, 32))
    exif = stored.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)

    loaded = load_image(path)
    # Rotating clockwise turns the left (red) half into the top half.
    assert loaded.rgb.size == (32, 48)
    assert np.abs(np.subtract(loaded.rgb.getpixel((16, 8)), (255, 0, 0))).max() < 12
    assert np.abs(np.subtract(loaded.rgb.getpixel((16, 40)), (0, 0, 255))).max() < 12


def _s15_fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15_fixed16(x) + _s15_fixed16(y) + _s15_fixed16(z)


def linear_srgb_profile() -> bytes:
    """A minimal ICC v2 RGB profile: sRGB primaries (adapted to D50) with gamma 1.0 curves."""
    linear_curve = b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0100) + bytes(2)
    tags = [
        (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", _xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", _xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", linear_curve),
        (b"gTRC", linear_curve),
        (b"bTRC", linear_curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", offset + len(data))
        + bytes(4)
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + _xyz(0.9642, 1.0, 0.8249)[8:]
        + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def srgb_encode(linear: float) -> float:
    if linear <= 0.0031308:
        return 12.92 * linear
    return 1.055 * linear ** (1 / 2.4) - 0.055


def test_embedded_icc_profile_is_converted_to_srgb(tmp_path: Path) -> None:
    color = (64, 128, 200)
    tagged, untagged = tmp_path / "linear.png", tmp_path / "plain.png"
    Image.new("RGB", (4, 4), color).save(tagged, icc_profile=linear_srgb_profile())
    Image.new("RGB", (4, 4), color).save(untagged)

    expected = [255 * srgb_encode(value / 255) for value in color]  # about (137, 188, 229)
    converted = uniform_pixel(load_image(tagged).rgb)
    assert np.abs(np.subtract(converted, expected)).max() <= 1.5
    assert uniform_pixel(load_image(untagged).rgb) == color


def test_broken_icc_profile_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path, icc_profile=b"not a profile" * 20)
    assert uniform_pixel(load_image(path).rgb) == (10, 20, 30)


def test_decompression_bomb_is_refused(
    make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 48 x 32 = 1536 pixels, more than twice the limit: Pillow's bomb error.
    path = make_image("bomb.png", size=(48, 32))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(StylizeError, match=r"refusing to read .*bomb\.png.*decompression bomb"):
        load_image(path)


def test_large_image_below_the_bomb_limit_is_read(
    make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the limit and twice it Pillow only warns: big camera photos live there.
    path = make_image("large.png", size=(48, 32))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(path).rgb.size == (48, 32)


def test_unwritable_output_folder_is_refused_before_work(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        # Root may write anywhere it has permission bits for; sysfs refuses new files even then.
        folder = Path("/sys/kernel")
        if not folder.is_dir():
            pytest.skip("no folder this user cannot write to")
    with pytest.raises(StylizeError, match=r"cannot write .*out\.png"):
        check_output_path(folder / "out.png", overwrite=False)


def test_output_check_leaves_no_probe_file(tmp_path: Path) -> None:
    check_output_path(tmp_path / "out.png", overwrite=False)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_inputs_are_clear_errors(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    with pytest.raises(StylizeError, match=r"image not found: .*missing\.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(StylizeError, match="not an image file"):
        load_image(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(StylizeError, match="not an image format Pillow can decode"):
        load_image(text)
    whole = make_image("whole.png", size=(48, 32)).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(StylizeError, match=r"cannot read .*truncated\.png"):
        load_image(truncated)


# --- finding, resizing, tensors ----------------------------------------------------------------


def test_find_images(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    for name in ("b.png", "a.JPG", "c.webp", "sub/d.tif", ".hidden.png", ".cache/e.png"):
        make_image(name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder.png").mkdir()

    assert find_images(tmp_path) == [tmp_path / n for n in ("a.JPG", "b.png", "c.webp")]
    assert find_images(tmp_path, recursive=True) == [
        tmp_path / n for n in ("a.JPG", "b.png", "c.webp", "sub/d.tif")
    ]
    with pytest.raises(StylizeError, match="not a folder"):
        find_images(tmp_path / "b.png")


def test_suffix_sets() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"} <= image_suffixes()
    assert ".mpg" not in image_suffixes()
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"} == OUTPUT_SUFFIXES


@pytest.mark.parametrize(
    ("size", "long_edge", "expected"),
    [
        ((48, 32), 24, (24, 16)),
        ((32, 48), 24, (16, 24)),
        ((48, 32), 96, (96, 64)),
        ((5, 1), 2, (2, 1)),
    ],
)
def test_resize_long_edge_keeps_aspect(size, long_edge, expected) -> None:
    assert resize_long_edge(Image.new("RGB", size), long_edge).size == expected


def test_resize_long_edge_filters_when_shrinking() -> None:
    # A one-pixel checkerboard averages to mid gray under a proper low-pass filter; sampling
    # (nearest neighbour) would keep pure black and white.
    board = Image.fromarray((np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8))
    small = pixels(resize_long_edge(board.convert("RGB"), 16))
    assert np.abs(small[2:-2, 2:-2] - 127.5).max() < 8
    with pytest.raises(StylizeError, match="at least 1 pixel"):
        resize_long_edge(board, 0)


def test_tensor_round_trip(make_image: Callable[..., Path]) -> None:
    image = load_image(make_image(size=(48, 32))).rgb
    tensor = to_tensor(image)
    assert tensor.shape == (1, 3, 32, 48)
    assert tensor.dtype == torch.float32
    assert tensor.is_contiguous()
    assert tensor.min() >= 0 and tensor.max() <= 1
    assert tensor[0, 0, 5, 7].item() == pytest.approx(image.getpixel((7, 5))[0] / 255)
    assert np.array_equal(pixels(to_image(tensor)), pixels(image))
    assert np.array_equal(pixels(to_image(tensor[0])), pixels(image))
    assert to_tensor(image, torch.device("cpu")).device.type == "cpu"


def test_to_image_clamps_and_checks_shape() -> None:
    tensor = torch.tensor([-0.5, 0.5, 1.5]).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
    assert uniform_pixel(to_image(tensor)) == (0, 128, 255)
    with pytest.raises(ValueError, match=r"got \(2, 3, 2, 2\)"):
        to_image(tensor.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match=r"got \(1, 1, 2, 2\)"):
        to_image(tensor[:, :1])


# --- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "format_name", "lossless"),
    [
        ("out.jpg", "JPEG", False),
        ("out.jpeg", "JPEG", False),
        ("out.png", "PNG", True),
        ("OUT.PNG", "PNG", True),
        ("out.webp", "WEBP", False),
        ("out.tif", "TIFF", True),
        ("out.tiff", "TIFF", True),
    ],
)
def test_save_each_format(tmp_path: Path, name: str, format_name: str, lossless: bool) -> None:
    y, x = np.mgrid[0:32, 0:48]
    smooth = np.stack([x * 5, y * 8, 255 - x * 5], axis=-1).astype(np.uint8)
    image = Image.fromarray(smooth)
    path = save_image(image, tmp_path / name)
    assert path == tmp_path / name
    with Image.open(path) as written:
        assert written.format == format_name
        assert written.mode == "RGB"
        difference = np.abs(pixels(written) - pixels(image)).mean()
    assert difference == 0 if lossless else difference < 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_file_gets_umask_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    path = save_image(Image.new("RGB", (4, 4)), tmp_path / "out.png")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    ("name", "lossless"), [("out.png", True), ("out.webp", False), ("out.tiff", True)]
)
def test_alpha_round_trip(tmp_path: Path, name: str, lossless: bool) -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 4))
    source = tmp_path / "source.png"
    rgba.save(source)

    loaded = load_image(source)
    path = save_image(loaded.rgb, tmp_path / name, alpha=loaded.alpha)
    reloaded = load_image(path)
    assert reloaded.alpha is not None
    assert np.array_equal(pixels(reloaded.alpha), pixels(loaded.alpha))
    difference = np.abs(pixels(reloaded.rgb) - pixels(loaded.rgb)).mean()
    assert difference == 0 if lossless else difference < 6


def test_alpha_is_resized_to_the_output_and_dropped_for_jpeg(tmp_path: Path) -> None:
    alpha = Image.new("L", (8, 8), 255)
    alpha.paste(0, (0, 0, 8, 4))
    image = Image.new("RGB", (16, 16), (0, 0, 255))

    with Image.open(save_image(image, tmp_path / "big.png", alpha=alpha)) as written:
        assert written.mode == "RGBA"
        assert written.getchannel("A").getpixel((8, 1)) == 0
        assert written.getchannel("A").getpixel((8, 14)) == 255
    with Image.open(save_image(image, tmp_path / "big.jpg", alpha=alpha)) as written:
        assert written.mode == "RGB"


def test_existing_output_is_never_overwritten_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    save_image(Image.new("RGB", (4, 4), (255, 0, 0)), path)
    with pytest.raises(StylizeError, match=r"out\.png already exists; pass --overwrite"):
        save_image(Image.new("RGB", (4, 4), (0, 255, 0)), path)
    assert uniform_pixel(Image.open(path)) == (255, 0, 0)

    save_image(Image.new("RGB", (4, 4), (0, 255, 0)), path, overwrite=True)
    assert uniform_pixel(Image.open(path)) == (0, 255, 0)


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "out.webp"
    save_image(Image.new("RGB", (4, 4), (255, 0, 0)), path)
    before = path.read_bytes()
    too_wide_for_webp = Image.new("RGB", (16384, 1))
    with pytest.raises(StylizeError, match=r"cannot write .*out\.webp: .*WebP limit"):
        save_image(too_wide_for_webp, path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.webp"]


def test_check_output_path(tmp_path: Path) -> None:
    check_output_path(tmp_path / "new.png", overwrite=False)
    with pytest.raises(StylizeError, match=r"unsupported image type '\.gif'; use one of \.jpeg"):
        check_output_path(tmp_path / "out.gif", overwrite=False)
    with pytest.raises(StylizeError, match=r"unsupported image type '\(none\)'"):
        check_output_path(tmp_path / "out", overwrite=False)
    with pytest.raises(StylizeError, match=r"folder .*missing does not exist"):
        check_output_path(tmp_path / "missing" / "out.png", overwrite=False)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(StylizeError, match="it is a folder"):
        check_output_path(tmp_path / "dir.png", overwrite=True)
    (tmp_path / "old.jpg").write_bytes(b"x")
    with pytest.raises(StylizeError, match=r"old\.jpg already exists"):
        check_output_path(tmp_path / "old.jpg", overwrite=False)
    check_output_path(tmp_path / "old.jpg", overwrite=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_to_pixels_rounds_and_clamps_as_to_image(dtype):
    """The NumPy path (ONNX Runtime's results) and the tensor path give the same pixels,
    values outside [0, 1] included, and the caller's array is left as it was."""
    from stylize.engine.imageio import array_to_pixels, to_image

    rng = np.random.default_rng(0)
    array = rng.uniform(-0.2, 1.2, (1, 3, 7, 9)).astype(dtype)
    array[0, 0, 0, :4] = [0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0]  # halves round to even
    before = array.copy()
    pixels = array_to_pixels(array)
    expected = np.asarray(to_image(torch.from_numpy(array.astype(np.float32))))
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous and pixels.shape == (7, 9, 3)
    assert np.array_equal(pixels, expected)
    assert np.array_equal(array, before)
