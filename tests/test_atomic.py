"""The one atomic-write helper: all or nothing, no temporaries left, existing files kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stylize.atomic import atomic_path, atomic_write
from stylize.errors import StylizeError


def test_writes_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with atomic_write(path, "w", encoding="utf-8") as file:
        file.write("hello")
        assert not path.exists()  # nothing is visible until the end
        (temporary,) = tmp_path.iterdir()
        assert temporary.name.startswith(".out.txt.") and temporary.name.endswith(".tmp")
    assert path.read_text(encoding="utf-8") == "hello"
    assert [item.name for item in tmp_path.iterdir()] == ["out.txt"]


def test_an_existing_file_is_kept_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    refused = r"out\.bin already exists; pass --overwrite"
    with pytest.raises(StylizeError, match=refused), atomic_write(path):
        pass
    assert path.read_bytes() == b"old"
    with atomic_write(path, overwrite=True) as file:
        file.write(b"new")
    assert path.read_bytes() == b"new"


def test_a_file_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with pytest.raises(StylizeError, match="already exists"), atomic_write(path) as file:
        file.write(b"mine")
        path.write_bytes(b"theirs")
    assert path.read_bytes() == b"theirs"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, failure: BaseException
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")
    with pytest.raises(type(failure)), atomic_path(path, overwrite=True) as temporary:
        temporary.write_bytes(b"partial")
        raise failure
    assert path.read_bytes() == b"old"
    assert [item.name for item in tmp_path.iterdir()] == ["model.bin"]


def test_atomic_path_is_for_writers_that_open_the_file_themselves(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    with atomic_path(path) as temporary:
        assert temporary.parent == tmp_path and temporary.exists()
        temporary.write_bytes(b"weights")
    assert path.read_bytes() == b"weights"
    assert [item.name for item in tmp_path.iterdir()] == ["weights.bin"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_files_get_umask_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    with atomic_path(tmp_path / "a.bin") as temporary:
        temporary.write_bytes(b"a")
    with atomic_write(tmp_path / "b.bin") as file:
        file.write(b"b")
    for name in ("a.bin", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_whole_files_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "log.csv", "a"):
        pass
    assert list(tmp_path.iterdir()) == []
