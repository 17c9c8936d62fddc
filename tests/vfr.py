"""Test videos with a variable frame rate, as phones record them, made without any tool but OpenCV.

OpenCV writes a constant-rate mp4 (mp4v); its sample-duration table (`stts`) is then rewritten so that the frames
from `slow_from` on last `slowdown` times as long. Frame k is filled with grey level `GREY_STEP * k`.
"""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np

GREY_STEP = 7


def frame_number(image: np.ndarray) -> int:
    """The k a frame written here was made with, read back from its grey level."""
    return int(round(float(image.mean()) / GREY_STEP))


def write_grey_mp4(path: str | os.PathLike, n: int, size=(64, 48), fps: float = 10) -> None:
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write mp4v"
    for k in range(n):
        writer.write(np.full((size[1], size[0], 3), GREY_STEP * k, np.uint8))
    writer.release()


def _find(data: bytearray, path: list[str], start: int = 0, end: int | None = None) -> list[int]:
    """Offsets of the boxes along `path` (e.g. moov, trak, ...), outermost first."""
    end = len(data) if end is None else end
    while start < end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        if kind.decode("latin1") == path[0]:
            return [start] + (_find(data, path[1:], start + 8, start + size) if len(path) > 1 else [])
        start += size
    raise KeyError(path[0])


def write_vfr_mp4(path: str | os.PathLike, n: int = 36, slow_from: int = 12, slowdown: int = 3,
                  size=(64, 48), fps: float = 10) -> None:
    write_grey_mp4(path, n, size, fps)
    data = bytearray(open(path, "rb").read())
    assert _find(data, ["moov"])[0] > _find(data, ["mdat"])[0], "moov must follow mdat (chunk offsets stay valid)"
    chain = _find(data, ["moov", "trak", "mdia", "minf", "stbl", "stts"])
    stts = chain[-1]
    old_size, _, _, entries, count, delta = struct.unpack(">I4sIIII", data[stts:stts + 24])
    assert (entries, count) == (1, n), "expected one constant sample duration"
    table = [(slow_from, delta), (n - slow_from, delta * slowdown)]
    new = struct.pack(">I4sII", 16 + 8 * len(table), b"stts", 0, len(table))
    new += b"".join(struct.pack(">II", *entry) for entry in table)
    data[stts:stts + old_size] = new
    for parent in chain[:-1]:
        struct.pack_into(">I", data, parent, struct.unpack_from(">I", data, parent)[0] + len(new) - old_size)
    # The durations in the headers must agree with the new table (version-0 boxes: 32-bit fields). The edit list
    # would cut the presentation at the old duration: it becomes a 'free' box.
    scale = sum(c * d for c, d in table) / (n * delta)
    for box_path, field in ((["moov", "mvhd"], 24), (["moov", "trak", "tkhd"], 28),
                            (["moov", "trak", "mdia", "mdhd"], 24)):
        at = _find(data, box_path)[-1]
        assert data[at + 8] == 0, "version-0 header expected"
        struct.pack_into(">I", data, at + field, round(struct.unpack_from(">I", data, at + field)[0] * scale))
    try:
        edts = _find(data, ["moov", "trak", "edts"])[-1]
        data[edts + 4:edts + 8] = b"free"
    except KeyError:
        pass
    open(path, "wb").write(bytes(data))
