"""What the machine offers, found without importing PyTorch: CPUs, and whether PyTorch could find
a GPU at all.

`stylize apply` on a machine without a GPU runs its networks on ONNX Runtime and never imports
PyTorch, which alone takes longer than stylizing a photo. Deciding that must not import it
either: `torch_may_find_accelerator` answers False only when PyTorch surely finds no device
(a CPU-only build, or no GPU driver), and True when only PyTorch can tell.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
from pathlib import Path

# Inside a container the cgroup namespace puts the container's own CPU limit here.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# The same under cgroup v1 (older Docker and Kubernetes hosts): a quota and its period, in µs.
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
# Files a GPU driver creates: NVIDIA's on Linux, under WSL 2, and AMD's ROCm kernel driver.
NVIDIA_DRIVER_FILES = (
    Path("/proc/driver/nvidia/version"),
    Path("/dev/nvidiactl"),
    Path("/dev/dxg"),
)
ROCM_DRIVER_FILE = Path("/dev/kfd")
_BUILD_LINE = re.compile(r"^(cuda|hip)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


def cgroup_cpu_quota() -> int | None:
    """Whole CPUs allowed by a cgroup quota, v2 or else v1 ("max", -1 or absent: no quota)."""
    try:
        limit, period = CGROUP_CPU_MAX.read_text().split()[:2]
        return max(1, -(-int(limit) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        limit, period = int(CGROUP_V1_QUOTA.read_text()), int(CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        return None
    return max(1, -(-limit // period)) if limit > 0 and period > 0 else None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a container's quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(count, quota) if quota is not None else count)


def torch_may_find_accelerator() -> bool:
    """False when PyTorch surely finds no CUDA, ROCm or MPS device here (see the module)."""
    if sys.platform == "darwin":
        return platform.machine() == "arm64"  # Apple silicon: MPS
    build = torch_build()
    if not build:
        return False
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if "hip" in build:
        return ROCM_DRIVER_FILE.exists()
    if sys.platform.startswith("linux"):
        return any(path.exists() for path in NVIDIA_DRIVER_FILES)
    if sys.platform == "win32":
        system = Path(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32")
        return (system / "nvcuda.dll").exists()
    return True  # an unknown system: let PyTorch decide


def torch_build() -> dict[str, str]:
    """The GPU toolkits the installed PyTorch was built for ({"cuda": "12.4"}, {"hip": ...},
    or {} for a CPU-only build), read from torch/version.py without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return {}
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        # Unreadable: treat as a GPU build, so that PyTorch itself decides.
        return {"cuda": "unknown"}
    found = {name: value.strip("'\"") for name, value in _BUILD_LINE.findall(text)}
    return {name: value for name, value in found.items() if value != "None"}


def usable_memory() -> int | None:
    """Memory a process may take, where the system tells without /proc (None elsewhere): the
    available physical memory on Windows, half of the physical memory elsewhere (some is in
    use). For when `engine.memory.available_memory`, which reads Linux's accounts, cannot."""
    if sys.platform == "win32":
        return _windows_available_memory()
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return None


def _windows_available_memory() -> int | None:
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [
            ("length", ctypes.c_ulong),
            ("memory_load", ctypes.c_ulong),
            ("total_physical", ctypes.c_ulonglong),
            ("available_physical", ctypes.c_ulonglong),
            ("total_page_file", ctypes.c_ulonglong),
            ("available_page_file", ctypes.c_ulonglong),
            ("total_virtual", ctypes.c_ulonglong),
            ("available_virtual", ctypes.c_ulonglong),
            ("available_extended_virtual", ctypes.c_ulonglong),
        ]

    status = MemoryStatus()
    status.length = ctypes.sizeof(MemoryStatus)
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    if not kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return None
    return int(status.available_physical)
