import errno
import json
import struct
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import save_file

from stylize import __version__
from stylize.errors import StylizeError
from stylize.store.modelfile import (
    FORMAT_VERSION,
    read_model_file,
    read_model_meta,
    write_model_file,
)


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4)}


def test_round_trip_adds_format_and_version(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = _tensors()
    write_model_file(path, tensors, {"kind": "style", "name": "model", "custom": [1, 2]})

    loaded, meta = read_model_file(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)
    assert meta == {
        "kind": "style",
        "name": "model",
        "custom": [1, 2],
        "format": FORMAT_VERSION,
        "stylize_version": __version__,
    }
    assert read_model_meta(path) == meta


def test_existing_file_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "model.safetensors"
    write_model_file(path, _tensors(), {"kind": "style", "version": "first"})
    with pytest.raises(StylizeError, match="already exists"):
        write_model_file(path, _tensors(), {"kind": "style", "version": "second"})
    assert read_model_meta(path)["version"] == "first"

    write_model_file(path, _tensors(), {"kind": "style", "version": "second"}, overwrite=True)
    assert read_model_meta(path)["version"] == "second"
    assert [file.name for file in tmp_path.iterdir()] == ["model.safetensors"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from stylize.store import modelfile

    path = tmp_path / "model.safetensors"
    write_model_file(path, _tensors(), {"kind": "style", "version": "first"})
    with pytest.raises(StylizeError, match="unknown model kind"):
        write_model_file(path, _tensors(), {"kind": "painting"}, overwrite=True)

    real_atomic_write = modelfile.atomic_write

    @contextmanager
    def disk_full(target, *args, **kwargs):
        with real_atomic_write(target, *args, **kwargs) as file:
            file.write(b"partial")
            raise OSError(errno.EIO, "Input/output error")
            yield file

    monkeypatch.setattr(modelfile, "atomic_write", disk_full)
    with pytest.raises(StylizeError, match=r"cannot write .*: Input/output error$"):
        write_model_file(path, _tensors(), {"kind": "style", "version": "second"}, overwrite=True)
    assert read_model_meta(path)["version"] == "first"
    assert [file.name for file in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("where", ["write", "serialize"])
def test_a_full_disk_is_one_clear_line(tmp_path, monkeypatch, where):
    """Whether the file system (OSError ENOSPC) or safetensors (SafetensorError with the
    system's text) reports it."""
    import safetensors.torch
    from safetensors import SafetensorError

    from stylize.atomic import NoSpaceError
    from stylize.store import modelfile

    if where == "write":
        real_atomic_write = modelfile.atomic_write

        @contextmanager
        def disk_full(target, *args, **kwargs):
            with real_atomic_write(target, *args, **kwargs) as file:
                file.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
                yield file

        monkeypatch.setattr(modelfile, "atomic_write", disk_full)
    else:

        def disk_full(*args, **kwargs):
            message = (
                'IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
            )
            raise SafetensorError(f"Error while serializing: {message}")

        monkeypatch.setattr(safetensors.torch, "save", disk_full)
    path = tmp_path / "model.safetensors"
    with pytest.raises(NoSpaceError) as caught:
        write_model_file(path, _tensors(), {"kind": "style"})
    assert str(caught.value) == f"cannot write {path}: no space left on device in {tmp_path}"
    assert list(tmp_path.iterdir()) == []


def test_the_model_writer_leaves_only_stylize_temporaries(tmp_path, monkeypatch):
    """safetensors' save_file writes through a `.tmpXXXXXX` of its own, which a killed process
    would leave behind; the model file is written through stylize.atomic instead."""
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("save_file writes a temporary of its own")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    path = write_model_file(tmp_path / "model.safetensors", _tensors(), {"kind": "style"})
    tensors, _ = read_model_file(path)
    assert set(tensors) == set(_tensors())


def _safetensors_bytes(header: dict) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"\x00" * 7, "too short"),
        (struct.pack("<Q", 10**9) + b"{}", "bad header size"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "unreadable header"),
        (struct.pack("<Q", 2) + b"[]", "unreadable header"),
        (_safetensors_bytes({}), "no 'stylize' metadata"),
        (_safetensors_bytes({"__metadata__": {"other": "x"}}), "no 'stylize' metadata"),
        (_safetensors_bytes({"__metadata__": {"stylize": "not json"}}), "damaged"),
        (_safetensors_bytes({"__metadata__": {"stylize": '{"kind": "style"}'}}), "damaged"),
        (
            _safetensors_bytes({"__metadata__": {"stylize": '{"kind": "style", "format": 99}'}}),
            "newer stylize",
        ),
        (
            _safetensors_bytes({"__metadata__": {"stylize": '{"kind": "x", "format": 1}'}}),
            "unknown model kind",
        ),
    ],
)
def test_malformed_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(StylizeError, match=message) as caught:
        read_model_file(path)
    assert str(path) in str(caught.value)


def test_truncated_tensor_data_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    write_model_file(path, _tensors(), {"kind": "style"})
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(StylizeError, match="damaged safetensors"):
        read_model_file(path)


def test_plain_safetensors_file_is_not_a_model_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(_tensors(), path)
    with pytest.raises(StylizeError, match="not a stylize model file"):
        read_model_meta(path)
