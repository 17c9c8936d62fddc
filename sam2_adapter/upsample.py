"""Low-res mask logits -> the mask at image size, computed only where it can be non-empty.

SAM 2 predicts masks as low-res logits (a quarter of the model's input size a side) and upsamples them to the
image bilinearly. A mask at image size costs far more than the logits (20 masks of a 4K frame: 165 M pixels),
so here a mask is upsampled only inside the region outside which no pixel can be positive, and kept as that
crop with its origin. Shared by the image segmenter and the video tracker; no torchvision import (the tracker's
process stays as small as SAM 2's model needs).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Multiply-adds of the region's two matrix products that cost about as much as interpolating one pixel of the
# whole image with `F.interpolate` (one fused pass): on the development CPU a 1920x1080 image from 256x256 logits
# took 3.7 ms that way, and the products over the whole image (1080 x 256 x (256 + 1920) multiply-adds) 15 ms.
FULL_INTERPOLATION_MACS_PER_PIXEL = 64


def upsample_logits(logits: torch.Tensor, image_hw: tuple[int, int], threshold: float,
                    within: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(s_h, s_w) low-res logits -> the mask at image size as `F.interpolate(bilinear, align_corners=False) >
    threshold` gives it over the whole image, computed only inside the region where a pixel can be positive
    (and inside `within`, pixel bounds x0, y0, x1, y1, when the caller keeps no pixel outside them):
    (crop, (x0, y0)), or None when no pixel is.

    Bilinear interpolation is separable: the crop is `Ay @ L @ Ax.T`, with L the low-res cells the region reads and
    Ay, Ax the interpolation weights of the region's rows and columns (two per row). For a region of an object, two
    small matrix products cost a fraction of interpolating the whole image, on any device. Their cost grows with
    the region's pixels times the cells across it, so a region spanning most of the image (a large object, or the
    noise of untrained weights) is cut from `F.interpolate` of the whole image instead, whichever costs less.
    """
    bounds = positive_region((logits > threshold).cpu().numpy(), image_hw)
    if bounds is None:
        return None
    x0, y0, x1, y1 = bounds
    if within is not None:
        x0, y0 = max(x0, within[0]), max(y0, within[1])
        x1, y1 = min(x1, within[2]), min(y1, within[3])
        if x0 >= x1 or y0 >= y1:
            return None
    (height, width), (s_h, s_w) = image_hw, logits.shape
    # The products' multiply-adds: the region's rows x the cells across it x (the cells down it + its columns).
    products = (y1 - y0) * ((x1 - x0) * s_w / width) * ((y1 - y0) * s_h / height + (x1 - x0))
    if products > FULL_INTERPOLATION_MACS_PER_PIXEL * height * width:
        full = F.interpolate(logits[None, None].float(), image_hw, mode="bilinear", align_corners=False)[0, 0]
        crop = full[y0:y1, x0:x1].cpu().numpy() > threshold
    else:
        ay, r0, r1 = interpolation_weights(y0, y1, s_h, height, logits.device)
        ax, c0, c1 = interpolation_weights(x0, x1, s_w, width, logits.device)
        crop = (ay @ logits[r0:r1, c0:c1].float() @ ax.T).cpu().numpy() > threshold
    if not crop.any():
        return None
    return crop, (x0, y0)


def interpolation_weights(first: int, stop: int, cells: int, pixels: int,
                          device: torch.device) -> tuple[torch.Tensor, int, int]:
    """Bilinear weights (stop - first, c1 - c0) of output pixels first..stop-1 over low-res cells c0..c1-1, with
    PyTorch's align_corners=False rule: source coordinate (x + 0.5) * cells / pixels - 0.5, clamped to the grid."""
    source = ((np.arange(first, stop) + 0.5) * (cells / pixels) - 0.5).clip(0, cells - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, cells - 1)
    c0, c1 = int(lower[0]), int(upper[-1]) + 1
    weights = np.zeros((stop - first, c1 - c0), np.float32)
    rows = np.arange(stop - first)
    fraction = source - lower
    weights[rows, lower - c0] = 1 - fraction
    weights[rows, upper - c0] += fraction  # at the grid's edge upper == lower: both weights on one cell
    return torch.from_numpy(weights).to(device), c0, c1


def positive_region(positive: np.ndarray, image_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Image region x0, y0, x1, y1 outside which bilinear upsampling of low-res logits cannot be positive.

    An output pixel mixes the (up to) 2x2 low-res cells around its source coordinate; if none of them is positive
    neither is the pixel. So the region is the positive cells' bounding box grown by one cell, mapped to pixels.
    """
    rows = np.flatnonzero(positive.any(axis=1))
    cols = np.flatnonzero(positive.any(axis=0))
    if len(rows) == 0:
        return None
    s_h, s_w = positive.shape
    height, width = image_hw

    def span(first: int, last: int, cells: int, pixels: int) -> tuple[int, int]:
        ratio = pixels / cells
        lo = math.floor((first - 0.5) * ratio - 0.5)
        hi = math.ceil((last + 1.5) * ratio - 0.5) + 1
        return max(lo, 0), min(hi, pixels)

    y0, y1 = span(int(rows[0]), int(rows[-1]), s_h, height)
    x0, x1 = span(int(cols[0]), int(cols[-1]), s_w, width)
    return x0, y0, x1, y1
