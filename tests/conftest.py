"""Fixtures shared by all tests: an isolated store, tiny images, random VGG19 weights, the CLI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stylize.store.catalog import CatalogEntry


@pytest.fixture(autouse=True)
def stylize_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty store and torch hub folder; nothing touches the user's."""
    home = tmp_path_factory.mktemp("stylize-home")
    monkeypatch.setenv("STYLIZE_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch-home"))
    monkeypatch.delenv("STYLIZE_MODEL_MIRROR", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    return home


@pytest.fixture(scope="session")
def random_vgg_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout VGG19 state dict (features only) with random weights."""
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["E"])
    state = {f"features.{key}": value for key, value in features.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def _vgg_template(tmp_path_factory: pytest.TempPathFactory, random_vgg_pth: Path) -> Path:
    """A store holding the random VGG19, imported once per session with --trust."""
    from stylize.store.registry import import_model

    home = tmp_path_factory.mktemp("vgg-store")
    previous = os.environ.get("STYLIZE_HOME")
    os.environ["STYLIZE_HOME"] = str(home)
    try:
        import_model(random_vgg_pth, name="vgg19", trust=True)
    finally:
        if previous is None:
            del os.environ["STYLIZE_HOME"]
        else:
            os.environ["STYLIZE_HOME"] = previous
    return home


@pytest.fixture
def vgg_home(stylize_home: Path, _vgg_template: Path) -> Path:
    """The test's store, with the random VGG19 installed as `vgg19`."""
    target = stylize_home / "models"
    target.mkdir(parents=True, exist_ok=True)
    for file in (_vgg_template / "models").iterdir():
        try:
            os.link(file, target / file.name)
        except OSError:
            shutil.copy2(file, target / file.name)
    return stylize_home


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Writes a small smooth test image and returns its path."""
    from PIL import Image

    def make(
        name: str = "image.png", size: tuple[int, int] = (48, 32), mode: str = "RGB", seed: int = 0
    ) -> Path:
        import numpy as np

        rng = np.random.default_rng(seed)
        width, height = size
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack(
            [
                x * 255 / max(width - 1, 1),
                y * 255 / max(height - 1, 1),
                (x + y) * 127 / max(width + height - 2, 1),
            ],
            axis=-1,
        )
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype("uint8")
        image = Image.fromarray(pixels, "RGB")
        if mode != "RGB":
            image = image.convert(mode)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        return path

    return make


@pytest.fixture
def cli() -> Callable[..., object]:
    """Runs the real CLI in-process: cli("models", "list") -> Result (exit_code, stdout,
    stderr)."""
    from cli_runner import run_cli

    def run(*args: object, input: str | bytes | None = None):
        return run_cli(args, input=input)

    return run


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 serving files from `root`, able to misbehave on
    request: redirect, fail with a status, hang (for timeouts) or send slowly. `requests`
    counts GET requests by path."""

    def __init__(self, root: Path) -> None:
        import threading
        from collections import Counter
        from http.server import ThreadingHTTPServer

        self.root = root
        self.requests: Counter[str] = Counter()
        self._redirects: dict[str, str] = {}
        self._failures: dict[str, int] = {}
        self._hangs: dict[str, int] = {}
        self._cut: dict[str, int] = {}
        self._slow: dict[str, float] = {}
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _LocalHandler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def add(self, path: str, content: bytes | Path) -> str:
        """Serves `content` at `path`; returns its URL."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
        return self.url(path)

    def redirect(self, path: str, location: str) -> str:
        self._redirects[path] = location
        return self.url(path)

    def fail(self, path: str, status: int) -> str:
        self._failures[path] = status
        return self.url(path)

    def hang(self, path: str, after_bytes: int = 0) -> str:
        """Requests for `path` stall after `after_bytes` bytes of the body until the server stops
        (with no headers at all when `after_bytes` is 0)."""
        self._hangs[path] = after_bytes
        return self.url(path)

    def cut(self, path: str, after_bytes: int) -> str:
        """Requests for `path` announce the whole body but close after `after_bytes` bytes."""
        self._cut[path] = after_bytes
        return self.url(path)

    def slow(self, path: str, seconds: float) -> str:
        """The body of `path` trickles out over about `seconds`."""
        self._slow[path] = seconds
        return self.url(path)

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


class _LocalHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        import time
        from urllib.parse import urlsplit

        owner: LocalServer = self.server.owner  # type: ignore[attr-defined]
        path = urlsplit(self.path).path.lstrip("/")
        owner.requests[path] += 1
        if path in owner._redirects:
            self.send_response(302)
            self.send_header("Location", owner._redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in owner._failures:
            self.send_error(owner._failures[path])
            return
        file = owner.root / path
        if file.is_dir():
            file = file / "index.html"  # a folder's page, as a package index serves it
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        if owner._hangs.get(path) == 0:
            owner._release.wait()
            return
        self.send_response(200)
        html = file.suffix == ".html"
        self.send_header("Content-Type", "text/html" if html else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if path in owner._cut:
                self.wfile.write(data[: owner._cut[path]])
                self.wfile.flush()
                self.close_connection = True
            elif path in owner._hangs:
                self.wfile.write(data[: owner._hangs[path]])
                self.wfile.flush()
                owner._release.wait()
            elif path in owner._slow:
                pieces = 20
                step = -(-len(data) // pieces)
                for start in range(0, len(data), step):
                    self.wfile.write(data[start : start + step])
                    self.wfile.flush()
                    time.sleep(owner._slow[path] / pieces)
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A local HTTP server for download tests; see LocalServer."""
    server = LocalServer(tmp_path_factory.mktemp("served"))
    yield server
    server.close()


class LocalCatalog:
    """The model catalog as tests see it: empty until entries are served or added."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.entries: dict[str, CatalogEntry] = {}

    def serve(
        self, name: str, file: Path, *, kind: str = "style", license: str = "test-license"
    ) -> CatalogEntry:
        """Serves `file` over HTTP and lists it as the catalog entry `name` with its real
        checksum and size."""
        import hashlib

        from stylize.store.catalog import CatalogEntry

        data = file.read_bytes()
        entry = CatalogEntry(
            name=name,
            kind=kind,
            url=self.server.add(f"files/{file.name}", file),
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            license=license,
            description=f"test entry {name}",
            file_name=file.name,
        )
        return self.add(entry)

    def add(self, entry: CatalogEntry) -> CatalogEntry:
        self.entries[entry.name] = entry
        return entry


@pytest.fixture
def local_catalog(http_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalCatalog:
    """Replaces the packaged catalog with test entries served by `http_server`, so no test
    reaches the internet: `local_catalog.serve("candy", path)` then `pull("candy")`."""
    from stylize.store import catalog

    local = LocalCatalog(http_server)
    monkeypatch.setattr(catalog, "load_catalog", lambda: dict(local.entries))
    monkeypatch.setenv("STYLIZE_DOWNLOAD_TIMEOUT", "5")
    return local
