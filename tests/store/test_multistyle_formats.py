"""The TF Stylize 26-style network's readers: the frozen GraphDef and the ONNX export."""

import math
import random
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor

from real_weights import (
    ARBITRARY_PREDICT_ONNX,
    ARBITRARY_TRANSFORM_ONNX,
    MULTISTYLE_ONNX,
    TF_GRAPHDEF,
    extract,
)
from style_nets import smooth_image
from stylize.engine.multistyle import load_multistyle
from stylize.errors import StylizeError
from stylize.store.formats.onnx_multistyle import is_multistyle_onnx, read_multistyle_onnx
from stylize.store.formats.tf_graphdef import (
    _dequantize,
    is_graphdef,
    read_multistyle_graphdef,
)

NOT_THE_NETWORK = "is not the TF Stylize 26-style network"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("multistyle-formats")


@pytest.fixture(scope="module")
def onnx_path(folder: Path) -> Path:
    return extract(MULTISTYLE_ONNX, folder)


@pytest.fixture(scope="module")
def from_onnx(onnx_path: Path) -> dict[str, Tensor]:
    return read_multistyle_onnx(onnx_path)


@pytest.fixture(scope="module")
def from_graphdef() -> dict[str, Tensor]:
    return read_multistyle_graphdef(TF_GRAPHDEF)


def test_both_files_give_the_same_tensors_up_to_the_exports_dequantization(
    from_onnx, from_graphdef
):
    assert set(from_graphdef) == set(from_onnx)
    for name, tensor in from_graphdef.items():
        assert tensor.dtype == torch.float32
        if not name.endswith("conv2d.weight"):
            assert torch.equal(tensor, from_onnx[name]), name  # norm tables are float32 in both
            continue
        # The export dequantized the 8-bit weights as min + q * step; TensorFlow's quantized
        # convolution uses round(min / step) * step + q * step (zero exact). So each tensor
        # differs by one constant, less than half a step, that both ranges determine.
        low, high = from_onnx[name].min().item(), from_onnx[name].max().item()
        step = (high - low) / 255
        ratio = low / step
        offset = low - math.copysign(math.floor(abs(ratio) + 0.5), ratio) * step
        difference = from_onnx[name] - tensor
        assert abs(offset) <= step / 2
        assert (difference - offset).abs().max() < 1e-6, name


def test_tensorflows_dequantization_keeps_zero_exact():
    low, high = -0.7, 0.9  # step 1.6 / 255; -0.7 / step = -111.56, so zero is q = 112
    step = (high - low) / 255
    weights = _dequantize(np.array([0, 112, 255], dtype=np.uint8), low, high)
    assert weights.dtype == np.float32
    assert weights[1] == 0.0
    np.testing.assert_allclose(weights, [-112 * step, 0.0, 143 * step], rtol=1e-6)
    assert np.all(_dequantize(np.array([0, 7], dtype=np.uint8), 0.25, 0.25) == 0.25)


def test_graphdef_network_runs_close_to_the_export(from_graphdef, onnx_path):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    net = load_multistyle(from_graphdef)
    image = smooth_image(76, 100, seed=1)
    for style in (0, 19):
        weights = torch.zeros(26)
        weights[style] = 1.0
        feed = {"image": image.numpy(), "style_weights": weights.numpy()}
        (expected,) = session.run(None, feed)
        with torch.inference_mode():
            result = net.bind(weights)(image).numpy()
        # Not closer: the export's weight offsets (see above) move some pixels by up to 0.7.
        # Measured mean differences: 0.019 (style 0), 0.064 (style 19).
        assert np.abs(result - expected).mean() < 0.1


def test_recognizers(onnx_path, folder):
    assert is_graphdef(TF_GRAPHDEF)
    assert not is_graphdef(onnx_path)
    random_bytes = folder / "random.bin"
    random_bytes.write_bytes(random.Random(0).randbytes(5000))
    assert not is_graphdef(random_bytes)
    assert is_multistyle_onnx(onnx.load(str(onnx_path)))
    for member in (ARBITRARY_TRANSFORM_ONNX, ARBITRARY_PREDICT_ONNX):
        assert not is_multistyle_onnx(onnx.load(str(extract(member, folder))))


# --- Files that are not the network ---------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def graph_node(name: str, op: str) -> bytes:
    return field(1, field(1, name.encode()) + field(2, op.encode()))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is not a TensorFlow GraphDef: it has no nodes"),
        (graph_node("x", "Placeholder"), f"{NOT_THE_NETWORK}: no node 'input'"),
        (b"\x0a" + varint(1 << 40) + b"abc", "a field of 1099511627776 bytes with 3 left"),
        (b"\x0a\xff\xff", "it ends inside a number"),
        (b"\x0a" + b"\xff" * 11, "a number runs longer than 10 bytes"),
        (b"\x0b\x00", "a field of wire type 3"),
        (field(1, b"\x0a\x02\xff\xfe"), "a name that is not UTF-8"),
    ],
    ids=["empty", "other graph", "huge length", "cut varint", "long varint", "group", "name"],
)
def test_graphdef_reader_refuses_other_files(folder, content, message):
    path = folder / "other.pb"
    path.write_bytes(content)
    with pytest.raises(StylizeError, match=message):
        read_multistyle_graphdef(path)


def patched(folder: Path, old: bytes, new: bytes, *, after: bytes = b"") -> Path:
    """The real GraphDef with the first `old` after `after` replaced (same length)."""
    data = TF_GRAPHDEF.read_bytes()
    start = data.index(old, data.index(after))
    path = folder / "patched.pb"
    path.write_bytes(data[:start] + new + data[start + len(old) :])
    return path


def dims(*sizes: int) -> bytes:
    return b"".join(field(2, b"\x08" + varint(size)) for size in sizes)


@pytest.mark.parametrize(
    ("old", "new", "after", "message"),
    [
        (
            struct.pack("<f", 1e-5),
            struct.pack("<f", 1e-3),
            b"",
            "transformer/contract/conv1 normalizes with epsilon 0.001, not 1e-05",
        ),
        (b"REFLECT", b"REFLECX", b"", r"MirrorPad does not pad by reflecting 4 pixels"),
        (dims(26), dims(25), b"style_num", "its style input 'style_num' is not a vector of 26"),
        (
            dims(3, 3, 32, 8),
            dims(3, 3, 8, 32),
            b"",
            r"weights_quint8_const has shape \[3, 3, 8, 32\], expected \[3, 3, 32, 8\]",
        ),
        (b"/Sigmoid", b"/Sigmoix", b"", "no node 'transformer/expand/conv3/conv/Sigmoid'"),
    ],
    ids=["epsilon", "padding", "styles", "weight shape", "output"],
)
def test_graphdef_reader_checks_the_network(folder, old, new, after, message):
    with pytest.raises(StylizeError, match=f"{NOT_THE_NETWORK}: .*{message}"):
        read_multistyle_graphdef(patched(folder, old, new, after=after))


def test_graphdef_reader_survives_damaged_files(folder):
    data = TF_GRAPHDEF.read_bytes()
    path = folder / "damaged.pb"
    generator = random.Random(1)
    cuts = [3, 100, 5000, len(data) // 2, len(data) - 1]
    flips = [generator.randrange(len(data)) for _ in range(12)]
    variants = [data[:cut] for cut in cuts]
    variants += [data[:at] + bytes([data[at] ^ 0xA5]) + data[at + 1 :] for at in flips]
    for variant in variants:
        path.write_bytes(variant)
        try:
            tensors = read_multistyle_graphdef(path)
        except StylizeError as error:
            assert str(path) in str(error) and "\n" not in str(error)
        else:
            assert len(tensors) == 54  # a flip inside weight values leaves a valid file


def test_graphdef_reader_refuses_the_onnx_export(onnx_path):
    with pytest.raises(StylizeError, match="is not a TensorFlow GraphDef"):
        read_multistyle_graphdef(onnx_path)


def test_readers_refuse_missing_files(folder):
    with pytest.raises(StylizeError, match="cannot read"):
        read_multistyle_graphdef(folder / "missing.pb")
    with pytest.raises(StylizeError, match="is not an ONNX model"):
        read_multistyle_onnx(folder / "missing.onnx")


def test_onnx_reader_refuses_other_files(folder):
    with pytest.raises(StylizeError, match=f"{NOT_THE_NETWORK}: its graph does not take one"):
        read_multistyle_onnx(extract(ARBITRARY_TRANSFORM_ONNX, folder))
    with pytest.raises(StylizeError, match="is not an ONNX model"):
        read_multistyle_onnx(TF_GRAPHDEF)
    random_bytes = folder / "random.onnx"
    random_bytes.write_bytes(random.Random(2).randbytes(3000))
    with pytest.raises(StylizeError, match="is not an ONNX model"):
        read_multistyle_onnx(random_bytes)


def edited_export(onnx_path: Path, folder: Path, op_type: str, edit) -> Path:
    model = onnx.load(str(onnx_path))
    edit(next(node for node in model.graph.node if node.op_type == op_type), model)
    path = folder / "edited.onnx"
    onnx.save(model, str(path))
    return path


def set_attribute(node: onnx.NodeProto, name: str, value: object) -> None:
    del node.attribute[:]
    node.attribute.append(onnx.helper.make_attribute(name, value))


def other_epsilon(node: onnx.NodeProto, model: onnx.ModelProto) -> None:
    """Changes the constant the first norm adds to its variance."""
    add = next(n for n in model.graph.node if node.input[0] in n.output)
    constant = next(n for n in model.graph.node if n.output[0] in add.input[1:])
    set_attribute(constant, "value", onnx.numpy_helper.from_array(np.array(1e-3, np.float32)))


@pytest.mark.parametrize(
    ("op_type", "edit", "message"),
    [
        ("Sqrt", other_epsilon, "its norms are not instance norms with epsilon 1e-05"),
        ("Pad", lambda node, _: set_attribute(node, "mode", "edge"), "convolution 1 does not read"),
        ("Sigmoid", lambda node, _: setattr(node, "op_type", "Tanh"), "its graph applies Tanh"),
        (
            "Conv",
            lambda node, _: node.attribute[-1].ints.__setitem__(slice(None), [2, 2]),
            "convolution 1 has other strides",
        ),
    ],
    ids=["epsilon", "padding", "activation", "stride"],
)
def test_onnx_reader_checks_the_network(onnx_path, folder, op_type, edit, message):
    with pytest.raises(StylizeError, match=f"{NOT_THE_NETWORK}: {message}"):
        read_multistyle_onnx(edited_export(onnx_path, folder, op_type, edit))
