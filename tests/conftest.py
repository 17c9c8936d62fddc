"""Shared fixtures. dtlpy is sandboxed in a temp dir (no login, no network), and every model test runs the real
SAM 2 code path with the bundled micro checkpoint."""

import os
import tempfile

_SANDBOX = tempfile.mkdtemp(prefix="sam2-adapter-tests-")
os.environ["DATALOOP_PATH"] = os.path.join(_SANDBOX, "dataloop")
os.environ["HOME"] = _SANDBOX
os.environ["SAM2_ADAPTER_CACHE"] = os.path.join(_SANDBOX, "cache")

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sam2_adapter.models import load_named_model  # noqa: E402
from sam2_adapter.geometry import mask_to_polygons, validate_box  # noqa: E402
from sam2_adapter.scenes import make_clip, make_scene, mask_box, write_video  # noqa: E402
from sam2_adapter.segment import ImageSegmenter  # noqa: E402

torch.set_num_threads(2)

DEVICE = os.environ.get("SAM2_TEST_DEVICE", "cpu")
"""Where the micro model runs: the CPU, or on a lent GPU `cuda` for the adapter's tests (tools/device_run.sh)."""


@pytest.fixture(scope="session")
def micro_model():
    """The bundled micro SAM 2, loaded by the same function as the official checkpoints."""
    return load_named_model("micro", DEVICE)


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


def inside_box(box, margin: float, height: int, width: int) -> np.ndarray:
    """(height, width): the pixels whose centres lie in the upright box x1, y1, x2, y2 grown by `margin`."""
    (x1, x2), (y1, y2) = sorted(box[0::2]), sorted(box[1::2])
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    return ((ys >= y1 - margin) & (ys < y2 + margin))[:, None] & ((xs >= x1 - margin) & (xs < x2 + margin))[None, :]


def box_masks(segmenter, image, boxes, margin: float = 0.0) -> list:
    """What Box to Segmentation must give for each (upright) box: SAM 2's own mask of the box (the segmenter's,
    uncut) where pixel centres lie inside the box grown by `margin`. MaskResults; `.area` 0 where none is left."""
    h, w = image.shape[:2]
    clamped = [validate_box(box, w, h, "box") for box in boxes]  # SAM 2 is prompted with the box clamped
    results = segmenter.segment_boxes(segmenter.encode(image), np.asarray(clamped, np.float32))
    return [dataclasses.replace(result, crop=result.full() & inside_box(box, margin, h, w), origin=(0, 0))
            for result, box in zip(results, np.asarray(boxes, np.float64))]


def micro_adapter(model_id: str, name: str = "sam2-micro"):
    """A loaded `ModelAdapter` on the micro model, its entity built offline from JSON (no login)."""
    import dtlpy as dl

    from model_adapter import ModelAdapter

    dl.Model.update = lambda self, **kwargs: self  # module fixtures outlive monkeypatch
    entity = dl.Model.from_json(
        _json={"id": model_id, "name": name, "configuration": {"model": "micro", "device": DEVICE}},
        client_api=dl.client_api, project=None, package=None, is_fetched=False)
    adapter = ModelAdapter()
    adapter.model_entity = entity
    adapter.load(local_path=None)
    return adapter


# -- the small video the adapter's video tests track --------------------------------------------------------------

CLIP_SIZE = (12, 128, 160)
"""Frames, height and width of the `clip` fixture."""


@pytest.fixture(scope="module")
def clip():
    """A 12-frame clip of two objects that stay in view."""
    frames, height, width = CLIP_SIZE
    return make_clip(np.random.default_rng(7), n_frames=frames, height=height, width=width, n_objects=2,
                     leave_view=False)


@pytest.fixture(scope="module")
def video(clip, tmp_path_factory):
    """`clip` as an mp4 file."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(clip.frames, path, fps=10)
    return path


def box_of(mask, label, attributes=None):
    """The dtlpy box around a mask."""
    import dtlpy as dl

    x1, y1, x2, y2 = (float(v) for v in mask_box(mask))
    return dl.Box(left=x1, top=y1, right=x2, bottom=y2, label=label, attributes=attributes or {})


def polygon_of(mask, label, attributes=None):
    """The dtlpy polygon of a mask's largest part."""
    import dtlpy as dl

    return dl.Polygon(geo=mask_to_polygons(mask)[0], label=label, attributes=attributes or {})


def core_run(adapter, video, prompts: dict, passes: list) -> dict:
    """What the core tracker computes on the adapter's model for prompts {key: {frame: prompt}} (added in frame
    order, as the adapter adds them) and passes [(start, direction, max_frames)]:
    {direction: {key: {frame: ObjectMask}}}, a later pass of a direction overwriting an earlier one."""
    from sam2_adapter.tracker import VideoTracker

    out: dict = {}
    with VideoTracker(adapter.model, str(video), mask_threshold=adapter.settings.mask_threshold) as tracker:
        for frame, key, prompt in sorted(((f, k, p) for k, ps in prompts.items() for f, p in ps.items()),
                                         key=lambda x: x[0]):
            tracker.add_prompt(key, frame, prompt)
        for start, direction, count in passes:
            results = out.setdefault(direction, {key: {} for key in prompts})
            for result in tracker.propagate(start_frame=start, direction=direction, max_frames=count):
                for key, obj in result.objects.items():
                    results[key][result.frame_idx] = obj
    return out


class Progress:
    """The studio's progress object, as the adapter uses it: the messages it was given."""

    def __init__(self):
        self.messages = []

    def update(self, message=None, **kwargs):
        if message is not None:
            self.messages.append(message)
