"""Choosing the compute device, the CPU thread count and the numeric precision."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch

from stylize.engine.hardware import cgroup_cpu_quota
from stylize.errors import StylizeError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")

CPUINFO = Path("/proc/cpuinfo")

# x86 (AVX512-BF16, AMX) and Arm (FEAT_BF16) flags for bfloat16 arithmetic in hardware.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
_REDUCED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(spec: str = "auto") -> torch.device:
    """The device for `--device`: auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N, mps."""
    _limit_cpu_threads()
    choice = spec.strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "mps":
        if not torch.backends.mps.is_available():
            raise StylizeError(
                "device 'mps' is not available: it needs Apple silicon, macOS 12.3 or later and a "
                "PyTorch build with MPS; use --device cpu"
            )
        return torch.device("mps")
    cuda = re.fullmatch(r"cuda(?::(\d+))?", choice)
    if cuda is None:
        raise StylizeError(f"unknown device '{spec}': choose one of {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise StylizeError(
            f"device '{choice}' is not available: no CUDA GPU was found or this PyTorch build has "
            "no CUDA support; use --device cpu"
        )
    if cuda.group(1) is None:
        return torch.device("cuda")
    index, count = int(cuda.group(1)), torch.cuda.device_count()
    if index >= count:
        raise StylizeError(
            f"device '{choice}' is not available: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", index)


@functools.cache
def _limit_cpu_threads() -> None:
    # torch already runs one intra-op thread per physical core it may use (it honours the CPU
    # affinity mask), which is the right default. A container's CPU quota is invisible to it:
    # 32 threads on a 2-CPU quota get throttled and run slower than 2, so cap at the quota.
    # A thread count the user set through OMP_NUM_THREADS is left alone.
    if "OMP_NUM_THREADS" in os.environ:
        return
    quota = cgroup_cpu_quota()
    if quota is not None and torch.get_num_threads() > quota:
        torch.set_num_threads(quota)


def resolve_precision(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `--precision` on `device`, or None to compute in float32."""
    choice = precision.strip().lower()
    if choice == "fp32":
        return None
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if _cuda_has_bf16(device) else torch.float16
        if device.type == "cpu" and _cpu_has_native_bf16():
            return torch.bfloat16
        # Without bf16 hardware a CPU emulates it, slower than float32. MPS autocast is recent and
        # reduced precision there is less proven, so it stays opt-in.
        return None
    dtype = _REDUCED_DTYPES.get(choice)
    if dtype is None:
        raise StylizeError(
            f"unknown precision '{precision}': choose one of {', '.join(PRECISION_CHOICES)}"
        )
    if dtype == torch.float16 and device.type == "cpu" and not _cpu_runs_float16():
        raise StylizeError(
            "this PyTorch cannot compute in fp16 on the CPU (it lacks some fp16 CPU kernels); "
            "use --precision bf16 or fp32, or a newer PyTorch"
        )
    if dtype == torch.bfloat16 and (
        (device.type == "cuda" and not _cuda_has_bf16(device))
        or (device.type == "mps" and not torch.backends.mps.is_macos_or_newer(14, 0))
    ):
        raise StylizeError(f"{device} does not support bf16; use --precision fp16 or fp32")
    return dtype


def _cuda_has_bf16(device: torch.device) -> bool:
    if torch.version.hip:
        return True
    # bf16 tensor cores arrived with Ampere (compute capability 8.0).
    return torch.cuda.get_device_capability(device)[0] >= 8


def _cpu_has_native_bf16() -> bool:
    try:
        with CPUINFO.open() as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                # x86 lists "flags", Arm "Features"; every core repeats the same list.
                if key.strip() in ("flags", "Features"):
                    return not _NATIVE_BF16_FLAGS.isdisjoint(value.split())
    except OSError:
        pass
    return False


@functools.cache
def _cpu_runs_float16() -> bool:
    """Whether this PyTorch has the float16 CPU kernels the networks use (reflection padding
    of channels-last tensors came late)."""
    probe = torch.zeros(1, 2, 4, 4, dtype=torch.float16).contiguous(
        memory_format=torch.channels_last
    )
    try:
        torch.nn.functional.pad(probe, (1, 1, 1, 1), mode="reflect")
    except RuntimeError:
        return False
    return True
