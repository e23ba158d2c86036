"""`stylize train` (being built; see the open issue)."""

from stylize.errors import StylizeError


def train() -> None:
    raise StylizeError("'stylize train' is not available yet in this version")
