import hashlib
import os
import re
import socket
import time

import pytest

from stylize.errors import StylizeError
from stylize.store.catalog import CatalogEntry
from stylize.store.download import fetched
from stylize.store.paths import cache_dir

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def _entry(url: str, data: bytes = PAYLOAD, file_name: str = "model.onnx", **changes):
    fields = dict(
        name="model",
        kind="style",
        url=url,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        license="test",
        description="test",
        file_name=file_name,
    )
    return CatalogEntry(**{**fields, **changes})


def _leftovers() -> list[str]:
    folder = cache_dir() / "downloads"
    return sorted(file.name for file in folder.iterdir()) if folder.exists() else []


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    monkeypatch.setenv("STYLIZE_DOWNLOAD_TIMEOUT", "0.5")


def test_download_streams_verifies_and_cleans_up(http_server):
    entry = _entry(http_server.add("model.onnx", PAYLOAD))
    calls = []
    with fetched(entry, lambda done, total: calls.append((done, total))) as (path, sha256):
        assert path.read_bytes() == PAYLOAD
        # The scheme of every temporary: the published name, this process, a random part.
        assert re.fullmatch(rf"\.model\.onnx\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", path.name)
        assert sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert not path.exists()
    assert _leftovers() == []
    assert calls[0] == (0, len(PAYLOAD))
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert http_server.requests["model.onnx"] == 1


def test_checksum_mismatch_installs_nothing_and_leaves_no_file(http_server):
    url = http_server.add("model.onnx", PAYLOAD)
    entry = _entry(url, sha256="0" * 64)
    with pytest.raises(StylizeError, match="checksum mismatch") as caught, fetched(entry):
        pytest.fail("a file with the wrong checksum was handed out")
    assert url in str(caught.value)
    assert _leftovers() == []


def test_prefix_checksum_is_accepted(http_server):
    entry = _entry(
        http_server.add("model.onnx", PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest()[:8]
    )
    with fetched(entry) as (path, _):
        assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_names_the_url(http_server, status):
    url = http_server.fail("model.onnx", status)
    with pytest.raises(StylizeError, match=f"HTTP {status}") as caught, fetched(_entry(url)):
        pass
    assert url in str(caught.value)
    assert _leftovers() == []


def test_network_failure_names_the_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.onnx"  # nothing listens there any more
    with pytest.raises(StylizeError, match="could not download") as caught, fetched(_entry(url)):
        pass
    assert url in str(caught.value)


@pytest.mark.parametrize("after_bytes", [0, 1000])
def test_silent_server_times_out_with_the_url(http_server, after_bytes):
    http_server.add("model.onnx", PAYLOAD)
    url = http_server.hang("model.onnx", after_bytes=after_bytes)
    started = time.monotonic()
    with pytest.raises(StylizeError, match="timed out") as caught, fetched(_entry(url)):
        pass
    assert time.monotonic() - started < 5
    assert url in str(caught.value)
    assert _leftovers() == []


def test_redirects_are_followed(http_server):
    target = http_server.add("lfs/model.onnx", PAYLOAD)
    url = http_server.redirect("raw/model.onnx", target)
    with fetched(_entry(url)) as (path, _):
        assert path.read_bytes() == PAYLOAD
    assert http_server.requests["raw/model.onnx"] == 1
    assert http_server.requests["lfs/model.onnx"] == 1


def test_mirror_replaces_the_url_and_still_checks_the_checksum(http_server, monkeypatch):
    http_server.add("mirror/model.onnx", PAYLOAD)
    upstream = http_server.fail("upstream/model.onnx", 500)
    monkeypatch.setenv("STYLIZE_MODEL_MIRROR", http_server.url("mirror") + "/")
    with fetched(_entry(upstream)) as (path, _):
        assert path.read_bytes() == PAYLOAD
    assert http_server.requests["upstream/model.onnx"] == 0

    http_server.add("mirror/model.onnx", b"tampered" + PAYLOAD[8:])
    with (
        pytest.raises(StylizeError, match="checksum mismatch") as caught,
        fetched(_entry(upstream)),
    ):
        pass
    assert http_server.url("mirror/model.onnx") in str(caught.value)


@pytest.mark.parametrize("as_uri", [True, False])
def test_mirror_may_be_a_local_folder(tmp_path, monkeypatch, as_uri):
    (tmp_path / "model.onnx").write_bytes(PAYLOAD)
    monkeypatch.setenv("STYLIZE_MODEL_MIRROR", tmp_path.as_uri() if as_uri else str(tmp_path))
    with fetched(_entry("https://example.invalid/model.onnx")) as (path, _):
        assert path.read_bytes() == PAYLOAD


def test_missing_file_in_a_folder_mirror_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLIZE_MODEL_MIRROR", str(tmp_path))
    entry = _entry("https://example.invalid/model.onnx")
    with (
        pytest.raises(StylizeError, match=r"could not download file:.*model\.onnx"),
        fetched(entry),
    ):
        pass


def test_malformed_url_is_a_clear_error():
    entry = _entry("nonsense/model.onnx")
    with (
        pytest.raises(StylizeError, match=r"could not download nonsense/model\.onnx"),
        fetched(entry),
    ):
        pass


def test_oversized_response_is_cut_off(http_server):
    url = http_server.add("model.onnx", PAYLOAD + b"extra")
    with (
        pytest.raises(StylizeError, match="more than the expected") as caught,
        fetched(_entry(url)),
    ):
        pass
    assert url in str(caught.value)
    assert _leftovers() == []


def test_torch_hub_copy_is_used_without_downloading(http_server, stylize_home):
    url = http_server.add("model.onnx", PAYLOAD)
    hub_file = stylize_home / "torch-home" / "hub" / "checkpoints" / "model.onnx"
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(PAYLOAD)
    with fetched(_entry(url)) as (path, sha256):
        assert path == hub_file
        assert sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert hub_file.exists(), "torch hub's own cache must not be deleted"
    assert http_server.requests["model.onnx"] == 0


def test_damaged_torch_hub_copy_is_ignored(http_server, stylize_home):
    url = http_server.add("model.onnx", PAYLOAD)
    hub_file = stylize_home / "torch-home" / "hub" / "checkpoints" / "model.onnx"
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(PAYLOAD[:1000])
    warnings = []
    with fetched(_entry(url), on_warning=warnings.append) as (path, _):
        assert path != hub_file
        assert path.read_bytes() == PAYLOAD
    assert http_server.requests["model.onnx"] == 1
    assert warnings == [
        f"ignoring {hub_file}: it has 1000 bytes, not the {len(PAYLOAD)} of model.onnx "
        "(an incomplete copy?); downloading instead"
    ]
    assert hub_file.read_bytes() == PAYLOAD[:1000]
    with pytest.warns(RuntimeWarning, match="ignoring"), fetched(_entry(url)):
        pass  # without a callback, a Python warning


def test_invalid_timeout_setting_is_a_clear_error(http_server, monkeypatch):
    monkeypatch.setenv("STYLIZE_DOWNLOAD_TIMEOUT", "soon")
    with (
        pytest.raises(StylizeError, match="STYLIZE_DOWNLOAD_TIMEOUT"),
        fetched(_entry(http_server.add("model.onnx", PAYLOAD))),
    ):
        pass


def test_a_connection_closed_early_is_an_incomplete_download(http_server):
    http_server.add("model.onnx", PAYLOAD)
    url = http_server.cut("model.onnx", after_bytes=len(PAYLOAD) // 2)
    with pytest.raises(StylizeError, match="incomplete download") as caught, fetched(_entry(url)):
        pass
    assert f"{len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes" in str(caught.value)
    assert "checksum" not in str(caught.value)
    assert _leftovers() == []


def test_the_size_is_checked_as_well_as_a_checksum_prefix(http_server):
    # torch hub publishes only 8 hex digits of a checksum: the pinned size backs them up.
    url = http_server.add("model.onnx", PAYLOAD)
    prefix = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    entry = _entry(url, sha256=prefix, size=len(PAYLOAD) + 10)
    with pytest.raises(StylizeError, match="incomplete download") as caught, fetched(entry):
        pass
    assert f"{len(PAYLOAD)} of {len(PAYLOAD) + 10} bytes" in str(caught.value)
    with fetched(_entry(url, sha256=prefix)) as (path, digest):
        assert path.read_bytes() == PAYLOAD and digest.startswith(prefix)
