"""ONNX graphs of installed style networks, exported once and cached for the CPU path of
`stylize apply` (see `engine/onnx_run.py`).

A graph is named after its model and the sha256 of the model file it was written from,
`cache/onnx/NAME.DIGEST.vN.onnx` (N: the graph version), so a model replaced under the same name,
or a newer stylize with other graphs, never runs a stale one. Installing a model exports its
graph; a model installed before there were graphs gets one on first use. Graphs of models no
longer installed, and older graphs of installed ones, are removed by `tidy_graphs`.
"""

from __future__ import annotations

from pathlib import Path

from stylize.atomic import remove_stale_temporaries
from stylize.engine.onnx_run import GRAPH_VERSION
from stylize.store.paths import cache_dir, file_sha256

_DIGEST_LENGTH = 16


def graphs_dir() -> Path:
    return cache_dir() / "onnx"


def cached_graph(name: str, model_file: Path) -> Path | None:
    """The cached graph of the model `name` (installed at `model_file`), or None."""
    path = _graph_path(name, file_sha256(model_file))
    return path if path.is_file() else None


def compiled_graph(name: str, model_file: Path) -> Path:
    """The graph of the model `name`, exported first when not cached (that imports PyTorch).
    An `engine.export.ExportError` says the network has no ONNX form."""
    digest = file_sha256(model_file)
    path = _graph_path(name, digest)
    if path.is_file():
        return path
    from stylize.engine.export import export_network
    from stylize.store.modelfile import read_model_file
    from stylize.store.styles import network_of

    tensors, meta = read_model_file(model_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_network(network_of(tensors, meta), path)
    for older in path.parent.glob(f"{name}.*.onnx"):
        if older != path:
            older.unlink(missing_ok=True)
    return path


def tidy_graphs(installed: set[str]) -> list[Path]:
    """Removes the graphs of models not in `installed`; returns them."""
    folder = graphs_dir()
    if not folder.is_dir():
        return []
    removed = remove_stale_temporaries(folder)
    for path in folder.glob("*.onnx"):
        name, _, rest = path.name.partition(".")
        if name not in installed or not rest.endswith(f".v{GRAPH_VERSION}.onnx"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _graph_path(name: str, digest: str) -> Path:
    return graphs_dir() / f"{name}.{digest[:_DIGEST_LENGTH]}.v{GRAPH_VERSION}.onnx"
