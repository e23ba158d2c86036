"""The pytorch/examples transform network in ONNX (the ONNX model zoo's fast neural style
models, or any export of that layout), mapped to native tensors by the graph's structure."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from stylize.errors import StylizeError
from stylize.store.formats.onnx_common import attribute, float_array, graph_index, is_plain_conv

if TYPE_CHECKING:
    import onnx
    from torch import Tensor

# Operations the transform network's data path may contain in an ONNX export, and the
# operations allowed elsewhere (computing shapes and scales for the upsampling).
_DATA_OPS = frozenset({"Conv", "InstanceNormalization", "Relu", "Add", "Pad", "Upsample", "Resize"})
_TRANSPARENT_OPS = frozenset({"Identity"})
_INSTANCE_NORM_EPSILON = 1e-5


def read_johnson_onnx(model: onnx.ModelProto, path: Path) -> dict[str, Tensor]:
    """The native tensors of the transform network in `model` (read from `path`)."""
    return _OnnxNetwork(model.graph, path).tensors()


class _OnnxNetwork:
    """Reads the transform network's weights out of an ONNX graph, checking its structure."""

    def __init__(self, graph: onnx.GraphProto, path: Path) -> None:
        self.graph = graph
        self.path = path
        self.constants, self.producers, _ = graph_index(graph)

    def fail(self, reason: str) -> StylizeError:
        return StylizeError(f"{self.path} is not a supported style model: {reason}")

    def tensors(self) -> dict[str, Tensor]:
        import torch

        nodes = self._data_path()
        convs = [node for node in nodes if node.op_type == "Conv"]
        norms = [node for node in nodes if node.op_type == "InstanceNormalization"]
        blocks, odd = divmod(len(convs) - 6, 2)
        if blocks < 0 or odd or len(norms) != len(convs) - 1:
            raise self.fail(
                f"a graph with {len(convs)} convolutions and {len(norms)} instance norms, not "
                "the fast style transform network (6 + 2 per residual block, and one norm after "
                "each convolution but the last)"
            )
        self._check_structure(nodes, convs, norms, blocks)
        residual_layers = [
            (f"res{block}.conv{part}", f"res{block}.in{part}")
            for block in range(1, blocks + 1)
            for part in (1, 2)
        ]
        conv_names = ["conv1", "conv2", "conv3", *(conv for conv, _ in residual_layers)]
        conv_names += ["deconv1", "deconv2", "deconv3"]
        norm_names = ["in1", "in2", "in3", *(norm for _, norm in residual_layers), "in4", "in5"]
        tensors: dict[str, Tensor] = {}
        for name, conv in zip(conv_names, convs, strict=True):
            weight = self._constant(conv, 1)
            tensors[f"{name}.conv2d.weight"] = weight
            has_bias = len(conv.input) > 2 and conv.input[2]
            tensors[f"{name}.conv2d.bias"] = (
                self._constant(conv, 2) if has_bias else torch.zeros(weight.shape[0])
            )
        for name, norm in zip(norm_names, norms, strict=True):
            tensors[f"{name}.weight"] = self._constant(norm, 1)
            tensors[f"{name}.bias"] = self._constant(norm, 2)
        return tensors

    def _data_path(self) -> list[onnx.NodeProto]:
        """The nodes computing on the image, in graph order (ONNX requires topological order)."""
        data_inputs = [i.name for i in self.graph.input if i.name not in self.constants]
        if len(data_inputs) != 1 or len(self.graph.output) != 1:
            raise self.fail(
                f"a graph with {len(data_inputs)} inputs and {len(self.graph.output)} outputs, "
                "not one image in and one out"
            )
        on_path = {data_inputs[0]}
        nodes = []
        for node in self.graph.node:
            if not on_path.intersection(node.input) or node.op_type == "Shape":
                continue
            if node.op_type not in _DATA_OPS | _TRANSPARENT_OPS:
                raise self.fail(f"its graph applies {node.op_type}, which the network does not")
            nodes.append(node)
            on_path.update(node.output)
        return nodes

    def _check_structure(
        self,
        nodes: list[onnx.NodeProto],
        convs: list[onnx.NodeProto],
        norms: list[onnx.NodeProto],
        blocks: int,
    ) -> None:
        counts = Counter(node.op_type for node in nodes)
        expected = {"Relu": 5 + blocks, "Add": blocks, "upsampling": 2}
        found = {
            "Relu": counts["Relu"],
            "Add": counts["Add"],
            "upsampling": counts["Upsample"] + counts["Resize"],
        }
        if found != expected:
            raise self.fail(f"its graph has {found} operations, the network {expected}")
        for conv, norm in zip(convs, norms, strict=False):
            if self._source(norm.input[0]) is not conv:
                raise self.fail("an instance norm does not follow its convolution")
            if abs(attribute(norm, "epsilon", 1e-5) - _INSTANCE_NORM_EPSILON) > 1e-7:
                raise self.fail("its instance norms use another epsilon")
        for index, conv in enumerate(convs):
            stride = 2 if index in (1, 2) else 1
            if not is_plain_conv(conv, stride):
                raise self.fail(f"convolution {index + 1} has other strides, groups or padding")
        for node in nodes:
            if node.op_type == "Pad" and attribute(node, "mode", b"constant") != b"reflect":
                raise self.fail("it pads with something other than reflection")
            if node.op_type in ("Upsample", "Resize") and attribute(node, "mode", b"") != (
                b"nearest"
            ):
                raise self.fail("it upsamples with something other than nearest neighbour")
        if self._source(self.graph.output[0].name) is not convs[-1]:
            raise self.fail("its output is not the last convolution's (an output activation?)")

    def _source(self, name: str) -> onnx.NodeProto | None:
        """The node producing `name`, looking through Identity nodes."""
        node = self.producers.get(name)
        while node is not None and node.op_type in _TRANSPARENT_OPS:
            node = self.producers.get(node.input[0])
        return node

    def _constant(self, node: onnx.NodeProto, index: int) -> Tensor:
        import torch

        name = node.input[index] if index < len(node.input) else ""
        while name not in self.constants and name in self.producers:
            producer = self.producers[name]
            if producer.op_type not in _TRANSPARENT_OPS:
                break
            name = producer.input[0]
        proto = self.constants.get(name)
        if proto is None:
            raise self.fail(f"the weights of {node.op_type} {node.name!r} are not constants")
        return torch.from_numpy(float_array(proto, self.fail))
