"""The Dataloop face, with real dtlpy entities built offline. Only dtlpy's network calls are replaced: the item
download (served from the test's own bytes) and the model entity update."""

import io
import itertools
import logging
import threading

import cv2
import dtlpy as dl
import numpy as np
import pytest

from conftest import Progress, box_masks, micro_adapter
from model_adapter import _download_image
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import (enclosing_box, mask_iou, png_data_url_to_mask, polygons_to_mask, rotated_box_mask,
                                   validate_box)
from sam2_adapter.scenes import make_scene
from sam2_adapter.segment import ImageSegmenter

_BYTES: dict[str, bytes] = {}


@pytest.fixture(autouse=True)
def offline_dtlpy(monkeypatch):
    monkeypatch.setattr(dl.Item, "download", lambda self, **kwargs: io.BytesIO(_BYTES[self.id]))
    monkeypatch.setattr(dl.Model, "update", lambda self, **kwargs: self)


@pytest.fixture(scope="module")
def adapter():
    return micro_adapter("model-1", "sam2-micro")


def make_item(item_id: str, image: np.ndarray | None = None, data: bytes | None = None, mimetype="image/png",
              dataset=None, updated_at: str | None = None):
    if data is None:
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        data = png.tobytes()
    _BYTES[item_id] = data
    return dl.Item.from_json(
        _json={"id": item_id, "name": f"{item_id}.png", "filename": f"/{item_id}.png", "type": "file",
               "updatedAt": updated_at, "metadata": {"system": {"mimetype": mimetype}}},
        client_api=dl.client_api, dataset=dataset, is_fetched=False)


def box_json(ann_id, box, label="thing", attributes=None, angle=None):
    """A box annotation as the platform serialises it (dtlpy's own to_json), with the given id."""
    definition = dl.Box(left=float(box[0]), top=float(box[1]), right=float(box[2]), bottom=float(box[3]),
                        label=label, attributes=attributes or {"kind": ann_id}, angle=angle)
    annotation = dl.Annotation.new(annotation_definition=definition, metadata={"user": {"note": "drawn"}})
    return {**annotation.to_json(), "id": ann_id}


def test_box_to_segmentation_replaces_each_box_in_place(adapter, scenes):
    scene = scenes[0]
    item = make_item("item-seg", scene.image)
    boxes = [box_json(f"ann-{k}", b, label=f"label-{k}") for k, b in enumerate(scene.boxes)]
    out = adapter.box_to_segmentation(item=item, annotations=boxes)
    core = core_masks(adapter, scene)
    assert [a["id"] for a in out] == [b["id"] for k, b in enumerate(boxes) if core[k].area]
    for ann in out:
        k = int(ann["id"].split("-")[1])
        assert ann["type"] == "binary" and ann["label"] == f"label-{k}"
        parsed = dl.Annotation.from_json(ann)  # the studio's own parser reads it back
        assert parsed.label == f"label-{k}" and parsed.attributes == {"kind": f"ann-{k}"}
        assert ann["metadata"]["user"]["model"]["confidence"] == pytest.approx(core[k].score, abs=1e-4)
        assert ann["metadata"]["user"]["note"] == "drawn"
        assert np.array_equal(png_data_url_to_mask(ann["coordinates"]), core[k].full())


def without_specks(mask, min_area):
    """The mask with parts smaller than min_area removed and holes smaller than min_area filled."""
    out = mask.copy()
    for value, target in ((True, False), (False, True)):
        count, labels, stats, _ = cv2.connectedComponentsWithStats((out == value).astype(np.uint8), connectivity=8)
        for c in range(1, count):
            x, y, w, h, area = stats[c]
            touches_edge = x == 0 or y == 0 or x + w == out.shape[1] or y + h == out.shape[0]
            if area < min_area and (value or not touches_edge):
                out[labels == c] = target
    return out


def core_masks(adapter, scene):
    """SAM 2's masks of the scene's boxes, cut at the boxes: the adapter must deliver exactly these."""
    return box_masks(adapter.segmenter, scene.image, scene.boxes)


def test_box_to_polygon_keeps_parts_and_holes(adapter, scenes):
    scene = next(s for s in scenes if "ring" in s.kinds or "split" in s.kinds)
    item = make_item("item-poly", scene.image)
    boxes = [box_json(f"p-{k}", b) for k, b in enumerate(scene.boxes)]
    out = adapter.box_to_polygon(item=item, annotations=boxes)
    h, w = scene.image.shape[:2]
    by_source: dict[str, list] = {}
    assert all(r.area for r in core_masks(adapter, scene)), "every box of this scene gives a mask"
    for ann in out:
        assert ann["type"] == "segment"
        parsed = dl.Annotation.from_json(ann)
        by_source.setdefault(ann["metadata"]["user"]["sam2"]["source_annotation_id"], []).append(parsed)
    assert set(by_source) == {b["id"] for b in boxes}
    ids = [a["id"] for a in out]
    assert all(b["id"] in ids for b in boxes), "the largest part keeps the box's id"
    core = core_masks(adapter, scene)
    for k, box in enumerate(boxes):
        rings = [np.asarray(p.geo) for p in by_source[box["id"]]]
        rasterised = polygons_to_mask(rings, h, w)
        # specks and pin-holes under polygon_min_area are dropped by design; every other part and hole is kept
        expected = without_specks(core[k].full(), adapter.settings.polygon_min_area)
        assert mask_iou(rasterised, expected) >= 0.98, "the polygons follow the mask, parts and holes"



def test_a_mask_smaller_than_polygon_min_area_still_gives_its_polygons(adapter, scenes, monkeypatch):
    """polygon_min_area drops specks beside an object, never the object: with every part of every mask under it,
    each box still comes back, as all of its parts."""
    scene = scenes[2]
    monkeypatch.setattr(adapter, "settings", adapter.settings.__class__.from_mapping(
        {**adapter.settings.as_dict(), "polygon_min_area": 1e9}))
    boxes = [box_json(f"s-{k}", b) for k, b in enumerate(scene.boxes)]
    out = adapter.box_to_polygon(item=make_item("item-specks", scene.image), annotations=boxes)
    h, w = scene.image.shape[:2]
    for box, result in zip(boxes, core_masks(adapter, scene)):
        rings = [np.asarray(dl.Annotation.from_json(a).geo) for a in out
                 if a["metadata"]["user"]["sam2"]["source_annotation_id"] == box["id"]]
        assert rings, f"box {box['id']} was dropped"
        assert mask_iou(polygons_to_mask(rings, h, w), result.full()) >= 0.98

@pytest.mark.parametrize("function", ["box_to_polygon", "box_to_segmentation"])
def test_box_annotations_are_the_same_with_the_geometry_beside_the_decoder(adapter, scenes, monkeypatch, function):
    """Where a core is free (a GPU), each box's geometry and JSON are made on a worker while the decoder runs the
    next box: the same annotations in the same order, a bad box still reported in its place."""
    scene = next(s for s in scenes if "ring" in s.kinds or "split" in s.kinds)
    item = make_item("item-worker", scene.image)
    boxes = [box_json(f"w-{k}", b, label=f"label-{k}") for k, b in enumerate(scene.boxes)]
    boxes.insert(1, box_json("zero-area", [5, 5, 5, 40]))
    definitions = adapter._definitions
    outputs, threads = {}, {}
    for overlap in (False, True):
        # one decoder call a box, so that there is a next call to run beside
        segmenter = ImageSegmenter(adapter.model, adapter.segmenter.cache, max_prompts_per_call=1,
                                   overlap_then=overlap)
        monkeypatch.setattr(adapter, "segmenter", segmenter)
        seen = threads[overlap] = set()
        monkeypatch.setattr(adapter, "_definitions",
                            lambda *a, seen=seen: seen.add(threading.current_thread().name) or definitions(*a))
        outputs[overlap] = getattr(adapter, function)(item=item, annotations=boxes)
    assert threads[False] == {threading.current_thread().name}
    assert threads[True] and all(name.startswith("sam2-geometry") for name in threads[True])
    assert len(outputs[True]) >= len(scene.boxes) and "zero-area" not in [a["id"] for a in outputs[True]]
    assert outputs[True] == outputs[False]


def test_bad_boxes_are_reported_by_id_and_the_rest_come_back(adapter, scenes, caplog):
    scene = scenes[1]
    item = make_item("item-bad", scene.image)
    h, w = scene.image.shape[:2]
    annotations = [
        box_json("good", scene.boxes[0]),
        box_json("nan-box", [float("nan"), 0, 10, 10]),
        box_json("zero-area", [5, 5, 5, 40]),
        box_json("outside", [w + 5, 0, w + 40, 30]),
        {"id": "a-point", "type": "point", "label": "x", "coordinates": [{"x": 1, "y": 1}], "metadata": {}},
        {"id": "garbage"},
        {**box_json("elsewhere", scene.boxes[2]), "itemId": "another-item"},  # drawn on another image
        box_json("good-2", scene.boxes[1]),
    ]
    progress = Progress()
    with caplog.at_level(logging.WARNING, logger="sam2-adapter"):
        out = adapter.box_to_segmentation(item=item, annotations=annotations, progress=progress)
    assert [a["id"] for a in out] == ["good", "good-2"]
    (message,) = progress.messages
    assert message.startswith("6 of 8 annotations gave no segmentation")
    assert "annotation elsewhere: belongs to item another-item, not item-bad" in message
    for bad in ("nan-box", "zero-area", "outside", "a-point", "garbage", "elsewhere"):
        assert bad in caplog.text and bad in message, f"{bad} is not reported"
    # nothing but bad annotations: still reported, not just logged
    progress = Progress()
    assert adapter.box_to_polygon(item=item, annotations=annotations[-4:-2], progress=progress) == []
    assert "a-point" in progress.messages[0] and "garbage" in progress.messages[0]


def test_box_margin_lets_masks_reach_past_their_boxes(adapter, scenes, monkeypatch):
    """Box to Segmentation cuts SAM 2's mask at the box; `box_margin` keeps that many pixels more on every side."""
    scene = scenes[0]
    boxes = [box_json(f"m-{k}", b) for k, b in enumerate(scene.boxes)]
    tight = core_masks(adapter, scene)
    monkeypatch.setattr(adapter, "settings", adapter.settings.__class__.from_mapping(
        {**adapter.settings.as_dict(), "box_margin": "10"}))
    out = adapter.box_to_segmentation(item=make_item("item-margin", scene.image), annotations=boxes)
    loose = box_masks(adapter.segmenter, scene.image, scene.boxes, margin=10)
    assert sum(a.area > b.area for a, b in zip(loose, tight)) >= 2, "the scene's masks must spill past their boxes"
    assert [a["id"] for a in out] == [b["id"] for b, r in zip(boxes, loose) if r.area]
    for ann in out:
        assert np.array_equal(png_data_url_to_mask(ann["coordinates"]), loose[int(ann["id"][2:])].full())


def test_rotated_box_mask_stays_inside(adapter, scenes):
    scene = scenes[2]
    item = make_item("item-rot", scene.image)
    out = adapter.box_to_segmentation(item=item, annotations=[box_json("rot", scene.boxes[0], angle=20.0)])
    h, w = scene.image.shape[:2]
    inside = rotated_box_mask(scene.boxes[0], 20.0, h, w)
    enclosing = validate_box(enclosing_box(scene.boxes[0], 20.0), w, h, "enclosing")
    (direct,) = adapter.segmenter.segment_boxes(adapter.segmenter.encode(scene.image), enclosing[None])
    expected = direct.full() & inside
    assert [a["id"] for a in out] == (["rot"] if expected.any() else [])
    if expected.any():
        assert np.array_equal(png_data_url_to_mask(out[0]["coordinates"]), expected)


def test_corrupt_image_is_a_clear_error(adapter):
    item = make_item("item-corrupt", data=b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="item-corrupt"):
        adapter.box_to_segmentation(item=item, annotations=[box_json("a", [0, 0, 10, 10])])


def test_video_item_is_refused_by_image_functions(adapter):
    item = make_item("item-video", data=b"", mimetype="video/mp4")
    with pytest.raises(InputError, match="video/mp4"):
        adapter.box_to_polygon(item=item, annotations=[box_json("a", [0, 0, 10, 10])])


@pytest.mark.parametrize("convert", ["gray", "rgba", "uint16", "palette", "exif-png", "exif-jpeg"])
def test_image_kinds_are_converted(adapter, scenes, convert):
    """Each kind reaches the model as the RGB image a viewer would see (an EXIF orientation applied, as browsers
    and so the studio do)."""
    from PIL import Image, ImageOps
    rgb = scenes[3].image
    if convert == "gray":
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        data, expected = cv2.imencode(".png", gray)[1], np.repeat(gray[:, :, None], 3, axis=2)
    elif convert == "rgba":
        data, expected = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))[1], rgb
    elif convert == "uint16":
        data, expected = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)[1], rgb
    elif convert.startswith("exif"):
        # stored on its side, shown upright: orientation 6 turns it 90 degrees clockwise for display
        stored, exif = Image.fromarray(np.ascontiguousarray(np.rot90(rgb))), Image.Exif()
        exif[0x0112] = 6
        buffer = io.BytesIO()
        stored.save(buffer, format=convert.split("-")[1].upper(), exif=exif.tobytes(), quality=95)
        data = buffer.getvalue()
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert expected.shape == rgb.shape
    else:
        buffer = io.BytesIO()
        paletted = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        paletted.save(buffer, format="PNG")
        data, expected = buffer.getvalue(), np.asarray(paletted.convert("RGB"))
    item = make_item(f"item-{convert}", data=bytes(data))
    assert np.array_equal(_download_image(item), expected)
    out = adapter.box_to_segmentation(item=item, annotations=[box_json("a", scenes[3].boxes[0])])
    (direct,) = box_masks(adapter.segmenter, expected, scenes[3].boxes[:1])
    assert [a["id"] for a in out] == (["a"] if direct.area else [])


def test_interactive_editing_returns_the_box_crop_and_refines(adapter, scenes):
    scene = scenes[4]
    item = make_item("item-click", scene.image)
    # a box dragged in the studio has fractional corners; the crop truncates them, as the existing adapter does
    x1, y1, x2, y2 = (float(v) for v in scene.boxes[0] + np.array([0.6, 0.6, 0.4, 0.4]))
    bb = [{"x": x1, "y": y1}, {"x": x2, "y": y2}]
    ys, xs = np.nonzero(scene.masks[0])
    click = {"x": float(xs.mean()), "y": float(ys.mean()), "in": True}
    first = adapter.predict_interactive_editing(item=item, points=[click], bb=bb)
    crop = png_data_url_to_mask(first)
    rows, cols = slice(int(y1), int(y2)), slice(int(x1), int(x2))
    assert crop.shape == (int(y2) - int(y1), int(x2) - int(x1))
    box = np.array([x1, y1, x2, y2], np.float32)
    (click_xy, click_label) = _points([click])
    direct = adapter.segmenter.segment_points(adapter.segmenter.encode(scene.image), click_xy, click_label, box=box)
    assert np.array_equal(crop, direct.full()[rows, cols])
    # the second click continues the same object: SAM 2 gets the first call's logits as mask input
    outside = {"x": float(x1) + 1, "y": float(y1) + 1, "in": False}
    second = png_data_url_to_mask(adapter.predict_interactive_editing(item=item, points=[click, outside], bb=bb))
    segmenter = adapter.segmenter
    features = segmenter.encode(scene.image)
    first_ref = segmenter.segment_points(features, *_points([click]), box=box)
    expected = segmenter.segment_points(features, *_points([click, outside]), box=box,
                                        mask_input=first_ref.low_res_logits)
    expected_crop = expected.full()[rows, cols]
    assert mask_iou(second, expected_crop) >= 0.99
    # the same clicks again (the studio retrying, or asking for polygons): the same mask, not one without history
    again = png_data_url_to_mask(adapter.predict_interactive_editing(item=item, points=[click, outside], bb=bb))
    assert np.array_equal(again, second)
    # polygons (any case of the name) are the same pixels as the segmentation, cut to the box, in image pixels
    polygons = adapter.predict_interactive_editing(item=item, points=[click, outside], bb=bb, return_type="Polygon")
    assert polygons and all({"x", "y"} <= set(p[0]) for p in polygons)
    filled = polygons_to_mask([[(p["x"], p["y"]) for p in ring] for ring in polygons], *scene.image.shape[:2])
    assert not filled[~np.pad(np.ones_like(second), ((rows.start, scene.image.shape[0] - rows.stop),
                                                      (cols.start, scene.image.shape[1] - cols.stop)))].any()
    assert mask_iou(filled[rows, cols], second) >= 0.98
    with pytest.raises(InputError, match="return_type 'outline' is not one of segmentation, binary, polygon"):
        adapter.predict_interactive_editing(item=item, points=[click], bb=bb, return_type="outline")


def test_a_new_item_version_encodes_again_only_when_the_image_changed(adapter, scenes, monkeypatch):
    """The platform updates an item (its `updatedAt`) for its annotations and metadata too. Saving an annotation
    between two clicks must neither encode the image again nor forget the clicks; an edited image must be encoded
    again, and a version seen before is served without a download."""
    scene, edited = scenes[4], scenes[5]
    encoded, downloads = [], []
    encode_many = adapter.segmenter.encode_many
    monkeypatch.setattr(adapter.segmenter, "encode_many", lambda images: encoded.append(len(images))
                        or encode_many(images))
    monkeypatch.setattr(dl.Item, "download", lambda self, **kwargs: downloads.append(self.id)
                        or io.BytesIO(_BYTES[self.id]))
    x1, y1, x2, y2 = (float(v) for v in scene.boxes[0])
    bb = [{"x": x1, "y": y1}, {"x": x2, "y": y2}]
    ys, xs = np.nonzero(scene.masks[0])
    click = {"x": float(xs.mean()), "y": float(ys.mean()), "in": True}
    outside = {"x": x1 + 1, "y": y1 + 1, "in": False}
    adapter.predict_interactive_editing(item=make_item("versioned", scene.image, updated_at="2026-12-02T10:00:00Z"),
                                        points=[click], bb=bb)
    saved = make_item("versioned", scene.image, updated_at="2026-12-02T10:00:05Z")  # an annotation was saved
    second = png_data_url_to_mask(adapter.predict_interactive_editing(item=saved, points=[click, outside], bb=bb))
    assert encoded == [1], "the same image under a new item version was encoded again"
    features = adapter.segmenter.encode(scene.image)
    first_ref = adapter.segmenter.segment_points(features, *_points([click]), box=np.array([x1, y1, x2, y2]))
    expected = adapter.segmenter.segment_points(features, *_points([click, outside]), box=np.array([x1, y1, x2, y2]),
                                                mask_input=first_ref.low_res_logits)
    rows, cols = slice(int(y1), int(y2)), slice(int(x1), int(x2))
    assert mask_iou(second, expected.full()[rows, cols]) >= 0.99, "the first click was forgotten"
    encoded.clear()
    downloads.clear()
    adapter.box_to_segmentation(item=make_item("versioned", scene.image, updated_at="2026-12-02T10:00:05Z"),
                                annotations=[box_json("b", scene.boxes[0])])
    assert (encoded, downloads) == ([], []), "a version seen before needs neither a download nor an encoding"
    out = adapter.box_to_segmentation(item=make_item("versioned", edited.image, updated_at="2026-12-02T10:01:00Z"),
                                      annotations=[box_json("b", edited.boxes[0])])
    assert encoded == [1], "an edited image must be encoded again"
    (direct,) = box_masks(adapter.segmenter, edited.image, edited.boxes[:1])
    assert np.array_equal(dl.Annotation.from_json(out[0]).annotation_definition.geo, direct.full())


def test_an_item_version_is_downloaded_once_by_concurrent_requests_and_one_without_is_never_trusted(
        adapter, scenes, monkeypatch):
    scene, edited = scenes[2], scenes[3]
    downloads = []

    def download(self, **kwargs):
        downloads.append(self.id)
        threading.Event().wait(0.1)  # the other requests arrive meanwhile
        return io.BytesIO(_BYTES[self.id])

    monkeypatch.setattr(dl.Item, "download", download)
    boxes = [box_json("c", scene.boxes[0])]
    item = make_item("item-together", scene.image, updated_at="2026-12-02T11:00:00Z")
    results = []
    threads = [threading.Thread(target=lambda: results.append(adapter.box_to_segmentation(item=item, annotations=boxes)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all(r == results[0] for r in results) and downloads == ["item-together"]
    # an item without any version: its digest cannot be remembered, so an edit is always seen
    downloads.clear()
    adapter.box_to_segmentation(item=make_item("item-unversioned", scene.image), annotations=boxes)
    out = adapter.box_to_segmentation(item=make_item("item-unversioned", edited.image),
                                      annotations=[box_json("e", edited.boxes[0])])
    assert downloads == ["item-unversioned"] * 2
    (direct,) = box_masks(adapter.segmenter, edited.image, edited.boxes[:1])
    assert np.array_equal(dl.Annotation.from_json(out[0]).annotation_definition.geo, direct.full())


def _points(points):
    return (np.array([[p["x"], p["y"]] for p in points], np.float32), np.array([int(p["in"]) for p in points]))


def test_interactive_editing_rejects_clicks_outside_the_image(adapter, scenes):
    item = make_item("item-click-bad", scenes[5].image)
    with pytest.raises(InputError, match="outside"):
        adapter.predict_interactive_editing(item=item, points=[{"x": 9999, "y": 3, "in": True}])
    with pytest.raises(InputError, match="bb must be two points"):
        adapter.predict_interactive_editing(item=item, points=[{"x": 5, "y": 5, "in": True}], bb=[{"x": 1}])
    with pytest.raises(InputError, match="color"):
        adapter.predict_interactive_editing(item=item, points=[{"x": 5, "y": 5, "in": True}], color="#12345")
    short = adapter.predict_interactive_editing(item=item, points=[{"x": 5, "y": 5, "in": True}], color="#f0a")
    for same in ([255, 0, 170], ["255", 0, 170.0, 255]):  # as numbers or strings, an alpha ignored
        assert short == adapter.predict_interactive_editing(item=item, points=[{"x": 5, "y": 5, "in": True}],
                                                            color=same)
    with pytest.raises(InputError, match="color"):
        adapter.predict_interactive_editing(item=item, points=[{"x": 5, "y": 5, "in": True}], color=[300, 0, 0])


class OfflinePlatform:
    """Stands in for the platform's network calls that `predict_items` makes (annotation list / upload / delete,
    the ontology's colours), keeping each item's annotations as the platform would; the adapter and dtlpy's own
    logic run unchanged. `stored_limit` stores at most that many annotations of an upload, as dtlpy's upload does
    when one of its chunks fails (it logs the error and returns what was stored)."""

    def __init__(self, monkeypatch):
        self.stored: dict[str, list[dict]] = {}
        self.uploaded: dict[str, list] = {}
        self.deleted: dict[str, list] = {}
        self.cleaned: list[str] = []  # items whose annotations were deleted by a filter (the base class's way)
        self.stored_limit: int | None = None
        platform = self
        ids = itertools.count()

        def list_annotations(repo, *args, **kwargs):
            return dl.AnnotationCollection(item=repo.item, annotations=[
                dl.Annotation.from_json(j, item=repo.item) for j in platform.stored.get(repo.item.id, [])])

        def upload(repo, annotations, **kwargs):
            platform.uploaded[repo.item.id] = list(annotations)
            kept = list(annotations)[:platform.stored_limit]
            stored = platform.stored.setdefault(repo.item.id, [])
            for annotation in kept:
                stored.append({**annotation.to_json(), "id": f"result-{next(ids)}"})
            return dl.AnnotationCollection(item=repo.item, annotations=[
                dl.Annotation.from_json(j, item=repo.item) for j in stored[len(stored) - len(kept):]])

        def delete(repo, annotation=None, annotation_id=None, filters=None, **kwargs):
            if annotation_id is not None:
                if all(j["id"] != annotation_id for j in platform.stored.get(repo.item.id, [])):
                    raise dl.exceptions.NotFound("404", f"annotation {annotation_id} not found")
                platform.deleted.setdefault(repo.item.id, []).append(annotation_id)
                platform.stored[repo.item.id] = [j for j in platform.stored[repo.item.id] if j["id"] != annotation_id]
            elif filters is not None:  # as dtlpy's base class uses it: every result of the model on the item
                platform.cleaned.append(repo.item.id)
                platform.stored[repo.item.id] = [j for j in platform.stored.get(repo.item.id, [])
                                                 if not j.get("metadata", {}).get("system", {}).get("model")]
            return True

        monkeypatch.setattr(dl.repositories.Annotations, "list", list_annotations)
        monkeypatch.setattr(dl.repositories.Annotations, "upload", upload)
        monkeypatch.setattr(dl.repositories.Annotations, "delete", delete)
        monkeypatch.setattr(dl.Dataset, "_get_ontology", lambda self: type("Ontology", (), {"color_map": {}})())
        self.dataset = dl.Dataset.from_json(_json={"id": "dataset-1", "name": "boxes"}, client_api=dl.client_api,
                                            project=None, datasets=None, is_fetched=False)

    def item(self, item_id, image=None, data=None, boxes=()):
        item = make_item(item_id, image, data, dataset=self.dataset)
        self.stored[item_id] = list(boxes)
        return item

    def results(self, item_id: str) -> list[tuple[str, str | None]]:
        """(type, source annotation id or "proposal") of the results stored on an item, sorted."""
        return sorted((j["type"], j["metadata"]["user"]["sam2"].get("source_annotation_id") or "proposal")
                      for j in self.stored.get(item_id, []) if "sam2" in j.get("metadata", {}).get("user", {}))


@pytest.fixture
def platform(monkeypatch):
    return OfflinePlatform(monkeypatch)


def test_predict_items_converts_every_box_and_keeps_items_apart(adapter, scenes, platform, monkeypatch):
    adapter.report.clear()
    items, expected = [], {}
    for n, scene in enumerate(scenes[:3]):
        boxes = [box_json(f"i{n}-b{k}", b, label=f"label-{n}-{k}", attributes={"n": n, "k": k})
                 for k, b in enumerate(scene.boxes)]
        items.append(platform.item(f"batch-{n}", scene.image, boxes=boxes))
        expected[f"batch-{n}"] = (scene, boxes)
    items.insert(1, platform.item("batch-empty", scenes[3].image))
    items.insert(2, platform.item("batch-corrupt", data=b"not an image", boxes=[box_json("c-0", [0, 0, 9, 9])]))
    downloaded = []
    monkeypatch.setattr(dl.Item, "download", lambda item, **kwargs: downloaded.append(item.id) or
                        io.BytesIO(_BYTES[item.id]))
    adapter.predict_items(items, batch_size=3)
    assert "batch-empty" not in downloaded, "an image without boxes is skipped unread"

    for item_id, (scene, boxes) in expected.items():
        got = platform.uploaded[item_id]
        core = core_masks(adapter, scene)
        assert len(got) == sum(1 for r in core if r.area)
        for annotation in got:
            source = annotation.metadata["user"]["sam2"]["source_annotation_id"]
            k = int(source.split("-b")[1])
            assert source.startswith(item_id.replace("batch-", "i")), "a result landed on the wrong item"
            assert annotation.label == boxes[k]["label"] and annotation.attributes == {"n": int(item_id[-1]), "k": k}
            assert annotation.type == "binary"
            assert np.array_equal(annotation.annotation_definition.geo > 0, core[k].full())
    reported = {line["item"]: line["message"] for line in adapter.report}
    assert "no box annotations" in reported["batch-empty"]
    assert "batch-corrupt" in reported["batch-corrupt"]
    assert platform.uploaded.get("batch-empty", []) == [] and platform.uploaded.get("batch-corrupt", []) == []


def test_predict_items_both_outputs_and_replacing_boxes(adapter, scenes, platform, monkeypatch):
    scene = scenes[5]
    boxes = [box_json(f"r-{k}", b) for k, b in enumerate(scene.boxes)]
    item = platform.item("batch-replace", scene.image, boxes=boxes)
    monkeypatch.setattr(adapter, "settings", adapter.settings.__class__.from_mapping(
        {**adapter.settings.as_dict(), "output_type": "both", "replace_boxes": True}))
    adapter.predict_items([item])
    kinds = {a.type for a in platform.uploaded["batch-replace"]}
    assert kinds == {"binary", "segment"}
    assert sorted(platform.deleted["batch-replace"]) == sorted(b["id"] for b in boxes)


def configure(adapter, monkeypatch, **values):
    monkeypatch.setattr(adapter, "settings", adapter.settings.__class__.from_mapping(
        {**adapter.settings.as_dict(), **values}))


def boxes_on(platform, item_id: str) -> list[str]:
    return sorted(j["id"] for j in platform.stored[item_id] if j["type"] == "box")


def test_a_box_that_gives_nothing_keeps_its_earlier_result_and_says_so(adapter, platform, monkeypatch):
    """A job run again where a box now gives no mask (here `box_margin` lowered: SAM 2's mask for this box lies
    wholly outside it) keeps that box's earlier result and names it in the report; with `replace_boxes` the box
    itself is kept, and the report says so."""
    scene = make_scene(np.random.default_rng(0))
    beside = [155.42, 65.83, 157.83, 67.99]  # a sliver of background; SAM 2 segments what lies just below it
    tight, loose = (box_masks(adapter.segmenter, scene.image, [beside], margin)[0] for margin in (0, 20))
    assert loose.area and not tight.area, "the micro checkpoint's mask for this box no longer lies outside it"
    boxes = [box_json("ok", scene.boxes[0]), box_json("beside", beside)]
    item = platform.item("gone-empty", scene.image, boxes=boxes)
    configure(adapter, monkeypatch, box_margin=20)
    adapter.predict_items([item])
    assert platform.results("gone-empty") == [("binary", "beside"), ("binary", "ok")]
    earlier = {j["id"] for j in platform.stored["gone-empty"] if j["type"] == "binary"}
    configure(adapter, monkeypatch, box_margin=0)
    adapter.report.clear()
    adapter.predict_items([item])
    assert platform.results("gone-empty") == [("binary", "beside"), ("binary", "ok")]
    (kept,) = [j["id"] for j in platform.stored["gone-empty"] if j["type"] == "binary" and j["id"] in earlier]
    messages = " | ".join(line["message"] for line in adapter.report)
    assert "beside" in messages and "SAM 2 found no object" in messages
    assert f"{kept} (of beside)" in messages and "earlier results of boxes that gave none this run are kept" in messages
    assert "(of ok)" not in messages, "the replaced result of the other box is not named as kept"
    # then with replace_boxes: the box that gives nothing stays, beside its earlier result; the other is replaced
    replaced = platform.item("gone-empty-replaced", scene.image, boxes=boxes)
    for margin, replace in ((20, False), (0, True)):
        configure(adapter, monkeypatch, box_margin=margin, replace_boxes=replace)
        adapter.report.clear()
        adapter.predict_items([replaced])
    assert boxes_on(platform, "gone-empty-replaced") == ["beside"]
    assert platform.results("gone-empty-replaced") == [("binary", "beside"), ("binary", "ok")]
    assert any("beside" in line["message"] and "the box is kept" in line["message"] for line in adapter.report)


def test_reruns_replace_only_the_results_of_what_they_convert_again(adapter, scenes, platform, monkeypatch):
    """A job run again (boxes added since, proposals asked for, items it skips or cannot read) replaces only the
    results of what it converts again: the masks of boxes an earlier run replaced stay, and so does everything on
    an item it skips or cannot read. (dtlpy's base class deleted every earlier result of the model first.)"""
    configure(adapter, monkeypatch, replace_boxes=True)
    scene = scenes[6]
    found = [k for k, r in enumerate(core_masks(adapter, scene)) if r.area][:3]
    assert len(found) == 3
    item = platform.item("rerun", scene.image, boxes=[box_json(f"r-{k}", scene.boxes[k]) for k in found[:2]])
    corrupt = platform.item("rerun-corrupt", data=b"not an image", boxes=[box_json("rc-0", [0, 0, 9, 9])])
    adapter.predict_items([item, corrupt], batch_size=2)
    masks = [("binary", f"r-{k}") for k in found[:2]]
    assert platform.results("rerun") == masks and boxes_on(platform, "rerun") == []
    assert boxes_on(platform, "rerun-corrupt") == ["rc-0"]
    platform.stored["rerun"].append(box_json(f"r-{found[2]}", scene.boxes[found[2]]))  # a box added since
    adapter.predict_items([item, corrupt], batch_size=2)
    masks.append(("binary", f"r-{found[2]}"))
    assert platform.results("rerun") == masks and boxes_on(platform, "rerun") == []
    adapter.predict_items([item])  # nothing left to convert: skipped, and its results stay
    assert platform.results("rerun") == masks
    # proposals asked for later come beside the masks; asked again, they replace the earlier proposals only
    configure(adapter, monkeypatch, replace_boxes=True, no_prompts="propose", proposal_points_per_side=4,
              proposal_pred_iou_thresh=0.0, proposal_stability_score_thresh=0.0, proposal_max_proposals=3)
    for _ in range(2):
        adapter.predict_items([item])
        results = platform.results("rerun")
        assert [r for r in results if r[1] != "proposal"] == masks and 0 < len(results) - len(masks) <= 3
    # without replace_boxes, a box converted twice has one result, the latest
    configure(adapter, monkeypatch, replace_boxes=False)
    kept = platform.item("rerun-kept", scene.image, boxes=[box_json("k-0", scene.boxes[found[0]])])
    adapter.predict_items([kept])
    adapter.predict_items([kept])
    assert platform.results("rerun-kept") == [("binary", "k-0")] and boxes_on(platform, "rerun-kept") == ["k-0"]
    # a skipped item of one execution does not shield the same item in another: not one whose upload never came
    # (an execution that failed after predicting), nor one running at the same time (they share the adapter)
    converted = platform.item("rerun-converted", scene.image)
    adapter.predict([adapter.prepare_item_func(converted)])
    platform.stored["rerun-converted"] = [box_json("rc-1", scene.boxes[found[1]])]
    adapter.predict_items([converted])
    assert platform.results("rerun-converted") == [("binary", "rc-1")]
    assert platform.cleaned == [], "nothing is deleted by the base class's blanket filter"


def test_a_rerun_whose_upload_is_refused_keeps_the_earlier_results(adapter, scenes, platform, monkeypatch):
    """Earlier results are deleted only once their replacements are stored: a re-run whose upload is refused,
    whole or in part, leaves every source with one result, the new one or the earlier one."""
    configure(adapter, monkeypatch, replace_boxes=False)
    scene = scenes[5]
    found = [k for k, r in enumerate(core_masks(adapter, scene)) if r.area]
    item = platform.item("refused", scene.image, boxes=[box_json(f"f-{k}", scene.boxes[k]) for k in found])
    adapter.predict_items([item])
    first = {j["id"] for j in platform.stored["refused"] if j["type"] == "binary"}
    assert platform.results("refused") == sorted(("binary", f"f-{k}") for k in found)
    platform.stored_limit = 2  # a chunk refused: two of the new results stored
    adapter.predict_items([item])
    platform.stored_limit = None
    assert platform.results("refused") == sorted(("binary", f"f-{k}") for k in found)
    assert len(first & {j["id"] for j in platform.stored["refused"]}) == len(found) - 2
    upload = dl.repositories.Annotations.upload
    monkeypatch.setattr(dl.repositories.Annotations, "upload", lambda repo, annotations, **kwargs: (_ for _ in ()).throw(
        dl.exceptions.InternalServerError("500", "refused")))
    adapter.predict_items([item])
    monkeypatch.setattr(dl.repositories.Annotations, "upload", upload)
    assert platform.results("refused") == sorted(("binary", f"f-{k}") for k in found)


def test_results_not_stored_keep_their_boxes_and_an_upload_error_costs_only_its_item(adapter, scenes, platform,
                                                                                    monkeypatch):
    """dtlpy's upload drops a chunk that fails and returns what was stored: only the boxes whose results were
    all stored are replaced. An error while storing one item's results is reported with the item and costs the
    other items of its batch nothing; a source box gone already (deleted by someone else) is no error."""
    configure(adapter, monkeypatch, replace_boxes=True)
    adapter.report.clear()
    scene = scenes[5]
    found = [k for k, r in enumerate(core_masks(adapter, scene)) if r.area]
    assert len(found) >= 3
    partial = platform.item("partial", scene.image, boxes=[box_json(f"p-{k}", scene.boxes[k]) for k in found])
    platform.stored_limit = 2
    adapter.predict_items([partial])
    platform.stored_limit = None
    stored = [source for _, source in platform.results("partial")]
    assert len(stored) == 2
    assert boxes_on(platform, "partial") == sorted(f"p-{k}" for k in found if f"p-{k}" not in stored)
    assert any(f"{len(found) - 2} of {len(found)} results were not stored" in line["message"]
               for line in adapter.report if line["item"] == "partial")

    upload = dl.repositories.Annotations.upload

    def failing(repo, annotations, **kwargs):
        if repo.item.id == "upload-fails":
            raise dl.exceptions.InternalServerError("500", "the platform is having a bad day")
        return upload(repo, annotations, **kwargs)

    monkeypatch.setattr(dl.repositories.Annotations, "upload", failing)
    items = [platform.item(name, scene.image, boxes=[box_json(f"{name}-0", scene.boxes[found[0]])])
             for name in ("upload-fails", "upload-fine", "box-gone", "box-locked")]
    delete = dl.repositories.Annotations.delete

    def gone_first(repo, annotation=None, annotation_id=None, filters=None, **kwargs):
        if annotation_id == "box-gone-0":  # another execution deleted it between our listing and our delete
            platform.stored["box-gone"] = [j for j in platform.stored["box-gone"] if j["id"] != "box-gone-0"]
        if annotation_id == "box-locked-0":
            raise dl.exceptions.Forbidden("403", "the annotation is locked")
        return delete(repo, annotation=annotation, annotation_id=annotation_id, filters=filters, **kwargs)

    monkeypatch.setattr(dl.repositories.Annotations, "delete", gone_first)
    adapter.predict_items(items, batch_size=4)  # raises if an item of the batch is marked failed
    assert platform.results("upload-fails") == [] and boxes_on(platform, "upload-fails") == ["upload-fails-0"]
    assert any("upload-fails" in line["message"] and "could not be stored" in line["message"]
               for line in adapter.report)
    assert platform.results("upload-fine") == [("binary", "upload-fine-0")] and boxes_on(platform, "upload-fine") == []
    assert platform.results("box-gone") == [("binary", "box-gone-0")] and boxes_on(platform, "box-gone") == []
    assert platform.results("box-locked") == [("binary", "box-locked-0")]
    assert any("box-locked" in line["message"] and "could not be deleted" in line["message"] and "Forbidden"
               in line["message"] for line in adapter.report)


def test_concurrent_first_requests_load_the_model_once(adapter, scenes, monkeypatch):
    """A studio service starts without a model entity and loads on its first request; the first requests arrive
    together (concurrency 8). One loads, the others wait for it, and every one gets its mask."""
    from model_adapter import ModelAdapter

    loads = []

    def load_model(settings, artifacts):
        loads.append(threading.current_thread().name)
        threading.Event().wait(0.2)  # a download or a load takes a while: the other requests arrive meanwhile
        return adapter.model, "micro"

    monkeypatch.setattr(ModelAdapter, "_load_model", staticmethod(load_model))
    fresh = ModelAdapter()
    scene = scenes[1]
    item = make_item("item-first-requests", scene.image)
    boxes = [box_json(f"first-{k}", b) for k, b in enumerate(scene.boxes)]
    results, errors = [], []

    def request():
        try:
            results.append(fresh.box_to_segmentation(item=item, annotations=boxes))
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(error))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(loads) == 1
    assert len(results) == 8 and all(r == results[0] for r in results)
    assert [a["coordinates"] for a in results[0]] == [
        a["coordinates"] for a in adapter.box_to_segmentation(item=item, annotations=boxes)]
