import pytest

from stylize.errors import StylizeError
from stylize.store.catalog import CatalogEntry, load_catalog
from stylize.store.registry import validate_name

ONNX_ZOO = (
    "https://github.com/onnx/models/raw/b1eeaa1ac722dcc1cd1a8284bde34393dab61c3d/"
    "validated/vision/style_transfer/fast_neural_style/model/"
)
STYLES = {
    "candy": "9d11a3529d1e547da6ae07201d93484dbab2ec0a3614535752c8f40f0fe2968a",
    "mosaic": "fa646dedade881243f8d5a2ceb7de2b93675b21fc24f7482894ac4851a9a0a47",
    "rain-princess": "4162912e6f75fedef6f810ae989b9e10d3d5d43308dab34b027c850cf255e152",
    "udnie": "8656b6ce7dec8f22ee13c2d557d6b67bd6f550dde88d0f2e7c9972aeb765cc0d",
    "pointilism": "5ee2b8d4d6bc60a777f54e0fe96a1b717360a004b79d56c67390d4a975b14d98",
}


def test_catalog_holds_vgg19_and_the_five_onnx_zoo_styles():
    entries = load_catalog()
    assert list(entries) == ["vgg19", *STYLES]

    vgg = entries["vgg19"]
    assert vgg.kind == "loss-network"
    assert vgg.url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert vgg.sha256 == "dcbb9e9d"
    assert vgg.file_name == "vgg19-dcbb9e9d.pth"

    for name, sha256 in STYLES.items():
        entry = entries[name]
        assert entry.kind == "style"
        assert entry.file_name == f"{name}-9.onnx"
        assert entry.url == ONNX_ZOO + entry.file_name
        assert entry.sha256 == sha256
        assert entry.size == 6728029
        assert entry.license == "BSD-3-Clause"
        assert entry.description


def test_catalog_names_are_valid_store_names():
    for name in load_catalog():
        assert validate_name(name) == name


def test_checksum_matches_full_digest_or_published_prefix():
    digest = "dcbb9e9d" + "0" * 56
    vgg = load_catalog()["vgg19"]
    assert vgg.checksum_matches(digest)
    assert vgg.checksum_matches(digest.upper())
    assert not vgg.checksum_matches("dcbb9e9e" + "0" * 56)
    candy = load_catalog()["candy"]
    assert candy.checksum_matches(STYLES["candy"])
    assert not candy.checksum_matches(STYLES["mosaic"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "painting"),
        ("sha256", "abc"),
        ("sha256", "XYZ12345"),
        ("size", 0),
        ("file_name", "../x.onnx"),
    ],
)
def test_invalid_catalog_entries_are_refused(field, value):
    fields = dict(
        name="x",
        kind="style",
        url="https://example.org/x.onnx",
        sha256="0" * 64,
        size=1,
        license="",
        description="",
        file_name="x.onnx",
    )
    fields[field] = value
    with pytest.raises(StylizeError, match="catalog entry 'x'"):
        CatalogEntry(**fields)
