"""Synthetic segmentation scenes and tracking clips with exact instance masks.

The micro SAM2 model is trained and evaluated on this data, and tests use it as
ground truth, so everything here is:

* deterministic: every random draw comes from the ``numpy.random.Generator``
  passed in (no global random state; the same generator state gives identical
  arrays);
* exact: each mask is the set of pixels that were painted with that object's
  colour and that no later object painted over;
* fast: on the 2-core dev machine (CPU time, measured while a training job
  also ran) a 256x256 scene takes ~3 ms (1.3 ms with one object, 4.6 ms
  with six) and a 24-frame 256x256 clip ~20-23 ms.

Conventions used throughout:

* images are ``uint8`` RGB, shape ``(H, W, 3)``; masks are ``bool``;
* objects are listed back to front: object ``k`` was painted after (on top of)
  objects ``0..k-1``, so ``masks[k]`` is never covered by ``masks[j]`` for
  ``j < k`` and the masks of one image are pairwise disjoint;
* boxes are ``float32`` ``x1, y1, x2, y2`` in pixels where ``x1``/``y1`` are the
  smallest column/row index of the mask and ``x2``/``y2`` the largest index
  plus one, so ``mask[y1:y2, x1:x2]`` is exactly the tight crop of the mask;
* object kinds: ``"ellipse"``, ``"polygon"`` (convex or concave),
  ``"ring"`` (has a hole), ``"bar"`` (thin rectangle, 3-8 px wide),
  ``"split"`` (two separate parts that form one object).

Numpy and OpenCV only; no torch.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

__all__ = [
    "KINDS",
    "MIN_CLIP_AREA",
    "MIN_LEAVE_FRAMES",
    "MIN_SCENE_AREA",
    "MIN_SCENE_FRACTION",
    "TEXTURES",
    "Clip",
    "Scene",
    "make_clip",
    "make_scene",
    "mask_box",
    "next_click",
    "write_jpeg_folder",
    "write_video",
]

KINDS: tuple[str, ...] = ("ellipse", "polygon", "ring", "bar", "split")
"""Every shape kind the generator draws."""

TEXTURES: tuple[str, ...] = ("flat", "stripes", "gradient", "checker")
"""Every object texture the generator paints (not reported per object)."""

MIN_SCENE_AREA = 40
"""Every object of a Scene has at least this many visible pixels."""

MIN_SCENE_FRACTION = 0.25
"""...and at least this fraction of its in-image pixels is visible (not occluded)."""

MIN_CLIP_AREA = 20
"""A clip object counts as visible in a frame when it has at least this many visible pixels."""

MIN_LEAVE_FRAMES = 12
"""Shortest clip in which an object can leave the view and come back."""

_KIND_CDF = np.cumsum([0.22, 0.28, 0.17, 0.14, 0.19])  # ellipse, polygon, ring, bar, split
_KIND_MIN_EXTENT = {"ellipse": 12.0, "polygon": 12.0, "ring": 20.0, "bar": 24.0, "split": 22.0}
# Object extents as fractions of the smaller image side. A 256 px SAM 2 predicts masks at 64 x 64, so an object
# must span several mask pixels (and a bar or a ring's frame at least two) to be segmentable at all; the floor
# keeps the smallest objects at about 41 px at 256 px, i.e. 164 px at SAM 2's usual 1024 px.
_SCENE_EXTENT = (0.16, 0.6)
_CLIP_EXTENT = (0.16, 0.4)
_CLIP_LEAVER_EXTENT = (0.16, 0.25)  # an object that leaves and comes back must fit its path
_TEXTURE_CDF = np.cumsum([0.34, 0.24, 0.20, 0.22])  # flat, stripes, gradient, checker
_BG_LABEL = 255  # label-map value of pixels that show background
_BG_DIST = 62.0  # wanted RGB distance between an object's colours and the background under it
_OBJ_DIST = 55.0  # ... and the objects it overlaps


def _pick(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """Index drawn with the probabilities whose cumulative sums are ``cdf`` (faster than rng.choice)."""
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, eq=False)
class Scene:
    """One still image with K objects, listed back to front.

    image: (H, W, 3) uint8 RGB.
    masks: (K, H, W) bool, the visible part of each object (occlusion by later
        objects applied, so masks are pairwise disjoint); each has at least
        MIN_SCENE_AREA pixels and at least MIN_SCENE_FRACTION of its in-image area.
    boxes: (K, 4) float32 x1, y1, x2, y2 that exactly enclose each mask
        (x2/y2 = largest column/row index + 1).
    kinds: K shape kinds, each one of KINDS.

    Equality is identity (the fields are arrays); the arrays are writable
    but are not meant to be changed.
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    kinds: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Clip:
    """T frames with K tracked objects, listed back to front (fixed z-order).

    frames: (T, H, W, 3) uint8 RGB.
    masks: (T, K, H, W) bool, the visible part of each object in each frame
        (pairwise disjoint within a frame); all False where the object is not
        visible, so ``masks[t, k].any() == visible[t, k]``.
    visible: (T, K) bool, the object has at least MIN_CLIP_AREA visible pixels
        in that frame. ``visible[0]`` is all True (frame 0 is the prompt frame).
    kinds: K shape kinds, each one of KINDS.

    Each object's colour and texture are constant over the clip (the texture
    moves, scales and rotates with the object); only sensor noise changes.
    Equality is identity (the fields are arrays).
    """

    frames: np.ndarray
    masks: np.ndarray
    visible: np.ndarray
    kinds: tuple[str, ...]


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 x1, y1, x2, y2 exactly enclosing the True pixels of an (H, W) bool mask; zeros if empty."""
    x, y, bw, bh = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))
    return np.array([x, y, x + bw, y + bh], np.float32)


def next_click(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int]:
    """The click a simulated annotator makes next, as interactive-segmentation benchmarks place it: the point
    deepest inside the largest region where `pred` and `target` differ, x, y (pixel centre) and its label, 1 where
    the object was missed, 0 where the mask spills over. With nothing to correct, the object's most interior point."""
    error = (pred ^ target).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(error, connectivity=8)
    if count <= 1:
        error = target.astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(error, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = np.pad((labels == largest).astype(np.uint8), 1)
    depth = cv2.distanceTransform(region, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([x + 0.5, y + 0.5], dtype=np.float32), int(target[y, x])


# --------------------------------------------------------------------------- shapes

# A shape is a list of parts in object-local pixel coordinates (origin at the
# object's centre): (points (N, 2) float32 x, y; value) painted in order, value
# 1 fills and 0 cuts a hole.  Poses (centre, scale, angle) map it to the image.


@dataclass(frozen=True, eq=False)
class _Shape:
    kind: str
    parts: tuple[tuple[np.ndarray, int], ...]
    radius: float  # largest distance of any point from the origin (at scale 1)
    area: float  # filled area at scale 1, holes subtracted


def _ellipse_pts(a: float, b: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    n = int(np.clip(math.pi * (a + b) / 2.5, 16, 96))
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1).astype(np.float32)


def _regular_pts(n: int, a: float, b: float, phase: float) -> np.ndarray:
    t = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1).astype(np.float32)


def _convex_pts(rng: np.random.Generator, r: float) -> np.ndarray:
    n = int(rng.integers(3, 9))
    t = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * math.pi / n) + rng.uniform(0, 2 * math.pi)
    rad = r * rng.uniform(0.8, 1.0, n)
    pts = np.stack([rad * np.cos(t), rad * rng.uniform(0.55, 1.0) * np.sin(t)], axis=1)
    return cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)


def _concave_pts(rng: np.random.Generator, r: float) -> np.ndarray:
    if rng.random() < 0.5:  # star
        n = int(rng.integers(4, 8))
        t = np.arange(2 * n) * (math.pi / n) + rng.uniform(0, 2 * math.pi)
        rad = np.empty(2 * n)
        rad[0::2] = r * rng.uniform(0.85, 1.0, n)
        rad[1::2] = r * rng.uniform(0.35, 0.65, n)
    else:  # irregular radial blob with dents
        n = int(rng.integers(6, 12))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        rad = r * rng.uniform(0.4, 1.0, n)
        rad[int(rng.integers(n))] = r * rng.uniform(0.3, 0.45)  # at least one deep dent
        rad[int(rng.integers(n))] = r
    return np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1).astype(np.float32)


def _make_shape(rng: np.random.Generator, kind: str, extent: float) -> _Shape:
    """A shape of the given kind whose largest dimension is about ``extent`` pixels."""
    a = extent / 2.0
    if kind == "ellipse":
        parts = [(_ellipse_pts(a, max(4.5, a * rng.uniform(0.45, 1.0))), 1)]
    elif kind == "polygon":
        pts = _convex_pts(rng, a) if rng.random() < 0.45 else _concave_pts(rng, a)
        parts = [(pts, 1)]
    elif kind == "ring":
        b = a * rng.uniform(0.7, 1.0)
        thick = max(3.5, b * rng.uniform(0.3, 0.55))
        thick = min(thick, b - 3.0)
        if rng.random() < 0.3:
            n = int(rng.integers(4, 9))
            phase = rng.uniform(0, 2 * math.pi)
            outer = _regular_pts(n, a, b, phase)
            k = 1.0 / math.cos(math.pi / n)  # so the frame is about `thick` wide
            inner = _regular_pts(n, a - thick * k, b - thick * k, phase)
        else:
            outer = _ellipse_pts(a, b)
            inner = _ellipse_pts(a - thick, b - thick)
        parts = [(outer, 1), (inner, 0)]
    elif kind == "bar":
        half_w = max(3.5, extent * rng.uniform(0.1, 0.2)) / 2.0
        parts = [(np.array([[-a, -half_w], [a, -half_w], [a, half_w], [-a, half_w]], np.float32), 1)]
    elif kind == "split":
        gap = rng.uniform(4.0, max(4.5, 0.25 * extent))
        total = extent - gap
        ra = total / 2.0 * rng.uniform(0.35, 0.65)
        rb = total / 2.0 - ra
        offset = rng.uniform(-0.3, 0.3) * min(ra, rb)
        parts = []
        for r, sign, dy in ((ra, -1.0, offset), (rb, 1.0, -offset)):
            cx = sign * (gap / 2.0 + r)
            if rng.random() < 0.5:
                pts = _ellipse_pts(r, r * rng.uniform(0.55, 1.0))
            else:
                pts = _convex_pts(rng, r)
            pts = pts + np.array([cx, dy], np.float32)
            parts.append((pts, 1))
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown kind {kind!r}")
    parts_t = tuple((np.ascontiguousarray(p, np.float32), v) for p, v in parts)
    radius = max(float(np.sqrt((p**2).sum(axis=1)).max()) for p, _ in parts_t)
    area = sum((1 if v else -1) * abs(float(cv2.contourArea(p))) for p, v in parts_t)
    return _Shape(kind, parts_t, radius, area)


def _pose_points(shape: _Shape, cx: float, cy: float, scale: float, angle: float) -> list[tuple[np.ndarray, int]]:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    rot = np.array([[c, s], [-s, c]], np.float32)  # row-vector form of [[c, -s], [s, c]]
    off = np.array([cx, cy], np.float32)
    return [(p @ rot + off, v) for p, v in shape.parts]


def _rasterize(posed: list[tuple[np.ndarray, int]], h: int, w: int):
    """Rasterize a posed shape into an (H, W) image, cropped to its box.

    Returns (box, mask): box = (y0, y1, x0, x1) clipped to the image and mask the
    (y1-y0, x1-x0) uint8 0/1 crop; (None, None) when no pixel is in the image.
    Polygons are filled with 1/16 px precision so slow motion stays smooth.
    """
    allp = posed[0][0] if len(posed) == 1 else np.concatenate([p for p, _ in posed])
    (lx, ly), (hx, hy) = allp.min(axis=0).tolist(), allp.max(axis=0).tolist()
    x0, y0 = max(0, math.floor(lx) - 1), max(0, math.floor(ly) - 1)
    x1, y1 = min(w, math.ceil(hx) + 2), min(h, math.ceil(hy) + 2)
    if x0 >= x1 or y0 >= y1:
        return None, None
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    off = np.array([x0, y0], np.float32)
    for p, v in posed:
        q = np.round((p - off) * 16.0).astype(np.int32)
        cv2.fillPoly(m, [q], int(v), lineType=cv2.LINE_8, shift=4)
    if not m.any():
        return None, None
    return (y0, y1, x0, x1), m


# --------------------------------------------------------------------------- appearance


@dataclass(frozen=True, eq=False)
class _Look:
    c1: np.ndarray  # (3,) float32 RGB
    c2: np.ndarray
    texture: str
    angle: float  # texture direction in object coordinates
    period: float  # stripe period / checker cell / gradient length, object pixels
    sharp: bool  # hard stripes (else sinusoidal)
    noise: float  # per-pixel noise sigma of the object's own surface
    rim: np.ndarray | None  # outline colour, or None


def _pick_colours(rng: np.random.Generator, refs_bg: np.ndarray, refs_obj: np.ndarray, contrast: float):
    """Two colours (c1, c2 = c1 + a shift of norm ``contrast``) far from the reference colours.

    The first of 24 candidates whose both colours are at least _BG_DIST from every
    background reference and _OBJ_DIST from every object reference, else the best.
    """
    n = 24
    c1 = rng.uniform(0, 255, (n, 3))
    d = rng.normal(size=(n, 3))
    d *= contrast / np.maximum(np.sqrt((d * d).sum(axis=1, keepdims=True)), 1e-6)
    c2 = np.clip(c1 + d, 0, 255)
    if len(refs_bg) > 48:  # plenty to judge a colour by; keeps the distance table small
        refs_bg = refs_bg[:: -(-len(refs_bg) // 48)]
    refs = np.concatenate([refs_bg, refs_obj])
    if len(refs) == 0:
        return c1[0].astype(np.float32), c2[0].astype(np.float32)
    want = np.concatenate([np.full(len(refs_bg), _BG_DIST), np.full(len(refs_obj), _OBJ_DIST)])
    cand = np.concatenate([c1, c2])  # (2n, 3)
    diff = cand[:, None, :] - refs[None, :, :]
    score = (np.sqrt((diff * diff).sum(axis=2)) / want).min(axis=1)
    score = np.minimum(score[:n], score[n:])
    ok = np.flatnonzero(score >= 1.0)
    i = int(ok[0]) if ok.size else int(np.argmax(score))
    return c1[i].astype(np.float32), c2[i].astype(np.float32)


def _make_look(rng: np.random.Generator, extent: float, kind: str, refs_bg: np.ndarray, refs_obj: np.ndarray) -> _Look:
    texture = TEXTURES[_pick(rng, _TEXTURE_CDF)]
    if extent < 22 or (kind == "bar" and texture in ("checker", "stripes") and rng.random() < 0.5):
        texture = "flat"
    contrast = rng.uniform(25, 45) if texture == "flat" else rng.uniform(30, 75)
    c1, c2 = _pick_colours(rng, refs_bg, refs_obj, contrast)
    if texture == "stripes":
        period = rng.uniform(5, 14)
    elif texture == "checker":
        period = rng.uniform(4, 10)
    else:
        period = extent * rng.uniform(0.8, 1.3)
    rim = None
    if kind != "bar" and extent >= 16 and rng.random() < 0.25:
        rim = (c1 * 0.45) if rng.random() < 0.6 else (c1 + (255 - c1) * 0.55)
        rim = rim.astype(np.float32)
    return _Look(
        c1=c1,
        c2=c2,
        texture=texture,
        angle=float(rng.uniform(0, 2 * math.pi)),
        period=float(period),
        sharp=bool(rng.random() < 0.5),
        noise=float(rng.uniform(2, 9) if texture == "flat" else rng.uniform(0, 5)),
        rim=rim,
    )


# Large float32 work images are reused per thread rather than allocated per
# image/frame (fresh ~1 MB buffers that OpenCV writes were measurably slower
# on the 2-core dev machine, mostly for clips).
_local = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A per-thread reusable buffer (uninitialised; valid until the next call with the same name and shape)."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    key = (name, shape, np.dtype(dtype).str)
    buf = bufs.get(key)
    if buf is None:
        if len(bufs) >= 24:
            bufs.clear()
        buf = bufs[key] = np.empty(shape, dtype)
    return buf


def _into(result: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``target`` holding ``result`` (OpenCV writes into ``dst`` in place unless it must reallocate)."""
    if result is not target:  # pragma: no cover - defensive
        target[...] = result
    return target


# A fixed table of standard normals (built once from its own fixed seed, so it
# is a constant, not random state); images take noise from it at offsets drawn
# from the caller's generator.  Fresh normals would cost ~2 ms per 256x256x3
# image on the target CPUs.
_BANK_SIZE = 512
_bank: np.ndarray | None = None


def _noise_bank() -> np.ndarray:
    global _bank
    if _bank is None:
        _bank = np.random.default_rng(0x5A2).standard_normal((_BANK_SIZE, _BANK_SIZE, 3), dtype=np.float32)
    return _bank


def _noise(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """(h, w, channels) float32 standard-normal noise from the bank (a view; do not write to it)."""
    bank = _noise_bank()
    if h <= _BANK_SIZE and w <= _BANK_SIZE:
        oy, ox, c0 = rng.integers(0, (_BANK_SIZE - h + 1, _BANK_SIZE - w + 1, 4 - channels)).tolist()
        return bank[oy : oy + h, ox : ox + w, c0 : c0 + channels]
    rows = (int(rng.integers(_BANK_SIZE)) + np.arange(h)) % _BANK_SIZE
    cols = (int(rng.integers(_BANK_SIZE)) + np.arange(w)) % _BANK_SIZE
    return bank[rows][:, cols, :channels]


def _texture(
    rng: np.random.Generator, look: _Look, box, cx: float, cy: float, scale: float, angle: float, tex_h: int, tex_w: int
) -> np.ndarray:
    """(y1-y0, x1-x0, 3) float32 colours of the object's surface over ``box``, in object coordinates.

    Returns a view of a per-thread scratch buffer of shape (tex_h, tex_w, 3) (the image size).
    """
    y0, y1, x0, x1 = box
    dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :] / scale
    dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None] / scale
    th = angle + look.angle
    ct, st = math.cos(th), math.sin(th)
    if look.texture == "flat":
        wgt = None
    elif look.texture == "gradient":
        u = dx * ct + dy * st
        wgt = np.clip(u / look.period + 0.5, 0.0, 1.0)
    elif look.texture == "stripes":
        u = (dx * ct + dy * st) / look.period
        if look.sharp:
            wgt = (np.floor(u) % 2).astype(np.float32)
        else:
            wgt = 0.5 + 0.5 * np.sin(2 * math.pi * u)
    else:  # checker
        u = np.floor((dx * ct + dy * st) / look.period)
        v = np.floor((dy * ct - dx * st) / look.period)
        wgt = ((u + v) % 2).astype(np.float32)
    out = _scratch("tex", (tex_h, tex_w, 3))[: y1 - y0, : x1 - x0]
    if wgt is None:
        for c in range(3):
            out[:, :, c] = look.c1[c]
    else:
        _affine_colour(np.broadcast_to(wgt, (y1 - y0, x1 - x0)), look.c1, look.c2 - look.c1, out)
    if look.noise > 0:
        _into(cv2.scaleAdd(_noise(rng, y1 - y0, x1 - x0), look.noise, out, dst=out), out)
    return out


def _affine_colour(wgt: np.ndarray, offset: np.ndarray, slope: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write ``offset + wgt[..., None] * slope`` into the (h, w, 3) float32 ``out``; ``wgt`` is (h, w).

    One channel at a time: numpy broadcasting over a length-3 last axis, and
    cv2.transform / cv2.merge, are several times slower on the target CPUs.
    """
    for c in range(3):
        np.multiply(wgt, np.float32(slope[c]), out=out[:, :, c])
        out[:, :, c] += np.float32(offset[c])
    return out


def _paint(
    img: np.ndarray, labels: np.ndarray, index: int, box, m: np.ndarray, tex: np.ndarray, look: _Look
) -> np.ndarray:
    """Paint ``tex`` where the uint8 crop ``m`` is set, and label those pixels ``index``.

    Returns the counts of the labels that were painted over (bincount of the
    old labels under the object, background label 255 included).
    """
    y0, y1, x0, x1 = box
    reg = img[y0:y1, x0:x1]
    lab = labels[y0:y1, x0:x1]
    if look.rim is not None:
        inner = cv2.erode(m, np.ones((3, 3), np.uint8))
        tex[cv2.subtract(m, inner).view(bool)] = look.rim
    # cv2.copyTo writes into the view in place (~50x faster than boolean indexing)
    out = cv2.copyTo(tex, m, reg)
    if out is not reg:  # pragma: no cover - defensive, cv2 reallocated
        reg[...] = out
    mb = m.view(bool)
    covered = np.bincount(lab[mb], minlength=256)
    lab[mb] = index
    return covered


# --------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, h: int, w: int):
    """(h, w, 3) float32 background and its (gh, gw, 3) coarse mean colours (16 px cells).

    Base colour + low-frequency colour noise + optional linear gradient +
    optional mottling, all built on a coarse grid and upsampled once, then
    small distractor blobs and scratches drawn at full resolution.
    """
    side = min(h, w)
    base = rng.uniform(35, 220, 3)
    cell = float(rng.uniform(6, 12))  # grid pitch in pixels = mottle scale
    gh, gw = max(2, int(round(h / cell))), max(2, int(round(w / cell)))
    g = int(rng.integers(3, 8))
    amp = rng.uniform(12, 45)
    # mostly brightness variation, some colour variation
    small = rng.normal(0, amp, (g, g, 1)) + rng.normal(0, amp * rng.uniform(0.2, 0.6), (g, g, 3)) + base
    grid = cv2.resize(small.astype(np.float32), (gw, gh), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.6:  # linear gradient
        t = rng.uniform(0, 2 * math.pi)
        ramp = np.linspace(-0.5, 0.5, gw)[None, :] * (w / side) * math.cos(t)
        ramp = ramp + np.linspace(-0.5, 0.5, gh)[:, None] * (h / side) * math.sin(t)
        grid += (ramp[:, :, None] * rng.normal(0, 35, 3)).astype(np.float32)
    if rng.random() < 0.7:  # mottling
        grid += rng.normal(0, rng.uniform(3, 12), (gh, gw, 1)).astype(np.float32)
    half = cv2.resize(grid, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_CUBIC)  # no blocky mottle
    img = _scratch("background", (h, w, 3))
    _into(cv2.resize(half, (w, h), dst=img, interpolation=cv2.INTER_LINEAR), img)
    coarse = cv2.resize(grid, (max(1, w // 16), max(1, h // 16)), interpolation=cv2.INTER_AREA)
    coarse = coarse.reshape(max(1, h // 16), max(1, w // 16), 3)
    # clutter: small distractor blobs (<= 5 px) and thin 1 px scratches;
    # objects are >= 9 px thick, or bars >= 3.5 px thick
    n = int(rng.integers(0, 6 + side * side // 1500))
    if n:
        pos = rng.uniform(0, 1, (n, 2)) * (w, h)
        cols = np.where(rng.random((n, 1)) < 0.5, rng.uniform(0, 255, (n, 3)), base + rng.normal(0, 40, (n, 3)))
        sizes = rng.uniform(1.0, 2.5, (n, 2))
        angs = rng.uniform(0, 180, n)
        lines = rng.random(n) < 0.25
        cols = np.clip(cols, 0, 255).tolist()
        for i in range(n):
            c = cols[i]
            x, y = int(pos[i, 0] * 16), int(pos[i, 1] * 16)
            if lines[i]:
                a = math.radians(angs[i])
                ln = sizes[i, 0] * 2 + 3
                dx, dy = int(math.cos(a) * ln * 16), int(math.sin(a) * ln * 16)
                cv2.line(img, (x - dx, y - dy), (x + dx, y + dy), c, 1, cv2.LINE_AA, 4)
            else:
                ax = (int(sizes[i, 0] * 16), int(sizes[i, 1] * 16))
                cv2.ellipse(img, (x, y), ax, float(angs[i]), 0, 360, c, -1, cv2.LINE_AA, 4)
    return img, coarse


def _coarse_refs(coarse: np.ndarray, box, h: int, w: int) -> np.ndarray:
    gh, gw = coarse.shape[:2]
    y0, y1, x0, x1 = box
    r0, r1 = y0 * gh // h, max(y0 * gh // h + 1, -(-y1 * gh // h))
    c0, c1 = x0 * gw // w, max(x0 * gw // w + 1, -(-x1 * gw // w))
    return coarse[r0:r1, c0:c1].reshape(-1, 3).astype(np.float64)


def _finish(
    rng: np.random.Generator, img: np.ndarray, blur: float, noise: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Optics and sensor: optional blur, then noise; (H, W, 3) float32 -> uint8 (into ``out`` if given)."""
    h, w = img.shape[:2]
    if blur > 0:
        buf = _scratch("blur", (h, w, 3))
        img = _into(cv2.GaussianBlur(img, (3, 3), blur, dst=buf), buf)
    if noise > 0:
        buf = _scratch("finish", (h, w, 3))
        img = _into(cv2.scaleAdd(_noise(rng, h, w), noise, img, dst=buf), buf)
    cv2.max(img, 0.0, dst=img)
    if out is None:
        return cv2.convertScaleAbs(img)  # rounds and saturates at 255 (no negatives left)
    return _into(cv2.convertScaleAbs(img, dst=out), out)


# --------------------------------------------------------------------------- argument checks


def _count_range(n_objects, name: str = "n_objects") -> tuple[int, int]:
    if isinstance(n_objects, (int, np.integer)):
        lo = hi = int(n_objects)
    else:
        lo, hi = (int(v) for v in n_objects)
    if not 1 <= lo <= hi <= 64:
        raise ValueError(
            f"{name} must be a count or an inclusive range (lo, hi) with 1 <= lo <= hi <= 64, got {n_objects!r}"
        )
    return lo, hi


def _check_common(rng, height: int, width: int) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if height < 48 or width < 48:
        raise ValueError(f"height and width must be >= 48, got {height}x{width}")


# --------------------------------------------------------------------------- scenes


def make_scene(
    rng: np.random.Generator,
    height: int = 256,
    width: int = 256,
    n_objects: int | tuple[int, int] = (2, 6),
) -> Scene:
    """A random still scene; all randomness comes from ``rng``.

    n_objects: a count, or an inclusive range (lo, hi) that the count is drawn from.
    Objects are ellipses, convex/concave polygons, rings, thin bars and two-part
    objects, 16% to 60% of the smaller image side (at least 12 px), flat/striped/gradient/
    checker textured, placed at random or against earlier objects (so they
    overlap and touch), on a noisy low-frequency background with small
    distractor blobs. Objects never lose more than 75% of their in-image area to
    occlusion. See Scene for the array layouts.
    """
    _check_common(rng, height, width)
    lo, hi = _count_range(n_objects)
    for _ in range(50):
        scene = _try_scene(rng, height, width, int(rng.integers(lo, hi + 1)))
        if scene is not None and len(scene.kinds) >= lo:
            return scene
    raise RuntimeError(f"could not place {lo} objects in a {height}x{width} scene")  # pragma: no cover


def _try_scene(rng: np.random.Generator, h: int, w: int, k: int) -> Scene | None:
    side = min(h, w)
    img, coarse = _background(rng, h, w)
    labels = np.full((h, w), _BG_LABEL, np.uint8)  # index of the object seen at each pixel
    lo_ext, hi_ext = (max(12.0, f * side) for f in _SCENE_EXTENT)
    extents = np.exp(rng.uniform(math.log(lo_ext), math.log(hi_ext), k))
    if rng.random() < 0.65:
        extents = np.sort(extents)[::-1]  # mostly big ones at the back
    crops: list[tuple[tuple[int, int, int, int], np.ndarray]] = []  # full (unoccluded) masks
    full_area: list[int] = []
    vis_area: list[int] = []
    kinds: list[str] = []
    looks: list[_Look] = []
    for extent in extents:
        kind = KINDS[_pick(rng, _KIND_CDF)]
        placed = None
        for attempt in range(24):
            if attempt >= 8:
                extent *= 0.85
            shape = _make_shape(rng, kind, max(float(extent), _KIND_MIN_EXTENT[kind]))
            angle = float(rng.uniform(0, 2 * math.pi))
            if crops and rng.random() < 0.5:  # against an existing object: overlap / touch
                (by0, _, bx0, _), bm = crops[int(rng.integers(len(crops)))]
                ys, xs = np.nonzero(bm)
                i = int(rng.integers(len(xs)))
                px, py = float(xs[i] + bx0), float(ys[i] + by0)
                d = np.array([px - xs.mean() - bx0, py - ys.mean() - by0])
                nd = float(np.linalg.norm(d))
                d = d / nd if nd > 1e-3 else np.array([math.cos(angle), math.sin(angle)])
                r = shape.radius * rng.uniform(0.2, 0.9)
                cx, cy = px + d[0] * r, py + d[1] * r
            else:
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            box, m = _rasterize(_pose_points(shape, cx, cy, 1.0, angle), h, w)
            if box is None:
                continue
            area = int(np.count_nonzero(m))
            if area < max(MIN_SCENE_AREA, 0.45 * shape.area):
                continue
            if kind == "split" and cv2.connectedComponents(m, connectivity=8)[0] < 3:
                continue  # a part is out of the image: it would not look split
            under = np.bincount(labels[box[0] : box[1], box[2] : box[3]][m.view(bool)], minlength=256)
            if all(
                va - under[j] >= max(MIN_SCENE_AREA, MIN_SCENE_FRACTION * fa)
                for j, (va, fa) in enumerate(zip(vis_area, full_area))
            ):
                placed = (shape, cx, cy, angle, box, m, area, under)
                break
        if placed is None:
            continue
        shape, cx, cy, angle, box, m, area, under = placed
        y0, y1, x0, x1 = box
        refs_obj = []
        for lk, ((by0, by1, bx0, bx1), bm) in zip(looks, crops):
            oy0, oy1, ox0, ox1 = max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1)
            if oy0 < oy1 and ox0 < ox1 and bm[oy0 - by0 : oy1 - by0, ox0 - bx0 : ox1 - bx0].any():
                refs_obj.append(np.stack([lk.c1, lk.c2]))
        look = _make_look(
            rng,
            2 * shape.radius,
            kind,
            _coarse_refs(coarse, box, h, w),
            np.concatenate(refs_obj).astype(np.float64) if refs_obj else np.zeros((0, 3)),
        )
        index = len(kinds)
        _paint(img, labels, index, box, m, _texture(rng, look, box, cx, cy, 1.0, angle, h, w), look)
        for j in range(index):
            vis_area[j] -= int(under[j])
        crops.append((box, m))
        full_area.append(area)
        vis_area.append(area)
        kinds.append(kind)
        looks.append(look)
    if not kinds:
        return None
    blur = float(rng.uniform(0.5, 1.0)) if rng.random() < 0.5 else 0.0
    image = _finish(rng, img, blur, float(rng.uniform(1.5, 7.0)))
    masks = labels[None] == np.arange(len(kinds), dtype=np.uint8)[:, None, None]
    boxes = np.stack([mask_box(mk) for mk in masks])
    return Scene(image=image, masks=masks, boxes=boxes, kinds=tuple(kinds))


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True, eq=False)
class _Track:
    shape: _Shape
    look: _Look
    cx: np.ndarray  # (T,) float centre per frame
    cy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    leaves: bool


def _wander(rng, n_frames: int, lo: np.ndarray, hi: np.ndarray, speed: tuple[float, float], near=None):
    """(T, D) smooth path inside [lo, hi] (D = len(lo)): a line through a mid point plus a gentle wiggle."""
    dim = len(lo)
    t = np.arange(n_frames, dtype=np.float64)
    tm = (n_frames - 1) / 2.0
    for attempt in range(40):
        if near is not None and attempt < 20:
            mid = near + rng.normal(0, 8, dim)
        else:
            mid = rng.uniform(lo, hi)
        sp = min(rng.uniform(*speed), 0.8 * float(np.min(hi - lo)) / max(n_frames - 1, 1)) * (0.97**attempt)
        if dim == 2:
            a = rng.uniform(0, 2 * math.pi)
            direction = np.array([math.cos(a), math.sin(a)])
        else:
            direction = np.where(rng.random(dim) < 0.5, -1.0, 1.0)
        amp = rng.uniform(0, 6, dim)
        freq = rng.uniform(0.4, 1.5, dim) * 2 * math.pi / max(n_frames, 1)
        ph = rng.uniform(0, 2 * math.pi, dim)
        path = mid + np.outer(t - tm, sp * direction)
        path += amp * (np.sin(np.outer(t, freq) + ph) - np.sin(ph))
        if np.all(path >= lo) and np.all(path <= hi):
            return path
    return np.clip(path, lo, hi)


def _leave_path(rng, n_frames: int, h: int, w: int, shape: _Shape, scale: np.ndarray, angle: np.ndarray):
    """(T, 2) centre path that starts in view, leaves through one side, comes back, or None.

    The object is completely outside the image for 3 to min(6, T/4) consecutive
    frames around the middle of the clip (checked exactly on the posed polygon
    vertices); the excursion takes 12-22 frames, and outside it the centre
    stays inside the image.
    """
    t = np.arange(n_frames, dtype=np.float64)
    pts = np.concatenate([p for p, _ in shape.parts]).astype(np.float64)
    # per-frame extent of the posed shape from its centre towards -x, +x, -y, +y
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    xs = pts[None, :, 0] * c[:, None] - pts[None, :, 1] * s[:, None]
    ys = pts[None, :, 0] * s[:, None] + pts[None, :, 1] * c[:, None]
    ext = {"-x": -xs.min(axis=1), "+x": xs.max(axis=1), "-y": -ys.min(axis=1), "+y": ys.max(axis=1)}
    max_out = max(3, min(6, int(0.25 * n_frames)))
    for _ in range(100):
        side = int(rng.integers(4))  # leaves through 0 left, 1 right, 2 top, 3 bottom
        length, across = (w, h) if side < 2 else (h, w)
        back = ext[("+x", "-x", "+y", "-y")[side]]  # extent pointing back into the image
        tm = rng.uniform(0.4, 0.6) * (n_frames - 1)
        half = rng.uniform(1.0, 2.6)
        span = min(tm, n_frames - 1 - tm, rng.uniform(6.0, 11.0))  # excursion lasts 2 * span frames
        if span - half < 2.0:
            continue
        r = float(back.max())
        # d: the centre's distance beyond the edge (< 0: inside); a smooth cos^2 bump from d0
        # up past the edge and back, reaching `off` (just fully out) at tm +- half
        d0 = -rng.uniform(0.6 * r, r + 0.12 * length)
        win = np.abs(t - tm) <= half
        off = float(back[win].max()) + 0.5
        bump = np.cos(np.clip((t - tm) / span, -1.0, 1.0) * (math.pi / 2)) ** 2
        peak = d0 + (off - d0) / math.cos(half / span * math.pi / 2) ** 2
        d = d0 + (peak - d0) * bump
        out = np.flatnonzero(d > back + 0.5)  # every vertex beyond the edge
        if not 3 <= out.size <= max_out or out[-1] - out[0] + 1 != out.size:
            continue
        if (peak - d0) * math.pi / (2 * span) > 0.12 * length:  # top speed
            continue
        along = length + d if side % 2 == 1 else -d
        b = min(0.6 * r, across / 2 - 1)
        perp = _wander(rng, n_frames, np.array([b]), np.array([across - b]), (0.0, 1.5))[:, 0]
        if side < 2:
            return np.stack([along, perp], axis=1)
        return np.stack([perp, along], axis=1)
    return None


def make_clip(
    rng: np.random.Generator,
    n_frames: int = 24,
    height: int = 256,
    width: int = 256,
    n_objects: int | tuple[int, int] = (1, 3),
    leave_view: bool | None = None,
) -> Clip:
    """A random clip of objects moving over a static or slowly drifting background.

    All randomness comes from ``rng``. n_objects: a count or an inclusive range.
    Objects keep their colour and texture; they move along smooth paths (about
    1-4 px per frame), scale by up to ~1.35x, rotate by up to ~3.4 degrees per
    frame, and pass in front of/behind each other in a fixed z-order (some
    paths are made to cross). leave_view: True makes at least one object leave
    the image completely for >= 3 frames and come back (needs n_frames >=
    MIN_LEAVE_FRAMES); False keeps every object at least partly in view; None
    picks True for ~30% of clips (when n_frames allows). Frame 0 shows every
    object with at least 30% of its in-view area, and every object is visible
    in at least 60% of the frames. See Clip for the array layouts.
    """
    _check_common(rng, height, width)
    lo, hi = _count_range(n_objects)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if leave_view is None:
        leave = bool(rng.random() < 0.3) and n_frames >= MIN_LEAVE_FRAMES
    else:
        leave = bool(leave_view)
        if leave and n_frames < MIN_LEAVE_FRAMES:
            raise ValueError(f"leave_view=True needs n_frames >= {MIN_LEAVE_FRAMES}, got {n_frames}")
    for _ in range(60):
        clip = _try_clip(rng, n_frames, height, width, int(rng.integers(lo, hi + 1)), leave)
        if clip is not None:
            return clip
    raise RuntimeError("could not generate a clip that meets its constraints")  # pragma: no cover


def _try_clip(rng: np.random.Generator, n_frames: int, h: int, w: int, k: int, leave: bool) -> Clip | None:
    side = min(h, w)
    t = np.arange(n_frames, dtype=np.float64)
    # background, larger than the view when it drifts
    drift = np.zeros(2)
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * math.pi)
        drift = rng.uniform(0.1, 0.6) * np.array([math.cos(a), math.sin(a)])
    margin = int(math.ceil(np.abs(drift).max() * max(n_frames - 1, 0) / 2)) + 1
    bg, coarse = _background(rng, h + 2 * margin, w + 2 * margin)
    refs_bg = coarse.reshape(-1, 3).astype(np.float64)

    n_leave = 0
    if leave:
        n_leave = 1 if k == 1 or rng.random() < 0.75 else 2
    leavers = set(rng.permutation(k)[:n_leave].tolist())
    tracks: list[_Track] = []
    kinds: list[str] = []
    colours: list[np.ndarray] = []
    first_mid = None
    for i in range(k):
        kind = KINDS[_pick(rng, _KIND_CDF)]
        lo_ext, hi_ext = (max(14.0, f * side) for f in (_CLIP_LEAVER_EXTENT if i in leavers else _CLIP_EXTENT))
        extent = max(float(np.exp(rng.uniform(math.log(lo_ext), math.log(hi_ext)))), _KIND_MIN_EXTENT[kind])
        shape = _make_shape(rng, kind, extent)
        ratio = float(np.exp(rng.uniform(-0.3, 0.3)))
        scale = ratio ** (t / max(n_frames - 1, 1))
        angle = rng.uniform(0, 2 * math.pi) + rng.uniform(-0.06, 0.06) * t
        r = shape.radius * float(scale.max())
        if i in leavers:
            path = _leave_path(rng, n_frames, h, w, shape, scale, angle)
            if path is None:
                return None
        else:
            b = np.array([min(0.45 * r, 0.45 * w), min(0.45 * r, 0.45 * h)])
            near = first_mid if (first_mid is not None and rng.random() < 0.5) else None
            path = _wander(rng, n_frames, b, np.array([w, h]) - b, (1.0 * side / 256, 3.5 * side / 256), near)
            if first_mid is None:
                first_mid = path[(n_frames - 1) // 2].copy()
        refs_obj = np.concatenate(colours).astype(np.float64) if colours else np.zeros((0, 3))
        look = _make_look(rng, 2 * shape.radius * float(scale.min()), kind, refs_bg, refs_obj)
        colours.append(np.stack([look.c1, look.c2]))
        tracks.append(_Track(shape, look, path[:, 0], path[:, 1], scale, angle, i in leavers))
        kinds.append(kind)

    blur = float(rng.uniform(0.5, 1.0)) if rng.random() < 0.5 else 0.0
    noise = float(rng.uniform(1.5, 6.0))
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    labels = np.empty((n_frames, h, w), np.uint8)
    full_area = np.zeros((n_frames, k), np.int64)  # in-view pixels of each object before occlusion
    vis_area = np.zeros((n_frames, k), np.int64)  # ... after occlusion
    for f in range(n_frames):
        oy = margin + int(round(drift[1] * (f - (n_frames - 1) / 2)))
        ox = margin + int(round(drift[0] * (f - (n_frames - 1) / 2)))
        img = _scratch("frame", (h, w, 3))
        np.copyto(img, bg[oy : oy + h, ox : ox + w])
        lab = labels[f]
        lab.fill(_BG_LABEL)
        for i, tr in enumerate(tracks):
            cx, cy, s, a = float(tr.cx[f]), float(tr.cy[f]), float(tr.scale[f]), float(tr.angle[f])
            box, m = _rasterize(_pose_points(tr.shape, cx, cy, s, a), h, w)
            if box is None:
                continue
            full_area[f, i] = vis_area[f, i] = np.count_nonzero(m)
            covered = _paint(img, lab, i, box, m, _texture(rng, tr.look, box, cx, cy, s, a, h, w), tr.look)
            vis_area[f, :i] -= covered[:i]
        _finish(rng, img, blur, noise, out=frames[f])
    visible = vis_area >= MIN_CLIP_AREA
    # checks: prompt frame, leaving objects really leave and come back, others stay in view
    if not np.all(vis_area[0] >= np.maximum(2 * MIN_CLIP_AREA, 0.3 * full_area[0])):
        return None
    if (visible.mean(axis=0) < 0.6).any():  # hidden (out of view or occluded) for too much of the clip
        return None
    for i, tr in enumerate(tracks):
        gone = full_area[:, i] == 0
        if tr.leaves:
            idx = np.flatnonzero(gone)
            if idx.size < 3 or idx[-1] - idx[0] + 1 != idx.size or not visible[idx[-1] + 1 :, i].any():
                return None
        elif (full_area[:, i] < MIN_CLIP_AREA).any():
            return None
    hidden = np.flatnonzero(~visible.ravel())
    masks = labels[:, None] == np.arange(k, dtype=np.uint8)[None, :, None, None]
    if hidden.size:
        masks.reshape(n_frames * k, h, w)[hidden] = False
    return Clip(frames=frames, masks=masks, visible=visible, kinds=tuple(kinds))


# --------------------------------------------------------------------------- writers


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames


def write_video(frames: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike, fps: float = 10) -> None:
    """Write (T, H, W, 3) uint8 RGB frames to an mp4 file (mp4v codec via cv2.VideoWriter).

    Creates the parent folder; raises OSError if OpenCV cannot open or write the file.
    """
    frames = _check_frames(frames)
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    _, h, w, _ = frames.shape
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"cv2.VideoWriter could not open {path!r} for mp4v video")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise OSError(f"cv2.VideoWriter wrote nothing to {path!r}")


def write_jpeg_folder(
    frames: np.ndarray | Sequence[np.ndarray], folder: str | os.PathLike, quality: int = 95
) -> list[str]:
    """Write (T, H, W, 3) uint8 RGB frames as ``folder/00000.jpg``, ``00001.jpg``, ... and return the paths.

    The layout SAM2's video predictor reads: file stems are plain integers
    (zero-padded to 5 digits, more for >= 100000 frames) so they sort the same
    numerically and as strings. Creates the folder. Raises FileExistsError if
    it already holds JPEGs this call would not overwrite (stale frames would
    be read as part of the video).
    """
    frames = _check_frames(frames)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    digits = max(5, len(str(len(frames) - 1)))
    names = [f"{i:0{digits}d}.jpg" for i in range(len(frames))]
    wanted = set(names)
    stale = sorted(
        n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in (".jpg", ".jpeg") and n not in wanted
    )
    if stale:
        raise FileExistsError(f"{folder!r} already holds other JPEG frames ({', '.join(stale[:3])}...)")
    paths = []
    for frame, name in zip(frames, names):
        p = os.path.join(folder, name)
        bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(p, bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
            raise OSError(f"cv2.imwrite could not write {p!r}")
        paths.append(p)
    return paths
