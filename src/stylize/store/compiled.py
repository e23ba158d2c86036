"""ONNX graphs of installed style networks, exported once and cached for the CPU path of
`stylize apply` (see `engine/onnx_run.py`).

A graph is named after its model and the sha256 of the model file it was written from,
`cache/onnx/NAME.DIGEST.vN.onnx` (N: the graph version), so a model replaced under the same
name, or a newer stylize with other graphs, never runs a stale one. The arbitrary-style
network's style predictor is written for one style-image size S, as
`NAME.DIGEST.predictorS.vN.onnx`. Installing a model exports its graph; a model installed
before there were graphs gets one on first use. Graphs of models no longer installed, and
older graphs of installed ones, are removed by `tidy_graphs`.

The model file's sha256 is remembered beside its graphs, in `NAME.sha256`, with the file's
size, modification and change times and inode, and computed again only when those change:
hashing loads OpenSSL, which would be 4 MB and a few milliseconds of every `stylize apply`.
"""

from __future__ import annotations

from pathlib import Path

from stylize.atomic import atomic_write, remove_stale_temporaries
from stylize.engine.onnx_run import GRAPH_VERSION
from stylize.store.paths import cache_dir, file_sha256

_DIGEST_LENGTH = 16


def graphs_dir() -> Path:
    return cache_dir() / "onnx"


def cached_graph(name: str, model_file: Path) -> Path | None:
    """The cached graph of the model `name` (installed at `model_file`), or None."""
    path = _graph_path(name, model_digest(name, model_file))
    return path if path.is_file() else None


def compiled_graph(name: str, model_file: Path) -> Path:
    """The graph of the model `name`, exported first when not cached (that imports PyTorch).
    An `engine.export.ExportError` says the network has no ONNX form."""
    digest = model_digest(name, model_file)
    path = _graph_path(name, digest)
    if path.is_file():
        return path
    from stylize.engine.export import export_network
    from stylize.store.modelfile import read_model_file
    from stylize.store.styles import network_of

    tensors, meta = read_model_file(model_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_network(network_of(tensors, meta), path)
    _remove_other_digests(name, digest)
    return path


def compiled_predictor(name: str, model_file: Path, size: int) -> Path:
    """The style predictor's graph for style images of `size` pixels, of the arbitrary-style
    model `name`, exported first when not cached (that imports PyTorch)."""
    digest = model_digest(name, model_file)
    path = _graph_path(name, digest, f"predictor{size}")
    if path.is_file():
        return path
    from stylize.engine.arbitrary import load_arbitrary
    from stylize.engine.export import export_predictor
    from stylize.store.modelfile import read_model_file

    tensors, _ = read_model_file(model_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_predictor(load_arbitrary(tensors)[0], size, path)
    _remove_other_digests(name, digest)
    return path


def model_digest(name: str, model_file: Path) -> str:
    """The sha256 of the model `name`'s file: remembered, or computed and remembered (where
    the cache folder is writable)."""
    stat = model_file.stat()
    # The inode and ctime too: a model replaced within a coarse mtime (FAT), or copied with
    # its mtime kept, is still a new file (ctime cannot be set by utime).
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}"
    remembered = _digest_path(name)
    try:
        known_stamp, digest = remembered.read_text(encoding="ascii").rsplit(" ", 1)
        if known_stamp == stamp and len(digest) == 64:
            return digest
    except (OSError, ValueError, UnicodeDecodeError):
        pass  # not remembered yet, or damaged: computed again
    digest = file_sha256(model_file)
    try:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(remembered, "w", overwrite=True, encoding="ascii") as file:
            file.write(f"{stamp} {digest}")
    except OSError:
        pass  # an unwritable cache: hashed again next time
    return digest


def remove_graphs(name: str) -> None:
    """Removes every cached graph of the model `name` (a damaged one is exported again), and
    its remembered digest."""
    folder = graphs_dir()
    if folder.is_dir():
        for path in folder.glob(f"{name}.*.onnx"):
            path.unlink(missing_ok=True)
        _digest_path(name).unlink(missing_ok=True)


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
    for path in folder.glob("*.sha256"):
        if path.stem not in installed:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _digest_path(name: str) -> Path:
    return graphs_dir() / f"{name}.sha256"


def _graph_path(name: str, digest: str, part: str = "") -> Path:
    middle = f"{digest[:_DIGEST_LENGTH]}.{part}" if part else digest[:_DIGEST_LENGTH]
    return graphs_dir() / f"{name}.{middle}.v{GRAPH_VERSION}.onnx"


def _remove_other_digests(name: str, digest: str) -> None:
    """Removes the graphs of `name` written from another model file (a replaced model)."""
    for path in graphs_dir().glob(f"{name}.*.onnx"):
        if path.name.split(".")[1] != digest[:_DIGEST_LENGTH]:
            path.unlink(missing_ok=True)
