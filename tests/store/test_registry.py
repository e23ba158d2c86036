import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
from dataclasses import asdict

import pytest
import torch

from stylize.errors import StylizeError
from stylize.store.modelfile import read_model_file, read_model_meta
from stylize.store.paths import cache_dir, models_dir
from stylize.store.registry import (
    import_model,
    install_model,
    load_vgg19_weights,
    model_path,
    pull,
    remove_model,
    validate_name,
)

# torchvision VGG19 ("E"): the convolutions up to conv5_1 and their channels.
CONV_LAYERS = {
    0: 64,
    2: 64,
    5: 128,
    7: 128,
    10: 256,
    12: 256,
    14: 256,
    16: 256,
    19: 512,
    21: 512,
    23: 512,
    25: 512,
    28: 512,
}


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes, channels = {}, 3
    for index, width in CONV_LAYERS.items():
        shapes[f"features.{index}.weight"] = (width, channels, 3, 3)
        shapes[f"features.{index}.bias"] = (width,)
        channels = width
    return shapes


@pytest.mark.parametrize("name", ["candy", "vgg19", "rain-princess", "my_style-2", "0", "a" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Candy", "-x", "_x", "a b", "a.b", "../x", "a/b", "a\\b", "a" * 65, "ünï"]
)
def test_invalid_names_are_refused(name):
    with pytest.raises(StylizeError, match="invalid model name"):
        validate_name(name)
    with pytest.raises(StylizeError, match="invalid model name"):
        model_path(name)


def test_install_model_writes_native_file_and_refuses_to_replace(stylize_home):
    tensors = {"weight": torch.ones(2, 2)}
    path = install_model("mine", tensors, {"kind": "style", "source": "trained", "steps": 3})
    assert path == stylize_home / "models" / "mine.safetensors"
    loaded, meta = read_model_file(path)
    assert torch.equal(loaded["weight"], tensors["weight"])
    assert meta["name"] == "mine"
    assert meta["source"] == "trained"
    assert meta["steps"] == 3
    assert meta["license"] == "" and meta["description"] == ""

    with pytest.raises(StylizeError, match="already installed"):
        install_model("mine", tensors, {"kind": "style", "source": "trained"})
    install_model(
        "mine", tensors, {"kind": "style", "source": "trained", "steps": 4}, overwrite=True
    )
    assert read_model_meta(path)["steps"] == 4
    with pytest.raises(StylizeError, match="unknown source"):
        install_model("other", tensors, {"kind": "style", "source": "somewhere"})


def test_import_vgg19_with_trust_keeps_conv_layers_up_to_conv5_1(random_vgg_pth):
    assert import_model(random_vgg_pth, trust=True) == "vgg19"
    tensors, meta = read_model_file(model_path("vgg19"))
    original = torch.load(random_vgg_pth, weights_only=True)
    expected = _expected_shapes()
    assert {name: tuple(tensor.shape) for name, tensor in tensors.items()} == expected
    for name in expected:
        assert torch.equal(tensors[name], original[name])
    assert meta["kind"] == "loss-network"
    assert meta["source"] == "imported"
    assert meta["trusted"] is False
    assert meta["original_sha256"] == hashlib.sha256(random_vgg_pth.read_bytes()).hexdigest()


def test_vgg19_with_unpublished_checksum_is_refused_without_trust(random_vgg_pth):
    with pytest.raises(StylizeError, match="--trust") as caught:
        import_model(random_vgg_pth)
    assert "dcbb9e9d" in str(caught.value)
    assert not model_path("vgg19").exists()


def test_vgg19_with_published_checksum_is_accepted(random_vgg_pth, local_catalog):
    # The test catalog publishes this file's own checksum, as the real one does torchvision's.
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network", license="BSD-3-Clause")
    assert import_model(random_vgg_pth) == "vgg19"
    meta = read_model_meta(model_path("vgg19"))
    assert meta["trusted"] is True
    assert meta["license"] == "BSD-3-Clause"


def test_classifier_layers_are_dropped_and_fp16_widened(tmp_path, random_vgg_pth):
    state = torch.load(random_vgg_pth, weights_only=True)
    state = {name: tensor.half() for name, tensor in state.items()}
    state["classifier.0.weight"] = torch.zeros(4, 8)
    state["classifier.0.bias"] = torch.zeros(4)
    path = tmp_path / "vgg19-with-classifier.pth"
    torch.save(state, path)
    import_model(path, name="vgg19-full", trust=True)
    tensors, _ = read_model_file(model_path("vgg19-full"))
    assert set(tensors) == set(_expected_shapes())
    assert all(tensor.dtype == torch.float32 for tensor in tensors.values())


def test_native_safetensors_vgg19_can_be_imported(vgg_home, tmp_path):
    copy = tmp_path / "vgg19-copy.safetensors"
    copy.write_bytes(model_path("vgg19").read_bytes())
    assert import_model(copy, name="vgg19-copy", trust=True) == "vgg19-copy"
    tensors, _ = read_model_file(model_path("vgg19-copy"))
    assert set(tensors) == set(_expected_shapes())


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"features.0.weight": torch.zeros(64, 3, 5, 5)}, r"features\.0\.weight has shape"),
        (
            {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)},
            r"features\.2\.weight is missing",
        ),
        ({"features.0.weight": torch.zeros(64, 3, 3, 3, dtype=torch.int32)}, "expected"),
    ],
)
def test_wrong_vgg_layout_is_a_clear_error(tmp_path, state, message):
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    with pytest.raises(StylizeError, match=message) as caught:
        import_model(path, trust=True)
    assert "not a VGG19 state dict" in str(caught.value)
    assert not model_path("vgg19").exists()


def test_damaged_safetensors_is_a_clear_error(tmp_path, vgg_home):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(model_path("vgg19").read_bytes()[:-100])
    with pytest.raises(StylizeError, match="damaged safetensors"):
        import_model(path, name="damaged", trust=True)


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['MARKER'], 'w').close()",))


@pytest.mark.parametrize("content", ["code", "list", "garbage"])
def test_files_that_are_not_models_are_refused_without_running_code(tmp_path, monkeypatch, content):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("MARKER", str(marker))
    path = tmp_path / "model.pth"
    if content == "code":
        path.write_bytes(pickle.dumps({"features.0.weight": _Payload()}, protocol=2))
    elif content == "list":
        torch.save([torch.zeros(3)], path)
    else:
        path.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(StylizeError):
        import_model(path, trust=True)
    assert not marker.exists()
    assert not models_dir().exists() or list(models_dir().iterdir()) == []


def test_missing_file_and_taken_name_are_refused(tmp_path, vgg_home, random_vgg_pth):
    with pytest.raises(StylizeError, match="does not exist"):
        import_model(tmp_path / "nothing.pth")
    with pytest.raises(StylizeError, match="already installed"):
        import_model(random_vgg_pth, trust=True)
    import_model(random_vgg_pth, trust=True, overwrite=True)


def test_remove_model(vgg_home):
    remove_model("vgg19")
    assert not model_path("vgg19").exists()
    with pytest.raises(StylizeError, match="no model named 'vgg19' is installed"):
        remove_model("vgg19")


def test_pull_vgg19_downloads_converts_and_deletes_the_original(random_vgg_pth, local_catalog):
    entry = local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    progress = []
    path = pull("vgg19", lambda done, total: progress.append((done, total)))
    assert path == model_path("vgg19")
    tensors, meta = read_model_file(path)
    assert set(tensors) == set(_expected_shapes())
    assert meta["source"] == "catalog"
    assert meta["trusted"] is True
    assert meta["license"] == entry.license
    assert meta["description"] == entry.description
    assert meta["original_sha256"] == entry.sha256
    assert progress[-1] == (entry.size, entry.size)
    assert list((cache_dir() / "downloads").iterdir()) == []

    assert pull("vgg19") == path
    assert local_catalog.server.requests["files/vgg19-random.pth"] == 1


def test_pull_vgg19_from_torch_hub_cache(random_vgg_pth, local_catalog, stylize_home):
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    hub_file = stylize_home / "torch-home" / "hub" / "checkpoints" / random_vgg_pth.name
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(random_vgg_pth.read_bytes())
    pull("vgg19")
    assert read_model_meta(model_path("vgg19"))["source"] == "catalog"
    assert local_catalog.server.requests["files/vgg19-random.pth"] == 0
    assert hub_file.exists()


def test_pull_unknown_entry_lists_the_catalog(local_catalog, tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"x")
    local_catalog.serve("alpha", tmp_path / "a.onnx")
    with pytest.raises(StylizeError, match=r"'beta' is not in the catalog \(available: alpha\)"):
        pull("beta")


def test_failed_pull_installs_nothing(random_vgg_pth, local_catalog):
    entry = local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    local_catalog.server.fail("files/vgg19-random.pth", 503)
    with pytest.raises(StylizeError, match="HTTP 503") as caught:
        pull("vgg19")
    assert entry.url in str(caught.value)
    assert not model_path("vgg19").exists()


def test_concurrent_pulls_download_once(random_vgg_pth, local_catalog, stylize_home):
    entry = local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    local_catalog.server.slow("files/vgg19-random.pth", 1.0)
    script = textwrap.dedent(
        f"""
        import json
        from stylize.store import catalog, registry
        entry = catalog.CatalogEntry(**json.loads({json.dumps(json.dumps(asdict(entry)))}))
        catalog.load_catalog = lambda: {{"vgg19": entry}}
        print(registry.pull("vgg19"))
        """
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [worker.communicate(timeout=120) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr
        assert stdout.strip() == str(model_path("vgg19"))
    assert local_catalog.server.requests["files/vgg19-random.pth"] == 1
    tensors, _ = read_model_file(model_path("vgg19"))
    assert set(tensors) == set(_expected_shapes())
    assert list((cache_dir() / "downloads").iterdir()) == []
    assert [file.name for file in models_dir().iterdir()] == ["vgg19.safetensors"]


def test_load_vgg19_weights_from_the_store(vgg_home):
    weights = load_vgg19_weights()
    assert {name: tuple(tensor.shape) for name, tensor in weights.items()} == _expected_shapes()


def test_load_vgg19_weights_pulls_when_missing(random_vgg_pth, local_catalog):
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    progress = []
    weights = load_vgg19_weights(lambda done, total: progress.append(done))
    assert set(weights) == set(_expected_shapes())
    assert progress and model_path("vgg19").exists()


def test_load_vgg19_weights_offline_says_how_to_import(random_vgg_pth, local_catalog):
    entry = local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    local_catalog.server.fail("files/vgg19-random.pth", 404)
    with pytest.raises(StylizeError, match="stylize models import") as caught:
        load_vgg19_weights()
    assert entry.url in str(caught.value)


def test_load_vgg19_weights_refuses_a_tampered_file(vgg_home):
    tensors, meta = read_model_file(model_path("vgg19"))
    tensors["features.28.weight"] = tensors["features.28.weight"][:, :, :2, :2].contiguous()
    install_model("vgg19", tensors, meta, overwrite=True)
    with pytest.raises(StylizeError, match=r"features\.28\.weight has shape"):
        load_vgg19_weights()


def test_pull_style_entry_converts_and_records_the_catalog(tmp_path, local_catalog):
    from stylize.engine.transformer import TransformerConfig, TransformerNet

    network = TransformerNet(TransformerConfig(channels=(4, 8, 8), residual_blocks=1))
    path = tmp_path / "tiny-style.pth"
    torch.save(network.state_dict(), path)
    entry = local_catalog.serve("tiny", path, license="CC0")
    installed = pull("tiny")
    tensors, meta = read_model_file(installed)
    assert meta["kind"] == "style"
    assert meta["source"] == "catalog"
    assert meta["license"] == "CC0"
    assert meta["original_sha256"] == entry.sha256
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensors[name], tensor)
    assert list((cache_dir() / "downloads").iterdir()) == []


def _style_file(tmp_path, name: str):
    from stylize.engine.transformer import TransformerConfig, TransformerNet

    path = tmp_path / name
    network = TransformerNet(TransformerConfig(channels=(4, 8, 8), residual_blocks=1))
    torch.save(network.state_dict(), path)
    return path


def test_a_catalog_name_never_takes_a_model_of_another_kind(tmp_path, random_vgg_pth):
    style = _style_file(tmp_path, "style.pth")
    meta = {"kind": "style", "source": "trained"}
    for attempt in (
        lambda: import_model(style, name="vgg19", overwrite=True),
        lambda: install_model("vgg19", {"weight": torch.zeros(2)}, meta, overwrite=True),
        lambda: import_model(random_vgg_pth, name="candy", trust=True, overwrite=True),
    ):
        with pytest.raises(StylizeError, match=r"is the catalog's .* choose another name"):
            attempt()
    assert not model_path("vgg19").exists() and not model_path("candy").exists()


def test_a_catalog_style_is_shadowed_only_with_overwrite(tmp_path):
    style = _style_file(tmp_path, "candy.pth")
    with pytest.raises(StylizeError, match=r"'candy' is a catalog style.*--name.*--overwrite"):
        import_model(style)
    with pytest.raises(StylizeError, match="'candy' is a catalog style"):
        install_model("candy", {"weight": torch.zeros(2)}, {"kind": "style", "source": "trained"})
    assert not model_path("candy").exists()
    assert import_model(style, overwrite=True) == "candy"
    assert read_model_meta(model_path("candy"))["source"] == "imported"


def test_vgg19_is_imported_under_its_catalog_name(random_vgg_pth):
    # The documented offline path: the loss network's catalog name is the one to take.
    assert import_model(random_vgg_pth, trust=True) == "vgg19"


def test_describe_shows_the_catalog_entry_only_for_its_own_file(tmp_path, random_vgg_pth):
    from stylize.store.registry import describe_model

    assert describe_model("candy")["catalog"]["file_name"] == "candy-9.onnx"  # not installed
    import_model(_style_file(tmp_path, "mine.pth"), name="candy", overwrite=True)
    assert describe_model("candy")["catalog"] is None
    import_model(random_vgg_pth, trust=True)  # not the published weights
    assert describe_model("vgg19")["catalog"] is None


def test_describe_shows_the_catalog_entry_of_a_pulled_or_published_file(
    tmp_path, random_vgg_pth, local_catalog
):
    from stylize.store.registry import describe_model

    local_catalog.serve("tiny", _style_file(tmp_path, "tiny.pth"))
    pull("tiny")
    assert describe_model("tiny")["catalog"]["file_name"] == "tiny.pth"
    local_catalog.serve("vgg19", random_vgg_pth, kind="loss-network")
    import_model(random_vgg_pth)  # the published checksum: the catalog's own file
    assert describe_model("vgg19")["catalog"]["file_name"] == random_vgg_pth.name
