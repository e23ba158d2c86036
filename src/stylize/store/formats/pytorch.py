"""PyTorch state dicts (`.pth`, `.model`), read with the restricted unpickler only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.errors import StylizeError, torch_load_refusal

if TYPE_CHECKING:
    from torch import Tensor

# Entries torch.load returns for instance norms of PyTorch <= 0.4.0, which tracked running
# statistics there; pytorch/examples deletes them before loading too.
_STALE_NORM_KEY = re.compile(r"(^|\.)in\d+\.(running_mean|running_var|num_batches_tracked)$")
_DATA_PARALLEL_PREFIX = "module."
PICKLE_PROTOCOL_2_TO_5 = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
ZIP_MAGIC = b"PK\x03\x04"


def try_read_state_dict(path: Path) -> Mapping[str, Any] | None:
    """The file's tensors by name if the restricted loader accepts it as a mapping, else None
    (it may be an ONNX or other model)."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return loaded if isinstance(loaded, Mapping) else None


def read_transformer_state_dict(path: Path) -> dict[str, Tensor]:
    """A pytorch/examples transform network's state dict, cleaned of DataParallel prefixes and
    the stale instance-norm statistics of old PyTorch versions."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise StylizeError(
            f"cannot load {path} as a PyTorch state dict: {torch_load_refusal(error)}"
        ) from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise StylizeError(
            f"{path} is not a supported style model: a PyTorch file, but not a state dict of "
            "tensors"
        )
    state: dict[str, Tensor] = dict(loaded)
    if state and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(_DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if not _STALE_NORM_KEY.search(key)}
