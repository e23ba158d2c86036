"""The catalog of downloadable models, kept as data in `catalog.json` next to this module."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

from stylize.errors import StylizeError
from stylize.store.modelfile import KINDS

# Torch hub names its files after the first 8+ hex digits of their sha256 and publishes nothing
# more, so a catalog checksum may be such a prefix instead of the full digest.
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str
    url: str
    sha256: str
    size: int
    license: str
    description: str
    file_name: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StylizeError(f"catalog entry {self.name!r}: unknown kind {self.kind!r}")
        if not _SHA256_PATTERN.fullmatch(self.sha256):
            raise StylizeError(f"catalog entry {self.name!r}: sha256 must be 8 to 64 hex digits")
        if self.size <= 0:
            raise StylizeError(f"catalog entry {self.name!r}: size must be positive")
        if not self.file_name or "/" in self.file_name or "\\" in self.file_name:
            raise StylizeError(f"catalog entry {self.name!r}: file_name must be a plain name")

    def checksum_matches(self, sha256_hex: str) -> bool:
        """Whether a file's full sha256 agrees with this entry's (possibly prefix) checksum."""
        return sha256_hex.lower().startswith(self.sha256)


def load_catalog() -> dict[str, CatalogEntry]:
    """The packaged catalog, by entry name, in catalog order."""
    text = resources.files("stylize.store").joinpath("catalog.json").read_text(encoding="utf-8")
    try:
        entries = json.loads(text)["entries"]
        return {item["name"]: CatalogEntry(**item) for item in entries}
    except (ValueError, KeyError, TypeError) as error:
        raise StylizeError(
            f"the packaged model catalog is damaged ({error}); reinstall stylize"
        ) from None
