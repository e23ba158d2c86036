"""The native model file: a safetensors file whose metadata holds one JSON object, `stylize`.

Reading the metadata parses the safetensors header directly, so listing models never imports
torch.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize import __version__
from stylize.atomic import atomic_write, is_no_space, no_space_error, refuse_existing
from stylize.errors import StylizeError

if TYPE_CHECKING:
    from torch import Tensor

FORMAT_VERSION = 1
METADATA_KEY = "stylize"
KINDS = ("style", "loss-network")
# The safetensors library refuses larger headers too; this bounds what a hostile file can make
# us read into memory.
_MAX_HEADER_BYTES = 100_000_000


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file; StylizeError when `path` is not one."""
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            file_size = os.fstat(file.fileno()).st_size
            if len(prefix) < 8:
                raise StylizeError(f"{path} is not a safetensors file (too short)")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > min(_MAX_HEADER_BYTES, file_size - 8):
                raise StylizeError(f"{path} is not a safetensors file (bad header size)")
            header = json.loads(file.read(header_size).decode("utf-8"))
    except OSError as error:
        raise StylizeError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, ValueError):
        raise StylizeError(f"{path} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise StylizeError(f"{path} is not a safetensors file (unreadable header)")
    return header


def read_model_meta(path: Path) -> dict[str, Any]:
    """The `stylize` metadata of a native model file, read from its header alone."""
    metadata = read_header(path).get("__metadata__") or {}
    text = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if not isinstance(text, str):
        raise StylizeError(f"{path} is not a stylize model file (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise StylizeError(f"{path} has damaged stylize metadata (not a JSON object)")
    version = meta.get("format")
    if not isinstance(version, int) or version < 1:
        raise StylizeError(f"{path} has damaged stylize metadata (no format version)")
    if version > FORMAT_VERSION:
        raise StylizeError(
            f"{path} was written by a newer stylize (model format {version}); upgrade stylize"
        )
    if meta.get("kind") not in KINDS:
        raise StylizeError(f"{path} has an unknown model kind {meta.get('kind')!r}")
    return meta


def read_tensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file (native or not), on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_header(path)
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise StylizeError(f"{path} is a damaged safetensors file: {error}") from None


def read_model_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a native model file; StylizeError when it is malformed."""
    meta = read_model_meta(path)
    return read_tensors(path), meta


def write_model_file(
    path: Path,
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Writes a native model file atomically; `format` and `stylize_version` are added to `meta`.

    The file is serialized in memory and written through `stylize.atomic` (safetensors' own
    `save_file` writes through a temporary of its own, `.tmpXXXXXX`, which a killed process
    would leave behind). A full disk is a NoSpaceError naming the folder.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save

    path = Path(path)
    refuse_existing(path, overwrite=overwrite)
    if meta.get("kind") not in KINDS:
        raise StylizeError(f"cannot write {path}: unknown model kind {meta.get('kind')!r}")
    text = json.dumps({**meta, "format": FORMAT_VERSION, "stylize_version": __version__})
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    try:
        data = save(contiguous, metadata={METADATA_KEY: text})
        with atomic_write(path, overwrite=overwrite) as file:
            file.write(data)
    except (OSError, SafetensorError) as error:
        if is_no_space(error):
            raise no_space_error(error, path.parent, f"cannot write {path}") from None
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise StylizeError(f"cannot write {path}: {reason}") from None
    return path
