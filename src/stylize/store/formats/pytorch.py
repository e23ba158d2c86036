"""PyTorch state dicts (`.pth`, `.model`), read with the restricted unpickler only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.errors import StylizeError

if TYPE_CHECKING:
    from torch import Tensor

# Entries torch.load returns for instance norms of PyTorch <= 0.4.0, which tracked running
# statistics there; pytorch/examples deletes them before loading too.
_STALE_NORM_KEY = re.compile(r"(^|\.)in\d+\.(running_mean|running_var|num_batches_tracked)$")
_DATA_PARALLEL_PREFIX = "module."
PICKLE_PROTOCOL_2_TO_5 = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
ZIP_MAGIC = b"PK\x03\x04"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# Lines of PyTorch's refusal that say how to load the file anyway (unpickling it), or where to
# read more, and the allow-list advice after its reason.
_ADVICE = re.compile(
    r"weights_only|Weights only load failed|^\(\d\)|Check the documentation|trusted source"
)
_UNPICKLER_PREFIX = "WeightsUnpickler error:"
_ALLOWLIST_ADVICE = re.compile(r"\.?\s*(?:Please use|Please file an issue)")


def try_read_state_dict(path: Path) -> Mapping[str, Any] | None:
    """The file's tensors by name if the restricted loader accepts it as a mapping, else None
    (it may be an ONNX or other model)."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return loaded if isinstance(loaded, Mapping) else None


def refusal_reason(error: BaseException) -> str:
    """Why `torch.load(weights_only=True)` refused a file, in one line and without PyTorch's
    advice to load it with `weights_only=False` or to allow-list its classes: that would run
    code from the file, which stylize never does."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not any(_ADVICE.search(line) for line in lines):
        return lines[0] if lines else type(error).__name__
    # PyTorch's reason sits among paragraphs on how to load the file anyway: keep the reason.
    # (PyTorch before 2.4 puts it all on one line, the reason after "WeightsUnpickler error:".)
    reasons = [
        line if not _ADVICE.search(line) else line.partition(_UNPICKLER_PREFIX)[2] for line in lines
    ]
    details = [
        _ALLOWLIST_ADVICE.split(reason.removeprefix(_UNPICKLER_PREFIX), maxsplit=1)[0].strip(" .")
        for reason in reasons
    ]
    detail = next((line for line in details if line), "")
    return (
        "it holds Python objects other than tensors and plain containers"
        + (f" ({detail})" if detail else "")
        + "; stylize reads only plain state dicts"
    )


def read_transformer_state_dict(path: Path) -> dict[str, Tensor]:
    """A pytorch/examples transform network's state dict, cleaned of DataParallel prefixes and
    the stale instance-norm statistics of old PyTorch versions."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise StylizeError(
            f"cannot load {path} as a PyTorch state dict: {refusal_reason(error)}"
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
