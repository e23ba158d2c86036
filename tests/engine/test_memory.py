"""The memory estimate, what the device has, and recognizing allocation failures."""

import resource
from pathlib import Path

import pytest
import torch

from stylize.engine import memory
from stylize.engine.memory import Available
from stylize.engine.settings import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from stylize.errors import StylizeError

DEFAULT_TAPS = DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS


def test_the_graph_counts_every_layer_up_to_the_deepest_tap():
    # 9 image values; conv outputs 64+64, 128+128 at 1/4, 4x256 at 1/16, 4x512 at 1/64,
    # 512 at 1/256; pooling outputs with int64 indices, 3 x (16 + 8 + 4 + 2).
    assert memory.graph_elements(DEFAULT_TAPS) == 9 + 290 + 90
    assert memory.graph_elements(["relu1_1"]) == 9 + 64
    assert memory.graph_elements(["relu1_2", "relu1_1"]) == 9 + 128
    assert memory.graph_elements(["relu2_1"]) == 9 + 128 + 3 * 16 + 32
    assert memory.style_pass_elements(["relu1_1"]) < memory.style_pass_elements(DEFAULT_TAPS)


# Measured by benchmarks/memory_optimize.py (CPU, one scale): peak resident memory of the run
# above what the process held before it, in MiB.
@pytest.mark.parametrize(
    ("size", "style", "optimizer", "reduced", "measured_mib"),
    [
        ((1024, 683), 256, "adam", False, 1766),
        ((1536, 1024), 384, "adam", False, 3704),
        ((1536, 1024), 1536, "adam", True, 2790),
        ((2048, 1365), 512, "adam", False, 6436),
        ((2048, 1365), 512, "adam", True, 4873),
        ((512, 341), 256, "lbfgs", False, 827),  # after 60 iterations: a full history
        ((256, 171), 1024, "adam", False, 857),  # the style images weigh most
        ((256, 171), 1536, "adam", False, 1786),
        ((256, 171), 1536, "adam", True, 1321),
    ],
)
def test_the_estimate_covers_the_measured_peak_without_much_to_spare(
    size, style, optimizer, reduced, measured_mib
):
    estimate = memory.optimize_estimate(
        size, [(style, style)], taps=DEFAULT_TAPS, optimizer=optimizer, reduced_precision=reduced
    )
    assert measured_mib * 2**20 < estimate.total < 1.3 * measured_mib * 2**20


def test_the_estimate_grows_with_the_image_and_lbfgs_keeps_its_history():
    def total(size, **options):
        options = {"taps": DEFAULT_TAPS, "optimizer": "lbfgs", **options}
        return memory.optimize_estimate(size, [(512, 512)], **options).total

    assert total((1000, 1000)) < total((2000, 1000)) < total((2000, 2000))
    # 50 pairs of image-sized float32 vectors (plus a few) against Adam's 4.
    history = total((1000, 1000)) - total((1000, 1000), optimizer="adam")
    assert history == (2 * 50 + 10 - 4) * 3 * 4 * 1000 * 1000
    assert total((1000, 1000), reduced_precision=True) < total((1000, 1000))
    assert total((1000, 1000), taps=["relu1_1"]) < total((1000, 1000)) / 2


def test_huge_style_images_dominate_the_estimate():
    small = memory.optimize_estimate((256, 171), [(256, 256)], taps=DEFAULT_TAPS, optimizer="adam")
    huge = memory.optimize_estimate((256, 171), [(8000, 8000)], taps=DEFAULT_TAPS, optimizer="adam")
    assert huge.style_pass > huge.image_pass + huge.optimizer_state
    assert huge.total > 20 * small.total


def test_largest_fitting_and_rounding():
    assert memory.largest_fitting(lambda value: value <= 2937, 16, 4000) == 2937
    assert memory.largest_fitting(lambda value: value <= 9999, 16, 4000) == 4000
    assert memory.largest_fitting(lambda value: False, 16, 4000) is None
    assert [memory.round_down(value) for value in (2937, 187, 42, 1000)] == [2900, 180, 42, 1000]
    assert memory.format_bytes(14.23e9) == "14.2 GB"
    assert memory.format_bytes(512e6) == "512 MB"


def test_check_fits_says_what_is_needed_and_what_there_is():
    memory.check_fits(10**9, None, "x", "y")  # unknown: nothing refused
    memory.check_fits(10**9, Available(2 * 10**9, "available on this machine"), "x", "y")
    with pytest.raises(
        StylizeError,
        match=r"^optimize at 4000x2667 needs about 14.2 GB of memory, but 9.1 GB is available "
        r"on this machine: use --size 2900 or smaller$",
    ):
        memory.check_fits(
            int(14.2e9),
            Available(int(9.1e9), "available on this machine"),
            "optimize at 4000x2667",
            "use --size 2900 or smaller",
        )


def test_cpu_memory_is_the_tightest_of_meminfo_cgroup_and_ulimit(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    assert memory._meminfo_available(meminfo) == Available(
        20000000 * 1024, "available on this machine"
    )
    assert memory._meminfo_available(tmp_path / "missing") is None

    group = tmp_path / "group"
    group.mkdir()
    (group / "memory.max").write_text("10000000000\n")
    (group / "memory.current").write_text("4000000000\n")
    (group / "memory.stat").write_text("anon 1\ninactive_file 500000000\nactive_file 9\n")
    # The page cache the kernel can drop counts as free.
    assert memory._cgroup_left(
        group / "memory.max", group / "memory.current", group / "memory.stat"
    ) == (10_000_000_000 - 4_000_000_000 + 500_000_000)
    (group / "memory.max").write_text("max\n")
    assert memory._cgroup_left(
        group / "memory.max", group / "memory.current", group / "memory.stat"
    ) is None  # fmt: skip

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (6 * 2**30, resource.RLIM_INFINITY))
    left = memory._address_space_available()
    assert left is not None and 0 < left.bytes < 6 * 2**30
    assert "ulimit -v" in left.limit
    monkeypatch.setattr(
        resource, "getrlimit", lambda kind: (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    )
    assert memory._address_space_available() is None

    limits = {
        "_meminfo_available": Available(20 * 10**9, "available on this machine"),
        "_cgroup_available": Available(9 * 10**9, "left under the memory limit"),
        "_address_space_available": None,
    }
    for name, value in limits.items():
        monkeypatch.setattr(memory, name, lambda value=value: value)
    assert memory.available_memory(torch.device("cpu")) == limits["_cgroup_available"]


def test_this_machine_reports_some_memory():
    available = memory.available_memory(torch.device("cpu"))
    if Path("/proc/meminfo").exists():
        assert available is not None and available.bytes > 0


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (MemoryError(), "an allocation failed"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 14231732224 bytes. Error code 12 (Cannot "
                "allocate memory)"
            ),
            "an allocation of 14.2 GB failed",
        ),
        (
            torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity"
            ),
            "an allocation of 2.00 GiB failed",
        ),
        (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), "an allocation failed"),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED"), "an allocation failed"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),
        (ValueError("out of memory"), None),
        (StylizeError("out of memory"), None),
    ],
)
def test_allocation_failures_are_recognized(error, detail):
    assert memory.out_of_memory_detail(error) == detail
