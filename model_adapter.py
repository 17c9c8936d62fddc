"""The Dataloop face of the SAM 2 adapter: dtlpy entities in, annotation definitions out.

Every function here turns dtlpy items and annotation JSON into arrays and prompts, calls the core
(`sam2_adapter`, which never imports dtlpy), and turns masks back into dtlpy annotations.
"""

from __future__ import annotations

import bisect
import collections
import copy
import hashlib
import json
import logging
import os
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import dtlpy as dl
import numpy as np

from sam2_adapter.config import Settings, parse_number
from sam2_adapter.embeddings import EmbeddingCache
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import enclosing_box, mask_to_png_data_url, object_polygons, validate_box
from sam2_adapter.images import decode_image
from sam2_adapter.models import load_model, load_named_model
from sam2_adapter.proposals import propose_masks
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, MaskResult, RefinementMemory, segment_box_prompts
from sam2_adapter.tracker import DIRECTIONS, FrameResult, ObjectMask, VideoTracker

log = logging.getLogger("sam2-adapter")

BOX_TYPES = (dl.AnnotationType.BOX,)
# What the video tracker follows; each comes back in its own type (a box stays a box, a polygon a polygon).
TRACKED_TYPES = (dl.AnnotationType.BOX, dl.AnnotationType.POLYGON, dl.AnnotationType.SEGMENTATION)


class FastSegmentation(dl.Segmentation):
    """`dl.Segmentation` whose coordinates are encoded by the project's PNG encoder (same pixels, faster)."""

    def to_coordinates(self, color=None):
        return mask_to_png_data_url(self.geo, color if color is not None else (255, 255, 255))


class CroppedSegmentation(FastSegmentation):
    """A tracked mask kept as its crop and expanded to the whole frame only when dtlpy asks for it.

    A video annotation holds a mask on every frame; full-frame copies would cost H x W bytes a frame (2 MB at
    1080p) until the annotation is serialised, and a batch job keeps a whole video's masks of every annotation
    until its upload, so the crop is kept packed, 1 bit a pixel. dtlpy serialises each frame two or three times
    (its frame comparison, then `to_json`), so the PNG is encoded once per colour. `crop=None` is the empty mask
    of a frame where the object is absent.
    """

    def __init__(self, crop: np.ndarray | None, origin: tuple[int, int] | None, image_hw: tuple[int, int],
                 label: str, attributes=None):
        super().__init__(geo=None, label=label, attributes=attributes)
        self._shape = None if crop is None else crop.shape
        self._bits = None if crop is None else np.packbits(np.asarray(crop, dtype=bool), axis=None)
        self._origin, self._image_hw = origin, tuple(image_hw)
        self._encoded: tuple[tuple, str] | None = None

    @property
    def geo(self) -> np.ndarray:
        mask = np.zeros(self._image_hw, dtype=bool)
        if self._bits is not None:
            (h, w), (x0, y0) = self._shape, self._origin
            mask[y0:y0 + h, x0:x0 + w] = np.unpackbits(self._bits, count=h * w).reshape(h, w).astype(bool)
        return mask

    def to_coordinates(self, color=None):
        color = tuple(color) if color is not None else (255, 255, 255)
        if self._encoded is None or self._encoded[0] != color:
            self._encoded = (color, mask_to_png_data_url(self.geo, color))
        return self._encoded[1]


class ModelAdapter(dl.BaseModelAdapter):
    """SAM 2 for the annotation studio: Box to Segmentation, Box to Polygon, click refinement, video tracking."""

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __init__(self, model_entity: dl.Model = None):
        self.segmenter = None
        self._load_lock = threading.Lock()
        # (item id, item version) -> digest of the image's bytes, and a lock per version being read: see `_features`
        self._digests: collections.OrderedDict[tuple, str] = collections.OrderedDict()
        self._reading: dict[tuple, threading.Lock] = {}
        self._digests_lock = threading.Lock()
        # batch jobs: one line per item or box that gave nothing, and why (the latest lines of a long-lived service)
        self.report: collections.deque[dict] = collections.deque(maxlen=10_000)
        super().__init__(model_entity)

    def _ready(self) -> None:
        """A studio service may start the adapter without a model entity: it then serves the default model."""
        if self.segmenter is None:
            with self._load_lock:  # the first requests of a fresh service arrive together: one loads
                if self.segmenter is None:
                    self.load(None)

    def load(self, local_path, **kwargs):
        """Loads the configured checkpoint: from the model's artifacts in `local_path`, else the local cache,
        else by download (official models). The segmenter is set last: a request that sees it sees the rest."""
        settings = Settings.from_mapping(self.configuration if self._model_entity is not None else None)
        model, label = self._load_model(settings, Path(local_path) if local_path else None)
        segmenter = ImageSegmenter(model, EmbeddingCache(settings.embedding_cache_mb * 1024 * 1024),
                                   mask_threshold=settings.mask_threshold,
                                   max_prompts_per_call=settings.max_prompts_per_call)
        self.settings, self.model, self._model_label = settings, model, label
        self.refinements = RefinementMemory(settings.refine_memory_objects)
        self.segmenter = segmenter
        log.info("loaded %s on %s", label, segmenter.device)

    @staticmethod
    def _load_model(settings: Settings, artifacts: Path | None):
        """(model, the name its results carry)."""
        search = [artifacts] if artifacts else []
        if settings.config_file or settings.checkpoint_file:
            if not (settings.config_file and settings.checkpoint_file):
                raise InputError("a custom model needs both `config_file` and `checkpoint_file`")
            config, checkpoint = (_in_artifacts(Path(name), artifacts)
                                  for name in (settings.config_file, settings.checkpoint_file))
            return load_model(config, checkpoint, settings.device), f"custom model {checkpoint.name}"
        return (load_named_model(settings.model, settings.device, search_dirs=search, download=settings.download),
                settings.model)

    # -- studio functions --------------------------------------------------------------------------------------
    def box_to_segmentation(self, dl=None, item: dl.Item = None, annotations: list = None, progress=None) -> list:
        """Every box annotation of `annotations` (JSON) -> a pixel mask annotation of the object inside the box
        (SAM 2's mask cut at the box grown by `box_margin`) with the box's id, label and attributes, so the studio
        replaces the box in place. Confidence is SAM 2's predicted IoU."""
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
        kind = _RETURN_TYPES.get(str(return_type or "segmentation").lower())
        if kind is None:
            raise InputError(f"return_type {return_type!r} is not one of {', '.join(_RETURN_TYPES)}")
        features, key = self._features(item)
        height, width = features.orig_hw
        coords, labels = _parse_points(points or [], width, height, f"item {item.id}")
        box = None
        if bb:
            try:
                (x1, y1), (x2, y2) = ((float(p["x"]), float(p["y"])) for p in bb[:2])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"item {item.id}: bb must be two points {{x, y}}, got {bb!r}") from None
            box = validate_box([x1, y1, x2, y2], width, height, f"item {item.id} box")
        if box is None and not len(coords):
            raise InputError(f"item {item.id}: refinement needs at least one click or a box")
        previous = self.refinements.previous(key, box, coords, labels)
        result = self.segmenter.segment_points(features, coords, labels, box=box, mask_input=previous)
        self.refinements.remember(key, box, coords, labels, result.low_res_logits, previous)
        mask, origin = result.full(), np.zeros(2)
        if box is not None:
            x1, y1, x2, y2 = (int(v) for v in box)  # truncated, as the studio's earlier SAM adapter crops
            mask, origin = mask[y1:y2, x1:x2], np.array([x1, y1])
        if kind == "polygon":  # the same pixels as the segmentation, in image coordinates
            rings = object_polygons(mask, self.settings.polygon_tolerance, self.settings.polygon_min_area)
            return [_polygon_coordinates(ring + origin) for ring in rings]
        return mask_to_png_data_url(mask, _rgb(color))

    # -- video tracking ----------------------------------------------------------------------------------------
    def track(self, dl=None, item_stream_url: str = None, bbs: dict = None, start_frame: int = 0,
              frame_duration: int = 60, progress=None) -> dict:
        """The studio's AI Tracker: `bbs` {annotation_id: [{x, y}, {x, y}] (a box) or [{x, y}, ...] (a polygon,
        3+ points)} on `start_frame`, followed for `frame_duration` frames (the start frame included) of the
        video at `item_stream_url` (a platform stream URL, read with the user's token in a header; or a local
        path). Returns {annotation_id: {frame: coordinates}} in each prompt's own type (a box stays a box, a
        polygon a polygon); a frame where SAM 2 says the object is absent maps to None, never to a copied box.
        A bad prompt is logged with its id, named in the progress message and left out; the others are tracked.
        The token goes only to the platform's own host, never to another one in a link item's URL."""
        self._ready()
        start_frame = 0 if start_frame is None else _whole_number(start_frame, "start_frame")
        frame_duration = 60 if frame_duration is None else _whole_number(frame_duration, "frame_duration")
        if bbs is not None and not isinstance(bbs, Mapping):
            raise InputError(f"bbs must map annotation ids to boxes or polygons, got {type(bbs).__name__}")
        results: dict = {}
        types: dict = {}
        failures = []
        with VideoTracker(self.model, item_stream_url, headers=_auth_headers(dl, item_stream_url),
                          mask_threshold=self.settings.mask_threshold) as tracker:
            for annotation_id, coordinates in (bbs or {}).items():
                try:
                    drawn = _studio_definition(annotation_id, coordinates, start_frame)
                    tracker.add_prompt(annotation_id, start_frame,
                                       _tracker_prompt(drawn, f"annotation {annotation_id}, frame {start_frame}"))
                except InputError as error:
                    log.warning("track: %s", error)
                    failures.append(str(error))
                    continue
                types[annotation_id] = drawn.type
                results[annotation_id] = {}
            if progress is not None and failures:
                progress.update(message=f"{len(failures)} of {len(bbs)} objects not tracked: " + "; ".join(failures))
            if not types:
                return results
            problems = []
            for _, frame in self._propagate(tracker, [(start_frame, "forward", frame_duration, None)], progress,
                                            problems):
                for annotation_id, obj in frame.objects.items():
                    tracked = self._tracked_definition(obj, types[annotation_id])
                    results[annotation_id][frame.frame_idx] = None if tracked is None else _studio_coordinates(tracked)
            if progress is not None and problems:
                progress.update(message="; ".join(problems))
        return results

    def track_video(self, dl=None, item: dl.Item = None, annotations: list = None, direction: str = "forward",
                    max_frames: int = None, progress=None) -> list:
        """SAM 2 tracking of a video item's box, polygon and mask annotations, returned as video annotations.

        annotations: annotation JSON (or entities) of `item`; None reads every box, polygon and mask annotation
            of the item. Each is one object. Every frame where it is drawn (a fixed, visible frame) is a prompt:
            a first frame and corrections on later frames, SAM 2's data-engine use.
        direction: "forward" (from each annotation's first drawn frame), "backward" (up to its last) or "both".
        max_frames: at most this many frames per direction, counted from the outermost drawn frame (the last one
            forward, the first one backward), that frame included, as `track` counts `frame_duration`; frames
            between drawn frames are always tracked. None: to the end (start) of the video.

        Returns one annotation JSON per tracked annotation, with its id (the studio applies it in place, as with
        Box to Segmentation), object id, label, attributes and metadata: drawn frames keep their geometry and
        are `fixed`; every other frame holds SAM 2's result in the annotation's own type (box, polygon with
        holes as keyhole cuts, mask with its holes) and is not fixed; a frame where SAM 2 says the object is
        absent is marked not visible and holds no geometry. Frames before the object is first seen are left
        out. An annotation that cannot be tracked (type, frame beyond the video, box outside the frame) is
        reported with its id and frame (`self.report`, the log, the progress message); the others come back.
        Nothing is uploaded.
        """
        self._ready()
        _check_video_item(item)
        if direction not in DIRECTIONS:
            raise InputError(f"item {item.id}: direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                       or max_frames < 1):
            raise InputError(f"item {item.id}: max_frames must be a positive integer or None, got {max_frames!r}")
        tracks, failures = _video_tracks(item, annotations)
        results = []
        if tracks:
            with tempfile.TemporaryDirectory(prefix="sam2-track-") as folder:
                tracked, problems = self._track_annotations(item, _download_video(item, folder), tracks, direction,
                                                            max_frames, progress=progress)
            failures += problems
            results = [{**annotation.to_json(), "id": track.source.id} for track, annotation in tracked]
        for failure in failures:
            self._report(item, f"item {item.id}: {failure}")
        if progress is not None and failures:
            progress.update(message=f"{len(failures)} problems while tracking: " + "; ".join(failures))
        return results

    def _track_annotations(self, item: dl.Item, video: str, tracks: list["VideoTrack"], direction: str,
                           max_frames: int | None, kinds: Sequence[str] | None = None,
                           progress=None) -> tuple[list[tuple["VideoTrack", dl.Annotation]], list[str]]:
        """Tracks annotations of `item` through its local video file and builds their video annotations: the one
        mechanism behind `track_video` and batch jobs on videos.

        kinds: None: each annotation comes back in its own type, its drawn frames kept as drawn (`track_video`);
            else annotation types (`binary`, `segment`): each annotation comes back once per type, with SAM 2's
            own result on the drawn frames too (still `fixed`), its model and confidence in the metadata.
        Returns (track, annotation) pairs in the order of `tracks` and what could not be done, per annotation
        (with its id and frame) or frame.
        """
        with VideoTracker(self.model, video, mask_threshold=self.settings.mask_threshold) as tracker:
            failures = _add_video_prompts(tracker, tracks)
            tracks = [t for t in tracks if t.key in tracker.object_ids]
            for track in tracks:
                track.kinds = (track.type,) if kinds is None else tuple(kinds)
                track.keep_drawn = kinds is None
            if tracks:
                failures += self._follow(tracker, tracks, direction, max_frames, progress)
            image_hw = (tracker.height, tracker.width)
        results = []
        for track, object_id in zip(tracks, _object_ids(tracks)):
            seen = track.keep_drawn or any(score is not None for score in track.scores.values())
            if not track.keep_drawn:  # SAM 2's result stands for the drawing: say where it has none
                kept = " (the annotation is kept, not replaced)" if self.settings.replace_boxes else ""
                failures += [f"annotation {track.source.id}, frame {t}: SAM 2 finds no object where it is drawn{kept}"
                             for t in sorted(track.drawn) if track.scores.get(t) is None]
            if not seen:
                failures.append(f"annotation {track.source.id}: SAM 2 finds the object on no frame (nothing returned)")
            for kind in track.kinds:
                annotation = self._video_annotation(item, track, kind, object_id, image_hw)
                if annotation is not None:
                    results.append((track, annotation))
        return results, failures

    def _follow(self, tracker: VideoTracker, tracks: list["VideoTrack"], direction: str, max_frames: int | None,
                progress) -> list[str]:
        """Tracks every annotation through the frames it asked for, one pass per stretch of frames and direction
        (annotations far apart do not make the frames between them tracked); each keeps only the frames of its
        own span in each direction, as definitions of each of its `kinds` (drawn frames too, unless it keeps them
        as drawn). Returns the frames that could not be decoded or were never reached."""
        for track in tracks:
            track.spans = _tracking_spans(sorted(track.drawn), direction, max_frames, tracker.num_frames,
                                          [t for t in track.hidden if t < tracker.num_frames])
        skipped = []
        for going, frame in self._propagate(tracker, _tracking_passes(tracks), progress, skipped):
            t = frame.frame_idx
            if frame.skipped:
                continue
            for track in tracks:
                first, last = track.spans.get(going, (1, 0))
                if not first <= t <= last:
                    continue
                obj = frame.objects[track.key]
                track.scores[t] = obj.object_score if obj.visible else None
                if track.keep_drawn and t in track.drawn:
                    continue
                values = track.key_before(t)
                track.tracked[t] = {kind: self._tracked_definition(obj, kind, values.label, values.attributes)
                                    for kind in track.kinds}
        return skipped

    def _propagate(self, tracker: VideoTracker, passes: list[tuple[int, str, int, list[str] | None]],
                   progress, problems: list[str]) -> Iterator[tuple[str, FrameResult]]:
        """Runs tracking passes (start frame, direction, frames, objects or None for all), yielding (direction,
        frame result) frame by frame, undecodable frames included (the tracker logs them), with the progress over
        all passes. Undecodable frames, and frames a pass should have reached but the video did not give (it ends
        before its header says: a truncated file), are added to `problems`."""
        total = max(sum(count for _, _, count, _ in passes), 1)
        done = 0
        for start, direction, count, objects in passes:
            step = 1 if direction == "forward" else -1
            end = min(start + count, tracker.num_frames) if step > 0 else max(start - count, -1)
            expected = range(start, end, step)
            reached = 0
            for frame in tracker.propagate(start_frame=start, direction=direction, max_frames=count, objects=objects):
                done += 1
                reached += 1
                if frame.skipped:
                    problems.append(f"frame {frame.frame_idx} skipped: {frame.error}")
                yield direction, frame
                if progress is not None:
                    progress.update(progress=min(int(100 * done / total), 100))
            if reached < len(expected):
                missing = expected[reached:]
                which = f"frame {missing[0]}" if len(missing) == 1 else f"frames {missing[0]} to {missing[-1]}"
                problems.append(f"{which} not tracked: the video gives no frame past frame {missing[0] - step}, "
                                f"though its header says {tracker.num_frames} frames")
                log.warning("%s", problems[-1])

    def _tracked_definition(self, obj: ObjectMask, kind: str, label: str = "tracked", attributes=None):
        """The object on one frame as a definition of the prompt's type (a box, the polygon of its largest part
        with holes kept as keyhole cuts, or the mask); None where SAM 2 says it is absent. One shape a frame: a
        video annotation holds one per frame."""
        if not obj.visible:
            return None
        if kind == dl.AnnotationType.BOX:
            x1, y1, x2, y2 = obj.box
            return dl.Box(left=x1, top=y1, right=x2, bottom=y2, label=label, attributes=attributes)
        if kind == dl.AnnotationType.POLYGON:
            rings = object_polygons(obj.crop, self.settings.polygon_tolerance, self.settings.polygon_min_area)
            return dl.Polygon(geo=rings[0] + np.asarray(obj.origin, dtype=rings[0].dtype), label=label,
                              attributes=attributes)
        return CroppedSegmentation(obj.crop, obj.origin, obj.image_hw, label, attributes)

    def _video_annotation(self, item: dl.Item, track: "VideoTrack", kind: str, object_id: str,
                          image_hw: tuple[int, int]) -> dl.Annotation | None:
        """The track as one video annotation of type `kind`, from the first frame where the object is seen:
        drawn frames `fixed` (as drawn, or SAM 2's result there), tracked ones not; frames where it is absent
        not visible, with an empty shape. None when it is seen on no frame.

        The drawn frames go in first: dtlpy wants every frame's definition to be an instance of the first one's
        class, and a tracked mask (`CroppedSegmentation`) is a `dl.Segmentation`, not the other way round."""
        frames = {t: definitions[kind] for t, definitions in track.tracked.items()}
        earlier = {}
        if track.keep_drawn:
            frames.update(track.drawn)
            # the annotation is replaced in place: frames of earlier runs this one did not reach stay as they were
            # (with the frames dtlpy stores as repeats of the one before; of the user's own annotation only its
            # stored frames: dtlpy's repeats of a drawing are no tracking)
            source = track.source.frames
            keys = source.keys() if _source_id(track.source) == track.source.id else source.actual_keys()
            earlier = {int(t): source[t] for t in keys if int(t) not in frames and int(t) not in track.hidden}
            frames.update({t: f.annotation_definition if f.object_visible else None for t, f in earlier.items()})
        frames.update(dict.fromkeys(track.hidden))  # the user's "not visible here" stands over SAM 2's result
        visible = sorted(t for t, definition in frames.items() if definition is not None)
        if not visible:
            return None
        metadata = _metadata(track.source)
        if visible[0] not in track.drawn:
            # dtlpy reads an annotation's first frame back as fixed: say it is SAM 2's, for the next run
            metadata["user"]["sam2"]["start"] = {"frame": visible[0], "shape": _shape_digest(frames[visible[0]])}
        model_info = None
        if not track.keep_drawn:  # a model's result: its name and confidence, as for images
            scores = [track.scores[t] for t in visible if track.scores.get(t) is not None]
            confidence = float(np.mean(1.0 / (1.0 + np.exp(-np.asarray(scores))))) if scores else 0.0
            model_info = {"name": self._model_label, "confidence": round(confidence, 4)}
        builder = item.annotations.builder()
        # from the first visible frame: dtlpy reads an annotation's first frame back as visible, whatever it was
        order = sorted((t for t in frames if t >= visible[0]), key=lambda t: (t not in track.drawn, t))
        for t in order:
            definition = frames[t]
            if definition is None:
                values = earlier[t].annotation_definition if t in earlier else track.key_before(t)
                definition = _absent_definition(kind, values.label, values.attributes, image_hw)
            builder.add(annotation_definition=definition, object_id=object_id, frame_num=t,
                        fixed=t in track.drawn or t in track.hidden,
                        object_visible=frames[t] is not None, automated=True, metadata=metadata,
                        model_info=model_info)
        return builder.annotations[0]

    # -- batch jobs (predict_items / predict_dataset) ------------------------------------------------------------
    def prepare_item_func(self, item: dl.Item) -> "PreparedItem":
        """Runs in the base class's prefetch threads, so that `predict` only computes: an image's boxes are listed
        and, unless it has none and is to be skipped, the image downloaded and decoded; a video's box, polygon and
        mask annotations are listed and, when there are any, the video is downloaded to a temporary folder that
        `predict` deletes once the item is done. A failure is carried to `predict`, never raised here (it would
        fail the whole batch)."""
        prepared = PreparedItem(item)
        try:
            mimetype = item.mimetype or ""
            if mimetype.startswith("video/"):
                model_name = self._model_entity.name if self._model_entity is not None else None
                prepared.tracks, prepared.failures = _video_tracks(item, None, skip_predictions=True,
                                                                   model_name=model_name)
                if prepared.tracks:
                    prepared.folder = tempfile.TemporaryDirectory(prefix="sam2-batch-")
                    prepared.video = _download_video(item, prepared.folder.name)
                return prepared
            if mimetype and not mimetype.startswith("image/"):
                raise InputError(f"item {item.id} is {mimetype}; batch jobs take images and videos")
            prepared.boxes = [a for a in item.annotations.list() if a.type in BOX_TYPES]
            self._ready()
            if prepared.boxes or self.settings.no_prompts == "propose":  # else skipped: not downloaded nor encoded
                prepared.image = _download_image(item)
        except InputError as error:
            prepared.fail(str(error))
        except Exception as error:  # network or platform errors of this item only
            prepared.fail(f"item {item.id}: {type(error).__name__}: {error}")
        return prepared

    def predict(self, batch: list, **kwargs) -> list:
        """One collection of new annotations per prepared item, in the batch's order. Items that fail or give no
        mask get an empty list and a line in `self.report` (and the log); the rest of the batch goes on. Every
        item's temporary files are deleted when it is done, whatever happens."""
        try:
            self._ready()
            # one encoder batch for the images of this batch
            for prepared, features in zip(batch, self.segmenter.encode_many([p.image for p in batch])):
                prepared.features = features
            return [self._predict_item(prepared) for prepared in batch]
        finally:
            for prepared in batch:
                prepared.release()

    def _predict_item(self, prepared: "PreparedItem") -> dl.AnnotationCollection:
        item = prepared.item
        builder = item.annotations.builder()
        predicted = False
        try:
            if prepared.error:
                self._report(item, prepared.error)
            elif prepared.is_video:
                predicted = self._predict_video(prepared, builder)
            else:
                predicted = self._predict_image(prepared, builder)
        except Exception as error:  # this item's results are lost, not the batch's
            if not isinstance(error, InputError):
                log.exception("item %s", item.id)
            builder = item.annotations.builder()
            message = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
            self._report(item, message if message.startswith(f"item {item.id}") else f"item {item.id}: {message}")
        finally:
            prepared.release()  # the batch's features and the video are not kept past their item
        # On the collection itself: executions running at once share this adapter, and may hold the same item.
        builder.sam2_untouched = not predicted
        return builder

    def _predict_image(self, prepared: "PreparedItem", builder: dl.AnnotationCollection) -> bool:
        """Adds the item's new annotations to `builder` (and as `builder.sam2_no_result` the boxes that gave none);
        False when the item was skipped."""
        item = prepared.item
        if not prepared.boxes:
            if self.settings.no_prompts == "skip":
                self._report(item, f"item {item.id}: no box annotations to convert (skipped)")
                return False
            for proposal in propose_masks(self.segmenter, prepared.features, self.settings.proposals()):
                builder.annotations.extend(self._mask_annotations(item, proposal, "object", {},
                                                                  {"user": {"sam2": {"proposal": True}}}))
            if not builder.annotations:
                self._report(item, f"item {item.id}: no proposals passed the filters")
            return True
        sources = prepared.boxes
        outcomes = segment_box_prompts(
            self.segmenter, prepared.features, [_box_prompt(a) for a in sources],
            then=lambda k, result: self._mask_annotations(item, result, sources[k].label, sources[k].attributes,
                                                          _metadata(sources[k])),
            margin=self.settings.box_margin)
        kept = "; the box is kept" if self.settings.replace_boxes else ""
        no_result = set()
        for source, outcome in zip(sources, outcomes):
            if isinstance(outcome, InputError):
                self._report(item, f"item {item.id}: {outcome}{kept}")
                no_result.add(source.id)
            else:
                builder.annotations.extend(outcome)
        # Per collection, not on self (concurrent executions share the adapter): the boxes that gave no result;
        # `_upload_model_annotations` keeps their earlier results and names them.
        builder.sam2_no_result = frozenset(no_result)
        return True

    def _predict_video(self, prepared: "PreparedItem", builder: dl.AnnotationCollection) -> bool:
        """Every box, polygon and mask annotation of a video followed both ways from its drawn frames (the whole
        video, or `video_max_frames` each way), as one video annotation per source and output type. False when
        there was nothing to track."""
        item = prepared.item
        failures = list(prepared.failures)
        if prepared.tracks:
            kinds = _OUTPUT_KINDS[self.settings.output_type]
            max_frames = self.settings.video_max_frames or None
            log.info("item %s: tracking %d annotations", item.id, len(prepared.tracks))
            tracked, problems = self._track_annotations(item, prepared.video, prepared.tracks, "both", max_frames,
                                                        kinds=kinds)
            failures += problems
            builder.annotations.extend(annotation for _, annotation in tracked)
            # a drawing SAM 2 does not reproduce would be lost with its annotation: `replace_boxes` keeps those
            builder.sam2_keep_sources = frozenset(track.source.id for track in prepared.tracks
                                                  if any(track.scores.get(t) is None for t in track.drawn))
        elif not failures:
            self._report(item, f"item {item.id}: no box, polygon or mask annotations to track (skipped; "
                               f"no proposals on videos)")
        for failure in failures:
            self._report(item, f"item {item.id}: {failure}")
        return bool(prepared.tracks)

    def _mask_annotations(self, item: dl.Item, result: MaskResult, label, attributes, metadata: dict,
                          kinds: Sequence[str] | None = None) -> list[dl.Annotation]:
        """The annotations of one mask, of each kind in `kinds` (default: the `output_type` setting's)."""
        if kinds is None:
            kinds = ("segmentation", "polygon") if self.settings.output_type == "both" else (self.settings.output_type,)
        info = {"name": self._model_label, "confidence": round(result.score, 4)}
        builder = item.annotations.builder()
        for kind in kinds:
            for definition in self._definitions(result, label, attributes, kind):
                builder.add(annotation_definition=definition, automated=True, metadata=metadata, model_info=info)
        return builder.annotations

    def _report(self, item: dl.Item, message: str) -> None:
        log.warning(message)
        self.report.append({"item": item.id, "message": message})

    def _upload_model_annotations(self, item: dl.Item, predictions):
        """Stores an item's results, then deletes this model's earlier results that they replace (those of the same
        source annotations, and earlier proposals when these are proposals) and, with `replace_boxes`, the sources,
        each only where all its new results were stored.

        Not the base class's way, which first deletes every earlier result of the model on the item: those of
        boxes an earlier run replaced went too (a box added later, or proposals asked for later, cost the item
        all its masks), items skipped or failed lost theirs, a refused upload left nothing, and an error in one
        item's upload failed its whole batch. Here what is not replaced is kept, and an error is reported with the
        item and costs the other items nothing."""
        if getattr(predictions, "sam2_untouched", False):
            return predictions
        try:
            earlier = [a for a in item.annotations.list() if _made_by(a, self.model_entity.name)]
            uploaded = item.annotations.upload(annotations=predictions)
            stored = list(uploaded)
        except Exception as error:  # noqa: BLE001 - reported per item; the batch goes on
            self._report(item, f"item {item.id}: results could not be stored ({type(error).__name__}: {error}); "
                               f"its annotations are left as they were")
            return item.annotations.builder()
        wanted = collections.Counter(_replaces(a) for a in predictions)
        got = collections.Counter(_replaces(a) for a in stored)
        complete = {source for source in wanted if source is not None and got[source] == wanted[source]}
        if len(stored) < len(predictions):
            self._report(item, f"item {item.id}: {len(predictions) - len(stored)} of {len(predictions)} results were "
                               f"not stored (see the log); the earlier results and the sources they replace are kept")
        doomed = [a.id for a in earlier if _replaces(a) in complete]
        no_result = getattr(predictions, "sam2_no_result", frozenset())
        stale = [f"{a.id} (of {_replaces(a)})" for a in earlier if _replaces(a) in no_result]
        if stale:
            self._report(item, f"item {item.id}: earlier results of boxes that gave none this run are kept: "
                               + "; ".join(stale))
        if self.settings.replace_boxes:
            doomed += sorted(complete - {_PROPOSALS} - getattr(predictions, "sam2_keep_sources", frozenset()))
        failed = []
        for annotation_id in doomed:
            try:
                _delete_annotation(item, annotation_id)
            except Exception as error:  # noqa: BLE001 - one refused delete costs neither the others nor the batch
                failed.append(f"{annotation_id} ({type(error).__name__}: {error})")
        if failed:
            self._report(item, f"item {item.id}: {len(failed)} earlier results or replaced sources could not be "
                               f"deleted: " + "; ".join(failed))
        return uploaded

    # -- internals ---------------------------------------------------------------------------------------------
    def _boxes_to_annotations(self, item: dl.Item, annotations: Iterable[dict], kind: str, progress) -> list:
        """The studio's Box to Segmentation / Box to Polygon: each box's annotations as JSON, the first with the
        box's id; an annotation that is not a box, or whose box gives no mask, is logged and named in the
        progress message, and the others come back."""
        self._ready()
        given = list(annotations or [])
        sources, failures = [], []
        for source in given:
            try:
                annotation = _parse_box_annotation(source)
                if annotation.item_id and item is not None and annotation.item_id != item.id:
                    raise InputError(f"annotation {annotation.id}: belongs to item {annotation.item_id}, "
                                     f"not {item.id}")
                sources.append(annotation)
            except InputError as error:
                failures.append(str(error))

        def to_json(k: int, result: MaskResult) -> list[dict]:
            # where the segmenter overlaps it, this runs on a worker while the decoder runs the next boxes
            source = sources[k]
            new = [a.to_json() for a in self._mask_annotations(item, result, source.label, source.attributes,
                                                               _metadata(source), (kind,))]
            if new:
                new[0]["id"] = source.id  # the studio replaces the box in place
            return new

        results = []
        if sources:
            features, _ = self._features(item)
            for outcome in segment_box_prompts(self.segmenter, features, [_box_prompt(s) for s in sources],
                                               then=to_json, margin=self.settings.box_margin):
                if isinstance(outcome, InputError):
                    failures.append(str(outcome))
                else:
                    results.extend(outcome)
        for failure in failures:
            log.warning("item %s: %s", item.id, failure)
        if progress is not None and failures:
            progress.update(message=f"{len(failures)} of {len(given)} annotations gave no {kind}: "
                                    + "; ".join(failures))
        return results

    def _definitions(self, result: MaskResult, label: str, attributes, kind: str) -> list:
        if kind == "segmentation":
            return [FastSegmentation(geo=result.full(), label=label, attributes=attributes)]
        return [dl.Polygon(geo=ring, label=label, attributes=attributes) for ring in self._polygons(result)]

    def _polygons(self, result: MaskResult) -> list[np.ndarray]:
        rings = object_polygons(result.crop, self.settings.polygon_tolerance, self.settings.polygon_min_area)
        return [ring + np.asarray(result.origin, dtype=ring.dtype) for ring in rings]

    def _features(self, item: dl.Item):
        """The item's image features and their cache key (also the key of its click refinements).

        The key names the image's content, a digest of its bytes: an edited image is encoded again, while a new
        version of the item with the same image (the platform updates an item for more than its pixels: its
        annotations, metadata, task status) is not, and keeps its refinement. The digest of each item version
        is remembered (an item without a version is downloaded every time), so a version seen before is served
        from the cache without a download; concurrent requests for a version not seen yet download it once."""
        if item is None:
            raise InputError("no item given")
        if item.mimetype and not item.mimetype.startswith("image/"):
            raise InputError(f"item {item.id} is {item.mimetype}, not an image")
        updated = getattr(item, "updated_at", None) or item.metadata.get("system", {}).get("modified")
        version = (item.id, updated)
        with self._digests_lock:
            digest = self._digests.get(version)
            reading = self._reading.setdefault(version, threading.Lock()) if digest is None else None
        if reading is not None:
            with reading:  # the first reads the image and encodes it; the others then find both done
                with self._digests_lock:
                    digest = self._digests.get(version)  # never set for an item without a version
                if digest is None:
                    try:
                        return self._read_features(item, version if updated is not None else None)
                    finally:
                        with self._digests_lock:
                            if self._reading.get(version) is reading:
                                del self._reading[version]
        key = (self._model_label, item.id, digest)
        return self.segmenter.features(key, lambda: _download_image(item)), key

    def _read_features(self, item: dl.Item, version: tuple | None):
        """Downloads the item's image, names it by its digest (remembered for `version` unless None) and returns
        its features from the cache, or encodes them."""
        data = _download(item)
        digest = hashlib.sha256(data).hexdigest()
        if version is not None:
            with self._digests_lock:
                self._digests[version] = digest
                while len(self._digests) > _VERSIONS_KEPT:
                    self._digests.popitem(last=False)
        key = (self._model_label, item.id, digest)
        return self.segmenter.features(key, lambda: decode_image(data, f"item {item.id}")), key


@dataclass
class PreparedItem:
    """What `prepare_item_func` hands to `predict`: an image's pixels and boxes, or a video's downloaded file and
    the annotations to track (with those that cannot be, and why), or why the item cannot be predicted."""

    item: dl.Item
    image: np.ndarray | None = None
    boxes: list = field(default_factory=list)
    error: str | None = None
    features: Any = None
    tracks: list["VideoTrack"] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    video: str | None = None
    folder: tempfile.TemporaryDirectory | None = None

    @property
    def is_video(self) -> bool:
        return (self.item.mimetype or "").startswith("video/")

    def fail(self, error: str) -> None:
        self.error = error
        self.release()

    def release(self) -> None:
        """Drops the pixels and features and deletes the downloaded video; safe to call more than once."""
        self.image = self.features = self.video = None
        folder, self.folder = self.folder, None
        if folder is not None:
            folder.cleanup()


# Batch jobs on videos: the annotation types of each `output_type` (one video annotation per source and type).
_OUTPUT_KINDS = {"segmentation": ("binary",), "polygon": ("segment",), "both": ("binary", "segment")}


def _box_prompt(annotation: dl.Annotation) -> BoxPrompt:
    d = annotation.annotation_definition
    return BoxPrompt(f"annotation {annotation.id}", (d.left, d.top, d.right, d.bottom), d.angle or 0.0)


# The source of proposals, in `_upload_model_annotations`' counts (they have no source annotation).
_PROPOSALS = object()

# `predict_interactive_editing`'s return types (any case): what each gives.
_RETURN_TYPES = {"segmentation": "segmentation", "binary": "segmentation", "polygon": "polygon", "segment": "polygon"}

# Item versions whose image digest `ModelAdapter._features` remembers (about 200 bytes each).
_VERSIONS_KEPT = 16_384


def _download(item: dl.Item) -> bytes:
    buffer = item.download(save_locally=False)
    return buffer.getvalue() if hasattr(buffer, "getvalue") else bytes(buffer)


def _download_image(item: dl.Item) -> np.ndarray:
    return decode_image(_download(item), f"item {item.id}")


def _in_artifacts(path: Path, artifacts: Path | None) -> Path:
    if not path.is_absolute() and artifacts is not None and (artifacts / path).is_file():
        return artifacts / path
    return path


# Fields `dl.Annotation.from_json` insists on and a box just drawn in the studio may not carry yet.
_UNSAVED_DEFAULTS = {"creator": None, "createdAt": None, "updatedBy": None, "updatedAt": None}


def _parse_annotation(source: dict | dl.Annotation, item: dl.Item | None = None) -> dl.Annotation:
    """Annotation JSON (or an entity) as a `dl.Annotation`; with a video `item`, its frames are read too."""
    if isinstance(source, dl.Annotation):
        return source
    ident = source.get("id") if isinstance(source, dict) else None
    try:
        metadata = dict(source.get("metadata") or {})
        metadata["system"] = dict(metadata.get("system") or {})
        return dl.Annotation.from_json({**_UNSAVED_DEFAULTS, **source, "metadata": metadata}, item=item)
    except KeyError as error:
        raise InputError(f"annotation {ident}: not a readable annotation (missing field {error})") from None
    except Exception as error:
        raise InputError(f"annotation {ident}: not a readable annotation ({error})") from None


def _parse_box_annotation(source: dict | dl.Annotation) -> dl.Annotation:
    annotation = _parse_annotation(source)
    if annotation.type not in BOX_TYPES:
        raise InputError(f"annotation {annotation.id}: is a {annotation.type}, not a box")
    return annotation


# -- video tracking helpers ------------------------------------------------------------------------------------------


@dataclass
class VideoTrack:
    """One annotation followed through a video.

    key: the tracker's object id (the annotation's id).
    drawn: {frame: definition} where the annotation is drawn: the prompts.
    hidden: {frame: definition} where the user marked the object not visible (fixed, not visible): it stays
        absent there, with that frame's label and attributes.
    kinds: the annotation types it comes back as (its own type for `track_video`; the job's output in batch jobs).
    keep_drawn: the drawn frames come back as drawn (`track_video`), not as SAM 2's result there (batch jobs).
    spans: {direction: (first, last)} frames this annotation takes from the passes in that direction.
    tracked: {frame: {kind: definition, or None where SAM 2 says the object is absent}}; drawn frames only
        when they are not kept as drawn.
    scores: {frame: SAM 2's object score logit, or None where the object is absent} over its spans.
    """

    key: str
    source: dl.Annotation
    drawn: dict[int, Any]
    hidden: dict[int, Any] = field(default_factory=dict)
    kinds: tuple[str, ...] = ()
    keep_drawn: bool = True
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    tracked: dict[int, dict[str, Any]] = field(default_factory=dict)
    scores: dict[int, float | None] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.source.type

    def key_before(self, frame: int):
        """The key frame's definition that a frame takes its label and attributes from: the latest drawn or
        not-visible key frame at or before it (the first one for frames before every key frame), as dtlpy carries
        a frame's values on."""
        keys = {**self.drawn, **self.hidden}
        frames = sorted(keys)
        return keys[frames[max(bisect.bisect_right(frames, frame) - 1, 0)]]


def _check_video_item(item: dl.Item) -> None:
    if item is None:
        raise InputError("no item given")
    if not (item.mimetype or "").startswith("video/"):
        raise InputError(f"item {item.id} is {item.mimetype}, not a video")


def _video_tracks(item: dl.Item, annotations: Iterable | None, skip_predictions: bool = False,
                  model_name: str | None = None) -> tuple[list[VideoTrack], list[str]]:
    """The annotations to track and, for the others, why not. `annotations=None` takes the item's own boxes,
    polygons and masks; other types are passed over silently there, but reported when asked for by name.
    `skip_predictions` (batch jobs): the item's own annotations that are predictions, of the model `model_name`
    or made from another annotation by SAM 2, are no prompts (a job run again would track its earlier results)."""
    own = annotations is None
    sources = item.annotations.list() if own else annotations
    tracks, failures, seen = [], [], set()
    for n, source in enumerate(sources or []):
        try:
            annotation = _parse_annotation(source, item)
            if own and (annotation.type not in TRACKED_TYPES
                        or (skip_predictions and _is_prediction(annotation, model_name))):
                continue
            key = annotation.id or f"#{n}"
            if key in seen:
                raise InputError(f"annotation {key}: given twice")
            tracks.append(VideoTrack(key, annotation, _drawn_frames(annotation), _hidden_frames(annotation)))
            seen.add(key)
        except InputError as error:
            failures.append(str(error))
    return tracks, failures


def _is_prediction(annotation: dl.Annotation, model_name: str | None) -> bool:
    """A prediction of the model `model_name`, or an annotation SAM 2 made from another one (a batch job's result;
    `track_video` keeps the source's own id)."""
    if model_name and _made_by(annotation, model_name):
        return True
    if _sam2(annotation).get("proposal"):
        return True
    source = _source_id(annotation)
    return source is not None and source != annotation.id


def _made_by(annotation: dl.Annotation, model_name: str) -> bool:
    """Whether the model `model_name` made `annotation` (dtlpy names it in the user or the system metadata)."""
    metadata = annotation.metadata or {}
    return any(((metadata.get(scope) or {}).get("model") or {}).get("name") == model_name for scope in ("user", "system"))


def _drawn_frames(annotation: dl.Annotation) -> dict[int, Any]:
    """{frame: definition} of the frames where a video annotation is drawn: fixed and visible. Frames that
    dtlpy carries on (not fixed) are not the user's drawing and do not prompt. An annotation read without
    its frames (no video item) is drawn on its one frame."""
    first = int(annotation.start_frame or 0)
    if annotation.type not in TRACKED_TYPES:
        raise InputError(f"annotation {annotation.id}, frame {first}: a {annotation.type} annotation cannot be "
                         f"tracked (boxes, polygons and masks can)")
    frames = annotation.frames
    if not frames.actual_keys():
        return {first: annotation.annotation_definition}
    drawn = {int(t): frames[t].annotation_definition for t in sorted(frames.actual_keys())
             if frames[t].fixed and frames[t].object_visible}
    # The first frame of an earlier run's result, when SAM 2 tracked it, is no drawing (dtlpy reads it back as
    # fixed) unless the user has edited it since.
    start = (((annotation.metadata or {}).get("user") or {}).get("sam2") or {}).get("start")
    started = start.get("frame") if isinstance(start, dict) else None
    if started in drawn and len(drawn) > 1 and _shape_digest(drawn[started]) == start.get("shape"):
        del drawn[started]  # still SAM 2's, though a frame drawn before it may have come since
    if not drawn:
        raise InputError(f"annotation {annotation.id}: no frame where it is drawn (fixed and visible)")
    return drawn


def _shape_digest(definition) -> str:
    """A digest of one frame's shape (to a tenth of a pixel for boxes and polygons, every pixel for masks), label
    and attributes: an edit of any of them makes the frame the user's."""
    if definition.type == dl.AnnotationType.BOX:
        data = np.round([definition.left, definition.top, definition.right, definition.bottom], 1)
    elif definition.type == dl.AnnotationType.POLYGON:
        data = np.round(np.asarray(definition.geo, np.float64), 1)
    else:
        data = np.packbits(np.asarray(copy.copy(definition).geo) > 0)  # a copy: see `_tracker_prompt`
    values = json.dumps([definition.label, definition.attributes], sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha1(np.ascontiguousarray(data, dtype=data.dtype).tobytes() + values).hexdigest()[:16]


def _hidden_frames(annotation: dl.Annotation) -> dict[int, Any]:
    """{frame: definition} where the user marked the object not visible: key frames (fixed) without the object."""
    frames = annotation.frames
    return {int(t): frames[t].annotation_definition for t in frames.actual_keys()
            if frames[t].fixed and not frames[t].object_visible}


def _add_video_prompts(tracker: VideoTracker, tracks: list[VideoTrack]) -> list[str]:
    """Every drawn frame as a prompt, and every frame the user marked not visible as an absent one, in frame
    order (a frame is encoded once for all the annotations on it). An annotation with a bad drawn frame is taken
    out of the tracker whole; a frame marked not visible that cannot be read (beyond the video's end, corrupt)
    only goes without its prompt. Returns why, per annotation and frame."""
    failures, dropped = [], set()
    prompts = sorted(((frame, track) for track in tracks for frame in (*track.drawn, *track.hidden)),
                     key=lambda p: p[0])
    for frame, track in prompts:
        if track.key in dropped:
            continue
        what = f"annotation {track.source.id}, frame {frame}"
        if frame in track.hidden:
            try:
                tracker.add_absent(track.key, frame)
            except InputError as error:
                failures.append(f"{what}: marked not visible, but not usable as a prompt ({error}); "
                                f"tracked without it")
            continue
        try:
            tracker.add_prompt(track.key, frame, _tracker_prompt(track.drawn[frame], what))
        except InputError as error:
            failures.append(str(error))
            dropped.add(track.key)
            if track.key in tracker.object_ids:
                tracker.remove_object(track.key)
    return failures


def _tracking_spans(drawn: Sequence[int], direction: str, max_frames: int | None, num_frames: int,
                    hidden: Sequence[int] = ()) -> dict[str, tuple[int, int]]:
    """The frames an annotation drawn on the sorted frames `drawn` takes from each direction's passes.

    Forward: from its first drawn frame to `max_frames - 1` frames past its last one; backward: the mirror
    image. With "both", the backward passes start on the frame before the first drawn one (the forward passes
    cover the rest), as SAM 2's video predictor does. A frame in `hidden` (marked not visible) beyond that reach
    widens the span to it: frames between key frames are always tracked (dtlpy would repeat the last tracked
    shape over frames left out)."""
    first, last = drawn[0], drawn[-1]
    reach = num_frames if max_frames is None else max_frames - 1
    before = [t for t in hidden if t < first]
    after = [t for t in hidden if t > last]
    spans = {}
    if direction in ("forward", "both"):  # with "both", the backward passes reach the key frames before `first`
        start = first if direction == "both" else min([first] + before)
        spans["forward"] = (start, max([min(last + reach, num_frames - 1)] + after))
    if direction == "backward":
        spans["backward"] = (min([max(first - reach, 0)] + before), max([last] + after))
    elif direction == "both" and (reach > 0 or before) and first > 0:
        spans["backward"] = (min([max(first - reach, 0)] + before), first - 1)
    return spans


def _tracking_passes(tracks: list[VideoTrack]) -> list[tuple[int, str, int, list[str]]]:
    """(start frame, direction, frames, the keys of the tracks it serves) passes covering every span: overlapping
    spans share one pass, spans apart get their own, and a pass tracks only the annotations whose spans it covers,
    so neither the frames between annotations far apart nor the annotations of other passes are tracked. Forward
    passes first: a backward pass of "both" reads the memory that the forward pass left at its start."""
    passes = []
    for direction in ("forward", "backward"):
        merged: list[list] = []  # [first, last, keys]
        for (first, last), key in sorted((t.spans[direction], t.key) for t in tracks if direction in t.spans):
            if merged and first <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], last)
                merged[-1][2].append(key)
            else:
                merged.append([first, last, [key]])
        for first, last, keys in merged:
            passes.append((first if direction == "forward" else last, direction, last - first + 1, keys))
    return passes


def _object_ids(tracks: list[VideoTrack]) -> list[str]:
    """One numeric object id per track (dtlpy matches a video annotation's frames by it): the annotation's own
    when it has a unique one, else the next free number above those of this request."""
    own = [str(t.source.object_id) if t.source.object_id is not None else "" for t in tracks]
    free = max((int(o) for o in own if o.isdecimal()), default=0) + 1
    ids: list[str] = []
    for candidate in own:
        if not candidate.isdecimal() or candidate in ids:
            candidate, free = str(free), free + 1
        ids.append(candidate)
    return ids


def _absent_definition(kind: str, label: str, attributes, image_hw: tuple[int, int]):
    """A frame where the object is absent holds no geometry, never the previous frame's. dtlpy needs a definition
    on every frame it lists, so this is an empty one of the annotation's type: an empty mask, a polygon without
    vertices, a zero-area box at the origin (a dtlpy box has two corners)."""
    if kind == dl.AnnotationType.BOX:
        return dl.Box(left=0, top=0, right=0, bottom=0, label=label, attributes=attributes)
    if kind == dl.AnnotationType.POLYGON:
        return dl.Polygon(geo=np.zeros((0, 2)), label=label, attributes=attributes)
    return CroppedSegmentation(None, None, image_hw, label, attributes)


def _download_video(item: dl.Item, folder: str) -> str:
    """The item's video as a local file: the tracker decodes it frame by frame, seeking for backward passes."""
    path = item.download(local_path=folder, overwrite=True, to_items_folder=False)
    if isinstance(path, (list, tuple)):
        path = path[0] if path else None
    if not path or not os.path.isfile(path):
        raise InputError(f"item {item.id}: the video could not be downloaded")
    return str(path)


def _studio_definition(annotation_id, coordinates, frame: int):
    """The AI Tracker's box ([{x, y}, {x, y}], or [{x, y}, {x, y}, angle] rotated, as dtlpy writes it) or polygon
    ([{x, y}, ...] with 3+ points, possibly nested once) as a dtlpy definition, so that it becomes a prompt the
    way a drawn annotation does."""
    points, angle = coordinates, 0.0
    if isinstance(points, list) and points and isinstance(points[0], list):
        points = points[0]
    if isinstance(points, list) and len(points) == 3 and not isinstance(points[2], (dict, bool)):
        try:  # a number, or a string of one as other coordinates may come
            points, angle = points[:2], float(points[2])
        except (TypeError, ValueError):
            raise InputError(f"annotation {annotation_id}, frame {frame}: a rotated box's angle must be a number, "
                             f"got {points[2]!r}") from None
    try:
        xy = np.array([[float(p["x"]), float(p["y"])] for p in points], dtype=np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"annotation {annotation_id}, frame {frame}: not a box or polygon: {coordinates!r}") from None
    if len(xy) == 2:
        (x1, y1), (x2, y2) = xy.min(axis=0), xy.max(axis=0)
        return dl.Box(left=x1, top=y1, right=x2, bottom=y2, label="tracked", angle=angle)
    if len(xy) >= 3:
        return dl.Polygon(geo=xy, label="tracked")
    raise InputError(f"annotation {annotation_id}, frame {frame}: {len(xy)} points are neither a box nor a polygon")


def _studio_coordinates(definition) -> list[dict]:
    """A tracked box or polygon in the AI Tracker's coordinates (a polygon as one flat list of points)."""
    if definition.type == dl.AnnotationType.POLYGON:
        return _polygon_coordinates(definition.geo)
    return definition.to_coordinates(color=None)


def _tracker_prompt(definition, where: str) -> dict:
    """A drawn box, polygon or mask as a `VideoTracker` prompt; a rotated box prompts with its enclosing box.
    The tracker checks the geometry against the video (frame range, box inside the frame, mask size)."""
    if definition.type == dl.AnnotationType.BOX:
        box = [definition.left, definition.top, definition.right, definition.bottom]
        if definition.angle:
            box = enclosing_box(box, definition.angle).tolist()
        return {"type": "box", "box": box}
    if definition.type == dl.AnnotationType.POLYGON:
        return {"type": "polygon", "polygon": np.asarray(definition.geo, dtype=np.float64)}
    # A copy: decoding a parsed dl.Segmentation sets its colour to an RGBA pixel, after which dtlpy cannot
    # serialise it with a label colour (it compares a 4-vector with an RGB tuple); the drawn frame goes back as is.
    try:
        mask = np.asarray(copy.copy(definition).geo) > 0
    except Exception as error:  # a corrupt PNG in the annotation's coordinates
        raise InputError(f"{where}: the mask cannot be decoded ({error})") from None
    return {"type": "mask", "mask": mask}


def _auth_headers(dl_module, url) -> dict | None:
    """The user's token for a stream on the platform's own host (sent in a header, never logged); None for a local
    path or any other host (a link item's URL), which must never see it."""
    module = dl_module or dl
    try:
        where = _origin(str(url or ""))
        if where is None or where != _origin(module.environment()):
            return None
        token = module.token()
    except Exception:
        return None
    return {"Authorization": f"Bearer {token}"} if token else None


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the port filled in; None for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _whole_number(value, name: str) -> int:
    try:
        return parse_number(value, integer=True)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number, got {value!r}") from None


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


def _sam2(annotation: dl.Annotation) -> dict:
    """What this adapter wrote in an annotation's `metadata.user.sam2`."""
    return ((annotation.metadata or {}).get("user") or {}).get("sam2") or {}


def _source_id(annotation: dl.Annotation) -> str | None:
    return _sam2(annotation).get("source_annotation_id")


def _replaces(annotation: dl.Annotation):
    """What a result of this adapter stands for on its item: its source annotation's id, all proposals together
    (`_PROPOSALS`), or None for an annotation of neither kind."""
    return _source_id(annotation) or (_PROPOSALS if _sam2(annotation).get("proposal") else None)


def _delete_annotation(item: dl.Item, annotation_id: str) -> None:
    try:
        item.annotations.delete(annotation_id=annotation_id)
    except dl.exceptions.NotFound:
        pass  # already gone (a user, or another execution on the same item): what was wanted


def _metadata(source: dl.Annotation) -> dict:
    metadata = {k: v for k, v in (source.metadata or {}).items() if k != "system"}
    user = dict(metadata.get("user") or {})
    user["sam2"] = {"source_annotation_id": source.id}
    metadata["user"] = user
    return metadata


def _rgb(color: Any):
    """The studio's mask colour: None (white), "#rrggbb" or "#rgb", or (r, g, b) (checked where it is drawn)."""
    if color is None:
        return 255, 255, 255
    try:
        if not isinstance(color, str):  # numbers as the studio may send them (floats, strings); alpha ignored
            return tuple(int(float(c)) for c in list(color)[:3])
        digits = color.removeprefix("#")
        digits = "".join(c * 2 for c in digits) if len(digits) == 3 else digits
        if len(digits) == 6:
            return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))
    except (TypeError, ValueError):
        pass
    raise InputError(f"color: expected '#rrggbb' or (r, g, b), got {color!r}")
