"""Style networks as ONNX graphs, so that the CPU can stylize without PyTorch (`onnx_run.py`).

The graph is written from the native modules, layer by layer, never from a second description
of a network: every `StyleNet` is stages (a reflection-padded or upsampling convolution, an
optional instance norm and an activation) and residual blocks (`stylenet.py`), and each of those
has one ONNX form here. Anything else is refused with `ExportError`, and the caller stays on
PyTorch.

A conditional network (the 26-style network, the arbitrary-style transformer) is exported once
for all its styles: its norms' scales and shifts are affine maps of a conditioning vector (style
weights, a style vector), recovered by binding the network to the zero vector and to each unit
vector, and checked at a random vector. The graph takes the vector as a second input, `style`.

Inputs: `image` (N, 3, H, W) float32 in [0, 1], H and W multiples of 4 (and `style` (Z,)).
Output: `stylized` (N, 3, H, W) float32, about [0, 1], not yet clamped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from stylize.atomic import atomic_write
from stylize.engine.layers import ConvLayer, ResidualBlock, UpsampleConvLayer, phase_kernels
from stylize.engine.onnx_run import (
    CHANNELS_KEY,
    GRAPH_VERSION,
    IMAGE_INPUT,
    OUTPUT,
    STYLE_INPUT,
    STYLE_VECTOR,
)
from stylize.engine.stylenet import Stage, StyleNet, identity, relu, sigmoid
from stylize.errors import StylizeError

OPSET = 17
_ACTIVATIONS: dict[Callable[[Tensor], Tensor], str | None] = {
    relu: "Relu",
    sigmoid: "Sigmoid",
    identity: None,
}
# Convolutions to fewer channels than this run on 2x2 pixel blocks (see _Builder._narrow_conv).
_NARROW_OUTPUT = 8
# Relative error allowed when checking that a conditional network's norms are affine maps.
_AFFINE_TOLERANCE = 1e-4


class ExportError(StylizeError):
    """The network has a layer with no ONNX form here."""


class Conditional(Protocol):
    """A network that binds a conditioning vector into a `StyleNet`."""

    @property
    def conditioning_size(self) -> int: ...

    def bind(self, vector: Tensor) -> StyleNet: ...


def export_network(network: StyleNet | Conditional, path: Path) -> None:
    """Writes `network`'s ONNX graph to `path` atomically (see the module's docstring)."""
    model = network_graph(network)
    with atomic_write(Path(path), overwrite=True) as file:
        file.write(model.SerializeToString())


def network_graph(network: StyleNet | Conditional) -> onnx.ModelProto:
    """The ONNX model of `network`, checked by ONNX's checker."""
    with torch.no_grad():
        if isinstance(network, StyleNet):
            builder = _Builder(network, conditional=None)
        else:
            bound, maps = _affine_norm_maps(network)
            builder = _Builder(bound, conditional=maps)
        model = builder.model()
    onnx.checker.check_model(model)
    return model


def _norms(net: StyleNet) -> list[nn.InstanceNorm2d]:
    """Every instance norm of `net`, in the order the graph meets them."""
    norms: list[nn.InstanceNorm2d] = []
    for stage in net.encoder:
        norms += [stage.norm] if stage.norm is not None else []
    for block in net.residual_blocks:
        if not isinstance(block, ResidualBlock):
            raise ExportError(f"no ONNX form for a residual block of type {type(block).__name__}")
        norms += [block.in1, block.in2]
    for stage in net.decoder:
        norms += [stage.norm] if stage.norm is not None else []
    return norms


def _norm_parameters(net: StyleNet) -> Tensor:
    """All norms' scales, then all their shifts, as one float32 vector."""
    norms = _norms(net)
    return torch.cat(
        [norm.weight.float().cpu() for norm in norms] + [norm.bias.float().cpu() for norm in norms]
    )


class _AffineMaps:
    """The norms' parameters as `offset + vector @ matrix`: `matrix` (Z, P), `offset` (P,)."""

    def __init__(self, matrix: np.ndarray, offset: np.ndarray) -> None:
        self.matrix, self.offset = matrix, offset


def _affine_norm_maps(network: Conditional) -> tuple[StyleNet, _AffineMaps]:
    size = network.conditioning_size
    zero = torch.zeros(size)
    bound = network.bind(zero)
    offset = _norm_parameters(bound)
    columns = [
        _norm_parameters(network.bind(torch.eye(size)[index])) - offset for index in range(size)
    ]
    matrix = torch.stack(columns)
    probe = torch.rand(size, generator=torch.Generator().manual_seed(0))
    expected = _norm_parameters(network.bind(probe))
    predicted = offset + probe @ matrix
    error = float((expected - predicted).abs().max())
    if error > _AFFINE_TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ExportError("the network's norms are not affine in its conditioning vector")
    return bound, _AffineMaps(matrix.numpy(), offset.numpy())


class _Graph:
    """Nodes and initializers of an ONNX graph being written, with generated names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _node(self, op: str, inputs: Sequence[str], **attributes: object) -> str:
        self._count += 1
        output = f"{op.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op, list(inputs), [output], **attributes))
        return output

    def _constant(self, value: np.ndarray | np.generic) -> str:
        array = np.asarray(value)
        if array.dtype.kind == "i":
            array = array.astype(np.int64)
        self._count += 1
        name = f"constant_{self._count}"
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def _model(
        self,
        name: str,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
        properties: dict[str, str] | None = None,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="stylize",
            producer_version=str(GRAPH_VERSION),
        )
        if properties:
            helper.set_model_props(model, properties)
        # Readable by every onnxruntime this project supports (1.18 reads up to IR version 9).
        model.ir_version = min(model.ir_version, 8)
        return model


class _Builder(_Graph):
    """Accumulates nodes and initializers while walking a bound network."""

    def __init__(self, net: StyleNet, conditional: _AffineMaps | None) -> None:
        super().__init__()
        self.net = net
        self.conditional = conditional
        # Where each norm's scales start in the conditional parameter vector, which holds all
        # scales, then all shifts (see _norm_parameters).
        widths = [int(norm.num_features) for norm in _norms(net)]
        self._norm_starts = iter(np.cumsum([0, *widths[:-1]]).tolist())
        self._scale_count = sum(widths)
        self._norm_params = ""
        # Resolution of the tensor being built (0: full, 1: half, 2: quarter), and the widest
        # full-resolution tensor so far.
        self._level = 0
        self._widest = 3

    def model(self) -> onnx.ModelProto:
        net = self.net
        x = IMAGE_INPUT
        if net.pixel_scale != 1.0:
            x = self._node("Mul", [x, self._constant(np.float32(net.pixel_scale))])
        if self.conditional is not None:
            maps = self.conditional
            row = self._node("Unsqueeze", [STYLE_INPUT, self._constant(np.array([0]))])
            product = self._node("MatMul", [row, self._constant(maps.matrix)])
            flat = self._node("Reshape", [product, self._constant(np.array([-1]))])
            self._norm_params = self._node("Add", [flat, self._constant(maps.offset)])
        for stage in net.encoder:
            x = self._stage(stage, x)
        for block in net.residual_blocks:
            assert isinstance(block, ResidualBlock)  # checked by _norms
            y = self._node("Relu", [self._norm(block.in1, self._conv(block.conv1, x))])
            y = self._norm(block.in2, self._conv(block.conv2, y))
            x = self._node("Add", [y, x])
        for stage in net.decoder:
            x = self._stage(stage, x)
        if net.pixel_scale != 1.0:
            x = self._node("Mul", [x, self._constant(np.float32(1.0 / net.pixel_scale))])
        self.nodes.append(helper.make_node("Identity", [x], [OUTPUT]))
        inputs = [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT, ["N", 3, "H", "W"])]
        if self.conditional is not None:
            size = self.conditional.matrix.shape[0]
            inputs.append(helper.make_tensor_value_info(STYLE_INPUT, TensorProto.FLOAT, [size]))
        outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 3, "H", "W"])]
        return self._model("stylize", inputs, outputs, {CHANNELS_KEY: str(self._widest)})

    def _stage(self, stage: Stage, x: str) -> str:
        x = self._conv(stage.conv, x)
        if stage.norm is not None:
            x = self._norm(stage.norm, x)
        if stage.activation not in _ACTIVATIONS:
            raise ExportError(f"no ONNX form for the activation {stage.activation!r}")
        op = _ACTIVATIONS[stage.activation]
        return x if op is None else self._node(op, [x])

    def _conv(self, layer: nn.Module, x: str) -> str:
        if not isinstance(layer, (ConvLayer, UpsampleConvLayer)):
            raise ExportError(f"no ONNX form for a convolution of type {type(layer).__name__}")
        conv: nn.Conv2d = layer.conv2d
        weight = conv.weight.detach().float().cpu()
        bias = None if conv.bias is None else conv.bias.detach().float().cpu()
        upsampling = isinstance(layer, UpsampleConvLayer)
        self._level -= int(upsampling)
        if self._level == 0:
            self._widest = max(self._widest, conv.in_channels)
        self._level += int(conv.stride[0]) // 2
        if self._level == 0:
            self._widest = max(self._widest, conv.out_channels)
        if upsampling:
            return self._upsampling_conv(x, weight, bias)
        x = self._pad(x, layer.padding, "reflect")
        # Pixel blocks need even sides: only full-resolution sides are multiples of 4.
        narrow = conv.out_channels < _NARROW_OUTPUT and weight.shape[-1] > 1
        if self._level == 0 and conv.stride == (1, 1) and narrow:
            return self._narrow_conv(x, weight, bias)
        return self._plain_conv(x, weight, bias, stride=int(conv.stride[0]))

    def _plain_conv(self, x: str, weight: Tensor, bias: Tensor | None, stride: int = 1) -> str:
        inputs = [x, self._constant(weight.numpy())]
        if bias is not None and bool(bias.any()):
            inputs.append(self._constant(bias.numpy()))
        kernel = list(weight.shape[-2:])
        return self._node("Conv", inputs, strides=[stride, stride], kernel_shape=kernel)

    def _pad(self, x: str, padding: int, mode: str) -> str:
        if not padding:
            return x
        pads = self._constant(np.array([0, 0, padding, padding] * 2))
        return self._node("Pad", [x, pads], mode=mode)

    def _upsampling_conv(self, x: str, weight: Tensor, bias: Tensor | None) -> str:
        """The native layer's arithmetic (`layers.UpsampleConvLayer`): the four phases' 2x2
        convolutions of the input padded by replication, interleaved. Phase (a, b) of output
        pixel (2i + a, 2j + b) is at (i + a, j + b) of its convolution's output."""
        channels = weight.shape[0]
        phases = self._plain_conv(
            self._pad(x, 1, "edge"), phase_kernels(weight), None if bias is None else bias.repeat(4)
        )
        # Each phase drops one row and one column: the last ones (even phases) or the first.
        last = {0: -1, 1: np.iinfo(np.int64).max}
        parts = []
        for row, column in itertools.product(range(2), range(2)):
            first = (2 * row + column) * channels
            starts = self._constant(np.array([first, row, column]))
            ends = self._constant(np.array([first + channels, last[row], last[column]]))
            axes = self._constant(np.array([1, 2, 3]))
            parts.append(self._node("Slice", [phases, starts, ends, axes]))
        stacked = self._node("Concat", parts, axis=1)
        return self._node("DepthToSpace", [stacked], blocksize=2, mode="DCR")

    def _narrow_conv(self, x: str, weight: Tensor, bias: Tensor | None) -> str:
        """A convolution to few channels (the output layer's 3) on 2x2 blocks of pixels: the
        same sums, but with four times the input and output channels at half the resolution,
        which vectorizes several times better. The input's height and width are even."""
        blocks = self._node("SpaceToDepth", [x], blocksize=2)
        kernels = self._plain_conv(blocks, _block_kernels(weight), _repeat(bias, 4))
        return self._node("DepthToSpace", [kernels], blocksize=2, mode="DCR")

    def _norm(self, norm: nn.InstanceNorm2d, x: str) -> str:
        start = next(self._norm_starts)
        if self.conditional is None:
            scale = self._constant(norm.weight.float().cpu().numpy())
            shift = self._constant(norm.bias.float().cpu().numpy())
        else:
            end, total = start + int(norm.num_features), self._scale_count
            scale = self._slice(self._norm_params, start, end)
            shift = self._slice(self._norm_params, total + start, total + end)
        return self._node("InstanceNormalization", [x, scale, shift], epsilon=float(norm.eps))

    def _slice(self, x: str, start: int, end: int) -> str:
        return self._node(
            "Slice", [x, self._constant(np.array([start])), self._constant(np.array([end]))]
        )


def _block_kernels(weight: Tensor) -> Tensor:
    """A stride-1 kernel (O, I, k, k) as the kernel of the same convolution on 2x2 pixel
    blocks: (4 O, 4 I, k', k') with k' = k // 2 + 1, channels ordered as ONNX's SpaceToDepth
    and DepthToSpace (mode DCR) order them, (2 row parity + column parity) * C + channel.

    Output pixel (2i + a, 2j + b) sums weight[u, v] * input[2i + a + u, 2j + b + v]; that input
    pixel is block (i + p, j + q) at parities (a + u) % 2, (b + v) % 2, with p = (a + u) // 2."""
    out_channels, in_channels, size, _ = weight.shape
    block_size = size // 2 + 1
    blocks = weight.new_zeros(4 * out_channels, 4 * in_channels, block_size, block_size)
    for a, b, u, v in itertools.product(range(2), range(2), range(size), range(size)):
        output = (2 * a + b) * out_channels
        parity = (2 * ((a + u) % 2) + (b + v) % 2) * in_channels
        blocks[
            output : output + out_channels,
            parity : parity + in_channels,
            (a + u) // 2,
            (b + v) // 2,
        ] = weight[:, :, u, v]
    return blocks


def _repeat(bias: Tensor | None, times: int) -> Tensor | None:
    return None if bias is None else bias.repeat(times)


def export_predictor(predictor: nn.Module, size: int, path: Path) -> None:
    """Writes the arbitrary-style network's style predictor as an ONNX graph for style images
    of `size` x `size` pixels, atomically: input `image` (N, 3, size, size) in [0, 1], output
    `style_vector` (N, 100). TensorFlow's "SAME" padding depends on the size, so a graph serves
    one size."""
    model = predictor_graph(predictor, size)
    with atomic_write(Path(path), overwrite=True) as file:
        file.write(model.SerializeToString())


def predictor_graph(predictor: nn.Module, size: int) -> onnx.ModelProto:
    """The ONNX model of a `StylePredictor` for square images of `size` pixels (see
    `export_predictor`): MobileNetV2's convolutions, ReLU6, the mean over the image and the
    linear map to the style vector."""
    from stylize.engine.arbitrary import StylePredictor

    if not isinstance(predictor, StylePredictor):
        raise ExportError(f"not a style predictor: {type(predictor).__name__}")
    with torch.no_grad():
        model = _PredictorGraph(size).model(predictor)
    onnx.checker.check_model(model)
    return model


class _PredictorGraph(_Graph):
    """A `StylePredictor` for images of one size, whose "SAME" paddings it follows."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._side = size

    def model(self, predictor: nn.Module) -> onnx.ModelProto:
        x = self._relu6(self._conv(IMAGE_INPUT, predictor.conv1))
        for block in predictor.blocks:
            y = x if block.expand is None else self._relu6(self._conv(x, block.expand))
            y = self._conv(self._relu6(self._conv(y, block.depthwise)), block.project)
            x = self._node("Add", [x, y]) if block.residual else y
        x = self._relu6(self._conv(x, predictor.conv2))
        features = self._node("ReduceMean", [x], axes=[2, 3], keepdims=0)
        linear = predictor.style
        weight = self._constant(linear.weight.float().cpu().numpy())
        bias = self._constant(linear.bias.float().cpu().numpy())
        self.nodes.append(
            helper.make_node("Gemm", [features, weight, bias], [STYLE_VECTOR], transB=1)
        )
        size, out = self.size, linear.out_features
        image = helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT, ["N", 3, size, size])
        vector = helper.make_tensor_value_info(STYLE_VECTOR, TensorProto.FLOAT, ["N", out])
        return self._model("predictor", [image], [vector])

    def _conv(self, x: str, layer: nn.Conv2d) -> str:
        from stylize.engine.arbitrary import same_padding

        kernel, stride = layer.kernel_size[0], layer.stride[0]
        before, after = same_padding(self._side, kernel, stride)
        self._side = -(-self._side // stride)
        inputs = [x, self._constant(layer.weight.float().cpu().numpy())]
        if layer.bias is not None:
            inputs.append(self._constant(layer.bias.float().cpu().numpy()))
        return self._node(
            "Conv",
            inputs,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[before, before, after, after],
            group=layer.groups,
        )

    def _relu6(self, x: str) -> str:
        low, high = self._constant(np.float32(0)), self._constant(np.float32(6))
        return self._node("Clip", [x, low, high])
