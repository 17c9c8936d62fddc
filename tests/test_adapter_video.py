"""The video functions of the Dataloop face (`track_video`, and the studio's `track`), with real dtlpy entities built
offline and the bundled micro SAM 2 on a generated mp4. Only dtlpy's network calls are replaced: the item download
(served from the test's own file), the item's annotation list and the dataset's ontology (label colours).

The micro checkpoint tracks poorly for now (README), so nothing here asserts tracking accuracy. What is asserted is
the contract a user sees: the adapter returns exactly what the core tracker computes for the same prompts, in the
annotation's own type, with one object id across frames, drawn frames fixed and tracked ones not, absent frames not
visible and without geometry, labels and attributes kept, and bad annotations reported while the others come back;
all of it as JSON that dtlpy's own parser reads back.
"""

import copy
import functools
import http.server
import json
import logging
import re
import shutil
import threading
from pathlib import Path

import dtlpy as dl
import numpy as np
import pytest

import model_adapter
from conftest import CLIP_SIZE, Progress, box_of, core_run, micro_adapter, polygon_of
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import enclosing_box, mask_to_polygons, png_data_url_to_mask
from sam2_adapter.scenes import mask_box

T, H, W = CLIP_SIZE
REPO = Path(__file__).resolve().parent.parent
_VIDEOS: dict[str, Path] = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter():
    return micro_adapter("model-v", "sam2-micro")


class OfflinePlatform:
    """Stands in for the platform calls the video functions make; dtlpy's own logic runs unchanged."""

    def __init__(self, monkeypatch):
        self.stored: dict[str, list[dict]] = {}
        platform = self

        def download(item, local_path=None, **kwargs):
            target = Path(local_path) / item.name
            shutil.copyfile(_VIDEOS[item.id], target)
            return str(target)

        def list_annotations(repo, *args, **kwargs):
            return dl.AnnotationCollection(item=repo.item, annotations=[
                dl.Annotation.from_json(j, item=repo.item) for j in platform.stored.get(repo.item.id, [])])

        monkeypatch.setattr(dl.Item, "download", download)
        monkeypatch.setattr(dl.repositories.Annotations, "list", list_annotations)
        monkeypatch.setattr(dl.Dataset, "_get_ontology",
                            lambda self: type("Ontology", (), {"color_map": {}, "labels": []})())
        self.dataset = dl.Dataset.from_json(_json={"id": "dataset-v", "name": "videos"}, client_api=dl.client_api,
                                            project=None, datasets=None, is_fetched=False)

    def item(self, item_id: str, video: Path, mimetype: str = "video/mp4") -> dl.Item:
        _VIDEOS[item_id] = video
        return dl.Item.from_json(
            _json={"id": item_id, "name": f"{item_id}.mp4", "filename": f"/{item_id}.mp4", "type": "file",
                   "datasetId": self.dataset.id,
                   "metadata": {"system": {"mimetype": mimetype, "height": H, "width": W, "nb_frames": T}, "fps": 10}},
            client_api=dl.client_api, dataset=self.dataset, is_fetched=False)


@pytest.fixture
def platform(monkeypatch):
    return OfflinePlatform(monkeypatch)


def video_annotation(item, ann_id: str, frames: dict, object_id: str = "1", not_fixed: dict | None = None) -> dict:
    """A video annotation as the platform serialises it (dtlpy's own builder and to_json): `frames` drawn
    (fixed), `not_fixed` carried by an earlier tracking (fixed=False)."""
    builder = item.annotations.builder()
    everything = {**{t: (d, True) for t, d in frames.items()}, **{t: (d, False) for t, d in (not_fixed or {}).items()}}
    for t in sorted(everything):
        definition, fixed = everything[t]
        builder.add(annotation_definition=definition, object_id=object_id, frame_num=t, fixed=fixed,
                    metadata={"user": {"note": "drawn"}})
    return {**builder.annotations[0].to_json(), "id": ann_id}


def read_back(result: dict, item) -> dl.Annotation:
    """The JSON through the platform's path: serialised, then dtlpy's parser."""
    return dl.Annotation.from_json(json.loads(json.dumps(result)), item=item)


def frames_of(annotation: dl.Annotation) -> dict:
    return {t: annotation.frames[t] for t in annotation.frames.keys()}


def core_frames(adapter, video, prompts: dict, passes: list) -> dict:
    """What the core tracker computes for the same prompts {key: {frame: prompt}}: {key: {frame: ObjectMask}}."""
    by_direction = core_run(adapter, video, prompts, passes).values()
    return {key: {t: obj for frames in by_direction for t, obj in frames[key].items()} for key in prompts}


def tracked_ring(adapter, obj):
    """The polygon the adapter should make of a tracked object: its largest part, in frame pixels; None if none."""
    if not obj.visible:
        return None
    rings = mask_to_polygons(obj.crop, adapter.settings.polygon_tolerance, adapter.settings.polygon_min_area)
    return rings[0] + np.asarray(obj.origin) if rings else None


def assert_frame_matches(adapter, frame, obj, kind: str, first: bool = False) -> None:
    """A tracked frame holds the core's result, or is absent with no geometry where the core says absent. An
    annotation's first frame is its top-level geometry in the JSON, which dtlpy always reads back as fixed."""
    assert first or not frame.fixed, f"frame {frame.frame_num}: a tracked frame must not be fixed"
    expected = None
    if obj.visible:
        if kind == "box":
            expected = obj.box
        elif kind == "segment":
            expected = tracked_ring(adapter, obj)
        else:
            expected = obj.mask()
    if expected is None:
        assert not frame.object_visible, f"frame {frame.frame_num}: absent in the core, visible in the result"
        assert_no_geometry(frame, kind)
        return
    assert frame.object_visible, f"frame {frame.frame_num}: visible in the core, absent in the result"
    if kind == "box":
        got = (frame.left, frame.top, frame.right, frame.bottom)
        assert got == pytest.approx(expected)
    elif kind == "segment":
        assert np.array_equal(np.asarray(frame.geo), expected)
    else:
        assert np.array_equal(png_data_url_to_mask(frame.coordinates), expected)


def assert_no_geometry(frame, kind: str) -> None:
    if kind == "box":
        assert (frame.left, frame.top, frame.right, frame.bottom) == (0, 0, 0, 0)
    elif kind == "segment":
        assert np.asarray(frame.geo).size == 0
    else:
        assert not png_data_url_to_mask(frame.coordinates).any()


# -- track_video -----------------------------------------------------------------------------------------------------
def test_boxes_are_tracked_forward_as_the_core_tracks_them(adapter, clip, video, platform):
    item = platform.item("vid-boxes", video)
    sources = [video_annotation(item, f"box-{k}", {0: box_of(clip.masks[0, k], f"label-{k}", {"k": k})},
                                object_id=str(k + 7)) for k in range(2)]
    out = adapter.track_video(item=item, annotations=sources)
    core = core_frames(adapter, video, {f"box-{k}": {0: {"type": "box", "box": mask_box(clip.masks[0, k]).tolist()}}
                                        for k in range(2)}, [(0, "forward", None)])

    assert [a["id"] for a in out] == ["box-0", "box-1"], "each annotation comes back with its own id"
    object_ids = [a["metadata"]["system"]["objectId"] for a in out]
    assert object_ids == ["7", "8"], "the annotations keep their object ids"
    for k, result in enumerate(out):
        assert result["type"] == "box" and result["label"] == f"label-{k}"
        assert result["metadata"]["user"]["note"] == "drawn"
        assert result["metadata"]["user"]["sam2"]["source_annotation_id"] == f"box-{k}"
        annotation = read_back(result, item)
        assert annotation.object_id == object_ids[k]
        frames = frames_of(annotation)
        assert sorted(frames) == list(range(T)), "forward from frame 0 to the end of the video"
        assert frames[0].fixed and frames[0].object_visible
        assert (frames[0].left, frames[0].top, frames[0].right, frames[0].bottom) == tuple(mask_box(clip.masks[0, k]))
        for t in range(1, T):
            assert frames[t].label == f"label-{k}" and frames[t].attributes == {"k": k}
            assert_frame_matches(adapter, frames[t], core[f"box-{k}"][t], "box")


def test_a_correction_frame_prompts_and_later_frames_take_its_attributes(adapter, clip, video, platform):
    """SAM 2's data-engine use: a polygon drawn on frame 0, corrected on frame 6. A frame an earlier tracking left
    (not fixed) is not a prompt."""
    item = platform.item("vid-poly", video)
    first = polygon_of(clip.masks[0, 0], "car", {"occluded": False})
    correction = polygon_of(clip.masks[6, 0], "car", {"occluded": True})
    stale = polygon_of(clip.masks[3, 1], "car", {"occluded": False})  # not this object: would mislead as a prompt
    source = video_annotation(item, "poly", {0: first, 6: correction}, not_fixed={3: stale})
    out = adapter.track_video(item=item, annotations=[source], direction="forward", max_frames=3)
    core = core_frames(adapter, video, {"poly": {0: {"type": "polygon", "polygon": first.geo},
                                                 6: {"type": "polygon", "polygon": correction.geo}}},
                       [(0, "forward", 9)])

    (result,) = out
    assert result["type"] == "segment" and result["id"] == "poly"
    frames = frames_of(read_back(result, item))
    assert sorted(frames) == list(range(9)), "from the first drawn frame to max_frames - 1 past the last"
    for t, drawn in ((0, first), (6, correction)):
        assert frames[t].fixed and frames[t].object_visible
        assert np.array_equal(np.asarray(frames[t].geo), drawn.geo), "a drawn frame keeps its drawing"
    for t in (1, 2, 3, 4, 5, 7, 8):
        assert_frame_matches(adapter, frames[t], core["poly"][t], "segment")
        assert frames[t].attributes == {"occluded": t > 6}, "a tracked frame takes the latest drawn frame's values"



def test_a_frame_the_user_marked_not_visible_stays_so(adapter, clip, video, platform, monkeypatch):
    """A key frame where the user says the object is not visible (occluded) is the user's, not SAM 2's to fill:
    the result, which replaces the annotation in place, keeps it fixed and not visible. It is also a prompt:
    SAM 2 tracks the frames after it knowing the object was gone there (an absent prompt)."""
    item = platform.item("vid-hidden", video)
    drawn = box_of(clip.masks[0, 0], "car")
    builder = item.annotations.builder()
    builder.add(annotation_definition=drawn, object_id="1", frame_num=0, fixed=True)
    builder.add(annotation_definition=drawn, object_id="1", frame_num=4, fixed=True, object_visible=False)
    source = {**builder.annotations[0].to_json(), "id": "hidden"}
    assert not read_back(source, item).frames[4].object_visible
    from sam2_adapter.tracker import VideoTracker

    absent_prompts = []
    add_absent = VideoTracker.add_absent

    def recording(self, obj_id, frame_idx):  # the micro model finds the same boxes either way (its scores move)
        absent_prompts.append((obj_id, frame_idx))
        return add_absent(self, obj_id, frame_idx)

    monkeypatch.setattr(VideoTracker, "add_absent", recording)
    (result,) = adapter.track_video(item=item, annotations=[source], direction="forward", max_frames=8)
    assert absent_prompts == [("hidden", 4)]
    core = core_frames(adapter, video, {"hidden": {0: {"type": "box", "box": mask_box(clip.masks[0, 0]).tolist()},
                                                   4: {"type": "absent"}}}, [(0, "forward", 8)])
    frames = frames_of(read_back(result, item))
    assert sorted(frames) == list(range(8))
    assert frames[4].fixed and not frames[4].object_visible
    assert_no_geometry(frames[4], "box")
    for t in (1, 2, 3, 5, 6, 7):
        assert not frames[t].fixed
        assert_frame_matches(adapter, frames[t], core["hidden"][t], "box")


def test_a_frame_marked_not_visible_that_cannot_be_read_costs_only_its_prompt(adapter, clip, video, platform):
    """The platform's frame count and the decoder's may differ by a frame or two: a not-visible key frame beyond
    the decoded video is reported and goes without its prompt; the annotation is tracked as without it."""
    item = platform.item("vid-hidden-late", video)
    builder = item.annotations.builder()
    builder.add(annotation_definition=box_of(clip.masks[0, 0], "car"), object_id="1", frame_num=0, fixed=True)
    builder.add(annotation_definition=box_of(clip.masks[0, 0], "car"), object_id="1", frame_num=T + 2, fixed=True,
                object_visible=False)
    progress = Progress()
    (result,) = adapter.track_video(item=item, annotations=[{**builder.annotations[0].to_json(), "id": "late"}],
                                    direction="forward", max_frames=4, progress=progress)
    assert any(f"annotation late, frame {T + 2}: marked not visible" in m for m in progress.messages)
    core = core_frames(adapter, video, {"late": {0: {"type": "box", "box": mask_box(clip.masks[0, 0]).tolist()}}},
                       [(0, "forward", 4)])
    frames = frames_of(read_back(result, item))
    for t in (1, 2, 3):
        assert_frame_matches(adapter, frames[t], core["late"][t], "box")


def test_frames_a_truncated_video_never_gives_are_reported(adapter, clip, tmp_path):
    """A video cut short (an interrupted upload) still says in its header how many frames it had: the frames the
    tracker asked for and never got are named in the progress message, as undecodable ones are."""
    import cv2

    writer = cv2.VideoWriter(str(tmp_path / "whole.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for frame in clip.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = (tmp_path / "whole.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:len(data) * 2 // 3])
    box = mask_box(clip.masks[0, 0])
    progress = Progress()
    out = adapter.track(item_stream_url=str(tmp_path / "cut.avi"), progress=progress, start_frame=0, frame_duration=T,
                        bbs={"a": [{"x": float(box[0]), "y": float(box[1])}, {"x": float(box[2]), "y": float(box[3])}]})
    said = re.search(r"frames? (\d+)(?: to (\d+))? not tracked: the video gives no frame past frame (\d+), though "
                     r"its header says (\d+) frames", "; ".join(progress.messages))
    assert said, progress.messages
    first_missing = int(said[1])
    assert int(said[2] or said[1]) == T - 1 and int(said[3]) == first_missing - 1 and int(said[4]) == T
    assert 0 < len(out["a"]) and max(out["a"]) < first_missing


def test_annotations_far_apart_are_each_tracked_only_over_their_own_frames(adapter, clip, video, platform,
                                                                        monkeypatch):
    """Each pass tracks only the annotations it serves: k annotations far apart cost k times one, not k x k."""
    from sam2_adapter.tracker import VideoTracker

    tracked = []
    track_batch = VideoTracker._track_batch

    def counting(tracker, objs, features, t, reverse, run_mem_encoder=True):
        tracked.extend((obj.obj_id, t) for obj in objs)
        return track_batch(tracker, objs, features, t, reverse, run_mem_encoder)

    monkeypatch.setattr(VideoTracker, "_track_batch", counting)
    item = platform.item("vid-apart", video)
    sources = [video_annotation(item, f"apart-{t}", {t: box_of(clip.masks[t, 0], "car")}, object_id=str(t + 1))
               for t in (0, 4, 8)]
    out = adapter.track_video(item=item, annotations=sources, direction="forward", max_frames=3)
    assert sorted(tracked) == sorted((f"apart-{t}", t + k) for t in (0, 4, 8) for k in (1, 2))
    assert [sorted(frames_of(read_back(r, item))) for r in out] == [[t, t + 1, t + 2] for t in (0, 4, 8)]

def test_masks_in_both_directions_keep_holes(adapter, clip, video, platform):
    item = platform.item("vid-mask", video)
    drawn = clip.masks[6, 1].copy()
    x1, y1, x2, y2 = (int(v) for v in mask_box(drawn))
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    drawn[cy - 2:cy + 2, cx - 2:cx + 2] = False  # a hole the result must keep on its drawn frame
    builder = item.annotations.builder()
    builder.add(annotation_definition=dl.Segmentation(geo=drawn, label="blob", attributes={"n": 1}), object_id="1",
                frame_num=6)
    source = {**builder.annotations[0].to_json(), "id": "mask"}
    out = adapter.track_video(item=item, annotations=[source], direction="both", max_frames=4)
    core = core_frames(adapter, video, {"mask": {6: {"type": "mask", "mask": drawn}}}, [(6, "both", 4)])

    (result,) = out
    assert result["type"] == "binary"
    frames = frames_of(read_back(result, item))
    seen = [t for t in range(3, 10) if t == 6 or core["mask"][t].visible]
    assert sorted(frames) == list(range(seen[0], 10)), "frames 3..9, from the first frame the object is seen"
    assert frames[6].fixed and np.array_equal(png_data_url_to_mask(frames[6].coordinates), drawn)
    for t in sorted(frames):
        if t != 6:
            assert_frame_matches(adapter, frames[t], core["mask"][t], "binary", first=t == seen[0])


def test_backward_from_the_last_frame(adapter, clip, video, platform):
    item = platform.item("vid-back", video)
    source = video_annotation(item, "back", {T - 1: box_of(clip.masks[T - 1, 0], "car")})
    out = adapter.track_video(item=item, annotations=[source], direction="backward", max_frames=5)
    prompt = {"type": "box", "box": mask_box(clip.masks[T - 1, 0]).tolist()}
    core = core_frames(adapter, video, {"back": {T - 1: prompt}}, [(T - 1, "backward", 5)])
    frames = frames_of(read_back(out[0], item))
    seen = [t for t in range(T - 5, T) if t == T - 1 or core["back"][t].visible]
    assert sorted(frames) == list(range(seen[0], T))
    assert frames[T - 1].fixed
    for t in sorted(frames)[:-1]:
        assert_frame_matches(adapter, frames[t], core["back"][t], "box", first=t == seen[0])



@pytest.mark.parametrize("kind", ["box", "segment", "binary"])
def test_a_rerun_takes_only_the_users_frames_as_drawn(adapter, clip, video, platform, kind):
    """Tracked backward, the result starts on a frame SAM 2 tracked, which dtlpy reads back as fixed (the first
    frame of an annotation always is). Run again on that result (SAM 2's data engine: correct, propagate again),
    only the user's frames prompt, unless the user has since edited that first frame."""
    item = platform.item(f"vid-rerun-{kind}", video)
    drawn = {"box": box_of, "segment": polygon_of}.get(kind, lambda m, label: dl.Segmentation(geo=m, label=label))
    source = video_annotation(item, "rerun", {6: drawn(clip.masks[6, 0], "car")})
    (result,) = adapter.track_video(item=item, annotations=[source], direction="backward", max_frames=5)
    first = read_back(result, item).start_frame
    assert first < 6 and read_back(result, item).frames[first].fixed, "dtlpy reads the first frame as fixed"
    (track,), failures = model_adapter._video_tracks(item, [json.loads(json.dumps(result))])
    assert failures == [] and sorted(track.drawn) == [6]
    (again,) = adapter.track_video(item=item, annotations=[result], direction="backward", max_frames=5)
    assert again["coordinates"] == result["coordinates"], "a re-run of the same drawing gives the same first frame"
    # the user moves that first frame's shape: now it is a drawing
    edited = read_back(result, item)
    definition = edited.frames[first].annotation_definition
    if kind == "box":
        definition.left, definition.right = definition.left + 3, definition.right + 3
    elif kind == "segment":
        definition.geo = np.asarray(definition.geo) + 3
    else:
        # decoding a parsed mask in place breaks dtlpy's serialisation of it (see `_tracker_prompt`): a copy
        definition.geo = np.roll(np.asarray(copy.copy(definition).geo), 3, axis=1)
    (track,), _ = model_adapter._video_tracks(item, [json.loads(json.dumps(edited.to_json()))])
    assert sorted(track.drawn) == [first, 6]

def test_data_engine_rounds_keep_what_the_user_did(adapter, clip, video, platform):
    """Several rounds of SAM 2's data engine on one annotation, each read back as the studio reads it: a label
    changed on SAM 2's first frame, a key frame added before it, a frame marked not visible with its own label,
    and a re-run over fewer frames, which must not drop the frames an earlier round tracked."""
    item = platform.item("vid-rounds", video)
    source = video_annotation(item, "rounds", {6: box_of(clip.masks[6, 0], "car", {"occluded": False})})
    (result,) = adapter.track_video(item=item, annotations=[source], direction="backward", max_frames=4)
    first = read_back(result, item).start_frame
    assert first == 3
    # a new label on SAM 2's first frame (its shape untouched) makes it the user's
    relabelled = read_back(result, item)
    relabelled.frames[first].annotation_definition.label = "truck"
    (track,), _ = model_adapter._video_tracks(item, [json.loads(json.dumps(relabelled.to_json()))])
    assert sorted(track.drawn) == [first, 6]
    # a key frame drawn before SAM 2's first frame: that frame is still SAM 2's, not a drawing
    earlier = read_back(result, item)
    earlier.add_frame(annotation_definition=box_of(clip.masks[0, 0], "car", {"occluded": False}), frame_num=0,
                      fixed=True)
    (track,), _ = model_adapter._video_tracks(item, [json.loads(json.dumps(earlier.to_json()))])
    assert sorted(track.drawn) == [0, 6]
    # round 2, forward over all frames; a frame marked not visible, with its own label, far past max_frames
    hidden = box_of(clip.masks[6, 0], "person", {"occluded": True})
    source = video_annotation(item, "rounds", {0: box_of(clip.masks[0, 0], "car", {"occluded": False})})
    (whole,) = adapter.track_video(item=item, annotations=[source], direction="forward")
    earlier = read_back(whole, item)
    whole = read_back(whole, item)
    for t in (5, 8):
        whole.add_frame(annotation_definition=hidden, frame_num=t, fixed=True, object_visible=False)
    (result,) = adapter.track_video(item=item, annotations=[json.loads(json.dumps(whole.to_json()))],
                                    direction="forward", max_frames=3)
    frames = frames_of(read_back(result, item))
    assert sorted(frames) == list(range(T)), "frames of the earlier round past this one's reach are kept"
    assert all(not frames[t].fixed for t in (1, 2, 3, 4, 6, 7)), "frames up to the last key frame are tracked"
    for t in (5, 8):
        assert frames[t].fixed and not frames[t].object_visible
        assert (frames[t].label, frames[t].attributes) == ("person", {"occluded": True})
    assert [frames[t].label for t in (6, 7)] == ["person"] * 2, "a tracked frame takes the latest key frame's values"
    for t in (9, 10, 11):  # beyond this run: the earlier round's, as it was
        assert not frames[t].fixed and frames[t].label == "car"
        assert (frames[t].left, frames[t].top) == (earlier.frames[t].left, earlier.frames[t].top)


def test_rounds_on_a_still_video_and_key_frames_around_the_drawing(adapter, clip, platform, tmp_path):
    """dtlpy stores a frame that repeats the one before as no frame at all (a still object): a re-run over fewer
    frames keeps those too. A not-visible key frame after the drawing is tracked up to backward as well as forward;
    one before the first visible frame cannot open the annotation (dtlpy reads a first frame back as visible)."""
    from sam2_adapter.scenes import write_video

    still = tmp_path / "still.mp4"
    write_video(np.repeat(clip.frames[:1], T, axis=0), still, fps=10)
    item = platform.item("vid-still", still)
    source = video_annotation(item, "still", {0: box_of(clip.masks[0, 0], "car")})
    (whole,) = adapter.track_video(item=item, annotations=[source], direction="forward")
    assert sorted(frames_of(read_back(whole, item))) == list(range(T))
    (fewer,) = adapter.track_video(item=item, annotations=[whole], direction="forward", max_frames=3)
    assert sorted(frames_of(read_back(fewer, item))) == list(range(T))
    # a drawing the studio gave a duration: dtlpy's repeats of it are no earlier tracking, and do not come back
    moving = platform.item("vid-duration", tmp_path / "moving.mp4")
    write_video(clip.frames, tmp_path / "moving.mp4", fps=10)
    for copied in (None, {"source_annotation_id": "another"}, {"proposal": True}):  # nor a copy of one's result
        drawn = video_annotation(moving, "duration", {0: box_of(clip.masks[0, 0], "car")})
        drawn["metadata"]["system"]["endFrame"] = 8
        if copied:
            drawn["metadata"]["user"]["sam2"] = copied
        assert read_back(drawn, moving).end_frame == 8
        (result,) = adapter.track_video(item=moving, annotations=[drawn], direction="forward", max_frames=4)
        assert sorted(frames_of(read_back(result, moving))) == [0, 1, 2, 3], copied
    assert model_adapter._tracking_spans([3], "backward", None, T, [8]) == {"backward": (0, 8)}
    assert model_adapter._tracking_spans([3], "forward", 2, T, [8]) == {"forward": (3, 8)}
    assert model_adapter._tracking_spans([6], "forward", 2, T, [2]) == {"forward": (2, 7)}
    hidden_first = video_annotation(item, "hidden-first", {6: box_of(clip.masks[0, 0], "car")})
    entity = read_back(hidden_first, item)
    entity.add_frame(annotation_definition=box_of(clip.masks[0, 0], "car"), frame_num=2, fixed=True,
                     object_visible=False)
    assert not entity.frames[2].object_visible  # as an entity; its JSON would read back visible already
    (result,) = adapter.track_video(item=item, annotations=[entity], direction="forward")
    back = read_back(result, item)  # tracked from the not-visible frame on; opened by a frame where it is seen
    assert 2 < back.start_frame <= 6 and back.frames[back.start_frame].object_visible
    (track,), failures = model_adapter._video_tracks(item, [json.loads(json.dumps(result))])
    assert failures == [] and sorted(track.drawn) == [6]


def test_absent_frames_are_not_visible_and_hold_no_geometry(adapter, clip, video, platform, monkeypatch):
    """A mask threshold no logit reaches makes SAM 2 find nothing on any tracked frame: every one of them must be
    marked absent, with nothing copied from the drawn frame, in every type."""
    monkeypatch.setattr(adapter, "settings", adapter.settings.__class__.from_mapping(
        {**adapter.settings.as_dict(), "mask_threshold": 1e9}))
    item = platform.item("vid-absent", video)
    builder = item.annotations.builder()
    builder.add(annotation_definition=dl.Segmentation(geo=clip.masks[2, 1], label="m"), object_id="3", frame_num=2)
    sources = [video_annotation(item, "b", {2: box_of(clip.masks[2, 0], "b")}, object_id="1"),
               video_annotation(item, "p", {2: polygon_of(clip.masks[2, 1], "p")}, object_id="2"),
               {**builder.annotations[0].to_json(), "id": "m"}]
    out = adapter.track_video(item=item, annotations=sources, max_frames=6)
    assert [a["id"] for a in out] == ["b", "p", "m"]
    for result in out:
        frames = frames_of(read_back(result, item))
        assert sorted(frames) == list(range(2, 8))
        assert frames[2].fixed and frames[2].object_visible
        for t in range(3, 8):
            assert not frames[t].object_visible and not frames[t].fixed
            assert_no_geometry(frames[t], result["type"])
    studio = adapter.track(item_stream_url=str(video), bbs={"b": [{"x": 10, "y": 10}, {"x": 60, "y": 50}]},
                           start_frame=2, frame_duration=3)
    assert studio == {"b": {2: None, 3: None, 4: None}}, "the studio tracker maps absent frames to None"


def test_bad_annotations_are_reported_by_id_and_frame_and_the_rest_come_back(adapter, clip, video, platform, caplog):
    item = platform.item("vid-bad", video)
    adapter.report.clear()
    good = box_of(clip.masks[0, 0], "car")
    point = video_annotation(item, "a-point", {0: dl.Point(x=5, y=5, label="p")}, object_id="2")
    classification = video_annotation(item, "a-class", {0: dl.Classification(label="c")}, object_id="3")
    sources = [
        video_annotation(item, "good", {0: good}, object_id="1"),
        point,
        classification,
        video_annotation(item, "too-late", {0: good, 40: good}, object_id="4"),
        video_annotation(item, "outside", {5: dl.Box(left=W + 10, top=0, right=W + 40, bottom=20, label="x")},
                         object_id="5"),
        {"id": "garbage"},
        video_annotation(item, "good", {0: good}, object_id="6"),
        video_annotation(item, "good-2", {4: box_of(clip.masks[4, 1], "car")}, object_id="7"),
    ]
    with caplog.at_level(logging.WARNING, logger="sam2-adapter"):
        out = adapter.track_video(item=item, annotations=sources, max_frames=3)
    assert [a["id"] for a in out] == ["good", "good-2"]
    reported = [line["message"] for line in adapter.report if line["item"] == "vid-bad"]
    expected = {"a-point": "point", "a-class": "class", "too-late": "40", "outside": "frame 5", "garbage": "garbage",
                "good": "twice"}
    for ann_id, detail in expected.items():
        assert any(ann_id in m and detail in m for m in reported), f"{ann_id} ({detail}) is not reported: {reported}"
        assert ann_id in caplog.text
    assert len(reported) == len(expected)
    frames = frames_of(read_back(out[1], item))
    assert sorted(frames)[0] == 4 and frames[4].fixed, "an annotation drawn later starts on its own frame"


def test_the_items_own_annotations_when_none_are_given(adapter, clip, video, platform):
    item = platform.item("vid-own", video)
    platform.stored["vid-own"] = [
        video_annotation(item, "own-box", {0: box_of(clip.masks[0, 1], "car")}, object_id="1"),
        video_annotation(item, "own-class", {0: dl.Classification(label="scene")}, object_id="2"),
    ]
    adapter.report.clear()
    out = adapter.track_video(item=item, max_frames=2)
    assert [a["id"] for a in out] == ["own-box"]
    assert list(adapter.report) == [], "other types of the item's own annotations are not errors"
    annotation = read_back(out[0], item)
    assert sorted(frames_of(annotation)) == [0, 1] and annotation.label == "car"


def test_bad_requests_are_clear_errors(adapter, video, platform):
    item = platform.item("vid-opts", video)
    with pytest.raises(InputError, match="direction"):
        adapter.track_video(item=item, annotations=[], direction="sideways")
    with pytest.raises(InputError, match="max_frames"):
        adapter.track_video(item=item, annotations=[], max_frames=0)
    image = platform.item("not-a-video", video, mimetype="image/png")
    with pytest.raises(InputError, match="not-a-video.*image/png"):
        adapter.track_video(item=image, annotations=[])
    assert adapter.track_video(item=item, annotations=[]) == []


# -- the studio's AI Tracker -----------------------------------------------------------------------------------------
def test_studio_tracker_returns_the_core_results_in_the_prompts_type(adapter, clip, video):
    box = mask_box(clip.masks[2, 0])
    ring = mask_to_polygons(clip.masks[2, 1])[0]
    bbs = {
        "b": [{"x": float(box[2]), "y": float(box[3])}, {"x": float(box[0]), "y": float(box[1])}],  # corners swapped
        "p": [[{"x": float(x), "y": float(y)} for x, y in ring]],
        "bad": [{"x": 1.0}],
    }
    out = adapter.track(item_stream_url=str(video), bbs=bbs, start_frame=2, frame_duration=5)
    core = core_frames(adapter, video, {"b": {2: {"type": "box", "box": box.tolist()}},
                                        "p": {2: {"type": "polygon", "polygon": ring}}}, [(2, "forward", 5)])
    assert set(out) == {"b", "p"}, "the bad prompt is left out, the others are tracked"
    for key, frames in out.items():
        assert sorted(frames) == [2, 3, 4, 5, 6]
        for t, coordinates in frames.items():
            obj = core[key][t]
            expected = (obj.box if obj.visible else None) if key == "b" else tracked_ring(adapter, obj)
            if expected is None:
                assert coordinates is None, "an absent object maps to None, never to a copied shape"
            elif key == "b":
                x1, y1, x2, y2 = expected
                assert coordinates == [{"x": x1, "y": y1, "z": 0}, {"x": x2, "y": y2, "z": 0}]
            else:
                assert [[p["x"], p["y"]] for p in coordinates] == expected.tolist()



def test_studio_tracker_takes_rotated_boxes_defaults_and_names_bad_input(adapter, clip, video):
    box = mask_box(clip.masks[2, 0]).astype(float)
    progress = Progress()
    rotated = [{"x": box[0], "y": box[1], "z": 0}, {"x": box[2], "y": box[3], "z": 0}, 15.0]  # as dtlpy writes it
    out = adapter.track(item_stream_url=str(video), bbs={"r": rotated, "bad": [{"x": 1.0}]}, start_frame=None,
                        frame_duration=None, progress=progress)
    core = core_frames(adapter, video, {"r": {0: {"type": "box", "box": enclosing_box(box, 15.0).tolist()}}},
                       [(0, "forward", 60)])
    assert set(out) == {"r"} and sorted(out["r"]) == list(range(T)), "frame 0, up to 60 frames, by default"
    for t, coordinates in out["r"].items():
        obj = core["r"][t]
        if obj.visible:  # prompted with the rotated box's enclosing box, tracked as an upright one
            x1, y1, x2, y2 = obj.box
            assert coordinates == [{"x": x1, "y": y1, "z": 0}, {"x": x2, "y": y2, "z": 0}]
        else:
            assert coordinates is None
    assert any("annotation bad" in m for m in progress.messages), "a dropped prompt is named to the annotator"
    as_strings = [{"x": str(box[0]), "y": str(box[1])}, {"x": str(box[2]), "y": str(box[3])}, "15"]
    assert adapter.track(item_stream_url=str(video), bbs={"r": as_strings}, frame_duration=3) == {
        "r": {t: out["r"][t] for t in range(3)}}, "an angle given as a string, as the coordinates may be"
    with pytest.raises(InputError, match="bbs must map"):
        adapter.track(item_stream_url=str(video), bbs=[rotated])
    with pytest.raises(InputError, match="frame_duration must be a whole number"):
        adapter.track(item_stream_url=str(video), bbs={"r": rotated}, frame_duration="many")


def test_studio_tracker_sends_the_token_only_to_the_platforms_own_host(adapter, clip, video):
    """A link item's URL is another host: it must never see the user's platform token. (The second call finds the
    video streamed by the first, and only asks for one byte of it.)"""
    seen, ranges = [], []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            ranges.append(self.headers.get("Range"))
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(video.parent)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{video.name}"
    bbs = {"b": [{"x": float(v), "y": float(w)} for v, w in np.reshape(mask_box(clip.masks[0, 0]), (2, 2))]}
    try:
        port = httpd.server_address[1]
        gates = (f"http://127.0.0.1:{port}/api/v1", "https://gate.dataloop.ai/api/v1", f"http://127.0.0.1:{port + 1}/")
        for gate in gates:  # the platform's host; another host; the same host, another port (another service)
            platform = type("Dtlpy", (), {"environment": staticmethod(lambda: gate),
                                          "token": staticmethod(lambda: "USER-TOKEN")})
            assert adapter.track(dl=platform, item_stream_url=url, bbs=bbs, frame_duration=2)["b"]
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert seen == ["Bearer USER-TOKEN", None, None] and ranges == [None, "bytes=0-0", "bytes=0-0"]

# -- manifest --------------------------------------------------------------------------------------------------------
def test_manifest_offers_track_video_on_video_items():
    raw = json.loads((REPO / "dataloop.json").read_text())
    dpk = dl.Dpk.from_json(_json=raw, client_api=dl.client_api, project=None)
    (module,) = dpk.components.modules
    (function,) = [f for f in module.functions if f.name == "track_video"]
    assert [i.name for i in function.inputs] == ["item", "annotations", "direction", "max_frames"]
    assert [i.type for i in function.inputs][:2] == ["Item", "Json[]"]
    assert [o.type for o in function.outputs] == ["Annotation[]"]
    toolbars = [t for t in dpk.components.toolbars if (t.invoke or {}).get("namespace", "").endswith(".track_video")]
    assert len(toolbars) == 1
    toolbar = toolbars[0]
    assert toolbar.location == "studioAnnotation" and toolbar.action == "drawAnnotation"
    filters = json.dumps(toolbar.conditions)
    assert "video/*" in filters and all(f'"{t}"' in filters for t in ("box", "segment", "binary"))
