"""Streaming SAM 2 video tracking: prompts on any frame, frames decoded on demand, memory bounded.

`VideoTracker` runs SAM 2's own modules (image encoder, `track_step` with its memory attention and mask decoder,
the memory encoder) over a `FrameSource`, with SAM 2's video-predictor semantics, but:

* a frame is decoded, resized and encoded once, when it is reached, for all objects (never preloaded, never
  encoded once per object);
* each object keeps only what SAM 2 reads: its conditioning (prompted) frames' outputs and the outputs of the
  frames within `max(num_maskmem, max_obj_ptrs_in_encoder)` of the frame being tracked or of the pass's start
  frame; memory does not grow with the length of the video or of the track;
* results come out frame by frame (`FrameResult`), masks at video resolution, cropped to where they can be;
* SAM 2's object score decides presence: a frame where it says the object is absent gets no geometry.

    model = load_model(config, checkpoint, device)              # sam2_adapter.models
    with VideoTracker(model, "clip.mp4") as tracker:            # or a frame folder, a FrameSource, an https URL
        tracker.add_box(obj_id=1, frame_idx=0, box=[10, 20, 90, 120])
        tracker.add_points(obj_id=2, frame_idx=5, points=[[300, 200]], labels=[1])
        for result in tracker.propagate(direction="forward", max_frames=100, should_cancel=job.is_cancelled):
            for obj_id, obj in result.objects.items():
                if obj.visible:
                    obj.mask()          # (H, W) bool; or obj.crop at obj.origin; obj.box
        # a correction on frame 40, then tracking again from there
        tracker.correct(obj_id=1, frame_idx=40, points=[[55, 70], [80, 95]], labels=[1, 0])
        for result in tracker.propagate(start_frame=40):
            ...

Semantics follow `SAM2VideoPredictor` (sam2 1.1.0) with its build settings: prompts on a frame the object was not
tracked through start it afresh (no memory, like SAM); clicks on a frame it was tracked through are decoded
against its memory together with its previous mask logits there (a correction). Unlike the predictor's default,
a corrected frame becomes a conditioning frame (its `add_all_frames_to_correct_as_cond=True`), so propagating
from it keeps the correction instead of recomputing the frame without it. Objects are tracked independently
(the predictor's `non_overlap_masks=False`); SAM 2's `fill_hole_area` post-processing runs on CUDA only (it
needs sam2's CUDA extension), as in the predictor.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Collection, Hashable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sam2.modeling.sam2_base import SAM2Base
from sam2.utils.misc import fill_holes_in_mask_scores

from sam2_adapter.errors import InputError
from sam2_adapter.frames import Frame, FrameSource, open_video
from sam2_adapter.models import inference_context, uses_bf16
from sam2_adapter.upsample import upsample_logits

log = logging.getLogger(__name__)

__all__ = ["DIRECTIONS", "PROMPT_TYPES", "FrameResult", "ObjectMask", "PropagationReport", "VideoTracker", "polygon_mask"]

DIRECTIONS = ("forward", "backward", "both")
PROMPT_TYPES = ("box", "points", "mask", "polygon", "absent")

# SAM 2's frame normalisation (sam2.utils.misc.load_video_frames).
_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float32)[:, None, None]
_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float32)[:, None, None]
_BOX_LABELS = (2, 3)


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class ObjectMask:
    """One object on one frame.

    visible: SAM 2 found the object here (object score > 0 and a non-empty mask). When False there is no
        geometry at all: `crop`, `origin` are None and `mask()`, `box` return None.
    object_score: SAM 2's object score logit (> 0: present).
    crop: (h, w) bool mask inside the region origin (x0, y0) .. (x0 + w, y0 + h) of the frame; outside that
        region the mask is empty.
    image_hw: the frame's (height, width).
    prompted: the frame holds a prompt (or correction) for this object, i.e. it is a conditioning frame.
    """

    obj_id: Hashable
    frame_idx: int
    visible: bool
    object_score: float
    crop: np.ndarray | None
    origin: tuple[int, int] | None
    image_hw: tuple[int, int]
    prompted: bool = False

    def mask(self) -> np.ndarray | None:
        """The mask at video resolution, (H, W) bool; None where the object is not visible."""
        if not self.visible:
            return None
        full = np.zeros(self.image_hw, dtype=bool)
        x0, y0 = self.origin
        full[y0:y0 + self.crop.shape[0], x0:x0 + self.crop.shape[1]] = self.crop
        return full

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """x1, y1, x2, y2 (x2, y2 = last column/row + 1) enclosing the mask; None where not visible."""
        if not self.visible:
            return None
        x, y, w, h = cv2.boundingRect(self.crop.view(np.uint8))
        x0, y0 = self.origin
        return float(x0 + x), float(y0 + y), float(x0 + x + w), float(y0 + y + h)

    @property
    def area(self) -> int:
        return int(self.crop.sum()) if self.visible else 0


@dataclass(frozen=True, eq=False)
class FrameResult:
    """Every tracked object on one frame, or why the frame was skipped (`error`, with no objects)."""

    frame_idx: int
    objects: Mapping[Hashable, ObjectMask]
    error: str | None = None

    @property
    def skipped(self) -> bool:
        return self.error is not None

    def visible_ids(self) -> list[Hashable]:
        return [obj_id for obj_id, obj in self.objects.items() if obj.visible]


@dataclass
class PropagationReport:
    """What the last `propagate` call did (filled in as it runs)."""

    frames_tracked: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    cancelled: bool = False
    first_frame: int | None = None
    last_frame: int | None = None


# --------------------------------------------------------------------------------------------- state


@dataclass(eq=False)
class _Features:
    frame_idx: int
    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]


class _ObjectState:
    """SAM 2's per-object tracking state, bounded.

    cond: conditioning frame outputs {frame: out} (prompted or corrected frames; kept for the object's life).
    recent: non-conditioning outputs {frame: out} that SAM 2 may still read (see VideoTracker._evict).
    points: point inputs per prompted frame (to add clicks to a frame's earlier clicks).
    tracked: frame ranges [lo, hi, reverse] this object has been tracked through, newest last.
    """

    def __init__(self, obj_id: Hashable):
        self.obj_id = obj_id
        self.cond: dict[int, dict] = {}
        self.recent: dict[int, dict] = {}
        self.points: dict[int, dict] = {}
        self.tracked: list[list] = []

    @property
    def output_dict(self) -> dict:
        return {"cond_frame_outputs": self.cond, "non_cond_frame_outputs": self.recent}

    def output_at(self, frame_idx: int) -> dict | None:
        out = self.cond.get(frame_idx)
        return out if out is not None else self.recent.get(frame_idx)

    def tracked_reverse(self, frame_idx: int) -> bool | None:
        """The direction of the latest tracking through `frame_idx`; None if it never was."""
        for lo, hi, reverse in reversed(self.tracked):
            if lo <= frame_idx <= hi:
                return reverse
        return None

    def mark_tracked(self, frame_idx: int, reverse: bool, new_pass: bool) -> None:
        if new_pass or not self.tracked or self.tracked[-1][2] != reverse:
            self.tracked.append([frame_idx, frame_idx, reverse])
        else:
            span = self.tracked[-1]
            span[0], span[1] = min(span[0], frame_idx), max(span[1], frame_idx)
        if len(self.tracked) > 64:  # many passes: merge the oldest, so this stays bounded too
            a, b = self.tracked[0], self.tracked.pop(1)
            self.tracked[0] = [min(a[0], b[0]), max(a[1], b[1]), b[2]]


# --------------------------------------------------------------------------------------------- the tracker


class VideoTracker:
    """SAM 2 tracking of several objects through one video. Not thread-safe: one request at a time.

    model: a SAM 2 model (`load_model(..., video=False)` or a `SAM2VideoPredictor`), in eval mode.
    video: a `FrameSource`, or a path/URL for `open_video` (then the tracker owns and closes it).
    headers: HTTP headers for a URL (e.g. an Authorization token; never logged).
    mask_threshold: logit threshold of the output masks (SAM 2: 0).
    read_ahead: frames decoded and prepared ahead in a background thread.
    fill_hole_area: SAM 2's small-hole filling of predicted masks, in low-res pixels (CUDA only, as in SAM 2).
    max_batch: objects tracked together in one `track_step` (those whose memories have the same layout).
    """

    def __init__(self, model: SAM2Base, video: FrameSource | str | os.PathLike, *,
                 headers: Mapping[str, str] | None = None, mask_threshold: float = 0.0, read_ahead: int = 2,
                 fill_hole_area: int = 8, max_batch: int = 16):
        self.model = model
        self._owns_video = not isinstance(video, FrameSource)
        self.video = open_video(video, headers=headers)
        self.mask_threshold = float(mask_threshold)
        self.read_ahead = int(read_ahead)
        self.fill_hole_area = int(fill_hole_area)
        self.max_batch = max(1, int(max_batch))
        self.device = next(model.parameters()).device
        self._bf16 = uses_bf16(self.device)
        self.image_size = int(model.image_size)
        self.height, self.width = self.video.height, self.video.width
        self.num_frames = self.video.num_frames
        stride = max(1, int(getattr(model, "memory_temporal_stride_for_eval", 1)))
        ptrs = int(model.max_obj_ptrs_in_encoder) if model.use_obj_ptrs_in_encoder else 0
        # How far back (in the tracking direction) SAM 2 reads non-conditioning outputs.
        self.memory_span = max(stride * int(model.num_maskmem), ptrs, 1)
        self._objects: dict[Hashable, _ObjectState] = {}
        self._features: _Features | None = None
        self._maskmem_pos_enc: list[torch.Tensor] | None = None
        self.last_report = PropagationReport()

    # -- lifecycle --------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._objects.clear()
        self._features = None
        if self._owns_video:
            self.video.close()

    def __enter__(self) -> "VideoTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def object_ids(self) -> list[Hashable]:
        return list(self._objects)

    def remove_object(self, obj_id: Hashable) -> None:
        if obj_id not in self._objects:
            raise InputError(f"object {obj_id!r} is not tracked (tracked: {self.object_ids})")
        del self._objects[obj_id]

    # -- prompts ----------------------------------------------------------------------------------------------
    def add_box(self, obj_id: Hashable, frame_idx: int, box: Sequence[float]) -> ObjectMask:
        """A box x1, y1, x2, y2 in video pixels on `frame_idx` (replaces the object's prompts on that frame)."""
        return self.add_points(obj_id, frame_idx, None, None, box=box)

    def add_points(self, obj_id: Hashable, frame_idx: int, points: Sequence[Sequence[float]] | np.ndarray | None,
                   labels: Sequence[int] | np.ndarray | None, *, box: Sequence[float] | None = None,
                   clear_old: bool = True) -> ObjectMask:
        """Clicks (N, 2) x, y in video pixels with labels (N,) 1 = object, 0 = background, optionally with a box.

        On a frame the object has been tracked through this is a correction: decoded against the object's memory
        and its previous mask there, then kept as a conditioning frame. `clear_old=False` adds the clicks to the
        frame's earlier clicks instead of replacing them (not with a box, which must come first, as in SAM 2).
        """
        frame_idx = self._check_frame(obj_id, frame_idx)
        coords, point_labels = self._check_points(obj_id, frame_idx, points, labels, box)
        if box is not None and not clear_old:
            raise InputError(f"object {obj_id!r}, frame {frame_idx}: a box replaces earlier clicks (clear_old=True)")
        obj = self._objects.get(obj_id) or _ObjectState(obj_id)
        scale = torch.tensor([self.image_size / self.width, self.image_size / self.height], dtype=torch.float32)
        point_inputs = {
            "point_coords": (torch.from_numpy(coords) * scale)[None].to(self.device),
            "point_labels": torch.from_numpy(point_labels)[None].to(self.device),
        }
        if not clear_old and frame_idx in obj.points:
            old = obj.points[frame_idx]
            point_inputs = {key: torch.cat([old[key], point_inputs[key]], dim=1) for key in point_inputs}
        return self._add_prompt(obj, frame_idx, point_inputs=point_inputs, mask_inputs=None)

    def add_mask(self, obj_id: Hashable, frame_idx: int, mask: np.ndarray) -> ObjectMask:
        """A mask (H, W) at video resolution (bool, or nonzero = object) on `frame_idx`, SAM 2's `add_new_mask`:
        the mask itself is the object's output on that frame (holes and all) and its memory."""
        frame_idx = self._check_frame(obj_id, frame_idx)
        mask = np.asarray(mask)
        if mask.shape != (self.height, self.width):
            raise InputError(f"object {obj_id!r}, frame {frame_idx}: mask prompt is {mask.shape[1::-1] if mask.ndim == 2 else mask.shape}"
                             f", the video is {self.width}x{self.height}")
        mask = mask.astype(bool)
        if not mask.any():
            raise InputError(f"object {obj_id!r}, frame {frame_idx}: mask prompt is empty "
                             f"(an object that is not on a frame is an absent prompt, `add_absent`)")
        obj = self._objects.get(obj_id) or _ObjectState(obj_id)
        inputs = torch.from_numpy(mask)[None, None].float().to(self.device)
        if inputs.shape[-2:] != (self.image_size, self.image_size):
            inputs = F.interpolate(inputs, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
            inputs = (inputs >= 0.5).float()
        return self._add_prompt(obj, frame_idx, point_inputs=None, mask_inputs=inputs)

    def add_absent(self, obj_id: Hashable, frame_idx: int) -> ObjectMask:
        """The object is not on `frame_idx` (a user's "not visible here"): SAM 2's `add_new_mask` with an empty
        mask. The frame becomes a conditioning frame where the object score says absent and the memory is SAM 2's
        no-object memory, so the frames around it are tracked knowing the object left, as SAM 2 does."""
        frame_idx = self._check_frame(obj_id, frame_idx)
        obj = self._objects.get(obj_id) or _ObjectState(obj_id)
        empty = torch.zeros(1, 1, self.image_size, self.image_size, device=self.device)
        return self._add_prompt(obj, frame_idx, point_inputs=None, mask_inputs=empty)

    def add_prompt(self, obj_id: Hashable, frame_idx: int, prompt: Mapping[str, Any]) -> ObjectMask:
        """A prompt as a dict: {"type": "box", "box": [x1, y1, x2, y2]}, {"type": "points", "points": [[x, y], ...],
        "labels": [1, 0, ...]} (optionally with "box"), {"type": "mask", "mask": (H, W) array},
        {"type": "polygon", "polygon": [[x, y], ...]} (rasterised to a mask prompt) or {"type": "absent"}."""
        kind = prompt.get("type") if isinstance(prompt, Mapping) else None
        if kind == "absent":
            return self.add_absent(obj_id, frame_idx)
        if kind == "box":
            return self.add_box(obj_id, frame_idx, _field(prompt, "box", obj_id, frame_idx))
        if kind == "points":
            return self.add_points(obj_id, frame_idx, _field(prompt, "points", obj_id, frame_idx),
                                   _field(prompt, "labels", obj_id, frame_idx), box=prompt.get("box"),
                                   clear_old=bool(prompt.get("clear_old", True)))
        if kind == "mask":
            return self.add_mask(obj_id, frame_idx, _field(prompt, "mask", obj_id, frame_idx))
        if kind == "polygon":
            polygon = _field(prompt, "polygon", obj_id, frame_idx)
            try:
                mask = polygon_mask(polygon, self.height, self.width)
            except (TypeError, ValueError) as error:
                raise InputError(f"object {obj_id!r}, frame {frame_idx}: polygon prompt is not a list of x, y points ({error})") from None
            return self.add_mask(obj_id, frame_idx, mask)
        raise InputError(f"object {obj_id!r}, frame {frame_idx}: unknown prompt type {kind!r} "
                         f"(expected one of {', '.join(PROMPT_TYPES)})")

    def correct(self, obj_id: Hashable, frame_idx: int, points: Sequence[Sequence[float]] | np.ndarray | None = None,
                labels: Sequence[int] | np.ndarray | None = None, *, mask: np.ndarray | None = None) -> ObjectMask:
        """Corrects an object already tracked on `frame_idx`: clicks (added to any earlier clicks on that frame,
        decoded with the object's memory and its previous mask there, as in SAM 2's interactive refinement) or a
        new mask. The frame becomes a conditioning frame; `propagate(start_frame=frame_idx)` tracks again from it."""
        if obj_id not in self._objects:
            raise InputError(f"object {obj_id!r} is not tracked: add a prompt before correcting it")
        if (mask is None) == (points is None):
            raise InputError(f"object {obj_id!r}, frame {frame_idx}: a correction is either clicks or a mask")
        if mask is not None:
            return self.add_mask(obj_id, frame_idx, mask)
        return self.add_points(obj_id, frame_idx, points, labels, clear_old=False)

    def _add_prompt(self, obj: _ObjectState, frame_idx: int, point_inputs: dict | None,
                    mask_inputs: torch.Tensor | None) -> ObjectMask:
        features = self._features_at(frame_idx, f"object {obj.obj_id!r}: prompt frame {frame_idx}")
        reverse = obj.tracked_reverse(frame_idx)
        is_init = reverse is None  # never tracked through this frame: start afresh, as SAM does
        reverse = bool(reverse)
        with torch.inference_mode(), inference_context(self.device):
            prev_logits = None
            if point_inputs is not None:
                prev = obj.output_at(frame_idx)
                if prev is None and not is_init:  # tracked here, but the output has left the window: recompute it
                    prev = self._track(obj, features, frame_idx, reverse, run_mem_encoder=False)
                if prev is not None:
                    prev_logits = prev["pred_masks"].to(self.device).clamp(-32.0, 32.0)
            out = self.model.track_step(
                frame_idx=frame_idx, is_init_cond_frame=is_init, current_vision_feats=features.vision_feats,
                current_vision_pos_embeds=features.vision_pos, feat_sizes=features.sizes, point_inputs=point_inputs,
                mask_inputs=mask_inputs, output_dict=obj.output_dict, num_frames=self.num_frames,
                track_in_reverse=reverse, run_mem_encoder=False, prev_sam_mask_logits=prev_logits,
            )
            pred_masks = self._fill_holes(out["pred_masks"])
            # The memory of a prompted frame, as SAM2VideoPredictor encodes it before propagating: from the
            # low-res logits upsampled, binarised (binarize_mask_from_pts_for_mem_enc, on for every user input).
            high_res = F.interpolate(pred_masks, size=(self.image_size, self.image_size), mode="bilinear",
                                     align_corners=False)
            high_res = torch.where(high_res > 0, 1e4, -1e4)  # sigmoid of these is exactly 1 / 0
            maskmem, pos = self.model._encode_new_memory(
                current_vision_feats=features.vision_feats, feat_sizes=features.sizes, pred_masks_high_res=high_res,
                object_score_logits=out["object_score_logits"], is_mask_from_pts=True)
            compact = self._compact(out, pred_masks, maskmem, pos)
        obj.cond[frame_idx] = compact
        obj.recent.pop(frame_idx, None)
        if point_inputs is not None:
            obj.points[frame_idx] = point_inputs
        else:
            obj.points.pop(frame_idx, None)
        self._objects.setdefault(obj.obj_id, obj)
        return self._object_mask(obj.obj_id, frame_idx, compact, prompted=True)

    # -- propagation ------------------------------------------------------------------------------------------
    def propagate(self, start_frame: int | None = None, direction: str = "forward", max_frames: int | None = None,
                  should_cancel: Callable[[], bool] | None = None,
                  objects: Collection[Hashable] | None = None) -> Iterator[FrameResult]:
        """Tracks every object (or those in `objects`) frame by frame from `start_frame`, yielding one `FrameResult`
        per frame with those objects. Objects left out are not tracked and their memory is left as it was.

        start_frame: default: the earliest prompted frame of those objects (the latest for "backward").
        direction: "forward", "backward", or "both" (forward, then backward from the frame before the start).
        max_frames: at most this many frames per direction, the start frame included.
        should_cancel: checked before each frame; when it returns True the generator stops (`last_report`).
        An undecodable frame is yielded as a skipped `FrameResult` (with `error`), and tracking goes on.
        Validation (no objects, bad start frame, direction, budget) happens at the call, not at the first frame.
        """
        if not self._objects:
            raise InputError("no object to track: add a prompt first")
        if objects is None:
            chosen = list(self._objects.values())
        else:
            unknown = [obj_id for obj_id in objects if obj_id not in self._objects]
            if unknown:
                raise InputError(f"no object {unknown[0]!r} to track (the tracker has {list(self._objects)})")
            if not objects:
                raise InputError("no object to track: `objects` is empty")
            chosen = [self._objects[obj_id] for obj_id in dict.fromkeys(objects)]
        if direction not in DIRECTIONS:
            raise InputError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                       or max_frames < 1):
            raise InputError(f"max_frames must be a positive integer, got {max_frames!r}")
        if start_frame is None:
            prompted = [t for obj in chosen for t in obj.cond]
            start_frame = max(prompted) if direction == "backward" else min(prompted)
        start_frame = self.video.check_index(start_frame, "start frame")
        self.last_report = report = PropagationReport()
        passes = []
        if direction in ("forward", "both"):
            passes.append((start_frame, 1, max_frames))
        if direction == "backward":
            passes.append((start_frame, -1, max_frames))
        if direction == "both" and start_frame > 0 and (max_frames is None or max_frames > 1):
            passes.append((start_frame - 1, -1, None if max_frames is None else max_frames - 1))
        return self._propagate(passes, start_frame, should_cancel, report, chosen)

    def _propagate(self, passes, start_frame: int, should_cancel, report: PropagationReport,
                   chosen: list[_ObjectState]) -> Iterator[FrameResult]:
        for first, step, budget in passes:
            reverse = step < 0
            new_pass = True
            with self.video.frames(first, step, budget, prepare=self._prepare, read_ahead=self.read_ahead) as reader:
                for frame in reader:
                    if should_cancel is not None and should_cancel():
                        report.cancelled = True
                        log.info("tracking cancelled before frame %d", frame.index)
                        return
                    result = self._track_frame(frame, reverse, start_frame, new_pass, chosen)
                    new_pass = new_pass and result.skipped  # a skipped frame is not tracked: the pass begins later
                    if result.skipped:
                        report.skipped.append((frame.index, result.error))
                        log.warning("%s", result.error)
                    else:
                        report.frames_tracked += 1
                    if report.first_frame is None:
                        report.first_frame = frame.index
                    report.last_frame = frame.index
                    yield result

    def _track_frame(self, frame: Frame, reverse: bool, pass_start: int, new_pass: bool,
                     chosen: list[_ObjectState]) -> FrameResult:
        t = frame.index
        if not frame.ok:
            return FrameResult(t, MappingProxyType({}), error=frame.error)
        outputs: dict[Hashable, dict] = {}
        groups: dict[tuple, list[_ObjectState]] = {}
        for obj in chosen:
            out = obj.cond.get(t)
            if out is not None:
                outputs[obj.obj_id] = out
            else:
                groups.setdefault(self._memory_layout(obj, t, reverse), []).append(obj)
        if groups:
            with torch.inference_mode(), inference_context(self.device):
                pixels = frame.prepared if frame.prepared is not None else self._prepare(frame.image)
                features = self._encode(t, pixels)
                for group in groups.values():
                    for start in range(0, len(group), self.max_batch):
                        batch = group[start:start + self.max_batch]
                        for obj, out in zip(batch, self._track_batch(batch, features, t, reverse)):
                            obj.recent[t] = out
                            self._evict(obj, t, pass_start)
                            outputs[obj.obj_id] = out
        results: dict[Hashable, ObjectMask] = {}
        for obj in chosen:
            obj.mark_tracked(t, reverse, new_pass)
            out = outputs[obj.obj_id]
            results[obj.obj_id] = self._object_mask(obj.obj_id, t, out, prompted=t in obj.cond)
        return FrameResult(t, MappingProxyType(results))

    def _memory_layout(self, obj: _ObjectState, t: int, reverse: bool) -> tuple:
        """Which stored outputs SAM 2's memory attention would read for this object on frame t: objects with the
        same layout get memories of the same shape and are tracked in one batch."""
        step = 1 if reverse else -1
        near = tuple(k for k in range(t + step, t + step * (self.memory_span + 1), step) if k in obj.recent)
        return tuple(sorted(obj.cond)), near

    def _track(self, obj: _ObjectState, features: _Features, t: int, reverse: bool, run_mem_encoder: bool) -> dict:
        return self._track_batch([obj], features, t, reverse, run_mem_encoder)[0]

    def _track_batch(self, objs: list[_ObjectState], features: _Features, t: int, reverse: bool,
                     run_mem_encoder: bool = True) -> list[dict]:
        """One `track_step` for objects with the same memory layout: their stored outputs are stacked along the
        batch dimension (as SAM2VideoPredictor did before it went per object) and the results split again."""
        n = len(objs)
        if n == 1:
            output_dict = objs[0].output_dict
            feats, pos = features.vision_feats, features.vision_pos
        else:
            output_dict = {
                "cond_frame_outputs": {k: _stack([o.cond[k] for o in objs]) for k in objs[0].cond},
                "non_cond_frame_outputs": {k: _stack([o.recent[k] for o in objs]) for k in objs[0].recent
                                           if all(k in o.recent for o in objs)},
            }
            feats = [x.expand(-1, n, -1) for x in features.vision_feats]
            pos = [None if x is None else x.expand(-1, n, -1) for x in features.vision_pos]
        out = self.model.track_step(
            frame_idx=t, is_init_cond_frame=False, current_vision_feats=feats, current_vision_pos_embeds=pos,
            feat_sizes=features.sizes, point_inputs=None, mask_inputs=None, output_dict=output_dict,
            num_frames=self.num_frames, track_in_reverse=reverse, run_mem_encoder=run_mem_encoder,
        )
        pred_masks = self._fill_holes(out["pred_masks"])
        maskmem = out["maskmem_features"]
        if n == 1:
            return [self._compact(out, pred_masks, maskmem, out["maskmem_pos_enc"])]
        return [
            self._compact({"obj_ptr": out["obj_ptr"][i:i + 1].clone(),
                           "object_score_logits": out["object_score_logits"][i:i + 1].clone()},
                          pred_masks[i:i + 1].clone(), None if maskmem is None else maskmem[i:i + 1].clone(),
                          out["maskmem_pos_enc"])
            for i in range(n)
        ]

    def _evict(self, obj: _ObjectState, t: int, pass_start: int) -> None:
        """Keeps the non-conditioning outputs SAM 2 can still read: those within `memory_span` frames of the
        frame being tracked (this pass), and of the pass's start frame (a later pass the other way from the same
        start reads them, as SAM2VideoPredictor's backward pass after a forward one does)."""
        span = self.memory_span
        for k in [k for k in obj.recent if abs(k - t) >= span and abs(k - pass_start) >= span]:
            del obj.recent[k]

    # -- model plumbing ---------------------------------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (3, S, S) normalised float32, as SAM 2's frame loader does (PIL resize)."""
        size = self.image_size
        resized = np.array(Image.fromarray(image).resize((size, size)))  # writable, for torch.from_numpy
        pixels = torch.from_numpy(resized).permute(2, 0, 1).contiguous().float().div_(255.0)
        return pixels.sub_(_MEAN).div_(_STD)

    def _encode(self, frame_idx: int, pixels: torch.Tensor) -> _Features:
        if self._features is not None and self._features.frame_idx == frame_idx:
            return self._features
        self._features = None  # free the previous frame's features before computing these
        backbone = self.model.forward_image(pixels[None].to(self.device, non_blocking=True))
        _, feats, pos, sizes = self.model._prepare_backbone_features(backbone)
        del backbone
        # track_step reads only the lowest-resolution position encoding (memory attention): drop the others
        # (256 channels at stride 4 and 8: 80 MiB a frame at 1024 px)
        pos = [None] * (len(pos) - 1) + pos[-1:]
        self._features = _Features(frame_idx, feats, pos, sizes)
        return self._features

    def _features_at(self, frame_idx: int, what: str) -> _Features:
        if self._features is not None and self._features.frame_idx == frame_idx:
            return self._features
        frame = self.video.read(frame_idx)
        if not frame.ok:
            raise InputError(f"{what} cannot be used: {frame.error}")
        with torch.inference_mode(), inference_context(self.device):
            return self._encode(frame_idx, self._prepare(frame.image))

    def _fill_holes(self, pred_masks: torch.Tensor) -> torch.Tensor:
        if self.fill_hole_area > 0 and pred_masks.is_cuda:
            return fill_holes_in_mask_scores(pred_masks, self.fill_hole_area)
        return pred_masks  # sam2's hole filling needs its CUDA extension; SAM2VideoPredictor skips it too

    def _compact(self, out: dict, pred_masks: torch.Tensor, maskmem, maskmem_pos) -> dict:
        """What SAM 2 reads of a frame's output later, as SAM2VideoPredictor stores it: memory features in
        bf16, one shared copy of the memory position encoding (the same for every frame).

        Without bf16 autocast (`uses_bf16`: the CPU, a GPU older than Ampere) the bf16-rounded memory is kept as
        float32: the same numbers SAM 2 attends to (it promotes them when object pointers join the memory),
        without the bf16 / float32 mismatch that makes SAM2VideoPredictor fail there when the memory holds no
        object pointer (tracking an object on a frame before its prompt frame)."""
        if maskmem_pos is not None and self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [x[0:1].clone() for x in maskmem_pos]
        if maskmem is not None:
            maskmem = maskmem.to(torch.bfloat16)
            if not self._bf16:
                maskmem = maskmem.float()
        return {
            "maskmem_features": maskmem,
            "maskmem_pos_enc": None if maskmem is None else self._maskmem_pos_enc,
            "pred_masks": pred_masks,
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def _object_mask(self, obj_id: Hashable, frame_idx: int, out: dict, prompted: bool) -> ObjectMask:
        score = float(out["object_score_logits"].float().flatten()[0])
        hw = (self.height, self.width)
        upsampled = upsample_logits(out["pred_masks"][0, 0].float(), hw, self.mask_threshold) if score > 0 else None
        if upsampled is None:
            return ObjectMask(obj_id, frame_idx, False, score, None, None, hw, prompted)
        return ObjectMask(obj_id, frame_idx, True, score, *upsampled, hw, prompted)

    # -- validation -------------------------------------------------------------------------------------------
    def _check_frame(self, obj_id: Hashable, frame_idx: int) -> int:
        try:
            return self.video.check_index(frame_idx, "prompt frame")
        except InputError as error:
            raise InputError(f"object {obj_id!r}: {error}") from None

    def _check_points(self, obj_id, frame_idx, points, labels, box) -> tuple[np.ndarray, np.ndarray]:
        where = f"object {obj_id!r}, frame {frame_idx}"
        coords = np.zeros((0, 2), np.float32)
        point_labels = np.zeros((0,), np.int32)
        if points is not None or labels is not None:
            try:
                coords = np.asarray(points, dtype=np.float32).reshape(-1, 2)
                point_labels = np.asarray(labels, dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise InputError(f"{where}: points must be (N, 2) x, y numbers with (N,) labels") from None
            if len(coords) != len(point_labels):
                raise InputError(f"{where}: {len(coords)} points but {len(point_labels)} labels")
            if not np.isfinite(coords).all():
                raise InputError(f"{where}: points are not finite numbers")
            if not np.isin(point_labels, (0, 1)).all():
                raise InputError(f"{where}: point labels must be 1 (object) or 0 (background), got {point_labels.tolist()}")
            outside = (coords[:, 0] < 0) | (coords[:, 0] > self.width) | (coords[:, 1] < 0) | (coords[:, 1] > self.height)
            if outside.any():
                raise InputError(f"{where}: point {coords[outside][0].tolist()} lies outside the "
                                 f"{self.width}x{self.height} frame")
            point_labels = point_labels.astype(np.int32)
        if box is not None:
            try:
                b = np.asarray(box, dtype=np.float32).reshape(4)
            except (TypeError, ValueError):
                raise InputError(f"{where}: box must be four numbers x1, y1, x2, y2, got {box!r}") from None
            if not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
                raise InputError(f"{where}: box {b.tolist()} is not x1, y1, x2, y2 with x1 < x2 and y1 < y2")
            clipped = np.array([max(b[0], 0), max(b[1], 0), min(b[2], self.width), min(b[3], self.height)], np.float32)
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise InputError(f"{where}: box {b.tolist()} lies outside the {self.width}x{self.height} frame")
            coords = np.concatenate([clipped.reshape(2, 2), coords])
            point_labels = np.concatenate([np.array(_BOX_LABELS, np.int32), point_labels])
        if len(coords) == 0:
            raise InputError(f"{where}: a points prompt needs at least one point or a box")
        return coords, point_labels


def _stack(outs: list[dict]) -> dict:
    """Stored outputs of several objects on one frame as one batch: what memory attention reads of them."""
    pos = outs[0]["maskmem_pos_enc"]
    return {
        "maskmem_features": torch.cat([o["maskmem_features"] for o in outs]),
        "maskmem_pos_enc": None if pos is None else [x.expand(len(outs), -1, -1, -1) for x in pos],
        "obj_ptr": torch.cat([o["obj_ptr"] for o in outs]),
    }


def _field(prompt: Mapping, key: str, obj_id, frame_idx):
    if prompt.get(key) is None:
        raise InputError(f"object {obj_id!r}, frame {frame_idx}: {prompt.get('type')} prompt has no {key!r}")
    return prompt[key]


def polygon_mask(polygon: Sequence[Sequence[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a polygon given as (N, 2) x, y vertices in pixels (N >= 3)."""
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(points) < 3 or not np.isfinite(points).all():
        raise ValueError(f"a polygon needs at least 3 finite vertices, got {len(points)}")
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)
