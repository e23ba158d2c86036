"""Errors that are reported to the user as one line, never as a traceback."""

import re

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# Lines of PyTorch's refusal that say how to load the file anyway (unpickling it), or where to
# read more, and the allow-list advice after its reason.
_ADVICE = re.compile(
    r"weights_only|Weights only load failed|^\(\d\)|Check the documentation|trusted source"
)
_UNPICKLER_PREFIX = "WeightsUnpickler error:"
_ALLOWLIST_ADVICE = re.compile(r"\.?\s*(?:Please use|Please file an issue)")


class StylizeError(Exception):
    """A failure the user can act on; the CLI prints the message and exits with code 1."""


def torch_load_refusal(error: BaseException) -> str:
    """Why `torch.load(weights_only=True)` refused a file, in one line and without PyTorch's
    advice to load it with `weights_only=False` or to allow-list its classes: that would run
    code from the file, which stylize never does."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not any(_ADVICE.search(line) for line in lines):
        return lines[0] if lines else type(error).__name__
    # PyTorch's reason sits among paragraphs on how to load the file anyway: keep the reason.
    # (PyTorch before 2.4 puts it all on one line, the reason after "WeightsUnpickler error:".)
    reasons = [
        line if not _ADVICE.search(line) else line.partition(_UNPICKLER_PREFIX)[2] for line in lines
    ]
    details = [
        _ALLOWLIST_ADVICE.split(reason.removeprefix(_UNPICKLER_PREFIX), maxsplit=1)[0].strip(" .")
        for reason in reasons
    ]
    detail = next((line for line in details if line), "")
    return (
        "it holds Python objects other than tensors and plain containers"
        + (f" ({detail})" if detail else "")
        + "; stylize reads only plain state dicts"
    )
