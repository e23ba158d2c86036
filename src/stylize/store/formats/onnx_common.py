"""Helpers shared by the ONNX readers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.errors import StylizeError

if TYPE_CHECKING:
    import numpy as np
    import onnx


def load_onnx(path: Path) -> onnx.ModelProto | None:
    """The ONNX model in `path`, or None when it is not one (or has no nodes)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError):
        return None
    return model if model.graph.node else None


def float_array(proto: onnx.TensorProto, fail: Callable[[str], StylizeError]) -> np.ndarray:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if proto.data_location == onnx.TensorProto.EXTERNAL:
        raise fail("its weights are stored in external files, which are not read")
    array = numpy_helper.to_array(proto)
    if not np.issubdtype(array.dtype, np.floating):
        raise fail(f"weight {proto.name!r} is {array.dtype}, not floating point")
    # A copy: protobuf-backed arrays are read-only, and the weights must outlive the graph.
    return array.astype(np.float32)


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def graph_index(
    graph: onnx.GraphProto,
) -> tuple[dict[str, onnx.TensorProto], dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """Lookups by value name for reading weights by structure: the constant values
    (initializers and Constant nodes), the node producing each value, the nodes consuming it."""
    constants: dict[str, onnx.TensorProto] = {tensor.name: tensor for tensor in graph.initializer}
    producers: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for output in node.output:
            producers[output] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and node.output:
                constants[node.output[0]] = value
    return constants, producers, consumers


def is_plain_conv(conv: onnx.NodeProto, stride: int) -> bool:
    """Whether `conv` is an ordinary convolution of `stride`: one group, no dilation, and no
    padding of its own (the networks pad by reflection in a node before it)."""
    return (
        attribute(conv, "group", 1) == 1
        and set(attribute(conv, "dilations", [1])) == {1}
        and set(attribute(conv, "strides", [1])) == {stride}
        and not any(attribute(conv, "pads", [0]))
        and attribute(conv, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
    )
