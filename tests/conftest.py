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


@pytest.fixture(scope="module")
def one_torch_thread():
    """The micro model's ops are small: one thread is as fast, and on a machine shared with other jobs two
    spinning OpenMP threads make these tests many times slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def micro_adapter(model_id: str, name: str = "sam2-micro"):
    """A loaded `ModelAdapter` on the micro model, its entity built offline from JSON (no login)."""
    import dtlpy as dl

    from model_adapter import ModelAdapter

    dl.Model.update = lambda self, **kwargs: self  # module fixtures outlive monkeypatch
    entity = dl.Model.from_json(
        _json={"id": model_id, "name": name, "configuration": {"model": "micro", "device": "cpu"}},
        client_api=dl.client_api, project=None, package=None, is_fetched=False)
    adapter = ModelAdapter()
    adapter.model_entity = entity
    adapter.load(local_path=None)
    return adapter
