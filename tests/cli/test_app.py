import ast
import subprocess
import sys


def test_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("optimize", "train", "apply", "models"):
        assert command in result.stdout


def test_version(cli):
    from stylize import __version__

    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"stylize {__version__}"


def loaded_by(arguments: list[str], modules: set[str]) -> set[str]:
    """Which of `modules` a `stylize` command line imports, run in a fresh process."""
    code = (
        "import sys\n"
        "from stylize.cli import main\n"
        "try:\n"
        f"    main({arguments!r})\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        f"print(sorted({sorted(modules)!r} & sys.modules.keys()))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    return set(ast.literal_eval(completed.stdout.strip().splitlines()[-1]))


def test_no_torch_import_for_help():
    assert loaded_by(["--help"], {"torch", "torchvision"}) == set()


def test_the_command_ends_at_once_with_its_output_flushed_and_atexit_run():
    from stylize import __version__

    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "from stylize.cli import console_main\n"
        "sys.argv = ['stylize', *sys.argv[1:]]\n"
        "console_main()\n"
        "print('not reached')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.decode().split() == ["stylize", __version__, "atexit", "ran"]
    completed = subprocess.run([sys.executable, "-c", code, "--nonsense"], capture_output=True)
    assert completed.returncode == 2 and completed.stdout.decode() == "atexit ran\n"
    assert completed.stderr.decode().startswith("error: unrecognized arguments: --nonsense")


def test_the_command_waits_for_a_thread_still_working(tmp_path):
    done = tmp_path / "done"
    code = (
        "import sys, threading, time, pathlib\n"
        "from stylize.cli import console_main\n"
        f"work = lambda: (time.sleep(0.3), pathlib.Path({str(done)!r}).write_text('yes'))\n"
        "threading.Thread(target=work).start()\n"
        "sys.argv = ['stylize', '--version']\n"
        "console_main()\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert completed.returncode == 0, completed.stderr
    assert done.read_text() == "yes"


def test_the_module_runs_the_command():
    completed = subprocess.run(
        [sys.executable, "-m", "stylize", "models", "nonsense"], capture_output=True, text=True
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: ") and "nonsense" in completed.stderr


def test_unknown_option_is_a_usage_error(cli):
    result = cli("--no-such-option")
    assert result.exit_code == 2


def _completions(line: str, tmp_path) -> list[str]:
    """What the shell's completion (argcomplete's protocol) offers for `line`."""
    import os

    answer = tmp_path / "completions.txt"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
    }
    code = "from stylize.cli import main; main()"
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert completed.returncode == 0, completed.stderr
    return [word.strip() for word in answer.read_text().split("\n")]


def test_shell_completion_offers_commands_options_and_values(tmp_path):
    assert _completions("stylize ap", tmp_path) == ["apply"]
    assert _completions("stylize apply photo.jpg --ove", tmp_path) == ["--overwrite"]
    assert set(_completions("stylize models ", tmp_path)) >= {"list", "pull", "remove"}
    assert _completions("stylize apply photo.jpg --format ", tmp_path) == [
        "png", "jpg", "webp", "tiff"
    ]
    assert _completions("stylize sheet photo.jpg --device c", tmp_path) == ["cpu", "cuda"]


def test_show_completion_prints_code_for_the_shell(cli):
    result = cli("--show-completion", "bash")
    assert result.exit_code == 0, result.stderr
    assert "complete" in result.stdout and "stylize" in result.stdout
    assert cli("--show-completion", "cmd.exe").exit_code == 2


def test_a_command_loads_no_help_machinery_and_no_typer_or_pydantic():
    """Start-up is paid by every call of a shell loop: a command loads argparse only, Rich's
    help when help is printed."""
    unwanted = {"rich_argparse", "typer", "pydantic", "click", "torch"}
    assert loaded_by(["models", "path"], unwanted) == set()
    assert loaded_by(["--help"], {"rich_argparse"}) == {"rich_argparse"}  # the check can fail

def test_options_may_come_before_between_and_after_inputs(cli, tiny, make_image, tmp_path):
    first, second = make_image("a.png"), make_image("b.png")
    out = tmp_path / "out"
    result = cli("apply", "-q", first, "-s", tiny, second, "-o", f"{out}/", "--max-size", "32")
    assert result.exit_code == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["a.tiny.png", "b.tiny.png"]


def test_abbreviated_options_are_not_taken_for_whole_ones(cli, make_image):
    result = cli("apply", make_image("a.png"), "-s", "candy", "--over")
    assert result.exit_code == 2
    assert "unrecognized arguments: --over" in result.stderr
    assert "stylize apply -h" in result.stderr


def test_usage_errors_are_one_line(cli, make_image):
    for arguments in (
        ("apply", make_image("a.png")),  # no --style
        ("apply", make_image("a.png"), "-s", "candy", "--max-size", "8"),
        ("optimize",),
        ("nonsense",),
    ):
        result = cli(*arguments)
        assert result.exit_code == 2, arguments
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (
            result.stderr
        )


def test_a_closed_pipe_ends_the_command_quietly():
    code = (
        "import sys\n"
        "from stylize.cli import console_main\n"
        "sys.argv = ['stylize', 'models', 'path']\n"
        "console_main()\n"
    )
    reader = subprocess.Popen(["true"], stdin=subprocess.PIPE)
    reader.wait()
    completed = subprocess.run(
        [sys.executable, "-c", code], stdout=reader.stdin, stderr=subprocess.PIPE
    )
    reader.stdin.close()
    assert completed.returncode == 1
    assert completed.stderr == b""


def test_inputs_after_a_double_dash_may_start_with_a_dash(cli, tiny, make_image, monkeypatch):
    photo = make_image("-photo.png")
    monkeypatch.chdir(photo.parent)
    result = cli("apply", "-s", tiny, "-q", "--", "-photo.png")
    assert result.exit_code == 0, result.stderr
    assert (photo.parent / "-photo.tiny.png").is_file()
