"""The cache of ONNX graphs of installed style networks: written on install, named by the model
file's digest, replaced with the model, removed with it, exported on first use."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from style_nets import TINY, random_style_net, smooth_image
from stylize.engine.onnx_run import GRAPH_VERSION, OnnxStylizer
from stylize.store import compiled
from stylize.store.compiled import cached_graph, compiled_graph, graphs_dir, tidy_graphs
from stylize.store.download import file_sha256
from stylize.store.registry import install_model, model_path, remove_model, tidy_store


def install(name: str = "tiny", seed: int = 0, *, overwrite: bool = False) -> Path:
    state = random_style_net(seed=seed, config=TINY).state_dict()
    meta = {"kind": "style", "source": "trained", "architecture": TINY.to_dict()}
    return install_model(name, state, meta, overwrite=overwrite)


def graph_files() -> list[str]:
    folder = graphs_dir()
    return sorted(path.name for path in folder.glob("*.onnx")) if folder.is_dir() else []


def expected_name(name: str) -> str:
    return f"{name}.{file_sha256(model_path(name))[:16]}.v{GRAPH_VERSION}.onnx"


def stylized(graph: Path) -> np.ndarray:
    return OnnxStylizer(graph, None, threads=1)(smooth_image(32, 32).numpy())


def expected_pixels(seed: int) -> np.ndarray:
    with torch.inference_mode():
        net = random_style_net(seed=seed, config=TINY)
        return (net(smooth_image(32, 32) * 255) / 255).clamp(0, 1).numpy()


def test_installing_a_style_model_writes_its_graph(stylize_home):
    install("tiny")
    assert graphs_dir() == stylize_home / "cache" / "onnx"
    assert graph_files() == [expected_name("tiny")]
    graph = cached_graph("tiny", model_path("tiny"))
    assert graph == graphs_dir() / expected_name("tiny")
    onnx.checker.check_model(onnx.load(str(graph)))
    assert np.abs(stylized(graph) - expected_pixels(0)).max() < 1e-5


def test_replacing_a_model_replaces_its_graph():
    install("tiny", seed=0)
    first = graph_files()
    install("tiny", seed=1, overwrite=True)
    assert graph_files() == [expected_name("tiny")] != first
    graph = cached_graph("tiny", model_path("tiny"))
    assert graph is not None
    assert np.abs(stylized(graph) - expected_pixels(1)).max() < 1e-5


def test_graphs_of_other_models_are_kept():
    install("tiny", seed=0)
    install("tiny-2", seed=1)
    install("tiny", seed=2, overwrite=True)
    assert graph_files() == sorted([expected_name("tiny"), expected_name("tiny-2")])


def test_a_removed_models_graph_is_tidied_away(cli):
    install("tiny", seed=0)
    install("other", seed=1)
    result = cli("models", "remove", "tiny")
    assert result.exit_code == 0, result.stderr
    cli("models", "list")
    assert graph_files() == [expected_name("other")]


def test_tidy_graphs_keeps_installed_models_of_this_graph_version():
    install("tiny")
    folder = graphs_dir()
    current = expected_name("tiny")
    older_version = current.replace(f".v{GRAPH_VERSION}.onnx", f".v{GRAPH_VERSION - 1}.onnx")
    (folder / older_version).write_bytes(b"old")
    (folder / "gone.0123456789abcdef.v1.onnx").write_bytes(b"old")
    removed = tidy_graphs({"tiny"})
    assert sorted(path.name for path in removed) == sorted(
        [older_version, "gone.0123456789abcdef.v1.onnx"]
    )
    assert graph_files() == [current]
    remove_model("tiny")
    tidy_store()
    assert graph_files() == []


def test_tidy_graphs_without_a_folder():
    assert not graphs_dir().exists()
    assert tidy_graphs(set()) == []


def test_a_missing_graph_is_exported_on_first_use():
    path = install("tiny")
    (graphs_dir() / expected_name("tiny")).unlink()
    assert cached_graph("tiny", path) is None
    graph = compiled_graph("tiny", path)
    assert graph == graphs_dir() / expected_name("tiny") and graph.is_file()
    assert graph_files() == [expected_name("tiny")]
    assert np.abs(stylized(graph) - expected_pixels(0)).max() < 1e-5


def test_a_cached_graph_is_not_exported_again(monkeypatch):
    path = install("tiny")
    graph = compiled_graph("tiny", path)
    before = graph.stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr("stylize.engine.export.export_network", fail)
    assert compiled_graph("tiny", path) == graph
    assert graph.stat().st_mtime_ns == before


def test_a_model_installed_before_graphs_existed_gets_one():
    # An install that could not export (or an older stylize) leaves no graph.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled, "compiled_graph", lambda name, path: 1 / 0)
        path = install("tiny")
    assert graph_files() == []
    assert compiled_graph("tiny", path).name == expected_name("tiny")


def test_a_stale_temporary_file_is_cleaned():
    install("tiny")
    folder = graphs_dir()
    # What a process killed while writing a graph leaves (see stylize.atomic).
    stale = folder / f".{expected_name('tiny')}.999999999.0123abcd.tmp"
    stale.write_bytes(b"half a graph")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    live = folder / f".{expected_name('tiny')}.{os.getpid()}.4567abcd.tmp"
    live.write_bytes(b"being written")
    removed = tidy_store()
    assert stale in removed and not stale.exists()
    assert live.exists()  # its process is still running
    assert (folder / expected_name("tiny")).is_file()


@pytest.mark.parametrize("name", ["multistyle26"])
def test_the_real_26_style_network_gets_its_graph_on_import(name):
    from real_weights import TF_GRAPHDEF
    from stylize.store.registry import import_model

    assert import_model(TF_GRAPHDEF) == name
    assert graph_files() == [expected_name(name)]
    model = onnx.load(str(graphs_dir() / expected_name(name)))
    assert [i.name for i in model.graph.input] == ["image", "style"]


def test_remove_model_removes_its_graphs_at_once():
    install("kept")
    install("gone", seed=1)
    remove_model("gone")
    assert graph_files() == [expected_name("kept")]


def test_remove_graphs_takes_every_graph_of_one_model():
    install("kept")
    install("gone", seed=1)
    compiled.remove_graphs("gone")
    compiled.remove_graphs("never-installed")
    assert graph_files() == [expected_name("kept")]


def test_the_model_files_digest_is_remembered_until_the_file_changes(monkeypatch):
    path = install("tiny", seed=0)
    hashed = []
    real = compiled.file_sha256

    def counting(file: Path) -> str:
        hashed.append(file)
        return real(file)

    monkeypatch.setattr(compiled, "file_sha256", counting)
    graph = cached_graph("tiny", path)
    assert graph is not None and cached_graph("tiny", path) == graph
    assert hashed == []  # installing remembered it
    # Replaced by another model: hashed again, and another graph.
    install("tiny", seed=1, overwrite=True)
    replaced = compiled_graph("tiny", path)
    assert replaced != graph and hashed == [path]
    # Touched, same content: hashed again, same graph.
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert compiled_graph("tiny", path) == replaced and len(hashed) == 2
    assert cached_graph("tiny", path) == replaced and len(hashed) == 2


def test_a_damaged_remembered_digest_is_computed_again():
    path = install("tiny")
    remembered = graphs_dir() / "tiny.sha256"
    remembered.write_text("nonsense")
    assert cached_graph("tiny", path) == graphs_dir() / expected_name("tiny")
    assert remembered.read_text().endswith(file_sha256(path))


def test_removing_a_model_forgets_its_digest(cli):
    install("tiny")
    install("other", seed=1)
    assert (graphs_dir() / "tiny.sha256").is_file()
    remove_model("tiny")
    assert not (graphs_dir() / "tiny.sha256").exists()
    (graphs_dir() / "gone.sha256").write_text("1 2 " + "0" * 64)
    tidy_graphs({"other"})
    assert sorted(path.name for path in graphs_dir().glob("*.sha256")) == ["other.sha256"]
