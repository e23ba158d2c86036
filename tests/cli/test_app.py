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


def test_module_entry_point_and_no_torch_import_for_help():
    code = (
        "import sys, runpy\n"
        "sys.argv = ['stylize', '--help']\n"
        "try:\n"
        "    runpy.run_module('stylize', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
        "assert 'torchvision' not in sys.modules\n"
        "print('ok')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().endswith("ok")


def test_unknown_option_is_a_usage_error(cli):
    result = cli("--no-such-option")
    assert result.exit_code == 2
