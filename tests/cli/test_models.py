import hashlib
import json
import os
import subprocess
import sys

import pytest

from stylize.store.modelfile import read_model_meta
from stylize.store.registry import install_model, model_path


def _install_trained(name: str = "my-style") -> None:
    import torch

    install_model(name, {"weight": torch.zeros(2)}, {"kind": "style", "source": "trained"})


def test_list_shows_catalog_entries(cli):
    result = cli("models", "list")
    assert result.exit_code == 0, result.stderr
    for name in ("vgg19", "candy", "mosaic", "rain-princess", "udnie", "pointilism"):
        assert name in result.stdout
    assert "BSD-3-Clause" in result.stdout
    assert "(574.7 MB)" in result.stdout
    assert result.stderr == ""


def test_list_json_merges_catalog_and_local_models(cli, vgg_home):
    _install_trained()
    result = cli("models", "list", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert list(rows)[:8] == [
        "vgg19",
        "multistyle26",
        "arbitrary",
        "candy",
        "mosaic",
        "rain-princess",
        "udnie",
        "pointilism",
    ]
    assert rows["vgg19"]["installed"] is True
    assert rows["vgg19"]["source"] == "imported"
    assert rows["vgg19"]["size"] == model_path("vgg19").stat().st_size
    assert rows["vgg19"]["download_size"] == 574673361
    assert rows["vgg19"]["license"] == "", "an unverified import has no known license"
    assert rows["candy"]["installed"] is False
    assert rows["candy"]["source"] == "catalog"
    assert rows["candy"]["size"] is None
    assert rows["my-style"] == {
        "name": "my-style",
        "kind": "style",
        "source": "trained",
        "installed": True,
        "size": model_path("my-style").stat().st_size,
        "download_size": None,
        "license": "",
        "description": "",
        "path": str(model_path("my-style")),
        "problem": None,
    }


def test_list_reports_a_damaged_model_file_without_failing(cli, stylize_home):
    (stylize_home / "models").mkdir()
    (stylize_home / "models" / "broken.safetensors").write_bytes(b"garbage!garbage!")
    result = cli("models", "list")
    assert result.exit_code == 0
    assert "broken" in result.stdout
    assert "broken.safetensors is not a safetensors file" in result.stderr


def test_list_and_info_do_not_import_torch(vgg_home):
    code = (
        "import sys\n"
        "from stylize.cli import main\n"
        "for command in (['list'], ['list', '--json'], ['info', 'vgg19']):\n"
        "    try:\n"
        "        main(['models', *command])\n"
        "    except SystemExit as exit:\n"
        "        assert not exit.code, exit.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'torchvision' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, "STYLIZE_HOME": str(vgg_home)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert completed.returncode == 0, completed.stderr
    assert "vgg19" in completed.stdout
    assert completed.stdout.strip().endswith("ok")


def test_pull_shows_progress_on_stderr_and_path_on_stdout(cli, random_vgg_pth, local_catalog):
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    result = cli("models", "pull", "vgg19")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(model_path("vgg19"))
    assert "downloading vgg19" in result.stderr
    assert "Installed vgg19" in result.stderr

    again = cli("models", "pull", "vgg19", "-q")
    assert again.exit_code == 0
    assert again.stdout.strip() == str(model_path("vgg19"))
    assert again.stderr == ""
    assert local_catalog.server.requests["files/vgg19-random.pth"] == 1


def test_quiet_pull_prints_only_the_path(cli, random_vgg_pth, local_catalog):
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    result = cli("models", "pull", "--quiet", "vgg19")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(model_path("vgg19"))
    assert result.stderr == ""


def test_pull_failure_is_one_line_naming_the_url(cli, random_vgg_pth, local_catalog):
    entry = local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    local_catalog.server.fail("files/vgg19-random.pth", 404)
    result = cli("models", "pull", "-q", "vgg19")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert entry.url in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not model_path("vgg19").exists()


def test_pull_unknown_name_is_a_usage_error(cli, local_catalog):
    result = cli("models", "pull", "nope")
    assert result.exit_code == 2
    assert "not in the catalog: nope" in result.stderr


def test_import_untrusted_vgg19_needs_trust(cli, random_vgg_pth):
    refused = cli("models", "import", random_vgg_pth)
    assert refused.exit_code == 1
    assert "--trust" in refused.stderr
    assert not model_path("vgg19").exists()

    accepted = cli("models", "import", random_vgg_pth, "--trust")
    assert accepted.exit_code == 0, accepted.stderr
    assert accepted.stdout.strip() == str(model_path("vgg19"))
    assert "warning:" in accepted.stderr and "results will differ" in accepted.stderr
    assert read_model_meta(model_path("vgg19"))["trusted"] is False


def test_import_published_vgg19_has_no_warning(cli, random_vgg_pth, local_catalog):
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    result = cli("models", "import", random_vgg_pth)
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr
    assert "Imported vgg19 (loss-network)" in result.stderr


def test_import_style_model_names_it_after_the_file(cli, tmp_path):
    import torch

    from stylize.engine.transformer import TransformerConfig, TransformerNet

    network = TransformerNet(TransformerConfig(channels=(4, 8, 8), residual_blocks=1))
    path = tmp_path / "Starry Night.pth"
    torch.save(network.state_dict(), path)
    result = cli("models", "import", path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(model_path("starry-night"))
    assert "Imported starry-night (style)" in result.stderr
    meta = read_model_meta(model_path("starry-night"))
    assert meta["source"] == "imported"
    assert meta["original_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_of_a_file_that_is_no_model_is_one_line(cli, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model")
    result = cli("models", "import", path, "--trust")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_import_name_and_overwrite(cli, vgg_home, random_vgg_pth):
    taken = cli("models", "import", random_vgg_pth, "--trust")
    assert taken.exit_code == 1
    assert "already installed" in taken.stderr
    replaced = cli("models", "import", random_vgg_pth, "--trust", "--overwrite")
    assert replaced.exit_code == 0, replaced.stderr
    named = cli("models", "import", random_vgg_pth, "--trust", "--name", "vgg19-random")
    assert named.exit_code == 0, named.stderr
    assert named.stdout.strip() == str(model_path("vgg19-random"))


@pytest.mark.parametrize(
    "arguments", [["--name", "Bad Name"], ["--name", "../escape"]], ids=["spaces", "path"]
)
def test_import_invalid_name_is_a_usage_error(cli, random_vgg_pth, arguments):
    result = cli("models", "import", random_vgg_pth, "--trust", *arguments)
    assert result.exit_code == 2
    assert "invalid model name" in result.stderr


def test_import_missing_file_is_a_usage_error(cli, tmp_path):
    result = cli("models", "import", tmp_path / "missing.pth")
    assert result.exit_code == 2


def test_info_shows_path_checksum_and_metadata(cli, vgg_home):
    path = model_path("vgg19")
    result = cli("models", "info", "vgg19")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"path: {path}" in lines
    assert f"sha256: {hashlib.sha256(path.read_bytes()).hexdigest()}" in lines
    assert "  trusted: no" in lines
    # Not torchvision's published file, so the catalog's URL and checksum are not about it.
    assert "catalog: -" in lines

    as_json = json.loads(cli("models", "info", "vgg19", "--json").stdout)
    assert as_json["path"] == str(path)
    assert as_json["installed"] is True
    assert as_json["metadata"]["kind"] == "loss-network"
    assert as_json["metadata"]["format"] == 1
    assert as_json["catalog"] is None
    assert as_json["license"] == "", "an unverified import has no known license"


def test_info_of_catalog_entry_not_installed(cli):
    result = json.loads(cli("models", "info", "candy", "--json").stdout)
    assert result["installed"] is False
    assert result["path"] is None
    assert result["license"] == "BSD-3-Clause"
    assert result["catalog"]["size"] == 6728029


def test_info_unknown_model_fails(cli):
    result = cli("models", "info", "nothing-here")
    assert result.exit_code == 1
    assert "no model named 'nothing-here'" in result.stderr


def test_remove(cli, vgg_home):
    result = cli("models", "remove", "vgg19")
    assert result.exit_code == 0
    assert not model_path("vgg19").exists()
    again = cli("models", "remove", "vgg19")
    assert again.exit_code == 1
    assert "no model named 'vgg19' is installed" in again.stderr
    assert cli("models", "remove", "../vgg19").exit_code == 2


def test_path_prints_the_store_folder(cli, stylize_home):
    result = cli("models", "path")
    assert result.exit_code == 0
    assert result.stdout.strip() == str(stylize_home)


def _style_file(tmp_path, name: str):
    import torch

    from stylize.engine.transformer import TransformerConfig, TransformerNet

    path = tmp_path / name
    torch.save(
        TransformerNet(TransformerConfig(channels=(4, 8, 8), residual_blocks=1)).state_dict(), path
    )
    return path


def test_a_style_model_cannot_be_imported_as_the_loss_network(cli, vgg_home, tmp_path):
    before = model_path("vgg19").read_bytes()
    result = cli("models", "import", _style_file(tmp_path, "style.pth"), "--name", "vgg19",
                 "--overwrite")  # fmt: skip
    assert result.exit_code == 1
    assert "'vgg19' is the catalog's loss-network" in result.stderr
    assert model_path("vgg19").read_bytes() == before


def test_importing_over_a_catalog_style_needs_overwrite_and_info_tells_them_apart(cli, tmp_path):
    style = _style_file(tmp_path, "candy.pth")
    refused = cli("models", "import", style)
    assert refused.exit_code == 1
    assert "'candy' is a catalog style" in refused.stderr and "--name" in refused.stderr
    assert not model_path("candy").exists()

    assert cli("models", "import", style, "--overwrite").exit_code == 0
    info = cli("models", "info", "candy")
    assert info.exit_code == 0, info.stderr
    assert "source: imported" in info.stdout.splitlines()
    assert "catalog: -" in info.stdout.splitlines()
    assert "candy-9.onnx" not in info.stdout


def test_pull_tries_every_name_and_reports_each_failure(cli, tmp_path, local_catalog):
    first, second = _style_file(tmp_path, "first.pth"), _style_file(tmp_path, "second.pth")
    broken = local_catalog.serve("candy", first)
    local_catalog.serve("mosaic", second)
    local_catalog.server.fail("files/first.pth", 404)
    result = cli("models", "pull", "candy", "mosaic")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [str(model_path("mosaic"))]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert errors[0].startswith(f"error: could not download {broken.url}: HTTP 404")
    assert errors[1] == "error: 1 of 2 models could not be installed: candy"
    assert "Installed mosaic" in result.stderr
    assert model_path("mosaic").exists() and not model_path("candy").exists()


def test_a_pull_waiting_for_another_process_says_so(cli, tmp_path, local_catalog):
    import threading
    import time

    import torch
    from filelock import FileLock

    from stylize.store.paths import cache_dir

    local_catalog.serve("candy", _style_file(tmp_path, "candy.pth"))
    (cache_dir() / "locks").mkdir(parents=True)
    held = threading.Event()

    def other_process() -> None:
        with FileLock(cache_dir() / "locks" / "candy.lock"):
            held.set()
            time.sleep(0.5)
            install_model(
                "candy", {"weight": torch.zeros(2)}, {"kind": "style", "source": "catalog"}
            )

    worker = threading.Thread(target=other_process)
    worker.start()
    held.wait(10)
    result = cli("models", "pull", "candy")
    worker.join(10)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(model_path("candy"))
    assert result.stderr.splitlines() == [
        "another stylize process is installing candy; waiting for it to finish",
        "candy is already installed (by another process meanwhile)",
    ]
    assert local_catalog.server.requests["files/candy.pth"] == 0


def test_pull_says_checking_for_a_local_copy_and_warns_when_it_is_rejected(
    cli, random_vgg_pth, local_catalog, stylize_home
):
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    hub_file = stylize_home / "torch-home" / "hub" / "checkpoints" / random_vgg_pth.name
    hub_file.parent.mkdir(parents=True)
    data = bytearray(random_vgg_pth.read_bytes())
    data[-100] ^= 0xFF
    hub_file.write_bytes(bytes(data))
    result = cli("models", "pull", "vgg19")
    assert result.exit_code == 0, result.stderr
    assert "checking vgg19" in result.stderr
    assert "downloading vgg19" in result.stderr
    assert f"warning: ignoring {hub_file}: its sha256" in " ".join(result.stderr.split())
    assert local_catalog.server.requests[f"files/{random_vgg_pth.name}"] == 1

    model_path("vgg19").unlink()
    hub_file.write_bytes(random_vgg_pth.read_bytes())
    result = cli("models", "pull", "vgg19")
    assert result.exit_code == 0, result.stderr
    assert "checking vgg19" in result.stderr
    assert "downloading" not in result.stderr and "warning" not in result.stderr
    assert local_catalog.server.requests[f"files/{random_vgg_pth.name}"] == 1


def test_a_full_disk_is_one_clear_line(cli, random_vgg_pth, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('IoError(Os { code: 28, message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save", full)
    result = cli("models", "import", random_vgg_pth, "--trust")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: cannot install vgg19: no space left on device in {model_path('vgg19').parent}"
    )


def test_info_shows_the_size_of_an_embedded_picture_not_its_text(cli):
    import base64

    import torch

    picture = bytes(range(256)) * 9  # 2.3 kB, like a trained model's style thumbnail
    thumbnail = "data:image/jpeg;base64," + base64.b64encode(picture).decode("ascii")
    meta = {"kind": "style", "source": "trained", "thumbnail": thumbnail}
    install_model("painted", {"weight": torch.zeros(2)}, meta)
    result = cli("models", "info", "painted")
    assert result.exit_code == 0, result.stderr
    assert "  thumbnail: (JPEG image, 2.3 kB; in --json)" in result.stdout.splitlines()
    assert "base64" not in result.stdout
    as_json = json.loads(cli("models", "info", "painted", "--json").stdout)
    assert as_json["metadata"]["thumbnail"] == thumbnail
