"""`OnnxStylizer` computes what the PyTorch `Stylizer` computes, without PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from real_weights import TF_GRAPHDEF
from style_nets import TINY, random_style_net, smooth_image
from stylize.engine import onnx_run
from stylize.engine.export import export_network
from stylize.engine.inference import Stylizer
from stylize.engine.multistyle import load_multistyle
from stylize.engine.onnx_run import OnnxStylizer, resize, runs_on_onnx, scaled_size
from stylize.engine.runtime import Runtime
from stylize.errors import StylizeError
from stylize.store.formats.tf_graphdef import read_multistyle_graphdef

# Both engines compute in float32; a pixel step is 1/255.
WELL_UNDER_A_STEP = 0.1 / 255
STARRY = 19


@pytest.fixture(scope="module")
def johnson(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("johnson") / "tiny.onnx"
    export_network(random_style_net(seed=1, config=TINY), path)
    return path, lambda: random_style_net(seed=1, config=TINY)


@pytest.fixture(scope="module")
def multistyle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tensors = read_multistyle_graphdef(TF_GRAPHDEF)
    path = tmp_path_factory.mktemp("multistyle") / "multistyle26.onnx"
    export_network(load_multistyle(tensors), path)
    return path, lambda: load_multistyle(tensors)


def starry_blend() -> list[float]:
    weights = [0.0] * 26
    weights[STARRY], weights[3] = 0.6, 0.4
    return weights


def images(height: int, width: int, count: int = 1) -> np.ndarray:
    batch = torch.cat([smooth_image(height, width, seed=seed) for seed in range(count)])
    return batch.numpy()


CASES = {
    "plain": dict(size=(48, 64)),
    "not multiples of 4": dict(size=(37, 50)),
    "scale 0.5": dict(size=(64, 80), scale=0.5),
    "scale 0.73, odd size": dict(size=(59, 45), scale=0.73),
    "scale 1.6": dict(size=(30, 34), scale=1.6),
    "strength 0.4": dict(size=(40, 44), strength=0.4),
    "preserve color": dict(size=(40, 44), preserve_color=True),
    "everything": dict(size=(41, 47), scale=1.3, strength=0.7, preserve_color=True),
    "batch of 2": dict(size=(33, 42), count=2),
    "batch of 2, scaled": dict(size=(33, 42), count=2, scale=0.8, preserve_color=True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("network", ["johnson", "multistyle"])
def test_matches_the_torch_stylizer(request, network, case):
    graph, make_net = request.getfixturevalue(network)
    style = starry_blend() if network == "multistyle" else None
    options = {key: case[key] for key in ("scale", "strength", "preserve_color") if key in case}
    content = images(*case["size"], count=case.get("count", 1))

    result = OnnxStylizer(graph, style, threads=1)(content, **options)

    net = make_net()
    if style is not None:
        net = net.bind(torch.tensor(style))
    stylizer = Stylizer(net, Runtime(torch.device("cpu")))
    expected = stylizer(torch.from_numpy(content.copy()), **options).numpy()
    assert result.shape == content.shape and result.dtype == np.float32
    assert result.min() >= 0.0 and result.max() <= 1.0
    assert np.abs(result - expected).max() < WELL_UNDER_A_STEP
    assert np.abs(result - content).mean() > 0.02  # stylized, not given back


def test_strength_zero_gives_the_content_back(multistyle):
    content = images(32, 36)
    result = OnnxStylizer(multistyle[0], starry_blend(), threads=1)(content, strength=0.0)
    np.testing.assert_array_equal(result, content)


def test_the_style_input_selects_the_style(multistyle):
    content = images(32, 36)
    starry = [0.0] * 26
    starry[STARRY] = 1.0
    first = OnnxStylizer(multistyle[0], starry, threads=1)(content)
    blend = OnnxStylizer(multistyle[0], starry_blend(), threads=1)(content)
    assert np.abs(first - blend).max() > 0.05


def test_memory_per_pixel_follows_the_widest_full_resolution_tensor(johnson, multistyle):
    small = OnnxStylizer(multistyle[0], starry_blend(), threads=1).bytes_per_pixel
    tiny = OnnxStylizer(johnson[0], None, threads=1).bytes_per_pixel
    assert small == 32 * onnx_run._BYTES_PER_PIXEL_PER_CHANNEL
    assert tiny == TINY.channels[1] * onnx_run._BYTES_PER_PIXEL_PER_CHANNEL


def test_bad_values_are_stylize_errors(johnson, tmp_path):
    stylizer = OnnxStylizer(johnson[0], None, threads=1)
    with pytest.raises(StylizeError, match="strength"):
        stylizer(images(32, 32), strength=1.5)
    with pytest.raises(StylizeError, match="scale must be positive"):
        stylizer(images(32, 32), scale=0)
    with pytest.raises(StylizeError, match="too small"):
        stylizer(images(32, 32), scale=0.4)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    with pytest.raises(StylizeError, match="cannot load the network"):
        OnnxStylizer(broken, None, threads=1)


def test_scaled_size_rounds_like_the_torch_stylizer():
    assert scaled_size(59, 45, 0.73) == (43, 33)
    assert scaled_size(16, 16, 1.0) == (16, 16)
    with pytest.raises(StylizeError, match="15x16 after scaling"):
        scaled_size(32, 30, 0.5)


@pytest.mark.parametrize("size", [(20, 30), (75, 61), (200, 180)])
def test_resize_is_torch_bicubic_with_antialiasing(size):
    content = images(100, 90, count=2)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(content), size=size, mode="bicubic", antialias=True, align_corners=False
    ).numpy()
    result = resize(content, size)
    assert result.shape == (2, 3, *size) and result.dtype == np.float32
    assert np.abs(result - expected).max() < 1e-4


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch):
    """Sets whether PyTorch could find a GPU; STYLIZE_ONNX unset."""
    monkeypatch.delenv("STYLIZE_ONNX", raising=False)

    def set_found(found: bool) -> None:
        monkeypatch.setattr(onnx_run, "torch_may_find_accelerator", lambda: found)

    return set_found


@pytest.mark.parametrize(
    ("device", "precision", "gpu", "expected"),
    [
        ("cpu", "auto", False, True),
        ("cpu", "fp32", False, True),
        ("cpu", "auto", True, True),
        ("cpu", "fp32", True, True),
        (" CPU ", "FP32", True, True),
        ("cpu", "bf16", False, False),
        ("cpu", "fp16", False, False),
        ("auto", "auto", False, True),
        ("auto", "fp32", False, True),
        ("auto", "auto", True, False),
        ("auto", "fp32", True, False),
        ("auto", "bf16", False, False),
        ("cuda", "auto", False, False),
        ("cuda", "fp32", True, False),
        ("cuda:1", "auto", True, False),
        ("mps", "fp32", False, False),
    ],
)
def test_runs_on_onnx(no_accelerator, device, precision, gpu, expected):
    no_accelerator(gpu)
    assert runs_on_onnx(device, precision) is expected


@pytest.mark.parametrize("value", ["0", " 0 "])
def test_stylize_onnx_0_keeps_every_network_on_torch(no_accelerator, monkeypatch, value):
    no_accelerator(False)
    monkeypatch.setenv("STYLIZE_ONNX", value)
    assert not runs_on_onnx("cpu", "fp32")
    assert not runs_on_onnx("auto", "auto")
    monkeypatch.setenv("STYLIZE_ONNX", "1")
    assert runs_on_onnx("cpu", "fp32")


def test_runs_without_importing_torch(multistyle, tmp_path):
    content = images(37, 41)
    np.save(tmp_path / "content.npy", content)
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from stylize.engine.onnx_run import OnnxStylizer, runs_on_onnx\n"
        "runs_on_onnx('auto', 'auto')\n"
        f"style = [0.0] * 26; style[{STARRY}] = 1.0\n"
        f"stylizer = OnnxStylizer({str(multistyle[0])!r}, style, threads=1)\n"
        f"content = np.load({str(tmp_path / 'content.npy')!r})\n"
        "result = stylizer(content, scale=0.9, strength=0.8, preserve_color=True)\n"
        f"np.save({str(tmp_path / 'result.npy')!r}, result)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["[]"]
    result = np.load(tmp_path / "result.npy")
    net = load_multistyle(read_multistyle_graphdef(TF_GRAPHDEF))
    weights = torch.zeros(26)
    weights[STARRY] = 1.0
    expected = Stylizer(net.bind(weights), Runtime(torch.device("cpu")))(
        torch.from_numpy(content), scale=0.9, strength=0.8, preserve_color=True
    )
    assert np.abs(result - expected.numpy()).max() < WELL_UNDER_A_STEP


@pytest.mark.parametrize("shape", [(1, 3, 300, 200), (1, 3, 90, 140), (1, 3, 128, 128)])
def test_the_predictor_takes_the_central_square_as_the_torch_one_does(tmp_path, shape):
    from real_weights import ARBITRARY_PREDICT_ONNX, ARBITRARY_TRANSFORM_ONNX, wheel_member
    from stylize.engine.arbitrary import load_arbitrary, style_vector
    from stylize.engine.export import export_predictor
    from stylize.store.formats.onnx_arbitrary import read_arbitrary_onnx

    tensors = read_arbitrary_onnx(
        wheel_member(ARBITRARY_PREDICT_ONNX), wheel_member(ARBITRARY_TRANSFORM_ONNX)
    )
    predictor = load_arbitrary(tensors)[0]
    export_predictor(predictor, 128, tmp_path / "predictor.onnx")
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    vector = onnx_run.OnnxPredictor(tmp_path / "predictor.onnx", threads=1).vector_of(image.numpy())
    expected = style_vector(predictor, image, 128)[0].numpy()
    assert vector.shape == (100,)
    assert np.abs(vector - expected).max() < 1e-3 * np.abs(expected).max()
