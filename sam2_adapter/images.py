"""Image bytes and arrays of any common kind -> (H, W, 3) uint8 RGB, the one form the model takes."""

from __future__ import annotations

import cv2
import numpy as np

from sam2_adapter.errors import InputError


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decodes encoded image bytes (PNG, JPEG, TIFF, WebP, BMP; grey, RGBA, 16-bit, palette) to RGB uint8.

    OpenCV applies the EXIF orientation, as browsers (and so the studio) do.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_UNCHANGED would keep alpha (dropped below anyway) but skips the EXIF orientation
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if _has_depth(buffer) else cv2.IMREAD_COLOR
    image = cv2.imdecode(buffer, flags) if buffer.size else None
    if image is None:
        raise InputError(f"{name}: the file is not a readable image ({len(data)} bytes)")
    if image.ndim == 3 and image.shape[2] >= 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return to_rgb8(image, name)


def _has_depth(buffer: np.ndarray) -> bool:
    """PNG and TIFF may carry 16-bit samples, which IMREAD_COLOR would squash without scaling."""
    head = buffer[:4].tobytes()
    return head.startswith(b"\x89PNG") or head[:2] in (b"II", b"MM")


def to_rgb8(image: np.ndarray, name: str) -> np.ndarray:
    """An array in RGB(A) or grey order, any integer or float depth -> (H, W, 3) uint8 RGB."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)) or 0 in image.shape[:2]:
        raise InputError(f"{name}: unsupported image shape {image.shape}")
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif np.issubdtype(image.dtype, np.floating):
        # floats in [0, 1] are the usual convention; anything larger is taken as 0..255
        scale = 255.0 if np.nanmax(image) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale, 0, 255).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.integer):
        image = np.clip(image, 0, 255).astype(np.uint8)
    else:
        raise InputError(f"{name}: unsupported image type {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.shape[2] == 2:  # grey + alpha
        return np.ascontiguousarray(np.repeat(image[:, :, :1], 3, axis=2))
    return np.ascontiguousarray(image[:, :, :3])
