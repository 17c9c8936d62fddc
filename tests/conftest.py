"""Shared fixtures. dtlpy is sandboxed in a temp dir (no login, no network), and every model test runs the real
SAM 2 code path with the bundled micro checkpoint."""

import os
import tempfile

_SANDBOX = tempfile.mkdtemp(prefix="sam2-adapter-tests-")
os.environ["DATALOOP_PATH"] = os.path.join(_SANDBOX, "dataloop")
os.environ["HOME"] = _SANDBOX
os.environ["SAM2_ADAPTER_CACHE"] = os.path.join(_SANDBOX, "cache")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sam2_adapter.models import load_named_model  # noqa: E402
from sam2_adapter.scenes import make_scene  # noqa: E402
from sam2_adapter.segment import ImageSegmenter  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def micro_model():
    """The bundled micro SAM 2, loaded by the same function as the official checkpoints."""
    return load_named_model("micro", "cpu")


@pytest.fixture
def segmenter(micro_model):
    return ImageSegmenter(micro_model)


@pytest.fixture(scope="session")
def scenes():
    """Generated scenes with exact instance masks (a seed the micro model never trained on)."""
    rng = np.random.default_rng(4242)
    return [make_scene(rng) for _ in range(8)]
