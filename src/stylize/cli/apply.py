"""`stylize apply` (being built; see the open issue)."""

from stylize.errors import StylizeError


def apply() -> None:
    raise StylizeError("'stylize apply' is not available yet in this version")
