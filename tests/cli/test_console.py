import pytest

from stylize.cli import _console


def test_download_bar_shows_nothing_when_nothing_is_downloaded(capsys):
    with _console.download_progress("downloading vgg19"):
        pass
    assert capsys.readouterr().err == ""


def test_download_bar_appears_on_the_first_report(capsys):
    with _console.download_progress("downloading vgg19") as update:
        update(512, 1024)
    assert "downloading vgg19" in capsys.readouterr().err


def test_messages_are_not_read_as_markup(capsys):
    _console.error("cannot read /tmp/q[/i]/v[b].pth")
    assert "/tmp/q[/i]/v[b].pth" in capsys.readouterr().err


def test_unexpected_errors_are_one_line_with_a_debug_hint(cli, monkeypatch):
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("stylize.store.paths.data_dir", broken)
    result = cli("models", "path")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: unexpected RuntimeError: boom (for details, run again as 'stylize --debug "
        "COMMAND ...')"
    ]
    monkeypatch.setattr(_console, "_debug", False)
    with pytest.raises(RuntimeError, match="boom"):
        cli("--debug", "models", "path")
