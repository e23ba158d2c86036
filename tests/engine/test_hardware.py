"""What the machine offers, found without PyTorch: its build, GPU drivers, usable CPUs."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

from stylize.engine import hardware
from stylize.engine.hardware import torch_build, torch_may_find_accelerator, usable_cpus

CPU_BUILD = (
    "from typing import Optional\n"
    "__version__ = '2.5.1+cpu'\n"
    "debug = False\n"
    "cuda: Optional[str] = None\n"
    "git_version = 'a8d6afb511a69687bbb2b7e88a3cf67917e1697e'\n"
    "hip: Optional[str] = None\n"
)
CUDA_BUILD = (
    "from typing import Optional\n"
    "__version__ = '2.5.1+cu124'\n"
    "cuda: Optional[str] = '12.4'\n"
    "hip: Optional[str] = None\n"
)
# torch 2.3 wrote the version file without annotations.
OLD_CUDA_BUILD = "__version__ = '2.3.0+cu121'\ndebug = False\ncuda = '12.1'\nhip = None\n"
ROCM_BUILD = (
    "__version__ = '2.5.1+rocm6.2'\n"
    "cuda: Optional[str] = None\n"
    "hip: Optional[str] = '6.2.41133-dd7f95766'\n"
)


@pytest.fixture
def fake_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`install(text)` makes torch/version.py read `text` (None: no version.py at all)."""
    package = tmp_path / "site-packages" / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    original = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object):
        if name == "torch":
            return importlib.machinery.ModuleSpec(
                "torch", None, origin=str(package / "__init__.py")
            )
        return original(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    def install(text: str | None) -> None:
        version = package / "version.py"
        version.unlink(missing_ok=True)
        if text is not None:
            version.write_text(text, encoding="utf-8")

    return install


@pytest.fixture
def drivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The driver files, moved to a test folder; none exists until the test creates it. Linux,
    x86_64, no CUDA_VISIBLE_DEVICES."""
    folder = tmp_path / "drivers"
    folder.mkdir()
    nvidia = tuple(folder / name for name in ("nvidia-version", "nvidiactl", "dxg"))
    monkeypatch.setattr(hardware, "NVIDIA_DRIVER_FILES", nvidia)
    monkeypatch.setattr(hardware, "ROCM_DRIVER_FILE", folder / "kfd")
    monkeypatch.setattr(hardware.sys, "platform", "linux")
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return folder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CPU_BUILD, {}),
        (CUDA_BUILD, {"cuda": "12.4"}),
        (OLD_CUDA_BUILD, {"cuda": "12.1"}),
        (ROCM_BUILD, {"hip": "6.2.41133-dd7f95766"}),
    ],
    ids=["cpu", "cuda", "cuda-torch-2.3", "rocm"],
)
def test_torch_build_read_from_its_version_file(fake_torch, text, expected):
    fake_torch(text)
    assert torch_build() == expected


def test_an_unreadable_version_file_counts_as_a_gpu_build(fake_torch):
    fake_torch(None)
    assert torch_build() == {"cuda": "unknown"}


def test_no_torch_installed_is_no_build(monkeypatch):
    original = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torch" else original(name, *args),
    )
    assert torch_build() == {}
    assert torch_may_find_accelerator() is False


def test_the_installed_torch_is_read_without_importing_it():
    import torch

    build = torch_build()
    assert build.get("cuda") == torch.version.cuda or (not build and torch.version.cuda is None)
    assert build.get("hip") == torch.version.hip


def test_a_cpu_build_finds_nothing_even_with_a_driver(fake_torch, drivers):
    fake_torch(CPU_BUILD)
    (drivers / "nvidiactl").touch()
    (drivers / "kfd").touch()
    assert torch_may_find_accelerator() is False


@pytest.mark.parametrize("driver", ["nvidia-version", "nvidiactl", "dxg"])
def test_a_cuda_build_finds_a_gpu_when_a_driver_is_there(fake_torch, drivers, driver):
    fake_torch(CUDA_BUILD)
    assert torch_may_find_accelerator() is False
    (drivers / driver).touch()
    assert torch_may_find_accelerator() is True


def test_a_rocm_build_looks_for_the_rocm_driver(fake_torch, drivers):
    fake_torch(ROCM_BUILD)
    (drivers / "nvidiactl").touch()
    assert torch_may_find_accelerator() is False
    (drivers / "kfd").touch()
    assert torch_may_find_accelerator() is True


@pytest.mark.parametrize("visible", ["", "-1", " -1 "])
@pytest.mark.parametrize("build", [CUDA_BUILD, ROCM_BUILD], ids=["cuda", "rocm"])
def test_hidden_gpus_are_not_found(fake_torch, drivers, monkeypatch, visible, build):
    fake_torch(build)
    for name in ("nvidiactl", "kfd"):
        (drivers / name).touch()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert torch_may_find_accelerator() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert torch_may_find_accelerator() is True


def test_an_unreadable_build_with_a_driver_lets_torch_decide(fake_torch, drivers):
    fake_torch(None)
    assert torch_may_find_accelerator() is False  # no driver: no GPU whatever the build
    (drivers / "nvidia-version").touch()
    assert torch_may_find_accelerator() is True


@pytest.mark.parametrize(("machine", "expected"), [("arm64", True), ("x86_64", False)])
@pytest.mark.parametrize("build", [CPU_BUILD, CUDA_BUILD], ids=["cpu-build", "cuda-build"])
def test_macs_have_mps_on_apple_silicon_only(
    fake_torch, drivers, monkeypatch, machine, expected, build
):
    fake_torch(build)
    monkeypatch.setattr(hardware.sys, "platform", "darwin")
    monkeypatch.setattr(hardware.platform, "machine", lambda: machine)
    assert torch_may_find_accelerator() is expected


def test_windows_looks_for_the_cuda_driver_dll(fake_torch, drivers, monkeypatch, tmp_path):
    fake_torch(CUDA_BUILD)
    monkeypatch.setattr(hardware.sys, "platform", "win32")
    windows = tmp_path / "Windows"
    (windows / "System32").mkdir(parents=True)
    monkeypatch.setenv("SYSTEMROOT", str(windows))
    (drivers / "nvidiactl").touch()  # Linux driver files mean nothing on Windows
    assert torch_may_find_accelerator() is False
    (windows / "System32" / "nvcuda.dll").touch()
    assert torch_may_find_accelerator() is True
    fake_torch(CPU_BUILD)
    assert torch_may_find_accelerator() is False


def test_an_unknown_system_with_a_gpu_build_lets_torch_decide(fake_torch, drivers, monkeypatch):
    fake_torch(CUDA_BUILD)
    monkeypatch.setattr(hardware.sys, "platform", "freebsd14")
    assert torch_may_find_accelerator() is True


@pytest.fixture
def cpu_max(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cpu.max"
    monkeypatch.setattr(hardware, "CGROUP_CPU_MAX", path)
    monkeypatch.setattr(hardware, "CGROUP_V1_QUOTA", tmp_path / "cpu.cfs_quota_us")
    monkeypatch.setattr(hardware, "CGROUP_V1_PERIOD", tmp_path / "cpu.cfs_period_us")
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, 8),
        ("max 100000\n", 8),
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # a part of a CPU counts as a whole one
        ("50000 100000\n", 1),
        ("1600000 100000\n", 8),  # the affinity mask is smaller than the quota
        ("garbage\n", 8),
    ],
)
def test_usable_cpus_are_the_affinity_capped_by_the_cgroup_quota(cpu_max, content, expected):
    if content is not None:
        cpu_max.write_text(content)
    assert usable_cpus() == expected


def test_usable_cpus_without_affinity_fall_back_to_the_cpu_count(cpu_max, monkeypatch):
    monkeypatch.delattr(hardware.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 6)
    cpu_max.write_text("300000 100000\n")
    assert usable_cpus() == 3
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: None)
    assert usable_cpus() == 1


def test_usable_memory_is_half_the_physical_memory_on_posix(monkeypatch):
    from stylize.engine import hardware

    monkeypatch.setattr(hardware.sys, "platform", "darwin")
    values = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1000}
    monkeypatch.setattr(hardware.os, "sysconf", lambda name: values[name])
    assert hardware.usable_memory() == 4096 * 1000 // 2

    def unknown(name):
        raise ValueError(name)

    monkeypatch.setattr(hardware.os, "sysconf", unknown)
    assert hardware.usable_memory() is None


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("-1", "100000", 8), ("200000", "100000", 2), ("250000", "100000", 3), ("x", "1", 8)],
)
def test_usable_cpus_read_a_cgroup_v1_quota(cpu_max, quota, period, expected):
    # No cgroup v2 file (cpu_max is not written): the v1 quota decides.
    (cpu_max.parent / "cpu.cfs_quota_us").write_text(quota + "\n")
    (cpu_max.parent / "cpu.cfs_period_us").write_text(period + "\n")
    assert usable_cpus() == expected
