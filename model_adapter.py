"""The Dataloop face of the SAM 2 adapter: dtlpy entities in, annotation definitions out.

Every function here turns dtlpy items and annotation JSON into arrays and prompts, calls the core
(`sam2_adapter`, which never imports dtlpy), and turns masks back into dtlpy annotations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import dtlpy as dl
import numpy as np

from sam2_adapter.config import Settings
from sam2_adapter.embeddings import EmbeddingCache
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import mask_to_png_data_url, mask_to_polygons, validate_box
from sam2_adapter.images import decode_image
from sam2_adapter.models import load_model, load_named_model
from sam2_adapter.proposals import propose_masks
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, MaskResult, RefinementMemory, segment_box_prompts
from sam2_adapter.tracker import VideoTracker

log = logging.getLogger("sam2-adapter")

BOX_TYPES = (dl.AnnotationType.BOX,)


class FastSegmentation(dl.Segmentation):
    """`dl.Segmentation` whose coordinates are encoded by the project's PNG encoder (same pixels, faster)."""

    def to_coordinates(self, color=None):
        return mask_to_png_data_url(self.geo, color if color is not None else (255, 255, 255))


class ModelAdapter(dl.BaseModelAdapter):
    """SAM 2 for the annotation studio: Box to Segmentation, Box to Polygon and click refinement."""

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __init__(self, model_entity: dl.Model = None):
        self.segmenter = None
        self.report: list[dict] = []  # batch jobs: one line per item or box that gave nothing, and why
        super().__init__(model_entity)

    def _ready(self) -> None:
        """A studio service may start the adapter without a model entity: it then serves the default model."""
        if self.segmenter is None:
            self.load(None)

    def load(self, local_path, **kwargs):
        """Loads the configured checkpoint: from the model's artifacts in `local_path`, else the local cache,
        else by download (official models)."""
        self.settings = Settings.from_mapping(self.configuration if self._model_entity is not None else None)
        self.model = self._load_model(self.settings, Path(local_path) if local_path else None)
        self.segmenter = ImageSegmenter(
            self.model,
            EmbeddingCache(self.settings.embedding_cache_mb * 1024 * 1024),
            mask_threshold=self.settings.mask_threshold,
            max_prompts_per_call=self.settings.max_prompts_per_call,
        )
        self.refinements = RefinementMemory(self.settings.refine_memory_objects)
        log.info("loaded %s on %s", self._model_label, self.segmenter.device)

    def _load_model(self, settings: Settings, artifacts: Path | None):
        search = [artifacts] if artifacts else []
        if settings.config_file or settings.checkpoint_file:
            if not (settings.config_file and settings.checkpoint_file):
                raise InputError("a custom model needs both `config_file` and `checkpoint_file`")
            config, checkpoint = (_in_artifacts(Path(name), artifacts)
                                  for name in (settings.config_file, settings.checkpoint_file))
            self._model_label = f"custom model {checkpoint.name}"
            return load_model(config, checkpoint, settings.device)
        self._model_label = settings.model
        return load_named_model(settings.model, settings.device, search_dirs=search, download=settings.download)

    # -- studio functions --------------------------------------------------------------------------------------
    def box_to_segmentation(self, dl=None, item: dl.Item = None, annotations: list = None, progress=None) -> list:
        """Every box annotation of `annotations` (JSON) -> a pixel mask annotation with the box's id, label and
        attributes, so the studio replaces the box in place. Confidence is SAM 2's predicted IoU."""
        return self._boxes_to_annotations(item, annotations, "segmentation", progress)

    def box_to_polygon(self, dl=None, item: dl.Item = None, annotations: list = None, progress=None) -> list:
        """Like `box_to_segmentation`, as polygons that follow the object's edge: the largest part keeps the
        box's id, every other part is a new polygon with the same label and attributes; holes are kept."""
        return self._boxes_to_annotations(item, annotations, "polygon", progress)

    def predict_interactive_editing(self, dl=None, item: dl.Item = None, points: list = None, bb: list = None,
                                    mask_uri: str = None, click_radius: int = 4, color=None,
                                    return_type: str = "segmentation"):
        """The studio's click refinement: `points` [{x, y, in}], optional box `bb` [{x, y}, {x, y}].

        Returns the mask cropped to the box as segmentation coordinates (the studio contract), or with
        `return_type="polygon"` a list of polygon coordinates in image pixels. Successive calls on the same
        item and box whose clicks extend the previous ones feed the previous logits back to SAM 2.
        `mask_uri` and `click_radius` are accepted for compatibility with the studio's call and not used.
        """
        self._ready()
        features, key = self._features(item)
        height, width = features.orig_hw
        coords, labels = _parse_points(points or [], width, height, f"item {item.id}")
        box = None
        if bb:
            corners = [[float(p["x"]), float(p["y"])] for p in bb[:2]]
            box = validate_box([*corners[0], *corners[1]], width, height, f"item {item.id} box")
        if box is None and not len(coords):
            raise InputError(f"item {item.id}: refinement needs at least one click or a box")
        previous = self.refinements.previous(key, box, coords, labels)
        result = self.segmenter.segment_points(features, coords, labels, box=box, mask_input=previous)
        self.refinements.remember(key, box, coords, labels, result.low_res_logits)
        mask = result.full()
        if return_type == "polygon":
            return [_polygon_coordinates(ring) for ring in self._polygons(result)]
        if box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            mask = mask[y1:y2, x1:x2]
        return mask_to_png_data_url(mask, _rgb(color))

    def track(self, dl=None, item_stream_url: str = None, bbs: dict = None, start_frame: int = 0,
              frame_duration: int = 60, progress=None) -> dict:
        """The studio's AI Tracker: `bbs` {annotation_id: [{x, y}, {x, y}] (a box) or [{x, y}, ...] (a polygon,
        3+ points)} on `start_frame`, followed for `frame_duration` frames (the start frame included) of the
        video at `item_stream_url` (a platform stream URL, read with the user's token in a header; or a local
        path). Returns {annotation_id: {frame: coordinates}} in each prompt's own type (a box stays a box, a
        polygon a polygon); a frame where SAM 2 says the object is absent maps to None, never to a copied box.
        A bad prompt is logged with its id and left out; the other objects are tracked."""
        self._ready()
        headers = _auth_headers(dl) if str(item_stream_url or "").startswith(("http://", "https://")) else None
        results: dict = {}
        kinds: dict = {}
        with VideoTracker(self.model, item_stream_url, headers=headers,
                          mask_threshold=self.settings.mask_threshold) as tracker:
            for annotation_id, coordinates in (bbs or {}).items():
                try:
                    kind, prompt = _tracker_prompt(annotation_id, coordinates, start_frame)
                    tracker.add_prompt(annotation_id, int(start_frame), prompt)
                except InputError as error:
                    log.warning("track: %s", error)
                    continue
                kinds[annotation_id] = kind
                results[annotation_id] = {}
            if not kinds:
                return results
            for frame in tracker.propagate(start_frame=int(start_frame), direction="forward",
                                           max_frames=int(frame_duration)):
                if frame.skipped:
                    log.warning("track: frame %d skipped: %s", frame.frame_idx, frame.error)
                    continue
                for annotation_id, obj in frame.objects.items():
                    results[annotation_id][frame.frame_idx] = self._frame_coordinates(obj, kinds[annotation_id])
                if progress is not None:
                    progress.update(progress=int(100 * (frame.frame_idx - start_frame + 1) / max(frame_duration, 1)))
        return results

    def _frame_coordinates(self, obj, kind: str):
        if not obj.visible:
            return None
        if kind == "box":
            x1, y1, x2, y2 = obj.box
            return dl.Box(left=x1, top=y1, right=x2, bottom=y2, label="tracked").to_coordinates(color=None)
        rings = mask_to_polygons(obj.crop, self.settings.polygon_tolerance, self.settings.polygon_min_area)
        if not rings:
            return None
        return _polygon_coordinates(rings[0] + np.asarray(obj.origin, dtype=rings[0].dtype))

    # -- batch jobs (predict_items / predict_dataset) ------------------------------------------------------------
    def prepare_item_func(self, item: dl.Item) -> "PreparedItem":
        """Runs in the base class's prefetch threads: downloads and decodes the image and lists its box
        annotations, so that `predict` only computes. A failure is carried to `predict`, never raised here
        (it would fail the whole batch)."""
        try:
            if item.mimetype and not item.mimetype.startswith("image/"):
                raise InputError(f"item {item.id} is {item.mimetype}; batch jobs take images")
            boxes = [a for a in item.annotations.list() if a.type in BOX_TYPES]
            return PreparedItem(item, _download_image(item), boxes)
        except InputError as error:
            return PreparedItem(item, None, [], str(error))
        except Exception as error:  # network or platform errors of this item only
            return PreparedItem(item, None, [], f"item {item.id}: {type(error).__name__}: {error}")

    def predict(self, batch: list, **kwargs) -> list:
        """One collection of new annotations per prepared item, in the batch's order. Items that fail or give no
        mask get an empty list and a line in `self.report` (and the log); the rest of the batch goes on."""
        self._ready()
        usable = [p for p in batch if p.image is not None]
        if usable:  # one encoder batch for the images of this batch
            for prepared, features in zip(usable, self.segmenter.encode_many([p.image for p in usable])):
                prepared.features = features
        return [self._predict_item(prepared) for prepared in batch]

    def _predict_item(self, prepared: "PreparedItem") -> dl.AnnotationCollection:
        item = prepared.item
        builder = item.annotations.builder()
        if prepared.error:
            self._report(item, prepared.error)
            return builder
        if not prepared.boxes:
            if self.settings.no_prompts == "skip":
                self._report(item, f"item {item.id}: no box annotations to convert (skipped)")
                return builder
            for proposal in propose_masks(self.segmenter, prepared.features, self.settings.proposals()):
                self._add_results(builder, proposal, "object", {}, {"user": {"sam2": {"proposal": True}}})
            if not builder.annotations:
                self._report(item, f"item {item.id}: no proposals passed the filters")
            return builder
        prompts = [_box_prompt(a) for a in prepared.boxes]
        for source, outcome in zip(prepared.boxes, segment_box_prompts(self.segmenter, prepared.features, prompts)):
            if isinstance(outcome, InputError):
                self._report(item, str(outcome))
                continue
            self._add_results(builder, outcome, source.label, source.attributes, _metadata(source))
        prepared.features = None  # the batch's features are not kept past their item
        return builder

    def _add_results(self, builder, result: MaskResult, label, attributes, metadata: dict) -> None:
        kinds = ("segmentation", "polygon") if self.settings.output_type == "both" else (self.settings.output_type,)
        info = {"name": self._model_label, "confidence": round(result.score, 4)}
        for kind in kinds:
            for definition in self._definitions(result, label, attributes, kind):
                builder.add(annotation_definition=definition, automated=True, metadata=metadata, model_info=info)

    def _report(self, item: dl.Item, message: str) -> None:
        log.warning(message)
        self.report.append({"item": item.id, "message": message})

    def _upload_model_annotations(self, item: dl.Item, predictions):
        uploaded = super()._upload_model_annotations(item, predictions)
        if self.settings.replace_boxes:
            sources = {a.metadata.get("user", {}).get("sam2", {}).get("source_annotation_id") for a in predictions}
            for annotation_id in sorted(s for s in sources if s):
                item.annotations.delete(annotation_id=annotation_id)
        return uploaded

    # -- internals ---------------------------------------------------------------------------------------------
    def _boxes_to_annotations(self, item: dl.Item, annotations: Iterable[dict], kind: str, progress) -> list:
        self._ready()
        sources, prompts = [], []
        for source in annotations or []:
            try:
                sources.append(_parse_box_annotation(source))
            except InputError as error:
                log.warning("item %s: %s", item.id, error)
                continue
            ann = sources[-1]
            prompts.append(_box_prompt(ann))
        if not prompts:
            return []
        features, _ = self._features(item)
        outcomes = segment_box_prompts(self.segmenter, features, prompts)
        results, failures = [], []
        builder = item.annotations.builder()
        for source, outcome in zip(sources, outcomes):
            if isinstance(outcome, InputError):
                failures.append(str(outcome))
                continue
            for n, definition in enumerate(self._definitions(outcome, source.label, source.attributes, kind)):
                builder.add(annotation_definition=definition, automated=True, metadata=_metadata(source),
                            model_info={"name": self._model_label, "confidence": round(outcome.score, 4)})
                new = builder.annotations[-1].to_json()
                if n == 0:
                    new["id"] = source.id
                results.append(new)
        for failure in failures:
            log.warning("item %s: %s", item.id, failure)
        if progress is not None and failures:
            progress.update(message=f"{len(failures)} of {len(prompts)} boxes gave no mask: " + "; ".join(failures))
        return results

    def _definitions(self, result: MaskResult, label: str, attributes, kind: str) -> list:
        if kind == "segmentation":
            return [FastSegmentation(geo=result.full(), label=label, attributes=attributes)]
        return [dl.Polygon(geo=ring, label=label, attributes=attributes) for ring in self._polygons(result)]

    def _polygons(self, result: MaskResult) -> list[np.ndarray]:
        rings = mask_to_polygons(result.crop, self.settings.polygon_tolerance, self.settings.polygon_min_area)
        return [ring + np.asarray(result.origin, dtype=ring.dtype) for ring in rings]

    def _features(self, item: dl.Item):
        """The item's image features, from the cache when this version of the item was encoded before; the
        image is downloaded and decoded only on a miss."""
        if item is None:
            raise InputError("no item given")
        if item.mimetype and not item.mimetype.startswith("image/"):
            raise InputError(f"item {item.id} is {item.mimetype}, not an image")
        version = getattr(item, "updated_at", None) or item.metadata.get("system", {}).get("modified")
        key = (self._model_label, item.id, version)
        return self.segmenter.features(key, lambda: _download_image(item)), key


@dataclass
class PreparedItem:
    """What `prepare_item_func` hands to `predict`: the item, its pixels and box annotations, or why not."""

    item: dl.Item
    image: np.ndarray | None
    boxes: list
    error: str | None = None
    features: Any = None


def _box_prompt(annotation: dl.Annotation) -> BoxPrompt:
    d = annotation.annotation_definition
    return BoxPrompt(f"annotation {annotation.id}", (d.left, d.top, d.right, d.bottom), d.angle or 0.0)


def _download_image(item: dl.Item) -> np.ndarray:
    buffer = item.download(save_locally=False)
    data = buffer.getvalue() if hasattr(buffer, "getvalue") else bytes(buffer)
    return decode_image(data, f"item {item.id}")


def _in_artifacts(path: Path, artifacts: Path | None) -> Path:
    if not path.is_absolute() and artifacts is not None and (artifacts / path).is_file():
        return artifacts / path
    return path


# Fields `dl.Annotation.from_json` insists on and a box just drawn in the studio may not carry yet.
_UNSAVED_DEFAULTS = {"creator": None, "createdAt": None, "updatedBy": None, "updatedAt": None}


def _parse_box_annotation(source: dict | dl.Annotation) -> dl.Annotation:
    try:
        if isinstance(source, dl.Annotation):
            annotation = source
        else:
            metadata = dict(source.get("metadata") or {})
            metadata["system"] = dict(metadata.get("system") or {})
            annotation = dl.Annotation.from_json({**_UNSAVED_DEFAULTS, **source, "metadata": metadata})
    except KeyError as error:
        ident = source.get("id") if isinstance(source, dict) else None
        raise InputError(f"annotation {ident}: not a readable annotation (missing field {error})") from None
    except Exception as error:
        ident = source.get("id") if isinstance(source, dict) else None
        raise InputError(f"annotation {ident}: not a readable annotation ({error})") from None
    if annotation.type not in BOX_TYPES:
        raise InputError(f"annotation {annotation.id}: is a {annotation.type}, not a box")
    return annotation


def _tracker_prompt(annotation_id, coordinates, frame: int) -> tuple[str, dict]:
    """The studio's box ([{x, y}, {x, y}]) or polygon ([{x, y}, ...] with 3+ points, possibly nested once)."""
    points = coordinates
    if isinstance(points, list) and points and isinstance(points[0], list):
        points = points[0]
    try:
        xy = [[float(p["x"]), float(p["y"])] for p in points]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"annotation {annotation_id}, frame {frame}: not a box or polygon: {coordinates!r}") from None
    if len(xy) == 2:
        (x1, y1), (x2, y2) = xy
        return "box", {"type": "box", "box": [x1, y1, x2, y2]}
    if len(xy) >= 3:
        return "polygon", {"type": "polygon", "polygon": xy}
    raise InputError(f"annotation {annotation_id}, frame {frame}: {len(xy)} points are neither a box nor a polygon")


def _auth_headers(dl_module) -> dict | None:
    """The user's token for the platform's item stream (sent in a header, never logged)."""
    try:
        token = (dl_module or dl).token()
    except Exception:
        return None
    return {"Authorization": f"Bearer {token}"} if token else None


def _parse_points(points: Sequence[dict], width: int, height: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    coords, labels = [], []
    for n, point in enumerate(points):
        try:
            x, y = float(point["x"]), float(point["y"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{name}: click {n} is not {{x, y, in}}: {point!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)) or not (0 <= x <= width and 0 <= y <= height):
            raise InputError(f"{name}: click {n} at ({x}, {y}) is outside the {width}x{height} image")
        coords.append((x, y))
        labels.append(1 if point.get("in", True) else 0)
    return np.asarray(coords, np.float32).reshape(-1, 2), np.asarray(labels, np.int32)


def _polygon_coordinates(ring: np.ndarray) -> list[dict]:
    return [{"x": float(x), "y": float(y), "z": 0} for x, y in ring]


def _metadata(source: dl.Annotation) -> dict:
    metadata = {k: v for k, v in (source.metadata or {}).items() if k != "system"}
    user = dict(metadata.get("user") or {})
    user["sam2"] = {"source_annotation_id": source.id}
    metadata["user"] = user
    return metadata


def _rgb(color: Any) -> tuple[int, int, int]:
    if color is None:
        return 255, 255, 255
    if isinstance(color, str) and color.startswith("#") and len(color) == 7:
        return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
    return tuple(int(c) for c in list(color)[:3])
