"""Automatic mask proposals for images without prompts: a grid of single clicks, filtered and de-duplicated.

The recipe of SAM 2's `SAM2AutomaticMaskGenerator` (one positive click per grid point, multimask output, each of a
click's three masks a candidate, keep masks whose predicted IoU and stability score are high, remove duplicates),
written on our `ImageSegmenter` so that it works at any model input size (the micro model's 256 px included), on
features from the shared cache, and with masks that stay cropped to where they can be non-zero.

Differences from SAM 2's generator, on purpose:

* the filters read the decoder's low-res logits, so only masks that pass them are upsampled;
* the stability score is computed on the decoder's low-resolution logits (s x s, s = input size / 4), not on the
  logits upsampled to the image: the same ratio up to interpolation, at a fraction of the cost;
* duplicates are removed by mask IoU (greedy, highest predicted IoU first), not box IoU: two different objects
  can share nearly the same box (a bar across a ring), two copies of one object cannot differ much in pixels;
* no crop layers (`crop_n_layers=0`, SAM 2's default) and no hole/island clean-up (the polygon conversion does
  that later, see `geometry.DEFAULT_MIN_AREA`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from sam2_adapter.embeddings import ImageFeatures
from sam2_adapter.errors import InputError
from sam2_adapter.segment import ImageSegmenter, MaskResult

__all__ = ["Proposal", "ProposalSettings", "grid_points", "propose_masks", "stability_score"]


@dataclass(frozen=True)
class ProposalSettings:
    """How automatic proposals are made. Every field is a plain number so that it can sit in a model's
    configuration (see `from_mapping`).

    The defaults are SAM 2's own (`SAM2AutomaticMaskGenerator`: 32 points a side, 64 a batch, predicted IoU > 0.8,
    stability >= 0.95 at offset 1.0, NMS at 0.7) except where a batch job over a whole dataset for human review
    needs otherwise: a minimum area and a cap on proposals per image.
    """

    points_per_side: int = 32
    """Grid of points_per_side x points_per_side clicks at the centres of equal cells. 32 (1024 clicks, SAM 2's
    default) puts a click on every object wider than about 1/32 of the image side; fewer is faster and misses
    small objects (the decoder cost is linear in the number of clicks)."""
    points_per_batch: int = 64
    """Clicks decoded per batch (bounds memory; SAM 2's default); the segmenter sizes the decoder calls within."""
    pred_iou_thresh: float = 0.8
    """Keep masks whose predicted IoU (the decoder's own quality estimate) is above this."""
    stability_score_thresh: float = 0.95
    """Keep masks whose stability score is at least this: the IoU of the mask thresholded at logit +offset and at
    -offset. A mask that changes when the cut-off moves has no clear edge, usually background or a blend."""
    stability_offset: float = 1.0
    """The logit shift of the stability score (SAM 2's `stability_score_offset`)."""
    min_mask_area: int = 64
    """Drop masks with fewer image pixels. 64 (an 8 x 8 block) is below what a reviewer bothers to accept and
    above the specks a click on texture or noise gives; SAM 2's default is 0 (keep all). Set 0 to keep all."""
    nms_iou_thresh: float = 0.7
    """A mask whose IoU with a better-scored kept mask exceeds this is a duplicate (neighbouring grid clicks on
    one object give nearly the same mask). SAM 2 uses 0.7 on boxes; we apply it to masks."""
    max_proposals: int = 100
    """At most this many proposals per image, best predicted IoU first (0 = no cap). A reviewer cannot use
    hundreds per image, and the cap bounds output size on cluttered images. SAM 2 has no cap."""

    def __post_init__(self):
        for name in _RANGES:
            object.__setattr__(self, name, _checked(name, getattr(self, name), f"proposal setting {name}"))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, prefix: str = "") -> "ProposalSettings":
        """Settings from a configuration mapping: the keys `prefix + field name` that are present (e.g. with
        prefix "proposal_": proposal_points_per_side); others keep their defaults. Values may be strings of
        numbers (command line); a bad value raises InputError naming the key."""
        kwargs = {}
        for field in dataclasses.fields(cls):
            key = prefix + field.name
            if values is None or key not in values or values[key] is None:
                continue
            raw = values[key]
            try:
                number = float(raw) if not isinstance(raw, bool) else None  # None: refused by _checked
            except (TypeError, ValueError):
                raise InputError(f"configuration key {key!r}: expected a number, got {raw!r}") from None
            kwargs[field.name] = _checked(field.name, number, f"configuration key {key!r}", raw)
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ProposalSettings' ranges: (least, most, whole number)
_RANGES = {
    "points_per_side": (1, 256, True),
    "points_per_batch": (1, 4096, True),
    "pred_iou_thresh": (0.0, 1.0, False),
    "stability_score_thresh": (0.0, 1.0, False),
    "stability_offset": (0.0, 32.0, False),
    "min_mask_area": (0, math.inf, True),
    "nms_iou_thresh": (0.0, 1.0, False),
    "max_proposals": (0, math.inf, True),
}


def _checked(name: str, value, what: str, given=None) -> int | float:
    """`value` of the proposal setting `name` as a plain int or float, or InputError naming `what` (and the value
    as `given`)."""
    lo, hi, integer = _RANGES[name]
    given = value if given is None else given
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or \
            (integer and math.isfinite(value) and value != int(value)):
        raise InputError(f"{what}: expected {'an integer' if integer else 'a number'}, got {given!r}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InputError(f"{what}: expected a value in [{lo:g}, {hi:g}], got {given!r}")
    return int(value) if integer else float(value)  # numpy scalars -> plain


@dataclass(frozen=True)
class Proposal(MaskResult):
    """A proposed mask: a `MaskResult` (score = predicted IoU) with the stability score and the grid click that
    produced it (x, y in image pixels)."""

    stability: float = 0.0
    point: tuple[float, float] = (0.0, 0.0)


def grid_points(points_per_side: int, height: int, width: int) -> np.ndarray:
    """(n*n, 2) float32 clicks x, y in image pixels at the centres of an n x n grid of equal cells, row by row
    (SAM 2's `build_point_grid` scaled to the image)."""
    n = int(points_per_side)
    centres = (np.arange(n, dtype=np.float64) + 0.5) / n
    xs, ys = np.meshgrid(centres * width, centres * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def stability_score(logits: np.ndarray, threshold: float, offset: float) -> float:
    """IoU of the mask thresholded at `threshold + offset` with the one at `threshold - offset` (the first lies
    inside the second, so it is a ratio of counts); 0 for a mask that is empty even at the low cut-off."""
    loose = int(np.count_nonzero(logits > threshold - offset))
    if loose == 0:
        return 0.0
    return int(np.count_nonzero(logits > threshold + offset)) / loose


def propose_masks(segmenter: ImageSegmenter, features: ImageFeatures,
                  settings: ProposalSettings = ProposalSettings()) -> list[Proposal]:
    """Object masks found in the image of `features` without any prompt, best predicted IoU first.

    Every grid click is decoded (batches of `points_per_batch`) into SAM 2's three masks (whole, part, subpart),
    each a candidate, as in SAM 2's automatic mask generator; masks are kept when predicted IoU >
    `pred_iou_thresh` and stability >= `stability_score_thresh` (both read off the low-res logits, so a rejected
    mask is never upsampled) and area >= `min_mask_area` (and non-empty);
    then duplicates are removed by mask NMS and at most `max_proposals` kept.
    Deterministic for a given image, model and settings.
    """
    height, width = features.orig_hw
    points = grid_points(settings.points_per_side, height, width)
    candidates: list[Proposal] = []

    def stability(low_res: np.ndarray) -> float:
        return stability_score(low_res, segmenter.mask_threshold, settings.stability_offset)

    def passes(low_res: np.ndarray, predicted_iou: float) -> bool:  # asked before a mask is upsampled
        return predicted_iou > settings.pred_iou_thresh and stability(low_res) >= settings.stability_score_thresh

    for start in range(0, len(points), settings.points_per_batch):
        batch = points[start:start + settings.points_per_batch]
        results = segmenter.segment_clicks(features, batch, keep=passes, every_mask=True)
        for k, result in enumerate(results):
            if result is None or result.area == 0 or result.area < settings.min_mask_area:
                continue
            point = batch[k // 3]  # three masks a click
            candidates.append(Proposal(**_fields(result), stability=stability(result.low_res_logits),
                                       point=(float(point[0]), float(point[1]))))
    kept = mask_nms(candidates, settings.nms_iou_thresh)
    return kept[:settings.max_proposals] if settings.max_proposals else kept


def _fields(result: MaskResult) -> dict:
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(MaskResult)}


# --------------------------------------------------------------------------------------------- NMS


def _tight_box(result: MaskResult) -> tuple[int, int, int, int] | None:
    """x0, y0, x1, y1 (half-open, image pixels) of the mask's pixels."""
    rows = np.flatnonzero(result.crop.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(result.crop.any(axis=0))
    x0, y0 = result.origin
    return x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1


def _intersection(a: MaskResult, b: MaskResult) -> int:
    """Pixels in both masks, computed on the overlap of their crops only."""
    ax, ay = a.origin
    bx, by = b.origin
    x0, y0 = max(ax, bx), max(ay, by)
    x1 = min(ax + a.crop.shape[1], bx + b.crop.shape[1])
    y1 = min(ay + a.crop.shape[0], by + b.crop.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    return int(np.count_nonzero(a.crop[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & b.crop[y0 - by:y1 - by, x0 - bx:x1 - bx]))


def mask_nms(results: list[MaskResult], iou_thresh: float) -> list[MaskResult]:
    """Greedy non-maximum suppression by mask IoU: highest score first (ties: input order), a mask is dropped
    when its IoU with an already kept mask is above `iou_thresh`. Returns the kept masks, best first."""
    order = sorted(range(len(results)), key=lambda i: -results[i].score)
    kept: list[tuple[MaskResult, tuple[int, int, int, int], int]] = []
    for i in order:
        result = results[i]
        box = _tight_box(result)
        if box is None:
            continue
        area = result.area
        duplicate = False
        for other, other_box, other_area in kept:
            if box[0] >= other_box[2] or other_box[0] >= box[2] or box[1] >= other_box[3] or other_box[1] >= box[3]:
                continue
            # IoU > t needs the smaller mask to be more than t of the larger: skip the pixel count otherwise.
            if min(area, other_area) <= iou_thresh * max(area, other_area):
                continue
            inter = _intersection(result, other)
            if inter > iou_thresh * (area + other_area - inter):
                duplicate = True
                break
        if not duplicate:
            kept.append((result, box, area))
    return [result for result, _, _ in kept]
