"""Device and precision choice, with the hardware queries monkeypatched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stylize.engine import device as device_module
from stylize.engine import hardware as hardware_module
from stylize.engine.device import pick_device, resolve_precision
from stylize.errors import StylizeError


@pytest.fixture
def hardware(monkeypatch: pytest.MonkeyPatch):
    """Pretends the machine has the given number of CUDA devices and MPS or not."""

    def set_hardware(cuda_devices: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_hardware


@pytest.mark.parametrize(
    ("cuda_devices", "mps", "expected"),
    [(2, True, "cuda"), (1, False, "cuda"), (0, True, "mps"), (0, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(hardware, cuda_devices, mps, expected) -> None:
    hardware(cuda_devices=cuda_devices, mps=mps)
    assert pick_device("auto").type == expected
    assert pick_device().type == expected


def test_forced_devices_when_available(hardware) -> None:
    hardware(cuda_devices=2, mps=True)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device(" CUDA:0 ") == torch.device("cuda", 0)
    assert pick_device("mps") == torch.device("mps")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cuda", "device 'cuda' is not available"),
        ("cuda:0", "device 'cuda:0' is not available"),
        ("mps", "device 'mps' is not available"),
        ("tpu", "unknown device 'tpu': choose one of auto, cpu, cuda, cuda:N, mps"),
        ("cuda:x", "unknown device 'cuda:x'"),
    ],
)
def test_unavailable_or_unknown_device_is_a_clear_error(hardware, spec, message) -> None:
    hardware(cuda_devices=0, mps=False)
    with pytest.raises(StylizeError, match=message):
        pick_device(spec)


def test_cuda_index_beyond_the_device_count(hardware) -> None:
    hardware(cuda_devices=2)
    with pytest.raises(StylizeError, match=r"has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        pick_device("cuda:2")


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Runs the thread setup afresh with torch reporting 8 threads; records set_num_threads."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware_module, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(hardware_module, "CGROUP_V1_QUOTA", tmp_path / "cpu.cfs_quota_us")
    monkeypatch.setattr(hardware_module, "CGROUP_V1_PERIOD", tmp_path / "cpu.cfs_period_us")
    device_module._limit_cpu_threads.cache_clear()
    yield calls
    device_module._limit_cpu_threads.cache_clear()


@pytest.mark.parametrize(
    ("cpu_max", "expected_calls"),
    [("150000 100000\n", [2]), ("50000 100000\n", [1]), ("max 100000\n", []), (None, [])],
)
def test_threads_capped_at_container_cpu_quota(
    thread_calls: list[int], cpu_max: str | None, expected_calls: list[int]
) -> None:
    if cpu_max is not None:
        hardware_module.CGROUP_CPU_MAX.write_text(cpu_max)
    pick_device("cpu")
    pick_device("cpu")
    assert thread_calls == expected_calls


def test_threads_left_alone_when_user_set_omp_num_threads(
    thread_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    hardware_module.CGROUP_CPU_MAX.write_text("100000 100000\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    pick_device("cpu")
    assert thread_calls == []


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Replaces /proc/cpuinfo by a file whose cores list the given flags."""

    def set_flags(key: str, flags: str) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        core = f"processor\t: 0\nmodel name\t: test\n{key}\t\t: {flags}\n\n"
        cpuinfo.write_text(core + core.replace(": 0", ": 1", 1))
        monkeypatch.setattr(device_module, "CPUINFO", cpuinfo)

    return set_flags


@pytest.mark.parametrize(
    ("key", "flags", "expected"),
    [
        ("flags", "fpu sse2 avx2 avx512f avx512_bf16", torch.bfloat16),
        ("flags", "fpu sse2 avx2 avx512f amx_bf16 amx_tile", torch.bfloat16),
        ("flags", "fpu sse2 avx2 avx512f avx512_vnni", None),
        ("Features", "fp asimd sve bf16 i8mm", torch.bfloat16),
        ("Features", "fp asimd", None),
    ],
)
def test_auto_precision_on_cpu_needs_native_bf16(cpu_flags, key, flags, expected) -> None:
    cpu_flags(key, flags)
    assert resolve_precision(torch.device("cpu"), "auto") == expected


def test_auto_precision_on_cpu_without_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(device_module, "CPUINFO", tmp_path / "missing")
    assert resolve_precision(torch.device("cpu"), "auto") is None


def test_explicit_precisions_on_cpu(cpu_flags, monkeypatch) -> None:
    cpu_flags("flags", "fpu sse2")
    monkeypatch.setattr(device_module, "_cpu_runs_float16", lambda: True)
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") is None
    assert resolve_precision(cpu, "bf16") == torch.bfloat16
    assert resolve_precision(cpu, "FP16") == torch.float16


@pytest.mark.parametrize(("major", "expected"), [(9, torch.bfloat16), (7, torch.float16)])
def test_auto_precision_on_cuda_prefers_bf16(monkeypatch, major, expected) -> None:
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert resolve_precision(torch.device("cuda", 0), "auto") == expected
    assert resolve_precision(torch.device("cuda", 0), "fp16") == torch.float16


def test_bf16_on_a_cuda_device_without_it_is_an_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(StylizeError, match="cuda:0 does not support bf16"):
        resolve_precision(torch.device("cuda", 0), "bf16")


def test_precision_on_mps(monkeypatch) -> None:
    mps = torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: False)
    assert resolve_precision(mps, "auto") is None
    assert resolve_precision(mps, "fp16") == torch.float16
    with pytest.raises(StylizeError, match="mps does not support bf16"):
        resolve_precision(mps, "bf16")
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True)
    assert resolve_precision(mps, "bf16") == torch.bfloat16


def test_unknown_precision_is_a_clear_error() -> None:
    with pytest.raises(StylizeError, match="unknown precision 'int8': choose one of auto, fp32"):
        resolve_precision(torch.device("cpu"), "int8")


def test_fp16_on_a_cpu_without_its_kernels_is_refused(monkeypatch):
    from stylize.engine import device

    monkeypatch.setattr(device, "_cpu_runs_float16", lambda: False)
    with pytest.raises(StylizeError, match="cannot compute in fp16 on the CPU"):
        resolve_precision(torch.device("cpu"), "fp16")
