"""Style networks installed in the test's own store, for the apply tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from real_weights import TF_GRAPHDEF
from style_nets import random_style_net
from stylize.engine.transformer import TransformerConfig
from stylize.store.registry import import_model, install_model

# A pytorch/examples network small enough to run in milliseconds.
ONE_BLOCK = TransformerConfig(channels=(8, 16, 16), residual_blocks=1)


@pytest.fixture
def tiny(stylize_home: Path) -> str:
    """A random network of ONE_BLOCK's shape, installed as `tiny`."""
    state = random_style_net(config=ONE_BLOCK).state_dict()
    meta = {"kind": "style", "source": "trained", "architecture": ONE_BLOCK.to_dict()}
    install_model("tiny", state, meta)
    return "tiny"


@pytest.fixture
def real26(stylize_home: Path) -> str:
    """The real 26-style network (tests/data/weights), installed as its catalog entry."""
    assert import_model(TF_GRAPHDEF) == "multistyle26"
    return "multistyle26"
