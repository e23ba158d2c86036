"""Options every command shares: flags in --help, stray flag values, --device, style names."""

from __future__ import annotations

from pathlib import Path

import pytest

from style_nets import random_style_net
from stylize.engine.transformer import TransformerConfig

TINY = TransformerConfig(channels=(8, 16, 16), residual_blocks=1)


@pytest.fixture
def style(stylize_home: Path) -> str:
    """A random style model installed in the store as `tiny`."""
    from stylize.store.registry import install_model

    state = random_style_net(config=TINY).state_dict()
    install_model(
        "tiny", state, {"kind": "style", "source": "trained", "architecture": TINY.to_dict()}
    )
    return "tiny"


def unboxed(text: str) -> str:
    """Help and error text unwrapped into one line of words."""
    return " ".join(text.replace("│", " ").split())


def command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand, as the words that name it."""
    import argparse

    from stylize.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += walk(sub, (*path, name))
        return found

    return walk(build_parser(), ())


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(path) or "stylize")
def test_flags_show_no_value_in_help(cli, path):
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.stderr
    assert "-h" in result.stdout
    assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout


def test_help_still_shows_what_options_take(cli):
    help_text = unboxed(cli("optimize", "--help").stdout)
    assert "--quiet, -q Do not show progress" in help_text
    assert "--preserve-color Keep the content photo's colors." in help_text
    assert "--precision" in help_text and "auto|fp32|bf16|fp16" in help_text
    sheet = unboxed(cli("sheet", "--help").stdout)
    assert "[--precision {auto|fp32|bf16|fp16}]" in sheet  # in the usage line too
    # Ranges and defaults survive Rich, which would read "[x >= 1]" as markup.
    assert "rows. [x >= 1]" in sheet and "[32 <= x <= 1024; default: 256]" in sheet


@pytest.mark.parametrize(
    "arguments",
    [
        ("apply", "photo.png", "-s", "tiny", "--preserve-color", "true"),
        ("apply", "photo.png", "--recursive", "FALSE", "-s", "tiny"),
        ("optimize", "photo.png", "photo.png", "-o", "out.png", "-q", "true"),
        ("models", "list", "--json", "true"),
        ("--debug", "false", "models", "path"),
    ],
)
def test_a_value_after_a_flag_is_a_usage_error_not_a_missing_input(
    cli, make_image, tmp_path, monkeypatch, arguments
):
    make_image("photo.png")
    monkeypatch.chdir(tmp_path)
    result = cli(*arguments)
    assert result.exit_code == 2, result.stderr
    flag = next(arg for arg in arguments if arg.lower() in ("true", "false"))
    given = arguments[arguments.index(flag) - 1]
    assert f"'{given}': it is a flag, which takes no value; leave out '{flag}'" in unboxed(
        result.stderr
    )
    assert "not found" not in result.stderr


def test_a_file_named_true_after_a_flag_is_still_an_input(cli, style, make_image, monkeypatch):
    photo = make_image("photo.png")
    photo = photo.rename(photo.with_name("true"))
    monkeypatch.chdir(photo.parent)
    result = cli("apply", "-s", style, "--preserve-color", "true", "-o", "styled.png")
    assert "takes no value" not in result.stderr
    assert result.exit_code == 0, result.stderr
    assert (photo.parent / "styled.png").is_file()


def test_values_of_options_are_not_taken_for_flags(cli, style, make_image, monkeypatch):
    """`--output true` names a file; only a value right after a flag is refused."""
    photo = make_image("photo.png")
    monkeypatch.chdir(photo.parent)
    result = cli("apply", "photo.png", "-s", style, "-o", "true.png")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("command", ["optimize", "apply", "train", "sheet"])
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu0", ""])
def test_an_unknown_device_is_a_usage_error(cli, make_image, tmp_path, command, device):
    photo = str(make_image("photo.png"))
    arguments = {
        "optimize": [photo, photo, "-o", str(tmp_path / "out.png")],
        "apply": [photo, "-s", "candy"],
        "train": ["--style", photo, "--data", str(tmp_path)],
        "sheet": [photo],
    }[command]
    result = cli(command, *arguments, "--device", device)
    assert result.exit_code == 2, result.stderr
    message = unboxed(result.stderr)
    assert f"'--device': unknown device '{device}': choose auto, cpu, cuda, cuda:N" in message
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("device", ["CPU", " cpu ", "Auto"])
def test_device_names_are_read_as_the_engine_reads_them(cli, style, make_image, device):
    result = cli("apply", make_image("photo.png"), "-s", style, "--device", device)
    assert result.exit_code == 0, result.stderr


def test_a_device_this_machine_lacks_is_a_runtime_error(cli, style, make_image):
    import torch

    if torch.cuda.device_count() > 99:
        pytest.skip("this machine has a cuda:99")
    result = cli("apply", make_image("photo.png"), "-s", style, "--device", "cuda:99")
    assert result.exit_code == 1
    assert "device 'cuda:99' is not available" in result.stderr


def test_an_output_that_is_an_input_is_the_same_usage_error_in_apply_and_optimize(
    cli, style, make_image
):
    photo = make_image("photo.png")
    before = photo.read_bytes()
    applied = cli("apply", photo, "-s", style, "-o", photo, "--overwrite")
    optimized = cli("optimize", photo, photo, "-o", photo, "--overwrite")
    assert (applied.exit_code, optimized.exit_code) == (2, 2), applied.stderr + optimized.stderr
    assert "'--output': refusing to overwrite the input" in unboxed(applied.stderr)
    assert "'--output'" in unboxed(optimized.stderr)
    assert photo.read_bytes() == before


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("Candy", "candy"),  # a catalog network, not downloaded
        ("STARRY", "starry"),  # a named style of the multi-style network
        ("Multistyle26:3", "multistyle26:3"),
        ("Tiny", "tiny"),  # an installed model
    ],
)
def test_a_capitalised_style_name_suggests_the_name(cli, style, make_image, given, meant):
    result = cli("apply", make_image("photo.png"), "-s", given)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: no style named '{given}'; did you mean '{meant}'?"


def test_an_unknown_capitalised_style_is_still_a_missing_file(cli, make_image):
    result = cli("apply", make_image("photo.png"), "-s", "Nothing")
    assert result.exit_code == 1
    assert "style file not found: Nothing" in result.stderr
