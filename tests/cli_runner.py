"""Runs the real `stylize` command line in-process, as a user's shell would, with its own
standard streams: run_cli(["apply", ...], input=b"...") -> Result."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Result:
    exit_code: int
    stdout_bytes: bytes
    stderr_bytes: bytes

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace").replace("\r\n", "\n")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace").replace("\r\n", "\n")

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class MemoryStream(io.TextIOWrapper):
    """A standard stream over bytes in memory: text and `.buffer` for binary data, never a
    terminal (tests that need one patch `isatty`)."""

    def __init__(self, data: bytes = b"", name: str = "<stream>") -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8", errors="replace", write_through=True)
        self._stream_name = name

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._stream_name

    def isatty(self) -> bool:
        return False

    def captured(self) -> bytes:
        self.flush()
        return self.buffer.getvalue()  # type: ignore[attr-defined]


def run_cli(args: Sequence[object], input: bytes | str | None = None) -> Result:
    from stylize.cli import main

    data = input.encode() if isinstance(input, str) else (input or b"")
    streams = (
        MemoryStream(data, "<stdin>"),
        MemoryStream(name="<stdout>"),
        MemoryStream(name="<stderr>"),
    )
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = streams
    code = 0
    try:
        main([str(arg) for arg in args])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if isinstance(exit.code, str):
            streams[2].write(exit.code + "\n")
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return Result(code, streams[1].captured(), streams[2].captured())
