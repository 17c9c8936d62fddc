"""Mask geometry: masks <-> polygons, COCO RLE, the studio's PNG segmentation string, and box helpers.

numpy + OpenCV + pycocotools only; never dtlpy (the core must import without it).

Conventions (every function here follows them):

* A mask is a ``bool`` array of shape ``(H, W)``, indexed ``mask[row, col]``.
* Polygons are rings: ``float64`` arrays of shape ``(N, 2)`` holding ``x, y`` (column, row), not closed
  (the last vertex is not a copy of the first). They use the **pixel-centre** convention: vertex ``(x, y)``
  is the centre of pixel ``mask[y, x]``, so a ring traced by ``cv2.findContours`` runs through the centres of
  the mask's boundary pixels, and rasterising (``cv2.fillPoly``: a pixel is in when the ring covers its
  centre, boundary included) gives back exactly those pixels. This is also dtlpy's convention:
  ``dl.Polygon.from_segmentation`` returns findContours coordinates and dtlpy rasterises polygons with
  ``cv2.drawContours`` on ``int`` coordinates. Our vertices are integers (Douglas-Peucker keeps a subset of
  the traced pixel centres, and hole cuts end on traced pixels), so dtlpy's ``round``/``astype(int)``
  conversions cannot move them.
  A polygon vertex ``(x, y)`` is the point ``(x + 0.5, y + 0.5)`` of the continuous frame used for boxes
  below. A renderer that fills by area in that frame (COCO polygons, an HTML canvas) needs the +0.5 shift,
  and even then covers about half a pixel less than the mask all round, as the ring runs through the
  centres of the outermost pixels.
* Boxes are ``x1, y1, x2, y2`` floats in continuous image coordinates where pixel ``(row, col)`` covers
  ``[col, col+1) x [row, row+1)`` and the whole image is ``(0, 0, W, H)``: ``mask_to_box`` gives
  ``x2 = last column + 1``, so ``mask[y1:y2, x1:x2]`` is the tight crop and a 1-pixel object has a 1x1 box.
  This is the frame SAM2's prompt encoder expects (it scales ``[0, W]`` to ``[0, 1024]``) and the one
  ``sam2_adapter.scenes`` uses. Points ``x, y`` live in the same continuous frame.
* Rotated boxes (dtlpy ``Box.angle``): the axis-aligned rectangle ``x1, y1, x2, y2`` rotated about its centre
  by ``angle`` degrees, positive = clockwise on screen (y points down), i.e. a corner ``p`` maps to
  ``c + R(angle) (p - c)`` with ``R = [[cos, -sin], [sin, cos]]``, as in dtlpy ``Cube.rotate``.
"""

from __future__ import annotations

import base64
import math
import warnings
from typing import Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from sam2_adapter.errors import InputError

__all__ = [
    "DEFAULT_MIN_AREA",
    "DEFAULT_MIN_IOU",
    "PNG_DATA_URL_PREFIX",
    "enclosing_box",
    "mask_iou",
    "mask_to_box",
    "mask_to_png_data_url",
    "mask_to_polygons",
    "mask_to_rle",
    "png_data_url_to_mask",
    "polygons_to_mask",
    "rle_to_mask",
    "rotated_box_mask",
    "validate_box",
]

DEFAULT_MIN_AREA = 8.0
"""Default speck size, in pixels: parts (and holes) with fewer pixels are dropped (filled).

Why 8: a part smaller than a 3x3 block is not an object anyone can see or select in the studio, a polygon
around it is mostly vertices, and such specks and pin-holes are thresholding/upsampling noise along the
edges of SAM2 masks (its low-res logits are upsampled 4x or more before thresholding). SAM2 itself treats holes
and sprinkles with one area threshold (``SAM2AutomaticMaskGenerator`` passes ``min_mask_region_area`` to
both) and its video predictor fills holes up to 8 low-res pixels by default (``fill_hole_area=8``).
"""

DEFAULT_MIN_IOU = 0.98
"""Default fidelity floor of ``mask_to_polygons``: each part's ring rasterises back to IoU >= 0.98 with it."""

PNG_DATA_URL_PREFIX = "data:image/png;base64,"
"""Prefix of a segmentation annotation's coordinates. dtlpy decodes by cutting exactly these 22 characters."""

# Fixed-point bits for cv2.fillPoly: 1/16-pixel precision for float vertices, exact for integer ones.
_FILL_SHIFT = 4
_MAX_COORD = float(2 ** (31 - _FILL_SHIFT - 1))  # keeps fixed-point coordinates inside int32


# --------------------------------------------------------------------------------------------- helpers


def _as_mask(mask, name: str = "mask") -> np.ndarray:
    """A C-contiguous bool (H, W) view/copy of ``mask``. A trailing axis of 1 is dropped.

    bool as is; integers: nonzero is inside; floats only when every value is 0 or 1 (dtlpy's
    ``Segmentation.geo`` is such a float array). Other floats are refused rather than guessed at: SAM2
    logits and probabilities need an explicit threshold (``logits > 0``).
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D (H, W) mask, got an array of shape {arr.shape}")
    if arr.dtype != bool:
        if np.issubdtype(arr.dtype, np.floating):
            if not ((arr == 0) | (arr == 1)).all():
                raise InputError(
                    f"{name}: float mask with values other than 0 and 1; threshold it first (e.g. logits > 0)"
                )
        elif not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{name}: expected a boolean or integer mask, got dtype {arr.dtype}")
        arr = arr != 0
    return np.ascontiguousarray(arr)


def _check_number(value, name: str, minimum: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v) or v < minimum:
        raise InputError(f"{name}: expected a finite number >= {minimum:g}, got {value!r}")
    return v


def _check_size(height, width, name: str = "image size") -> tuple[int, int]:
    try:
        h, w = int(height), int(width)
    except (TypeError, ValueError):
        raise InputError(f"{name}: height and width must be integers, got {height!r} x {width!r}") from None
    if h <= 0 or w <= 0 or h != height or w != width:
        raise InputError(f"{name}: height and width must be positive integers, got {height!r} x {width!r}")
    return h, w


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (row0, row1, col0, col1) half-open bounds of the True pixels, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# --------------------------------------------------------------------------------------------- polygons


def mask_to_polygons(
    mask: np.ndarray,
    tolerance: float = 1.0,
    min_area: float = DEFAULT_MIN_AREA,
    *,
    min_hole_area: float | None = None,
    min_iou: float = DEFAULT_MIN_IOU,
) -> list[np.ndarray]:
    """One polygon ring per separate part of ``mask``, holes kept inside that same ring; largest part first.

    Args:
        mask: (H, W) bool (nonzero = inside). Parts are 8-connected (OpenCV's rule), holes 4-connected.
        tolerance: Douglas-Peucker tolerance in pixels (``cv2.approxPolyDP``): no traced boundary pixel
            centre is further than this from the simplified ring. 0 keeps every corner (exact round trip).
            It is an upper bound, see ``min_iou``.
        min_area: parts with fewer pixels than this are dropped (see ``DEFAULT_MIN_AREA`` for why 8).
        min_hole_area: holes with fewer pixels than this are filled; ``None`` (default) means ``min_area``,
            the same rule as for specks. Pass 0 to keep every hole, pin-holes included.
        min_iou: fidelity floor per part. Douglas-Peucker cuts inside every convex stretch of boundary, which
            at 1 px costs a 40 px object about 5% of its pixels; so a part whose simplified ring rasterises to
            IoU < ``min_iou`` with the part is simplified again with half the tolerance (then a quarter, then
            exactly). Large parts keep the full tolerance. 0 gives plain Douglas-Peucker.

    Returns:
        A list of float64 (N, 2) ``x, y`` rings in the pixel-centre convention (see module doc), one per part,
        sorted by the part's pixel count, largest first. ``[]`` for an empty mask. An outer boundary runs
        counter-clockwise on screen; each hole is traversed clockwise and joined to the ring by a zero-width
        cut ("keyhole": the ring walks along a row or column of the part's own pixels to the hole, around
        it, and back along the same cut), so filling the single ring with the even-odd or the non-zero rule
        leaves the hole empty and the cut adds no pixels. This is how a holed region fits in a
        ``dl.Polygon``, which holds a single ring and no hole list; the studio draws the cut as a hairline.
        Parts narrower than a pixel trace to degenerate rings (a line walked there and back); they are kept
        and rasterise back to their pixels.
    """
    m = _as_mask(mask)
    tol = _check_number(tolerance, "tolerance")
    min_part = _check_number(min_area, "min_area")
    min_hole = min_part if min_hole_area is None else _check_number(min_hole_area, "min_hole_area")
    floor = _check_number(min_iou, "min_iou")
    if floor > 1:
        raise InputError(f"min_iou: expected a number in [0, 1], got {min_iou!r}")

    bounds = _bounds(m)
    if bounds is None:
        return []
    r0, r1, c0, c1 = bounds
    # Work on the tight crop plus a 1-pixel background border (contours at the image edge close properly,
    # and a small object in a 4K frame costs little); `offset` maps points back to image coordinates.
    crop = cv2.copyMakeBorder(m[r0:r1, c0:c1].view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    ox, oy = c0 - 1, r0 - 1
    # RETR_CCOMP: two levels, outer boundaries and their holes (an island inside a hole is its own part).
    # CHAIN_APPROX_SIMPLE only drops points inside straight runs, which DP would drop anyway.
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(ox, oy))
    if hierarchy is None:
        return []
    hier = hierarchy[0]

    parts: list[tuple[float, np.ndarray]] = []
    for i in range(len(contours)):
        if hier[i][3] != -1:
            continue  # a hole; handled with its parent
        holes, hole_px = [], []
        child = hier[i][2]
        while child != -1:
            holes.append(contours[child])
            hole_px.append(_region_pixels(contours[child], outer=False))
            child = hier[child][0]
        area = _region_pixels(contours[i], outer=True) - sum(hole_px)
        if area < min_part:
            continue
        kept = [h for h, px in zip(holes, hole_px) if px >= min_hole or min_hole <= 0]
        parts.append((area, _part_ring(contours[i], kept, tol, floor, crop, (ox, oy)).astype(np.float64)))
    parts.sort(key=lambda p: -p[0])
    return [ring for _, ring in parts]


def _region_pixels(contour: np.ndarray, outer: bool) -> float:
    """Exact pixel count of the region a findContours contour bounds (a part's outline, or a hole), by Pick's
    theorem: the contour runs through lattice points (pixel centres), B of them on the boundary, so the
    region has A + B/2 + 1 pixels including its boundary (outer) or A - B/2 + 1 strictly inside (hole).
    With CHAIN_APPROX_SIMPLE each segment is a straight 8-connected run of max(|dx|, |dy|) steps. This also
    holds for parts that are lines walked there and back (A = 0); no connected-components pass needed.
    """
    pts = contour.reshape(-1, 2).astype(np.int64)
    boundary = float(np.abs(np.roll(pts, -1, axis=0) - pts).max(axis=1).sum())
    area = abs(float(cv2.contourArea(contour)))
    return area + boundary / 2 + 1 if outer else area - boundary / 2 + 1


def _part_ring(
    outer: np.ndarray, holes: list[np.ndarray], tol: float, min_iou: float, crop: np.ndarray, offset: tuple
) -> np.ndarray:
    """The keyhole ring of one part, simplified with ``tol`` or, if that loses fidelity, a finer tolerance.

    ``crop`` is the padded uint8 mask the contours were traced on, ``offset`` its image position (x, y).
    """

    def build(t: float) -> np.ndarray:
        return _keyhole(
            _oriented(_simplify(outer, t), outer=True),
            [(_oriented(_simplify(h, t), outer=False), h.reshape(-1, 2)) for h in holes],
            crop,
            offset,
            t,
        )

    ring = build(tol)
    if tol <= 0 or min_iou <= 0:
        return ring
    # Reference: exactly the part's pixels (small holes filled as requested). fillPoly on the traced outline
    # gives the part with its holes filled; a hole's traced ring runs through the part's own pixels around
    # it, so only the hole ring's strict interior (filled minus its outline) is taken out again.
    x, y, w, h = cv2.boundingRect(outer)
    ref = _fill_local(outer.reshape(-1, 2), x, y, w, h)
    for hole in holes:
        pts = [(hole.reshape(-1, 2) - (x, y)).astype(np.int32).reshape(-1, 1, 2)]
        inside = np.zeros((h, w), np.uint8)
        cv2.fillPoly(inside, pts, 1, lineType=cv2.LINE_8)
        cv2.polylines(inside, pts, True, 0, thickness=1, lineType=cv2.LINE_8)
        ref &= ~inside.view(bool)
    ref_px = np.count_nonzero(ref)
    t = tol
    while True:
        got = _fill_local(ring, x, y, w, h)
        inter = np.count_nonzero(got & ref)
        if inter >= min_iou * (ref_px + np.count_nonzero(got) - inter):
            return ring
        t /= 2
        if t < 0.25:  # DP below 1/4 px only drops collinear points of a pixel chain: go exact
            return build(0.0)
        ring = build(t)


def _fill_local(ring: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Rasterise an integer ring into the (h, w) window whose top-left pixel is (x, y)."""
    out = np.zeros((h, w), np.uint8)
    cv2.fillPoly(out, [(ring - (x, y)).astype(np.int32).reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8)
    return out.view(bool)


def _simplify(contour: np.ndarray, tol: float) -> np.ndarray:
    """Douglas-Peucker with ``tol``; keeps the traced ring when DP would collapse it to nothing."""
    pts = contour.reshape(-1, 2)
    if tol > 0 and len(pts) > 3:
        simple = cv2.approxPolyDP(contour, tol, True).reshape(-1, 2)
        if len(simple) >= 3 and cv2.contourArea(simple) != 0:
            pts = simple
    if len(pts) < 3:
        # One pixel, or a 1-pixel-wide straight line: walk it there and back so it is still a ring.
        pts = np.concatenate([pts, pts[::-1]])[: max(3, len(pts))]
        if len(pts) < 3:
            pts = np.repeat(pts[:1], 3, axis=0)
    return pts.astype(np.int64)


def _oriented(ring: np.ndarray, outer: bool) -> np.ndarray:
    """Outer rings counter-clockwise on screen (negative cv2 signed area), holes clockwise, so that the
    non-zero fill rule (an HTML canvas's default) also leaves holes empty."""
    signed = cv2.contourArea(ring.astype(np.float32), oriented=True)
    if (signed > 0) if outer else (signed < 0):
        return ring[::-1].copy()
    return ring


def _keyhole(outer: np.ndarray, holes: list, crop: np.ndarray, offset: tuple, tol: float) -> np.ndarray:
    """Splice each hole into the outer ring through a zero-width cut that runs over foreground pixels only.

    ``holes`` holds (simplified ring, traced contour) pairs. Each cut is a straight row or column of the
    part's own pixels, from the hole's extreme traced pixel (leftmost, rightmost, top or bottom) to the
    last foreground pixel before background: cv2.fillPoly paints the pixels under a cut, so a cut over
    foreground only keeps the fill exact, and an axis-aligned run is the simplest way to guarantee that.
    The background reached is outside the part or another hole; holes go in order of leftmost x, so a
    leftward cut only ever meets a hole already in the ring and is always usable; the shortest usable of
    the four cuts is taken (a short cut draws as a short hairline in the studio's outline).
    """
    ring = outer.astype(np.int64)
    order = sorted(range(len(holes)), key=lambda k: int(holes[k][1][:, 0].min()))
    # Checking the other cuts costs a pass over the ring per hole; past a few dozen holes (noisy masks) that
    # grows quadratically, so only the always-usable leftward cut is taken.
    shortest = len(holes) <= _MAX_HOLES_FOR_SHORTEST_CUT
    for k in order:
        simple, traced = holes[k]
        best = None
        for p, q, leftward in _cuts(traced, crop, offset):
            if not shortest and not leftward:
                continue
            length = abs(int(q[0] - p[0])) + abs(int(q[1] - p[1]))
            if best is not None and length >= best[0]:
                continue
            # q is on the boundary of the region the cut reaches; if that region's ring is already spliced
            # in, q lies on the ring (within the tolerance it was simplified with).
            if leftward or _distance_to_ring(ring, q) <= tol + 1e-6:
                best = (length, p, q)
        _, p, q = best
        ring, iq = _insert_vertex(ring, q)
        hole, ip = _insert_vertex(simple.astype(np.int64), p)
        hole = np.roll(hole, -ip, axis=0)
        ring = np.concatenate([ring[: iq + 1], hole, hole[:1], ring[iq:]])
    if len(ring) > 3:
        # Zero-length cuts (a 1-pixel wall) and vertices inserted onto existing ones repeat points: drop them.
        keep = np.any(ring != np.roll(ring, 1, axis=0), axis=1)
        if keep.sum() >= 3:
            ring = ring[keep]
    return ring


_MAX_HOLES_FOR_SHORTEST_CUT = 32


def _cuts(traced: np.ndarray, crop: np.ndarray, offset: tuple):
    """Candidate cuts (p, q, is_leftward) from a hole's extreme traced pixels straight out through foreground.

    p is a pixel on the hole's traced boundary, q the last foreground pixel walking away from the hole.
    The crop is padded with background, so every walk ends inside it.
    """
    ox, oy = offset
    for axis, sign in ((0, -1), (0, 1), (1, -1), (1, 1)):
        i = int(traced[:, axis].argmin() if sign < 0 else traced[:, axis].argmax())
        x, y = int(traced[i, 0]), int(traced[i, 1])
        cx, cy = x - ox, y - oy
        if axis == 0:
            line = crop[cy, cx::-1] if sign < 0 else crop[cy, cx:]
        else:
            line = crop[cy::-1, cx] if sign < 0 else crop[cy:, cx]
        run = int(line.argmin())  # first background pixel; line[0] is p itself (foreground)
        step = (run - 1) * sign
        q = (x + step, y) if axis == 0 else (x, y + step)
        yield np.array([x, y], np.int64), np.array(q, np.int64), axis == 0 and sign < 0


def _distance_to_ring(ring: np.ndarray, q: np.ndarray) -> float:
    """Distance from point q to the closed polyline ``ring``."""
    return float(np.sqrt(_segment_d2(ring, q).min()))


def _segment_d2(ring: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Squared distance from q to each edge ring[i] -> ring[i+1] (closing edge included)."""
    a = ring.astype(np.float64)
    d = np.roll(a, -1, axis=0) - a
    len2 = (d**2).sum(axis=1)
    t = np.clip(((q - a) * d).sum(axis=1) / np.where(len2 > 0, len2, 1.0), 0.0, 1.0)
    return (((a + t[:, None] * d) - q) ** 2).sum(axis=1)


def _insert_vertex(ring: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, int]:
    """Ring with q as a vertex (on its nearest edge unless already a vertex), and q's index."""
    same = np.flatnonzero((ring == q).all(axis=1))
    if same.size:
        return ring, int(same[0])
    e = int(_segment_d2(ring, q).argmin())
    return np.insert(ring, e + 1, q, axis=0), e + 1


def polygons_to_mask(polygons: Sequence, height: int, width: int) -> np.ndarray:
    """Rasterise rings into an (height, width) bool mask: the union of the rings, each filled by ``cv2.fillPoly``.

    Args:
        polygons: iterable of rings, each array-like (N, 2) of ``x, y`` in the pixel-centre convention (vertex
            ``(x, y)`` = centre of ``mask[y, x]``). A keyhole ring from ``mask_to_polygons`` keeps its holes.
        height, width: output size.

    For integer vertices (all that ``mask_to_polygons`` produces) a pixel is set when the ring covers its
    centre, boundary included: this inverts ``cv2.findContours`` exactly, so ``tolerance=0`` round-trips.
    Float vertices are kept to 1/16 pixel; OpenCV then rounds each row's span ends to the nearest pixel, so
    a pixel counts when the span reaches within half a pixel of its centre. Rings are filled one by one and
    OR-ed, so overlapping rings (separate annotations) never cancel each other.
    """
    h, w = _check_size(height, width)
    out = np.zeros((h, w), np.uint8)
    for k, ring in enumerate(polygons):
        try:
            pts = np.asarray(ring, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"polygon {k}: expected an (N, 2) array of x, y numbers") from None
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise InputError(f"polygon {k}: expected an (N, 2) array of x, y, got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise InputError(f"polygon {k}: has a non-finite (NaN or inf) coordinate")
        fixed = np.round(np.clip(pts, -_MAX_COORD, _MAX_COORD) * (1 << _FILL_SHIFT)).astype(np.int32)
        cv2.fillPoly(out, [fixed.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=_FILL_SHIFT)
    return out.view(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) masks of the same shape; two empty masks give 1.0."""
    ma, mb = _as_mask(a, "mask a"), _as_mask(b, "mask b")
    if ma.shape != mb.shape:
        raise InputError(f"mask_iou: mask shapes differ, {ma.shape} vs {mb.shape}")
    union = np.count_nonzero(ma | mb)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(ma & mb)) / float(union)


# --------------------------------------------------------------------------------------------- RLE


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an (H, W) mask: ``{"size": [H, W], "counts": str}``, JSON-serialisable.

    Encoded by pycocotools (column-major runs, the COCO format), so ``pycocotools.mask.decode`` reads it
    after ``counts`` is turned back into bytes, and ``rle_to_mask`` reads it as is.
    """
    m = _as_mask(mask)
    rle = mask_utils.encode(np.asfortranarray(m.view(np.uint8)))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict, name: str = "rle") -> np.ndarray:
    """(H, W) bool mask from a COCO RLE dict: compressed (``counts`` str or bytes) or uncompressed (list)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InputError(f"{name}: expected a COCO RLE dict with 'size' and 'counts'")
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
        if isinstance(counts, str):
            coco = {"size": [h, w], "counts": counts.encode("ascii")}
        elif isinstance(counts, (bytes, bytearray)):
            coco = {"size": [h, w], "counts": bytes(counts)}
        else:
            coco = mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
        with warnings.catch_warnings():
            # pycocotools' decode trips numpy 2's __array__(copy=...) DeprecationWarning; harmless here.
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_utils.decode(coco)
    except InputError:
        raise
    except Exception as exc:  # pycocotools raises assorted types for malformed input
        raise InputError(f"{name}: not a valid COCO RLE ({exc})") from None
    if decoded.shape != (h, w):
        raise InputError(f"{name}: decodes to shape {decoded.shape}, expected {(h, w)}")
    return np.ascontiguousarray(decoded, dtype=bool)


# --------------------------------------------------------------------------------------------- studio PNG


def _check_color(color) -> tuple[int, int, int]:
    try:
        rgb = tuple(int(c) for c in color)
    except (TypeError, ValueError):
        raise InputError(f"color: expected (r, g, b) integers 0-255, got {color!r}") from None
    if len(rgb) not in (3, 4) or any(c < 0 or c > 255 for c in rgb) or any(c != o for c, o in zip(rgb, color)):
        raise InputError(f"color: expected (r, g, b) integers 0-255, got {color!r}")
    return rgb[:3]  # a 4th (alpha) entry is ignored, as dtlpy does: alpha is 255 inside the mask


# The mask is two flat colours, so filtering adds nothing and zlib's RLE strategy is ideal: "Up" turns each
# row equal to the one above into zeros, RLE squeezes the runs. OpenCV's default tries every PNG filter per
# row, which costs more than the compression itself.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def mask_to_png_data_url(mask: np.ndarray, color: Sequence[int] = (255, 255, 255)) -> str:
    """A segmentation annotation's coordinates string for an (H, W) mask, as ``dl.Segmentation`` makes it.

    Same pixels as ``dl.Segmentation(geo=mask, label=...).to_coordinates(color)``: an 8-bit RGBA PNG of the
    full image, ``(r, g, b, 255)`` inside the mask and ``(0, 0, 0, 0)`` outside, base64-encoded after the
    22-character prefix ``data:image/png;base64,``. RGBA is required, not a convenience: dtlpy decodes with
    PIL and thresholds channel 3 (``geo[:, :, 3] > 127``), so a grey or paletted PNG would not load there.
    About 6-10x faster than dtlpy on a 4K mask (no float arithmetic; OpenCV's encoder with a fixed "Up"
    filter and zlib level 1 with the RLE strategy instead of PIL's level 6 with adaptive filters), for a PNG
    about a quarter larger (see bench/bench_geometry.py). ``color`` is the label colour (r, g, b), 0-255
    each; dtlpy's default is white.
    """
    m = _as_mask(mask)
    r, g, b = _check_color(color)
    if m.size == 0:
        raise InputError(f"mask: cannot encode an empty {m.shape} image as PNG")
    on = m.view(np.uint8)
    planes: dict[int, np.ndarray] = {255: on * np.uint8(255)}  # alpha; reused by any channel equal to 255

    def plane(v: int) -> np.ndarray:
        if v not in planes:
            planes[v] = np.zeros_like(on) if v == 0 else on * np.uint8(v)
        return planes[v]

    bgra = cv2.merge([plane(b), plane(g), plane(r), planes[255]])  # OpenCV writes BGRA as RGBA
    ok, buf = cv2.imencode(".png", bgra, _PNG_PARAMS)
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode the mask as PNG")
    return PNG_DATA_URL_PREFIX + base64.b64encode(buf.tobytes()).decode("ascii")


def png_data_url_to_mask(data_url: str, name: str = "segmentation") -> np.ndarray:
    """(H, W) bool mask from a segmentation coordinates string, by dtlpy's rule: alpha > 127.

    Accepts a ``data:image/png;base64,...`` string (or a ``{"data": ...}`` dict, as dtlpy does) holding a PNG
    with an alpha channel (RGBA or grey+alpha). ``name`` labels the input in error messages.
    """
    if isinstance(data_url, dict):
        data_url = data_url.get("data")
    if not isinstance(data_url, str) or not data_url.startswith("data:image/png;base64,"):
        raise InputError(f"{name}: expected a 'data:image/png;base64,...' string")
    try:
        raw = base64.b64decode(data_url[len(PNG_DATA_URL_PREFIX) :], validate=True)
    except ValueError:
        raise InputError(f"{name}: the base64 payload is malformed") from None
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{name}: the payload is not a decodable PNG")
    if img.ndim != 3 or img.shape[2] not in (2, 4):
        raise InputError(f"{name}: PNG has no alpha channel (shape {img.shape}); dtlpy reads the mask from alpha")
    alpha = img[:, :, -1]
    if alpha.dtype != np.uint8:  # 16-bit PNG: PIL would scale to 8 bits; compare at the same level
        return alpha > 127 * 257
    return alpha > 127


# --------------------------------------------------------------------------------------------- boxes


def validate_box(box, width: int, height: int, name: str) -> np.ndarray:
    """Check and clean a user box: float32 (4,) ``x1, y1, x2, y2``, corners ordered, clamped to the image.

    Args:
        box: four numbers ``x1, y1, x2, y2`` (continuous coordinates, image = ``(0, 0, width, height)``);
            inverted corners (x2 < x1 or y2 < y1) are swapped.
        width, height: image size in pixels.
        name: what the box is, for error messages, e.g. ``"annotation 65ab..."``.

    Raises:
        InputError (its message starts with ``name``): not four numbers, NaN/inf, entirely outside the image,
        or zero area after clamping.
    """
    h, w = _check_size(height, width, f"{name}: image size")
    try:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{name}: box must be four numbers x1, y1, x2, y2, got {box!r}") from None
    if b.size != 4:
        raise InputError(f"{name}: box must be four numbers x1, y1, x2, y2, got {b.size} values")
    shown = "[" + ", ".join(f"{v:g}" for v in b) + "]"
    if not np.isfinite(b).all():
        raise InputError(f"{name}: box {shown} has a non-finite coordinate (NaN or inf)")
    x1, x2 = sorted((b[0], b[2]))
    y1, y2 = sorted((b[1], b[3]))
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        raise InputError(f"{name}: box {shown} lies entirely outside the {w}x{h} image")
    x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
    y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise InputError(f"{name}: box {shown} has zero area (after clamping to the {w}x{h} image)")
    return np.array([x1, y1, x2, y2], dtype=np.float32)


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight box of an (H, W) mask: ``(first col, first row, last col + 1, last row + 1)``; None if empty."""
    bounds = _bounds(_as_mask(mask))
    if bounds is None:
        return None
    r0, r1, c0, c1 = bounds
    return float(c0), float(r0), float(c1), float(r1)


def _box_corners(box, angle_degrees: float) -> np.ndarray:
    """(4, 2) corners of the rectangle ``box`` rotated by ``angle_degrees`` (clockwise on screen) about its centre."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise InputError(f"box: expected four finite numbers x1, y1, x2, y2, got {box!r}")
    angle = _check_number(angle_degrees, "angle", minimum=-math.inf)
    x1, x2 = sorted((b[0], b[2]))
    y1, y2 = sorted((b[1], b[3]))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]) - (cx, cy)
    return corners @ rot.T + (cx, cy)


def enclosing_box(box, angle: float) -> np.ndarray:
    """Axis-aligned float64 (4,) ``x1, y1, x2, y2`` enclosing ``box`` rotated by ``angle`` degrees (not clamped)."""
    c = _box_corners(box, angle)
    return np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()])


def rotated_box_mask(box, angle_degrees: float, height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of the rectangle ``box`` rotated by ``angle_degrees`` about its centre.

    Pixel ``(row, col)`` is in when its centre ``(col + 0.5, row + 0.5)`` lies in the rotated rectangle, so an
    unrotated box ``x1, y1, x2, y2`` with integer corners gives exactly ``mask[y1:y2, x1:x2]``, and a 90-degree
    turn of a w x h box gives h x w pixels. Computed as one column interval per row (the rectangle is
    convex) inside the enclosing box, so the cost is that box's area, not the image's.
    """
    h, w = _check_size(height, width)
    out = np.zeros((h, w), dtype=bool)
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise InputError(f"box: expected four finite numbers x1, y1, x2, y2, got {box!r}")
    x1, x2 = sorted((b[0], b[2]))
    y1, y2 = sorted((b[1], b[3]))
    half_w, half_h = (x2 - x1) / 2, (y2 - y1) / 2
    cx, cy = x1 + half_w, y1 + half_h
    ex1, ey1, ex2, ey2 = enclosing_box(b, angle_degrees)
    row0, row1 = max(int(math.floor(ey1)) - 1, 0), min(int(math.ceil(ey2)) + 1, h)
    col0, col1 = max(int(math.floor(ex1)) - 1, 0), min(int(math.ceil(ex2)) + 1, w)
    if row0 >= row1 or col0 >= col1 or half_w <= 0 or half_h <= 0:
        return out
    t = math.radians(float(angle_degrees))
    cos, sin = math.cos(t), math.sin(t)
    if abs(cos) < 1e-12:
        cos = 0.0
    if abs(sin) < 1e-12:
        sin = 0.0
    # Back in the box's own frame, u = R(-angle)(p - c): u_x = cos*dx + sin*dy, u_y = -sin*dx + cos*dy, and
    # the pixel is in when -half_w <= u_x < half_w and -half_h <= u_y < half_h. For each row (fixed dy) each
    # condition bounds dx to an interval; intersect them.
    dy = np.arange(row0, row1, dtype=np.float64) + 0.5 - cy
    lo = np.full(dy.shape, -np.inf)
    hi = np.full(dy.shape, np.inf)
    for a, c, half in ((cos, sin, half_w), (-sin, cos, half_h)):  # a*dx + c*dy in [-half, half)
        rest = c * dy
        if a == 0:
            inside = (rest >= -half) & (rest < half)
            lo = np.where(inside, lo, np.inf)
            continue
        e1, e2 = (-half - rest) / a, (half - rest) / a
        lo = np.maximum(lo, np.minimum(e1, e2))
        hi = np.minimum(hi, np.maximum(e1, e2))
    dx = np.arange(col0, col1, dtype=np.float64) + 0.5 - cx
    out[row0:row1, col0:col1] = (dx[None, :] >= lo[:, None]) & (dx[None, :] < hi[:, None])
    return out
