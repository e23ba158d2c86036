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


# Temporaries: one naming scheme, removed however the process ends, stale ones found later.


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _age(path: Path, seconds: float) -> None:
    import time

    then = time.time() - seconds
    os.utime(path, (then, then))


def test_temporaries_name_their_process(tmp_path: Path) -> None:
    from stylize.atomic import TEMPORARY_NAME, scratch_file, scratch_folder

    with atomic_write(tmp_path / "out.txt") as file:
        (temporary,) = tmp_path.iterdir()
        file.write(b"x")
    match = TEMPORARY_NAME.fullmatch(temporary.name)
    assert match is not None and match["name"] == "out.txt" and match["pid"] == str(os.getpid())

    with scratch_file(tmp_path / "candy-9.onnx") as path:
        assert path.parent == tmp_path and path.is_file()
        assert TEMPORARY_NAME.fullmatch(path.name)["name"] == "candy-9.onnx"
    with scratch_folder(tmp_path / "wheel.whl") as folder:
        assert folder.is_dir() and TEMPORARY_NAME.fullmatch(folder.name)["pid"] == str(os.getpid())
        (folder / "inside").write_bytes(b"x")
    assert [item.name for item in tmp_path.iterdir()] == ["out.txt"]


def test_scratch_files_go_when_their_block_fails(tmp_path: Path) -> None:
    from stylize.atomic import scratch_file, scratch_folder

    with pytest.raises(KeyboardInterrupt), scratch_file(tmp_path / "download.bin") as path:
        path.write_bytes(b"partial")
        raise KeyboardInterrupt
    with pytest.raises(OSError), scratch_folder(tmp_path / "pip") as folder:
        (folder / "partial.whl").write_bytes(b"x")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """What `kill -9` leaves: a temporary whose process is gone. It is removed once it has not
    changed for a while; a live process's, a fresh one and other files are kept."""
    from stylize.atomic import STALE_AFTER_S, remove_stale_temporaries

    dead = _dead_pid()
    stale_file = tmp_path / f".candy-9.onnx.{dead}.0123abcd.tmp"
    stale_file.write_bytes(b"half a download")
    stale_folder = tmp_path / f".wheel.whl.{dead}.4567cdef.tmp"
    (stale_folder / "sub").mkdir(parents=True)
    (stale_folder / "sub" / "piece").write_bytes(b"x")
    fresh = tmp_path / f".mosaic-9.onnx.{dead}.89abcdef.tmp"
    fresh.write_bytes(b"just written")
    alive = tmp_path / f".udnie-9.onnx.{os.getppid()}.0badcafe.tmp"
    alive.write_bytes(b"another process is downloading this")
    mine = tmp_path / f".vgg19.safetensors.{os.getpid()}.deadbeef.tmp"
    mine.write_bytes(b"this process is writing this")
    others = [tmp_path / "candy.safetensors", tmp_path / ".hidden", tmp_path / ".a.1.tmp"]
    for path in others:
        path.write_bytes(b"not a temporary")
    for path in (stale_file, stale_folder / "sub" / "piece", stale_folder / "sub", stale_folder):
        _age(path, STALE_AFTER_S + 60)
    for path in (alive, mine, *others):
        _age(path, 10 * STALE_AFTER_S)

    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_folder])
    assert sorted(item.name for item in tmp_path.iterdir()) == sorted(
        item.name for item in (fresh, alive, mine, *others)
    )


def test_a_stale_folder_with_recent_contents_is_kept(tmp_path: Path) -> None:
    from stylize.atomic import STALE_AFTER_S, remove_stale_temporaries

    folder = tmp_path / f".wheel.whl.{_dead_pid()}.4567cdef.tmp"
    folder.mkdir()
    (folder / "still-growing").write_bytes(b"x")
    _age(folder, STALE_AFTER_S + 60)
    assert remove_stale_temporaries(tmp_path) == []


def test_names_of_earlier_versions_go_after_a_day(tmp_path: Path) -> None:
    import re

    from stylize.atomic import UNKNOWN_OWNER_STALE_AFTER_S, remove_stale_temporaries

    old, recent = tmp_path / ".tmpAb12Cd", tmp_path / ".tmpXy34Zw"
    for path in (old, recent):
        path.write_bytes(b"safetensors' own temporary")
    _age(old, UNKNOWN_OWNER_STALE_AFTER_S + 60)
    _age(recent, 3600)
    assert remove_stale_temporaries(tmp_path, legacy=re.compile(r"\.tmp\w{6}")) == [old]
    assert remove_stale_temporaries(tmp_path) == []
    assert [item.name for item in tmp_path.iterdir()] == [recent.name]


def _run_child(code: str, tmp_path: Path):
    import subprocess
    import sys
    import textwrap

    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_removes_the_temporaries_of_a_process(tmp_path: Path) -> None:
    import signal

    child = _run_child(
        """
        import sys, time
        from pathlib import Path
        from stylize.atomic import install_sigterm_handler, scratch_file, scratch_folder
        install_sigterm_handler()
        folder = Path(sys.argv[1])
        with scratch_file(folder / "download.bin") as path, scratch_folder(folder / "pip"):
            path.write_bytes(b"partial")
            print(path, flush=True)
            time.sleep(60)
        """,
        tmp_path,
    )
    path = Path(child.stdout.readline().strip())
    assert path.exists()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM, child.stderr.read()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_kill_9_leaves_a_temporary_that_the_next_cleanup_removes(tmp_path: Path) -> None:
    import signal
    import time

    from stylize.atomic import STALE_AFTER_S, remove_stale_temporaries

    child = _run_child(
        """
        import sys, time
        from pathlib import Path
        from stylize.atomic import install_sigterm_handler, scratch_file
        install_sigterm_handler()
        with scratch_file(Path(sys.argv[1]) / "download.bin") as path:
            print(path, flush=True)
            time.sleep(60)
        """,
        tmp_path,
    )
    path = Path(child.stdout.readline().strip())
    assert remove_stale_temporaries(tmp_path, now=time.time() + 2 * STALE_AFTER_S) == []
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert path.exists(), "nothing runs on kill -9"
    assert remove_stale_temporaries(tmp_path) == [], "too recent: may belong to another machine"
    assert remove_stale_temporaries(tmp_path, now=time.time() + 2 * STALE_AFTER_S) == [path]
    assert list(tmp_path.iterdir()) == []


def test_temporaries_left_open_go_at_exit(tmp_path: Path) -> None:
    child = _run_child(
        """
        import sys
        from pathlib import Path
        from stylize.atomic import scratch_file
        block = scratch_file(Path(sys.argv[1]) / "download.bin")
        block.__enter__().write_bytes(b"never closed")
        sys.exit(3)
        """,
        tmp_path,
    )
    assert child.wait(timeout=30) == 3, child.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_recognized_by_code_and_by_text(tmp_path: Path) -> None:
    import errno

    from safetensors import SafetensorError

    from stylize.atomic import NoSpaceError, is_no_space, no_space_error

    assert is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_no_space(OSError(errno.EACCES, "Permission denied"))
    assert is_no_space(SafetensorError('IoError(Os { code: 28, message: "No space left" })'))
    assert not is_no_space(SafetensorError("invalid header"))
    error = no_space_error(OSError(errno.ENOSPC, "full"), tmp_path, "cannot write x")
    assert isinstance(error, NoSpaceError) and isinstance(error, StylizeError)
    assert str(error) == f"cannot write x: no space left on device in {tmp_path}"
    assert str(error.about("cannot install candy")) == (
        f"cannot install candy: no space left on device in {tmp_path}"
    )


def test_one_detector_of_full_disks_serves_the_store_and_training(tmp_path: Path) -> None:
    import errno

    from stylize.atomic import NoSpaceError, is_no_space, no_space_error, no_space_reason
    from stylize.engine.training import failures

    # torch.save's short-write check says nothing of the disk; the store now knows it too.
    torch_full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7 vs 5")
    assert is_no_space(torch_full)
    assert str(no_space_error(torch_full, tmp_path, "cannot write x")) == (
        f"cannot write x: no space left on device in {tmp_path}"
    )
    assert not is_no_space(RuntimeError("[enforce fail at inline_container.cc:300] . bad zip"))
    # A quota is worded the same way everywhere.
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert no_space_reason(quota) == "no space left on device (disk quota exceeded)"
    assert str(no_space_error(quota, tmp_path, "cannot write x")) == (
        f"cannot write x: no space left on device (disk quota exceeded) in {tmp_path}"
    )
    # A full disk behind another error is still a full disk.
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise StylizeError("cannot write model.safetensors") from None
    except StylizeError as error:
        assert is_no_space(error)
    assert isinstance(no_space_error(quota, tmp_path, "x"), NoSpaceError)
    # Training asks the same function.
    assert failures.disk_full_reason is no_space_reason
