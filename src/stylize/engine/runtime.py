"""Where and how the numbers are computed: the one place that decides it.

A `Runtime` holds the device, the reduced-precision dtype (if any), the memory layout, the dtype
for statistics, the autocast and gradient-scaler policy and the cuDNN policy. The CLI builds one
from `--device` and `--precision` and hands it to optimize, train and apply; nothing else in
the engine chooses these.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from stylize.engine.device import pick_device, resolve_precision

# The devices whose kernels handle float64 (Apple's MPS has none).
_FLOAT64_DEVICES = frozenset({"cpu", "cuda"})


@dataclass(frozen=True)
class Runtime:
    """The device and numeric policy of a run.

    `dtype` is the reduced precision of the heavy layers (bfloat16 or float16), or None for
    float32 throughout. Optimize and train use it through `autocast()`; apply converts its
    network to it (`compute_dtype`). Losses, Gram matrices and normalization statistics never
    use it: they stay in float32 or `statistics_dtype`.
    """

    device: torch.device
    dtype: torch.dtype | None = None

    @classmethod
    def create(cls, device: str = "auto", precision: str = "auto") -> Runtime:
        """The runtime for `--device` and `--precision`, with the device's library policies set
        (cuDNN autotuning: runs repeat the same sizes, so it pays off)."""
        chosen = pick_device(device)
        if chosen.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return cls(chosen, resolve_precision(chosen, precision))

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype or torch.float32

    @property
    def memory_format(self) -> torch.memory_format:
        """oneDNN (CPU) and cuDNN run these convolutions fastest on channels-last tensors."""
        if self.device.type in ("cpu", "cuda"):
            return torch.channels_last
        return torch.contiguous_format

    @property
    def statistics_dtype(self) -> torch.dtype:
        """float64 where the device has it; elsewhere float32, with merges that stay exact
        enough (see `inference._Moments`)."""
        return torch.float64 if self.device.type in _FLOAT64_DEVICES else torch.float32

    @property
    def precision_name(self) -> str:
        return str(self.compute_dtype).removeprefix("torch.")

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Reduced precision for the layers autocast picks, when a reduced dtype is chosen."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, which float16 gradients need to stay above underflow (bfloat16 and
        float32 do not)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Autocast switched off for `device_type`, where this PyTorch has autocast for it at all
    (before 2.5 it has none for MPS, and asking raises)."""
    if _has_autocast(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


@functools.cache
def _has_autocast(device_type: str) -> bool:
    try:
        torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return False
    return True
