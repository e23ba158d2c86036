"""`stylize optimize` (being built; see the open issue)."""

from stylize.errors import StylizeError


def optimize() -> None:
    raise StylizeError("'stylize optimize' is not available yet in this version")
