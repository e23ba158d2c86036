"""Style models: converting published formats into the native one, and loading for `apply`.

Accepted files, recognized by their contents rather than their names:

- native `.safetensors` files (and plain safetensors state dicts of the network);
- pytorch/examples `.pth` / `.model` state dicts, including 2017 files with stale
  `in*.running_mean` / `in*.running_var` entries and `module.` prefixes from DataParallel;
- ONNX exports of that network (the ONNX model zoo's fast neural style models among them). Their
  weights are matched to layers by the graph's structure, the order of its Conv and
  InstanceNormalization nodes, since old exporters numbered initializers instead of naming them.

Every file is untrusted: safetensors, `torch.load(weights_only=True)` or protobuf parsing only,
and every tensor's name and shape is checked against the network before use.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.errors import StylizeError
from stylize.store import catalog
from stylize.store.modelfile import (
    METADATA_KEY,
    read_header,
    read_model_file,
    read_model_meta,
    read_tensors,
)

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from torch import Tensor

    from stylize.engine.transformer import TransformerNet

ProgressCallback = Callable[..., None]

# Entries torch.load returns for instance norms of PyTorch <= 0.4.0, which tracked running
# statistics there; pytorch/examples deletes them before loading too.
_STALE_NORM_KEY = re.compile(r"(^|\.)in\d+\.(running_mean|running_var|num_batches_tracked)$")
_DATA_PARALLEL_PREFIX = "module."
_PICKLE_PROTOCOL_2_TO_5 = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_ZIP_MAGIC = b"PK\x03\x04"
# Fields of a native file that describe the file rather than the model; the store rewrites them.
_FILE_FIELDS = ("format", "stylize_version", "name", "source", "original_sha256")


def convert_style_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The native tensors and metadata (`kind="style"`, `architecture`, ...) of a style model
    file in any supported format; StylizeError when it is not a transform network."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            start = file.read(8)
    except OSError as error:
        raise StylizeError(f"cannot read {path}: {error.strerror or error}") from None
    if start.startswith(_ZIP_MAGIC) or start.startswith(_PICKLE_PROTOCOL_2_TO_5):
        tensors, meta = _from_pytorch(path), {"original_format": "pytorch"}
    elif _is_safetensors(path):
        tensors, meta = _from_safetensors(path)
    else:
        tensors, meta = _from_onnx(path), {"original_format": "onnx"}
    from stylize.engine.transformer import TransformerConfig, check_tensors, infer_config

    try:
        if "architecture" in meta:
            config = TransformerConfig.from_dict(meta["architecture"])
            check_tensors(tensors, config)
        else:
            config = infer_config(tensors)
    except StylizeError as error:
        raise StylizeError(f"{path} is not a supported style model: {error}") from None
    native = {name: tensor.float().contiguous() for name, tensor in tensors.items()}
    return native, {**meta, "kind": "style", "architecture": config.to_dict()}


def load_style(
    style: str | Path, on_progress: ProgressCallback | None = None
) -> tuple[TransformerNet, dict[str, Any]]:
    """The network and metadata of `style`: the name of an installed model, a catalog entry
    (downloaded and installed on first use; `on_progress(done_bytes, total_bytes)`), or the path
    of a model file in any supported format."""
    from stylize.engine.transformer import TransformerConfig, load_transformer
    from stylize.store.registry import model_path, pull

    name = style_name(style)
    if name is None:
        path = Path(style)
        if not path.is_file():
            raise StylizeError(f"style model file not found: {path}")
        tensors, meta = convert_style_file(path)
    else:
        path = model_path(name)
        if not path.exists():
            entry = catalog.load_catalog().get(name)
            if entry is None:
                raise StylizeError(
                    f"no style named {name!r} is installed or in the catalog "
                    "(see 'stylize models list'; give a file as a path, like ./model.pth)"
                )
            if entry.kind != "style":
                raise StylizeError(f"{name!r} is a {entry.kind}, not a style model")
            path = pull(name, on_progress)
        tensors, meta = read_model_file(path)
        if meta["kind"] != "style":
            raise StylizeError(f"{name!r} is a {meta['kind']}, not a style model")
        if "architecture" not in meta:
            raise StylizeError(f"{path} has no network architecture in its metadata")
    config = TransformerConfig.from_dict(meta["architecture"])
    return load_transformer(tensors, config), meta


def style_name(style: str | Path) -> str | None:
    """The store name `style` refers to, or None when it is a file path. Model names have no
    dots or slashes, so anything with either is a path."""
    from stylize.store.registry import validate_name

    if isinstance(style, Path):
        return None
    try:
        return validate_name(style)
    except StylizeError:
        return None


def _is_safetensors(path: Path) -> bool:
    try:
        read_header(path)
    except StylizeError:
        return False
    return True


def _from_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    header = read_header(path)
    metadata = header.get("__metadata__")
    tensors = read_tensors(path)
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        # A bare state dict saved with safetensors.
        return tensors, {"original_format": "safetensors"}
    meta = read_model_meta(path)
    if meta["kind"] != "style":
        raise StylizeError(f"{path} is a {meta['kind']} model, not a style model")
    if "architecture" not in meta:
        raise StylizeError(f"{path} has no network architecture in its metadata")
    return tensors, {key: value for key, value in meta.items() if key not in _FILE_FIELDS}


def _from_pytorch(path: Path) -> dict[str, Tensor]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # The restricted unpickler refuses anything but tensors and plain containers; its
        # messages run to many lines.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StylizeError(f"cannot load {path} as a PyTorch state dict: {reason}") from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise StylizeError(
            f"{path} is not a supported style model: a PyTorch file, but not a state dict of "
            "tensors"
        )
    state: dict[str, Tensor] = dict(loaded)
    if state and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(_DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if not _STALE_NORM_KEY.search(key)}


# Operations the transform network's data path may contain in an ONNX export, and the
# operations allowed elsewhere (computing shapes and scales for the upsampling).
_DATA_OPS = frozenset({"Conv", "InstanceNormalization", "Relu", "Add", "Pad", "Upsample", "Resize"})
_TRANSPARENT_OPS = frozenset({"Identity"})
_INSTANCE_NORM_EPSILON = 1e-5


def _from_onnx(path: Path) -> dict[str, Tensor]:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError):
        model = None
    if model is None or not model.graph.node:
        raise StylizeError(
            f"{path} is not a supported style model: not a safetensors, PyTorch or ONNX file"
        )
    return _OnnxNetwork(model.graph, path).tensors()


class _OnnxNetwork:
    """Reads the transform network's weights out of an ONNX graph, checking its structure."""

    def __init__(self, graph: onnx.GraphProto, path: Path) -> None:
        self.graph = graph
        self.path = path
        self.constants: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for output in node.output:
                self.producers[output] = node
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None and node.output:
                    self.constants[node.output[0]] = value

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
            if abs(_attribute(norm, "epsilon", 1e-5) - _INSTANCE_NORM_EPSILON) > 1e-7:
                raise self.fail("its instance norms use another epsilon")
        for index, conv in enumerate(convs):
            stride = 2 if index in (1, 2) else 1
            if (
                _attribute(conv, "group", 1) != 1
                or set(_attribute(conv, "dilations", [1])) != {1}
                or set(_attribute(conv, "strides", [1])) != {stride}
                or any(_attribute(conv, "pads", [0]))
                or _attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
            ):
                raise self.fail(f"convolution {index + 1} has other strides, groups or padding")
        for node in nodes:
            if node.op_type == "Pad" and _attribute(node, "mode", b"constant") != b"reflect":
                raise self.fail("it pads with something other than reflection")
            if node.op_type in ("Upsample", "Resize") and _attribute(node, "mode", b"") != (
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
        return torch.from_numpy(_float_array(proto, self.fail))


def _float_array(proto: onnx.TensorProto, fail: Callable[[str], StylizeError]) -> np.ndarray:
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


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default
