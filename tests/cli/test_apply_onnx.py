"""`stylize apply` on the CPU path: installed networks run on ONNX Runtime without PyTorch, give
what PyTorch gives, folders run one image per core in input order, and whatever ONNX Runtime
does not take (big images, style pictures, --tile-size) runs on PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from real_weights import WHEEL
from stylize.cli import _stylizers
from stylize.engine import hardware
from stylize.engine.onnx_run import OnnxStylizer
from stylize.store.registry import import_model
from stylize.store.styles import parse_style


class Engines:
    """Which engine stylized what: the sizes (H, W) of the images each one got, and the
    threads ONNX Runtime ran them on."""

    def __init__(self) -> None:
        self.onnx: list[tuple[int, int]] = []
        self.torch: list[tuple[int, int]] = []
        self.threads: set[str] = set()
        self.slow_edge: int | None = None


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> Engines:
    seen = Engines()
    onnx_call = OnnxStylizer.__call__
    torch_for_photo = _stylizers.TorchStylizers.for_photo

    def on_onnx(self, content, **options):
        seen.onnx.append(tuple(content.shape[-2:]))
        seen.threads.add(threading.current_thread().name)
        if seen.slow_edge is not None and content.shape[-1] >= seen.slow_edge:
            time.sleep(0.5)  # a large image: finished after the small ones that follow it
        return onnx_call(self, content, **options)

    def on_torch(self, content, strength):
        seen.torch.append(tuple(content.shape[-2:]))
        return torch_for_photo(self, content, strength)

    monkeypatch.setattr(OnnxStylizer, "__call__", on_onnx)
    monkeypatch.setattr(_stylizers.TorchStylizers, "for_photo", on_torch)
    monkeypatch.delenv("STYLIZE_ONNX", raising=False)
    return seen


@pytest.fixture
def cpus(monkeypatch: pytest.MonkeyPatch):
    def set_cpus(count: int) -> None:
        monkeypatch.setattr(hardware, "usable_cpus", lambda: count)

    set_cpus(1)
    return set_cpus


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_close_pixels(first: Path, second: Path) -> None:
    """8-bit results of the two engines: rounding apart."""
    difference = np.abs(pixels(first) - pixels(second))
    assert difference.mean() < 1.0 and difference.max() <= 2


def run_cli(code_args: list[str], home: Path, **environment: str) -> subprocess.CompletedProcess:
    """Runs the CLI in a process of its own; prints whether it imported torch."""
    code = (
        "import sys\n"
        "from stylize.cli import main\n"
        f"sys.argv = ['stylize', *{code_args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('torch' in sys.modules)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "STYLIZE_ONNX"}
    env.update(STYLIZE_HOME=str(home), **environment)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_cpu_path_never_imports_torch(tiny, make_image, stylize_home, tmp_path):
    photo = make_image("photo.png", size=(50, 38))
    onnx_out, torch_out = tmp_path / "onnx.png", tmp_path / "torch.png"
    args = ["apply", str(photo), "-s", tiny, "--device", "cpu", "-q"]
    completed = run_cli([*args, "-o", str(onnx_out)], stylize_home)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [str(onnx_out), "False"]
    # The same command on PyTorch does import it (so the check above can fail).
    torch_args = [*args, "--precision", "fp32", "-o", str(torch_out)]
    completed = run_cli(torch_args, stylize_home, STYLIZE_ONNX="0")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [str(torch_out), "True"]
    assert np.abs(pixels(onnx_out) - pixels(torch_out)).max() <= 1


def test_the_cpu_path_does_not_hash_a_model_it_has_seen(
    cli, tiny, make_image, tmp_path, monkeypatch
):
    """Hashing loads OpenSSL (4 MB, a few ms): the model file's digest is remembered."""
    from stylize.store import compiled

    args = ["apply", make_image("photo.png"), "-s", tiny, "-q", "--overwrite", "--device", "cpu"]
    args += ["-o", tmp_path / "out.png"]
    assert cli(*args).exit_code == 0

    def hashed(path: Path) -> str:
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(compiled, "file_sha256", hashed)
    result = cli(*args)
    assert result.exit_code == 0, result.stderr


def test_a_graph_missing_from_the_cache_is_exported_then_used(
    tiny, make_image, stylize_home, tmp_path, cli, engines
):
    from stylize.store.compiled import graphs_dir

    for graph in graphs_dir().iterdir():
        graph.unlink()
    photo = make_image("photo.png")
    result = cli("apply", photo, "-s", tiny, "--device", "cpu", "-o", tmp_path / "out.png")
    assert result.exit_code == 0, result.stderr
    assert len(list(graphs_dir().glob("tiny.*.onnx"))) == 1
    assert engines.onnx == [(32, 48)] and engines.torch == []


@pytest.mark.parametrize(
    "styles", [["starry"], ["starry", "great-wave"]], ids=["starry", "starry+great-wave"]
)
def test_onnx_runtime_gives_what_pytorch_gives_on_the_real_26_style_network(
    cli, real26, make_image, tmp_path, engines, monkeypatch, styles
):
    photo = make_image("photo.png", size=(71, 45), seed=3)
    style_options = [option for name in styles for option in ("-s", name)]
    onnx_out, torch_out = tmp_path / "onnx.png", tmp_path / "torch.png"
    result = cli("apply", photo, *style_options, "--device", "cpu", "-o", onnx_out)
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(45, 71)] and engines.torch == []

    monkeypatch.setenv("STYLIZE_ONNX", "0")
    result = cli(
        "apply", photo, *style_options, "--device", "cpu", "--precision", "fp32", "-o", torch_out
    )
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(45, 71)] and engines.torch == [(45, 71)]
    assert_close_pixels(onnx_out, torch_out)
    assert pixels(onnx_out).std() > 20


def folder_of_images(make_image) -> list[Path]:
    """A large image first, then small ones: in parallel the small ones finish first."""
    return [
        make_image("photos/a.png", size=(160, 120), seed=0),
        make_image("photos/b.png", size=(40, 32), seed=1),
        make_image("photos/c.jpg", size=(36, 36), seed=2),
        make_image("photos/d.png", size=(32, 44), seed=3),
        make_image("photos/e.png", size=(48, 40), seed=4),
    ]


def test_a_folder_on_several_cores_gives_the_same_files_in_input_order(
    cli, tiny, make_image, tmp_path, engines, cpus
):
    photos = folder_of_images(make_image)
    folder = photos[0].parent
    engines.slow_edge = 160
    cpus(1)
    serial = cli("apply", folder, "-s", tiny, "--device", "cpu", "-o", tmp_path / "one")
    assert serial.exit_code == 0, serial.stderr
    assert len(engines.threads) == 1
    engines.threads.clear()
    cpus(2)
    parallel = cli("apply", folder, "-s", tiny, "--device", "cpu", "-o", tmp_path / "two")
    assert parallel.exit_code == 0, parallel.stderr
    assert len(engines.threads) == 2 and threading.current_thread().name not in engines.threads

    names = [f"{photo.stem}.tiny{photo.suffix}" for photo in photos]
    assert serial.stdout.splitlines() == [str(tmp_path / "one" / name) for name in names]
    assert parallel.stdout.splitlines() == [str(tmp_path / "two" / name) for name in names]
    for name in names:
        one, two = tmp_path / "one" / name, tmp_path / "two" / name
        assert (one.suffix == ".jpg") or one.read_bytes() == two.read_bytes()
        assert np.array_equal(pixels(one), pixels(two))


def test_a_failing_image_in_a_parallel_run_is_reported_and_the_others_written(
    cli, tiny, make_image, tmp_path, engines, cpus
):
    photos = folder_of_images(make_image)
    broken = photos[0].parent / "c2.png"
    broken.write_bytes(b"not an image")
    engines.slow_edge = 160
    cpus(4)
    result = cli("apply", photos[0].parent, "-s", tiny, "--device", "cpu", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert len(engines.threads) >= 2
    good = [f"{photo.stem}.tiny{photo.suffix}" for photo in photos]
    assert result.stdout.splitlines() == [str(tmp_path / "out" / name) for name in good]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(good)
    assert "c2.png" in result.stderr
    assert "1 of 6 images failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_image_too_large_for_memory_runs_on_pytorch_and_still_matches(
    cli, real26, make_image, tmp_path, engines, monkeypatch
):
    small = make_image("photos/small.png", size=(40, 32), seed=1)
    large = make_image("photos/large.png", size=(96, 80), seed=2)
    reference = tmp_path / "reference"
    result = cli("apply", small.parent, "-s", "starry", "--device", "cpu", "-o", reference)
    assert result.exit_code == 0, result.stderr
    assert sorted(engines.onnx) == [(32, 40), (80, 96)] and engines.torch == []

    # 640 bytes a pixel for the 26-style network: the small image fits, the large does not.
    engines.onnx.clear()
    monkeypatch.setattr(_stylizers, "_memory_budget", lambda: 640 * 40 * 32 * 2 * 2)
    monkeypatch.setattr(_stylizers, "_ALWAYS_FITS", 0)
    out = tmp_path / "out"
    result = cli("apply", small.parent, "-s", "starry", "--device", "cpu", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(32, 40)] and engines.torch == [(80, 96)]
    for photo in (small, large):
        name = f"{photo.stem}.starry.png"
        assert_close_pixels(out / name, reference / name)


@pytest.mark.parametrize("strength", ["1", "0.4"])
def test_style_pictures_run_on_onnx_runtime_and_match_pytorch(
    cli, make_image, tmp_path, engines, stylize_home, monkeypatch, strength
):
    assert import_model(WHEEL) == "arbitrary"
    photo = make_image("photo.png", size=(48, 40))
    first = make_image("painting.png", size=(64, 80), seed=7)
    second = make_image("other.png", size=(72, 60), seed=8)
    styles = ["-s", first, "-s", second, "--style-blend", "0.7,0.3", "--strength", strength]
    result = cli("apply", photo, *styles, "--device", "cpu", "-o", tmp_path / "onnx.png")
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(40, 48)] and engines.torch == []
    assert pixels(tmp_path / "onnx.png").std() > 10

    monkeypatch.setenv("STYLIZE_ONNX", "0")
    result = cli("apply", photo, *styles, "--device", "cpu", "-o", tmp_path / "torch.png")
    assert result.exit_code == 0, result.stderr
    assert engines.torch == [(40, 48)]
    assert_close_pixels(tmp_path / "onnx.png", tmp_path / "torch.png")


def test_a_style_size_gets_its_own_predictor_graph(
    cli, make_image, tmp_path, engines, stylize_home
):
    assert import_model(WHEEL) == "arbitrary"
    photo = make_image("photo.png", size=(48, 40))
    painting = make_image("painting.png", size=(64, 80), seed=7)
    graphs = stylize_home / "cache" / "onnx"
    before = {path.name for path in graphs.glob("arbitrary.*.predictor*.onnx")}
    assert [name.split(".")[2] for name in before] == ["predictor256"]
    out = tmp_path / "out.png"
    result = cli("apply", photo, "-s", painting, "--style-size", "96", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    after = {path.name for path in graphs.glob("arbitrary.*.predictor*.onnx")}
    assert sorted(name.split(".")[2] for name in after) == ["predictor256", "predictor96"]
    assert engines.onnx == [(40, 48)]


def test_tile_size_runs_on_pytorch(cli, tiny, make_image, tmp_path, engines):
    photo = make_image("photo.png", size=(80, 72))
    result = cli(
        "apply",
        photo,
        "-s",
        tiny,
        "--device",
        "cpu",
        "--tile-size",
        "64",
        "--precision",
        "fp32",
        "-o",
        tmp_path / "t.png",
    )
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [] and engines.torch == [(72, 80)]
    result = cli("apply", photo, "-s", tiny, "--device", "cpu", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(72, 80)]
    assert np.abs(pixels(tmp_path / "t.png") - pixels(tmp_path / "o.png")).max() <= 1


def test_reduced_precision_and_stylize_onnx_0_run_on_pytorch(
    cli, tiny, make_image, tmp_path, engines, monkeypatch
):
    photo = make_image("photo.png")
    result = cli(
        "apply",
        photo,
        "-s",
        tiny,
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "-o",
        tmp_path / "a.png",
    )
    assert result.exit_code == 0, result.stderr
    monkeypatch.setenv("STYLIZE_ONNX", "0")
    result = cli("apply", photo, "-s", tiny, "--device", "cpu", "-o", tmp_path / "b.png")
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [] and engines.torch == [(32, 48), (32, 48)]


def test_auto_device_uses_onnx_runtime_only_without_a_gpu(
    cli, tiny, make_image, tmp_path, engines, monkeypatch
):
    from stylize.engine import onnx_run

    photo = make_image("photo.png")
    monkeypatch.setattr(onnx_run, "torch_may_find_accelerator", lambda: False)
    result = cli("apply", photo, "-s", tiny, "-o", tmp_path / "a.png")
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(32, 48)] and engines.torch == []
    # Said to have a GPU (which this machine may not): PyTorch decides.
    monkeypatch.setattr(onnx_run, "torch_may_find_accelerator", lambda: True)
    result = cli("apply", photo, "-s", tiny, "-o", tmp_path / "b.png")
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(32, 48)] and engines.torch == [(32, 48)]


def test_a_network_without_a_graph_runs_on_pytorch_with_a_warning(
    cli, tiny, make_image, tmp_path, engines, monkeypatch
):
    from stylize.engine.export import ExportError
    from stylize.store import compiled

    def refuse(name: str, path: Path) -> Path:
        raise ExportError("no ONNX form for a convolution of type Conv2d")

    monkeypatch.setattr(compiled, "compiled_graph", refuse)
    result = cli("apply", make_image(), "-s", tiny, "--device", "cpu", "-o", tmp_path / "a.png")
    assert result.exit_code == 0, result.stderr
    assert "tiny runs on PyTorch: no ONNX form" in result.stderr
    assert engines.onnx == [] and engines.torch == [(32, 48)]


def test_tile_size_does_not_change_the_result_at_the_default_precision(
    cli, tiny, make_image, tmp_path, engines
):
    """--tile-size promises the same result; on the CPU the untiled run is float32 (ONNX
    Runtime), so the tiled one must not switch to bfloat16 under --precision auto."""
    photo = make_image("photo.png", size=(80, 72))
    tiled, whole = tmp_path / "tiled.png", tmp_path / "whole.png"
    result = cli("apply", photo, "-s", tiny, "--device", "cpu", "--tile-size", "64", "-o", tiled)
    assert result.exit_code == 0, result.stderr
    result = cli("apply", photo, "-s", tiny, "--device", "cpu", "-o", whole)
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(72, 80)] and engines.torch == [(72, 80)]
    assert np.abs(pixels(tiled) - pixels(whole)).max() <= 1


def test_the_memory_an_image_needs_is_that_of_the_scaled_image(
    cli, real26, make_image, tmp_path, engines, monkeypatch
):
    photo = make_image("photo.png", size=(40, 32), seed=1)
    # 640 bytes a pixel: the photo fits, but not twice its sides (--scale 2).
    monkeypatch.setattr(_stylizers, "_memory_budget", lambda: 640 * 40 * 32 * 2)
    monkeypatch.setattr(_stylizers, "_ALWAYS_FITS", 0)
    result = cli("apply", photo, "-s", "starry", "--device", "cpu", "-o", tmp_path / "a.png")
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(32, 40)] and engines.torch == []
    out = tmp_path / "scaled.png"
    result = cli("apply", photo, "-s", "starry", "--scale", "2", "--device", "cpu", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert engines.torch == [(32, 40)]


def test_a_damaged_cached_graph_is_exported_again(cli, tiny, make_image, tmp_path, engines):
    from stylize.store.compiled import graphs_dir

    (graph,) = graphs_dir().glob("tiny.*.onnx")
    graph.write_bytes(graph.read_bytes()[:1000])
    photo = make_image("photo.png")
    result = cli("apply", photo, "-s", tiny, "--device", "cpu", "-o", tmp_path / "out.png")
    assert result.exit_code == 0, result.stderr
    assert engines.onnx == [(32, 48)] and engines.torch == []
    assert graph.stat().st_size > 1000
    assert result.stderr == ""


def test_a_cache_that_cannot_be_written_leaves_the_network_on_pytorch(
    cli, tiny, make_image, tmp_path, engines, stylize_home
):
    import shutil

    from stylize.store.compiled import graphs_dir

    shutil.rmtree(graphs_dir())
    graphs_dir().write_text("a file where the graphs folder should be")
    photo = make_image("photo.png")
    result = cli("apply", photo, "-s", tiny, "--device", "cpu", "-o", tmp_path / "out.png")
    assert result.exit_code == 0, result.stderr
    assert engines.torch == [(32, 48)]
    assert "tiny runs on PyTorch" in result.stderr
    assert "Traceback" not in result.stderr


def stylizers_of(style: str, *, device: str, jobs: int) -> _stylizers.Stylizers:
    """What apply would make for `style` with its other options at their defaults."""
    return _stylizers.make_stylizers(
        [parse_style(style)],
        None,
        device=device,
        precision="auto",
        tile_size=None,
        style_size=256,
        strength=1.0,
        batch_size=1,
        jobs=jobs,
        quiet=True,
    )


def test_auto_precision_stays_float32_when_pytorch_finds_no_gpu_after_all(tiny, monkeypatch):
    # hardware could not rule a GPU out, so PyTorch decides: it finds none.
    from stylize.engine import onnx_run

    monkeypatch.setattr(onnx_run, "torch_may_find_accelerator", lambda: True)
    monkeypatch.delenv("STYLIZE_ONNX", raising=False)
    stylizers = stylizers_of(tiny, device="auto", jobs=1)
    assert isinstance(stylizers, _stylizers.TorchStylizers)
    assert stylizers.runtime.device.type == "cpu" and stylizers.runtime.dtype is None


def test_ctrl_c_in_a_parallel_folder_reports_every_file_it_wrote(tiny, make_image, tmp_path, cpus):
    from stylize.cli._apply_run import Job, Runner, Settings
    from stylize.engine.imageio import load_image, save_image

    cpus(2)
    # The third photo is the only one 52 pixels wide: the stylizer knows it by its size.
    photos = [
        make_image(f"photos/p{index}.png", size=(52 if index == 2 else 48, 32), seed=index)
        for index in range(6)
    ]
    stylizers = stylizers_of(tiny, device="cpu", jobs=len(photos))
    assert stylizers.workers == 2
    inner = stylizers.for_photo

    def interrupted_at_the_third(content, strength):
        stylize, left = inner(content, strength)
        if content.shape[-1] == 52:
            time.sleep(0.2)  # the other worker finishes its image meanwhile
            raise KeyboardInterrupt
        return stylize, left

    stylizers.for_photo = interrupted_at_the_third
    out = tmp_path / "out"
    out.mkdir()
    jobs = [Job(photo, out / photo.name) for photo in photos]

    def write(job, image, alpha):
        save_image(image, job.target, alpha=alpha)

    settings = Settings(1.0, 1.0, False, None)
    runner = Runner(stylizers, settings, lambda job: load_image(job.source), write)
    with pytest.raises(KeyboardInterrupt):
        runner.run(jobs, lambda done: None)
    on_disk = sorted(path.name for path in out.iterdir())
    assert on_disk == sorted(path.name for path in runner.written)
    assert on_disk  # the images before the interrupted one were written
    message = runner.interrupted_message()
    assert all(name in message for name in on_disk[:2])
