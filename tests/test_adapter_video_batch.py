"""Batch jobs (`predict_items`, hence `predict_dataset`) on video items: each box, polygon or mask annotation drawn on
key frames is tracked both ways through its video and comes back as a video annotation in the job's `output_type`.

Real dtlpy entities built offline and the bundled micro SAM 2 on a generated mp4, through the base class's own
`predict_items` (prefetch threads, `_update_predictions_metadata`, upload). Only dtlpy's network calls are replaced:
item downloads, the annotation list / upload / delete, and the dataset's ontology.

The micro checkpoint tracks poorly for now (README), so tracking accuracy is not asserted. What is asserted is the
contract a user sees: each masklet holds exactly what the core tracker computes for the same prompts and passes, on
the frames the annotation asked for; drawn frames hold SAM 2's own result there and are fixed, tracked frames are not;
absent frames are not visible and hold no geometry; label, attributes, source id and confidence are kept; problems are
reported per annotation (id and frame) while the rest come back, on the right item, with images in the same batch;
and no downloaded video outlives its item.
"""

import io
import json
import shutil
import tempfile
import threading
from pathlib import Path

import cv2
import dtlpy as dl
import numpy as np
import pytest

from conftest import CLIP_SIZE, box_masks, box_of, core_run, micro_adapter, polygon_of
from model_adapter import ModelAdapter
from sam2_adapter.config import Settings
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import mask_to_polygons, png_data_url_to_mask
from sam2_adapter.scenes import mask_box
from sam2_adapter.segment import ImageSegmenter

T, H, W = CLIP_SIZE
MODEL_NAME = "sam2-micro-batch"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter():
    return micro_adapter("model-vb", MODEL_NAME)


@pytest.fixture
def configure(adapter, monkeypatch):
    """Job settings for one test (the module's adapter is put back afterwards)."""
    def apply(**values):
        monkeypatch.setattr(adapter, "settings", Settings.from_mapping({**adapter.settings.as_dict(), **values}))
    return apply


class OfflinePlatform:
    """Stands in for the platform calls a batch job makes; dtlpy's own logic (and the base class's) runs unchanged.
    Downloads: images as bytes (`save_locally=False`), videos copied into the folder asked for."""

    def __init__(self, monkeypatch, tmp_path):
        self.files: dict[str, bytes | Path] = {}
        self.stored: dict[str, list[dict]] = {}
        self.uploaded: dict[str, list] = {}
        self.deleted: dict[str, list] = {}
        self.downloads: list[str] = []
        self.left_at_upload: list[str] = []  # temporary files still there when a batch's results are uploaded
        platform = self

        def download(item, local_path=None, save_locally=True, **kwargs):
            source = platform.files[item.id]
            if not save_locally:
                return io.BytesIO(source)
            target = Path(local_path) / item.name
            shutil.copyfile(source, target)
            platform.downloads.append(str(target))
            return str(target)

        def list_annotations(repo, *args, **kwargs):
            return dl.AnnotationCollection(item=repo.item, annotations=[
                dl.Annotation.from_json(j, item=repo.item) for j in platform.stored.get(repo.item.id, [])])

        def upload(repo, annotations, **kwargs):
            platform.uploaded[repo.item.id] = list(annotations)
            platform.left_at_upload += platform.leftovers()
            return annotations

        def delete(repo, annotation=None, annotation_id=None, filters=None, **kwargs):
            if annotation_id is not None:
                platform.deleted.setdefault(repo.item.id, []).append(annotation_id)
            return True

        monkeypatch.setattr(dl.Item, "download", download)
        monkeypatch.setattr(dl.repositories.Annotations, "list", list_annotations)
        monkeypatch.setattr(dl.repositories.Annotations, "upload", upload)
        monkeypatch.setattr(dl.repositories.Annotations, "delete", delete)
        monkeypatch.setattr(dl.Dataset, "_get_ontology",
                            lambda self: type("Ontology", (), {"color_map": {}, "labels": []})())
        # the job's temporary folders land here, where the test can see that none is left behind
        self.temp = tmp_path / "tmp"
        self.temp.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(self.temp))
        self.dataset = dl.Dataset.from_json(_json={"id": "dataset-vb", "name": "mixed"}, client_api=dl.client_api,
                                            project=None, datasets=None, is_fetched=False)

    def video_item(self, item_id: str, video: Path) -> dl.Item:
        self.files[item_id] = video
        return dl.Item.from_json(
            _json={"id": item_id, "name": f"{item_id}.mp4", "filename": f"/{item_id}.mp4", "type": "file",
                   "datasetId": self.dataset.id,
                   "metadata": {"system": {"mimetype": "video/mp4", "height": H, "width": W, "nb_frames": T},
                                "fps": 10}},
            client_api=dl.client_api, dataset=self.dataset, is_fetched=False)

    def image_item(self, item_id: str, image: np.ndarray) -> dl.Item:
        self.files[item_id] = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
        return dl.Item.from_json(
            _json={"id": item_id, "name": f"{item_id}.png", "filename": f"/{item_id}.png", "type": "file",
                   "datasetId": self.dataset.id, "metadata": {"system": {"mimetype": "image/png"}}},
            client_api=dl.client_api, dataset=self.dataset, is_fetched=False)

    def leftovers(self) -> list[str]:
        return sorted(str(p.relative_to(self.temp)) for p in self.temp.rglob("*"))

    def assert_clean(self) -> None:
        """Every downloaded video was deleted once its item was predicted: before the batch's upload, not later."""
        assert self.left_at_upload == [], "a downloaded video outlived the prediction of its item"
        assert self.leftovers() == []


@pytest.fixture
def platform(monkeypatch, tmp_path):
    return OfflinePlatform(monkeypatch, tmp_path)


# -- building sources, as the platform serialises them ----------------------------------------------------------------
def video_annotation(item, ann_id: str, frames: dict, object_id: str = "1", metadata: dict | None = None) -> dict:
    """A video annotation drawn (fixed) on `frames` {frame: definition}, as dtlpy's builder and to_json make it."""
    builder = item.annotations.builder()
    for t in sorted(frames):
        builder.add(annotation_definition=frames[t], object_id=object_id, frame_num=t, fixed=True,
                    metadata=metadata or {"user": {"note": "drawn"}})
    return {**builder.annotations[0].to_json(), "id": ann_id}


def box_prompt(mask) -> dict:
    return {"type": "box", "box": mask_box(mask).tolist()}


def image_box(ann_id, box, label="thing") -> dict:
    definition = dl.Box(left=float(box[0]), top=float(box[1]), right=float(box[2]), bottom=float(box[3]),
                        label=label, attributes={"kind": ann_id})
    return {**dl.Annotation.new(annotation_definition=definition).to_json(), "id": ann_id}


# -- what the core computes -------------------------------------------------------------------------------------------
def expected_frames(core: dict, key: str, spans: dict) -> dict:
    """{frame: ObjectMask} that annotation `key` takes: each direction's results on that direction's span only."""
    return {t: core[direction][key][t] for direction, (first, last) in spans.items() for t in range(first, last + 1)}


def ring(adapter, obj):
    """The polygon the adapter makes of a tracked object: its largest part, in frame pixels; None if none."""
    if not obj.visible:
        return None
    rings = mask_to_polygons(obj.crop, adapter.settings.polygon_tolerance, adapter.settings.polygon_min_area)
    return rings[0] + np.asarray(obj.origin) if rings else None


def read_back(annotation: dl.Annotation, item) -> dl.Annotation:
    """An uploaded annotation through the platform's path: serialised to JSON, then dtlpy's parser."""
    return dl.Annotation.from_json(json.loads(json.dumps(annotation.to_json())), item=item)


def by_source(annotations) -> dict:
    out: dict = {}
    for annotation in annotations:
        out.setdefault(annotation.metadata["user"]["sam2"]["source_annotation_id"], []).append(annotation)
    return out


def assert_masklet(adapter, annotation: dl.Annotation, item, expected: dict, drawn: dict, kind: str) -> None:
    """The uploaded annotation holds the core's result on every frame it asked for, from the first one where the
    object is seen: drawn frames fixed (dtlpy reads an annotation's first frame back as fixed, always), tracked
    frames not, absent frames not visible and without geometry; labels and attributes of the latest drawn frame."""
    assert annotation.type == kind
    shape = {t: (ring(adapter, obj) if kind == "segment" else obj.mask()) for t, obj in expected.items()}
    seen = min(t for t, s in shape.items() if s is not None)
    parsed = read_back(annotation, item)
    frames = {t: parsed.frames[t] for t in parsed.frames.keys()}
    assert sorted(frames) == [t for t in sorted(expected) if t >= seen], "the frames asked for, from the first seen"
    drawn_frames = sorted(drawn)
    for t, frame in frames.items():
        assert frame.fixed == (t in drawn) or t == seen, f"frame {t}: fixed only where the annotation is drawn"
        values = drawn[max([d for d in drawn_frames if d <= t] or drawn_frames[:1])]
        assert frame.label == values.label and frame.attributes == values.attributes, f"frame {t}: label, attributes"
        if shape[t] is None:
            assert not frame.object_visible, f"frame {t}: absent in the core, visible in the result"
            if kind == "segment":
                assert np.asarray(frame.geo).size == 0, f"frame {t}: an absent frame holds no polygon"
            else:
                assert not png_data_url_to_mask(frame.coordinates).any(), f"frame {t}: an absent frame holds no mask"
            continue
        assert frame.object_visible, f"frame {t}: visible in the core, absent in the result"
        if kind == "segment":
            assert np.array_equal(np.asarray(frame.geo), shape[t]), f"frame {t}: not the core's polygon"
        else:
            assert np.array_equal(png_data_url_to_mask(frame.coordinates), shape[t]), f"frame {t}: not the core's mask"


def confidence_of(expected: dict) -> float:
    scores = np.array([obj.object_score for obj in expected.values() if obj.visible])
    return float(np.mean(1 / (1 + np.exp(-scores))))


# -- tests ------------------------------------------------------------------------------------------------------------
def test_key_frame_annotations_become_masklets_over_the_whole_video(adapter, clip, video, platform):
    """A box drawn on frame 6 and a polygon drawn on frames 2 and 8 (a correction, other attributes): both followed
    both ways to the ends of the video, as masks, in one job."""
    item = platform.video_item("vb-masks", video)
    box = box_of(clip.masks[6, 0], "car", {"colour": "red"})
    first, correction = polygon_of(clip.masks[2, 1], "blob", {"occluded": False}), \
        polygon_of(clip.masks[8, 1], "blob", {"occluded": True})
    platform.stored[item.id] = [video_annotation(item, "box-0", {6: box}, object_id="4"),
                                video_annotation(item, "poly-1", {2: first, 8: correction}, object_id="9")]
    adapter.report.clear()
    adapter.predict_items([item])

    # the adapter's passes: forward from the first drawn frame of all (2) to the end, backward from the frame
    # before the latest first-drawn frame (5) to the start; each annotation keeps its own spans of them
    core = core_run(adapter, video, {"box-0": {6: box_prompt(clip.masks[6, 0])},
                                     "poly-1": {2: {"type": "polygon", "polygon": first.geo},
                                                8: {"type": "polygon", "polygon": correction.geo}}},
                    [(2, "forward", T - 2), (5, "backward", 6)])
    expected = {"box-0": expected_frames(core, "box-0", {"forward": (6, T - 1), "backward": (0, 5)}),
                "poly-1": expected_frames(core, "poly-1", {"forward": (2, T - 1), "backward": (0, 1)})}
    drawn = {"box-0": {6: box}, "poly-1": {2: first, 8: correction}}

    results = by_source(platform.uploaded[item.id])
    assert sorted(results) == ["box-0", "poly-1"] and all(len(r) == 1 for r in results.values())
    assert list(adapter.report) == []
    for source, (annotation,) in results.items():
        assert annotation.item_id == item.id
        assert annotation.object_id == {"box-0": "4", "poly-1": "9"}[source], "the source's object id is kept"
        assert annotation.metadata["user"]["note"] == "drawn", "the source's metadata is kept"
        model = annotation.metadata["user"]["model"]
        assert model["name"] == MODEL_NAME
        assert model["confidence"] == pytest.approx(confidence_of(expected[source]), abs=1e-4)
        assert 0 <= model["confidence"] <= 1
        assert_masklet(adapter, annotation, item, expected[source], drawn[source], "binary")
    assert platform.deleted.get(item.id, []) == [], "sources are kept unless replace_boxes"
    platform.assert_clean()
    assert platform.downloads and not any(Path(p).exists() for p in platform.downloads)


def test_polygons_and_both_outputs_with_replaced_sources(adapter, clip, video, platform, configure):
    """output_type both: a mask and a polygon masklet per source; replace_boxes deletes the sources once uploaded."""
    configure(output_type="both", replace_boxes=True, video_max_frames=4)
    item = platform.video_item("vb-both", video)
    builder = item.annotations.builder()
    drawn_mask = clip.masks[5, 1]
    builder.add(annotation_definition=dl.Segmentation(geo=drawn_mask, label="blob", attributes={"n": 1}),
                object_id="2", frame_num=5)
    mask_source = {**builder.annotations[0].to_json(), "id": "mask-1"}
    box = box_of(clip.masks[3, 0], "car")
    platform.stored[item.id] = [video_annotation(item, "box-0", {3: box}, object_id="1"), mask_source]
    adapter.report.clear()
    adapter.predict_items([item])

    # video_max_frames=4: each annotation at most 4 frames each way, its drawn frame included
    core = core_run(adapter, video, {"box-0": {3: box_prompt(clip.masks[3, 0])},
                                     "mask-1": {5: {"type": "mask", "mask": drawn_mask}}},
                    [(3, "forward", 6), (4, "backward", 5)])
    expected = {"box-0": expected_frames(core, "box-0", {"forward": (3, 6), "backward": (0, 2)}),
                "mask-1": expected_frames(core, "mask-1", {"forward": (5, 8), "backward": (2, 4)})}
    drawn = {"box-0": {3: box}, "mask-1": {5: dl.Segmentation(geo=drawn_mask, label="blob", attributes={"n": 1})}}
    results = by_source(platform.uploaded[item.id])
    assert sorted(results) == ["box-0", "mask-1"]
    for source, annotations in results.items():
        kinds = {a.type: a for a in annotations}
        assert sorted(kinds) == ["binary", "segment"], f"{source}: one mask and one polygon masklet"
        assert len({a.object_id for a in annotations}) == 1, "both outputs keep the source's object id"
        for kind, annotation in kinds.items():
            assert_masklet(adapter, annotation, item, expected[source], drawn[source], kind)
    assert sorted(platform.deleted[item.id]) == ["box-0", "mask-1"]
    platform.assert_clean()


def test_mixed_batch_keeps_items_apart_and_reports_problems(adapter, clip, video, scenes, platform):
    """Images and videos in the same batches of the base class's predict_items: each item gets its own results;
    a video without prompts, bad annotations and an earlier run's results are handled per item and per annotation."""
    items = []
    for n in range(2):
        scene = scenes[n]
        image = platform.image_item(f"mix-img-{n}", scene.image)
        platform.stored[image.id] = [image_box(f"img{n}-b{k}", b) for k, b in enumerate(scene.boxes)]
        items.append(image)
    first = platform.video_item("mix-vid-0", video)
    box = box_of(clip.masks[4, 0], "car")
    earlier = video_annotation(first, "earlier-result", {4: polygon_of(clip.masks[4, 0], "car")}, object_id="3",
                               metadata={"user": {"sam2": {"source_annotation_id": "vid0-box"},
                                                  "model": {"name": MODEL_NAME, "confidence": 0.5}}})
    platform.stored[first.id] = [video_annotation(first, "vid0-box", {4: box}, object_id="1"), earlier,
                                 video_annotation(first, "vid0-class", {0: dl.Classification(label="scene")},
                                                  object_id="2")]
    empty = platform.video_item("mix-vid-empty", video)
    platform.stored[empty.id] = [video_annotation(empty, "only-class", {0: dl.Classification(label="scene")})]
    bad = platform.video_item("mix-vid-bad", video)
    outside = dl.Box(left=W + 10, top=0, right=W + 40, bottom=20, label="x")
    platform.stored[bad.id] = [video_annotation(bad, "vid2-outside", {7: outside}, object_id="1"),
                               video_annotation(bad, "vid2-late", {0: box, 40: box}, object_id="2"),
                               video_annotation(bad, "vid2-good", {9: box_of(clip.masks[9, 1], "blob")},
                                                object_id="3")]
    items = [items[0], first, empty, items[1], bad]
    adapter.report.clear()
    adapter.predict_items(items, batch_size=2)

    for n in range(2):  # the images: every box a mask, as the core computes it
        scene = scenes[n]
        core = box_masks(adapter.segmenter, scene.image, scene.boxes)
        got = platform.uploaded[f"mix-img-{n}"]
        assert len(got) == sum(1 for r in core if r.area)
        for annotation in got:
            source = annotation.metadata["user"]["sam2"]["source_annotation_id"]
            assert source.startswith(f"img{n}-"), "an image's result landed on the wrong item"
            assert np.array_equal(annotation.annotation_definition.geo > 0, core[int(source.split("-b")[1])].full())
    assert sorted(by_source(platform.uploaded["mix-vid-0"])) == ["vid0-box"], \
        "an earlier run's result and other types are no prompts"
    assert sorted(by_source(platform.uploaded["mix-vid-bad"])) == ["vid2-good"]
    for item_id in ("mix-vid-0", "mix-vid-bad"):
        assert all(a.item_id == item_id and a.type == "binary" for a in platform.uploaded[item_id])
    assert platform.uploaded.get("mix-vid-empty", []) == []

    reported = {}
    for line in adapter.report:
        reported.setdefault(line["item"], []).append(line["message"])
    assert sorted(reported) == ["mix-vid-bad", "mix-vid-empty"], reported
    (message,) = reported["mix-vid-empty"]
    assert "no box, polygon or mask" in message and "skipped" in message
    bad_lines = reported["mix-vid-bad"]
    assert len(bad_lines) == 2, bad_lines
    assert any("vid2-outside" in m and "frame 7" in m for m in bad_lines)
    assert any("vid2-late" in m and "40" in m for m in bad_lines)
    platform.assert_clean()


def test_image_results_are_the_same_with_the_geometry_beside_the_decoder(adapter, scenes, platform, configure,
                                                                         monkeypatch):
    """Where a core is free (a GPU), an image's annotations (masks and polygons) are built on a worker while the
    decoder runs the next box: the same annotations, in the same order, on the same item."""
    configure(output_type="both")
    scene = scenes[3]
    masked = sum(1 for r in box_masks(adapter.segmenter, scene.image, scene.boxes) if r.area)
    definitions = adapter._definitions
    uploaded, threads = {}, {}
    for overlap in (False, True):
        item = platform.image_item(f"worker-{overlap}", scene.image)
        platform.stored[item.id] = [image_box(f"w-b{k}", b) for k, b in enumerate(scene.boxes)]
        monkeypatch.setattr(adapter, "segmenter", ImageSegmenter(adapter.model, adapter.segmenter.cache,
                                                                 max_prompts_per_call=1, overlap_then=overlap))
        seen = threads[overlap] = set()
        monkeypatch.setattr(adapter, "_definitions",
                            lambda *a, seen=seen: seen.add(threading.current_thread().name) or definitions(*a))
        adapter.predict_items([item], batch_size=1)
        uploaded[overlap] = [{k: v for k, v in a.to_json().items() if k not in ("itemId", "id")}
                             for a in platform.uploaded[item.id]]
    assert threads[True] and all(name.startswith("sam2-geometry") for name in threads[True])
    assert not any(name.startswith("sam2-geometry") for name in threads[False])
    kinds = [a["type"] for a in uploaded[True]]
    assert kinds.count("binary") == masked >= 2 and kinds.count("segment") >= masked
    assert uploaded[True] == uploaded[False]


def test_object_found_nowhere_is_reported_and_its_source_kept(adapter, clip, video, platform, configure):
    """A mask threshold no logit reaches: SAM 2 finds the object on no frame, not even where it is drawn. Nothing
    comes back for it (no empty masklet, no copied box) and replace_boxes keeps its source."""
    configure(mask_threshold=1e9, replace_boxes=True, video_max_frames=3)
    item = platform.video_item("vb-absent", video)
    platform.stored[item.id] = [video_annotation(item, "lost", {2: box_of(clip.masks[2, 0], "car")})]
    adapter.report.clear()
    adapter.predict_items([item])
    assert platform.uploaded.get(item.id, []) == []
    assert platform.deleted.get(item.id, []) == []
    messages = [line["message"] for line in adapter.report]
    assert any("lost" in m and "frame 2" in m and "no object where it is drawn" in m for m in messages), messages
    assert any("lost" in m and "no frame" in m for m in messages), messages
    platform.assert_clean()


def test_replace_boxes_keeps_an_annotation_whose_drawing_sam2_does_not_reproduce(adapter, clip, video, platform,
                                                                               configure):
    """With replace_boxes, a masklet stands for its source, drawn frames included: where SAM 2 finds nothing on a
    drawn frame, the drawing would be lost with the source, so the source is kept (and said so)."""
    configure(mask_threshold=4.0, replace_boxes=True, video_max_frames=3)
    item = platform.video_item("vb-unmatched", video)
    empty = np.argwhere(~clip.masks.any(axis=(0, 1))[:-4, :-4])
    y, x = (int(v) for v in empty[0])  # a 3 px box on the background of every frame
    drawn = {3: box_of(clip.masks[3, 0], "car"), 8: dl.Box(left=x, top=y, right=x + 3, bottom=y + 3, label="car")}
    platform.stored[item.id] = [video_annotation(item, "A", drawn)]
    adapter.report.clear()
    adapter.predict_items([item])
    assert len(platform.uploaded[item.id]) == 1, "the masklet is stored"
    assert platform.deleted.get(item.id, []) == [], "its source, with the drawing on frame 8, is kept"
    assert any("annotation A, frame 8: SAM 2 finds no object where it is drawn (the annotation is kept" in line["message"]
               for line in adapter.report), list(adapter.report)


def test_temporary_video_is_deleted_when_an_item_fails(adapter, clip, video, scenes, platform, monkeypatch):
    """An unexpected error while one video is tracked, or while another downloads, costs that item only, and
    nothing downloaded is left behind."""
    broken = platform.video_item("vb-broken", video)
    platform.stored[broken.id] = [video_annotation(broken, "b", {0: box_of(clip.masks[0, 0], "car")})]
    gone = platform.video_item("vb-gone", video)
    platform.stored[gone.id] = [video_annotation(gone, "g", {0: box_of(clip.masks[0, 0], "car")})]
    del platform.files[gone.id]  # its download fails after the job made a folder for it
    image = platform.image_item("vb-image", scenes[2].image)
    platform.stored[image.id] = [image_box("img-b0", scenes[2].boxes[0])]
    seen: list[str] = []

    def fail(self, item, video_path, *args, **kwargs):
        seen.append(video_path)
        assert Path(video_path).is_file(), "the video is on disk while its item is predicted"
        raise RuntimeError("tracker exploded")

    monkeypatch.setattr(ModelAdapter, "_track_annotations", fail)
    adapter.report.clear()
    adapter.predict_items([broken, gone, image])
    assert seen and not Path(seen[0]).exists()
    platform.assert_clean()
    assert platform.uploaded.get(broken.id, []) == [] and platform.uploaded.get(gone.id, []) == []
    (line,) = [line for line in adapter.report if line["item"] == broken.id]
    assert "RuntimeError" in line["message"] and "tracker exploded" in line["message"]
    (line,) = [line for line in adapter.report if line["item"] == gone.id]
    assert "vb-gone" in line["message"] and "KeyError" in line["message"]
    (core,) = box_masks(adapter.segmenter, scenes[2].image, scenes[2].boxes[:1])
    assert len(platform.uploaded[image.id]) == (1 if core.area else 0), "the image in the same batch went on"


def test_video_max_frames_setting():
    assert Settings().video_max_frames == 0, "the whole video by default"
    assert Settings.from_mapping({"video_max_frames": 30}).video_max_frames == 30
    with pytest.raises(InputError, match="video_max_frames"):
        Settings.from_mapping({"video_max_frames": -1})


def test_track_video_through_the_shared_mechanism_keeps_its_drawing(adapter, clip, video, platform, configure):
    """`track_video` runs on the same mechanism: its drawn frames stay as drawn even where SAM 2 finds nothing,
    so it neither reports the drawn frames nor loses the annotation; nothing is uploaded."""
    configure(mask_threshold=1e9)
    item = platform.video_item("vb-track-video", video)
    box = box_of(clip.masks[2, 0], "car")
    adapter.report.clear()
    (result,) = adapter.track_video(item=item, annotations=[video_annotation(item, "kept", {2: box})], max_frames=3)
    assert list(adapter.report) == []
    frames = read_back_json(result, item)
    assert result["id"] == "kept" and result["type"] == "box" and "model" not in result["metadata"]["user"]
    assert sorted(frames) == [2, 3, 4] and frames[2].fixed and frames[2].object_visible
    assert (frames[2].left, frames[2].top, frames[2].right, frames[2].bottom) == tuple(mask_box(clip.masks[2, 0]))
    assert not frames[3].object_visible and not frames[4].object_visible
    assert platform.uploaded == {}
    platform.assert_clean()


def read_back_json(result: dict, item) -> dict:
    annotation = dl.Annotation.from_json(json.loads(json.dumps(result)), item=item)
    return {t: annotation.frames[t] for t in annotation.frames.keys()}
