"""Video frames decoded on demand: a video file, an HTTP(S) stream or a folder of images.

Nothing here holds more than a few frames: `FrameSource.frames` decodes in a background thread into a bounded
queue (`read_ahead` frames), seeks to the start frame, and runs forward or backward. A frame that cannot be
decoded comes out as a `Frame` with `error` set (and no image) so the consumer can report it and carry on;
a source that cannot be opened at all, has no frames, or is asked for a frame beyond its end raises `InputError`.

    with open_video("clip.mp4") as video:               # or a folder of JPEG/PNG frames, or an https URL
        for frame in video.frames(start=10, direction=-1, max_frames=5):
            ...                                          # frame.index, frame.image (H, W, 3) uint8 RGB

An HTTP(S) video is streamed to a temporary file (chunked, never held in memory) with the caller's headers, e.g.
`{"Authorization": "Bearer ..."}`; header values and URL query strings (signed tokens) never reach logs or error
messages. OpenCV then decodes from that file. The file is kept a while after `close()` (`StreamedVideos`), so that
the next call on the same video (the studio's AI Tracker, every few seconds) does not stream it again.
"""

from __future__ import annotations

import atexit
import http.client
import logging
import os
import queue
import re
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import cv2
import numpy as np

from sam2_adapter.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "Frame",
    "FrameSource",
    "FrameReader",
    "VideoFileSource",
    "ImageFolderSource",
    "HttpVideoSource",
    "StreamedVideos",
    "open_video",
    "redact_url",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Consecutive undecodable frames after which a video file is taken to end there (its header over-counts).
_MAX_CONSECUTIVE_FAILURES = 3
# Frames before this one are reached by decoding from the start: as cheap as a seek, which decodes from a key frame.
_DECODE_FROM_START_BELOW = 16
# Seeks tried (each retried earlier by as many frames as it overshot) before decoding from the start.
_SEEK_ATTEMPTS = 3
# How far (in frame intervals) a packet timestamp may stray from an even grid for the video to count as
# constant-rate: timestamps rounded to the container's time base stray a little, a change of frame rate adds up.
_GRID_TOLERANCE = 0.1
# The timelines of the latest video files seeked in (by path, size, mtime and frame count), so that a file opened
# again does not pay for its timeline again.
_TIMELINES: "OrderedDict[tuple, Callable[[float], int | None]]" = OrderedDict()
_TIMELINES_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame.

    index: position in the video, from 0.
    image: (H, W, 3) uint8 RGB at the video's own resolution; None when the frame could not be decoded.
    error: why the frame could not be decoded (None when it was).
    prepared: what the reader's `prepare(image)` returned, computed in the read-ahead thread (None without one).
    """

    index: int
    image: np.ndarray | None
    error: str | None = None
    prepared: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None


def redact_url(url: str) -> str:
    """The URL without credentials, query string or fragment: safe for logs and error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "?<redacted>" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + query


class FrameReader:
    """An iterator of `Frame`s decoded ahead in a background thread; `close()` (or leaving a `with`) stops it."""

    def __init__(self, produce: Iterator[Frame], prepare: Callable[[np.ndarray], Any] | None, read_ahead: int,
                 name: str):
        self._produce = produce
        self._prepare = prepare
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(read_ahead)))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=f"frames:{name}", daemon=True)
        self._thread.start()

    _END = object()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self._produce:
                if self._stop.is_set():
                    break
                if frame.image is not None and self._prepare is not None:
                    frame = Frame(frame.index, frame.image, frame.error, self._prepare(frame.image))
                if not self._put(frame):
                    break
            self._put(self._END)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)
        finally:
            close = getattr(self._produce, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> "FrameReader":
        return self

    def __next__(self) -> Frame:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            self._thread.join()
            raise item
        return item

    def close(self) -> None:
        """Stops the read-ahead thread and drops what it had decoded."""
        self._done = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._done:
            self._stop.set()


class FrameSource:
    """A video whose frames are decoded on demand.

    name: a description safe for logs (file name, or URL without its query).
    num_frames: the number of frames (a video file's header count, which a broken file may over-state: the
        frames past its real end come out as errors, then the reader stops).
    height, width: the frame size in pixels (any aspect ratio).
    fps: frames per second when the container says, else None.
    """

    name: str
    num_frames: int
    height: int
    width: int
    fps: float | None = None

    def frames(self, start: int = 0, direction: int = 1, max_frames: int | None = None, *,
               prepare: Callable[[np.ndarray], Any] | None = None, read_ahead: int = 4) -> FrameReader:
        """Frames `start`, `start + direction`, ... up to the end (or frame 0 backward), at most `max_frames`.

        prepare: run on each decoded image in the read-ahead thread (e.g. resize and normalise for the model);
            its result is `Frame.prepared`.
        """
        if direction not in (1, -1):
            raise ValueError(f"direction must be 1 or -1, got {direction!r}")
        self.check_index(start, "start frame")
        count = self.num_frames - start if direction == 1 else start + 1
        if max_frames is not None:
            if max_frames < 1:
                raise InputError(f"max_frames must be at least 1, got {max_frames}")
            count = min(count, int(max_frames))
        return FrameReader(self._generate(start, direction, count), prepare, read_ahead, self.name)

    def read(self, index: int) -> Frame:
        """One frame, decoded now (no thread)."""
        self.check_index(index, "frame")
        gen = self._generate(index, 1, 1)
        try:
            return next(gen)
        finally:
            gen.close()

    def check_index(self, index: int, what: str = "frame") -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InputError(f"{what} {index!r} of {self.name} is not an integer frame number")
        if index < 0 or index >= self.num_frames:
            raise InputError(f"{what} {int(index)} is beyond the video {self.name}: it has frames 0..{self.num_frames - 1}")
        return int(index)

    def _generate(self, start: int, direction: int, count: int) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.num_frames} frames, {self.width}x{self.height})"


# --------------------------------------------------------------------------------------------- video files


class VideoFileSource(FrameSource):
    """A video file OpenCV can decode (mp4, mov, avi, mkv, webm, ...), read sequentially after one seek.

    Each reader opens its own `cv2.VideoCapture` in its own thread. Backward reading decodes chunks of
    `backward_chunk` frames forward from a seek point and hands them out in reverse, so memory stays bounded.
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None, backward_chunk: int = 8):
        self.path = os.fspath(path)
        self.name = name or os.path.basename(self.path)
        self.backward_chunk = max(1, int(backward_chunk))
        if not os.path.isfile(self.path):
            raise InputError(f"video file {self.name} not found")
        cap = cv2.VideoCapture(self.path)
        try:
            if not cap.isOpened():
                raise InputError(f"video file {self.name} cannot be opened: not a video, or a codec OpenCV lacks")
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            ok, bgr = cap.read()
            if not ok or bgr is None:
                raise InputError(f"video file {self.name} has no decodable frames")
        finally:
            cap.release()
        self.height, self.width = int(bgr.shape[0]), int(bgr.shape[1])
        self.fps = fps if fps > 0 else None
        if count <= 0:  # some containers do not say: count by decoding (grab only, no colour conversion)
            count = self._count_frames()
        self.num_frames = count
        self._locate: Callable[[float], int | None] | None = None  # see `_timeline`
        self._timeline_lock = threading.Lock()

    def _count_frames(self) -> int:
        cap = cv2.VideoCapture(self.path)
        n = 0
        try:
            while cap.grab():
                n += 1
        finally:
            cap.release()
        return n

    def _open_at(self, index: int) -> cv2.VideoCapture:
        """A capture whose next `read()` is frame `index` (counted from the first frame, as sequential decoding does).

        OpenCV's frame seek turns `index` into a time with the average frame rate, so on a variable-frame-rate
        video (phones) it lands on another frame while still reporting `index`. A seek is therefore trusted only
        when the timestamp of the frame it landed on names that frame on the video's timeline; otherwise it is
        retried earlier, and at worst the frames are decoded from the start.
        """
        if index < _DECODE_FROM_START_BELOW:  # cheaper than a seek, and needs no timeline
            return self._decode_from_start(index)
        locate = self._timeline()
        target = index
        for _ in range(_SEEK_ATTEMPTS):
            cap = self._capture()
            cap.set(cv2.CAP_PROP_POS_FRAMES, target)
            landed = locate(cap.get(cv2.CAP_PROP_POS_MSEC))  # the last frame the seek decoded
            if landed is not None and landed < index:
                for _ in range(index - 1 - landed):  # sequential from here: as exact as from the start
                    cap.grab()
                return cap
            cap.release()
            if landed is None:
                break
            target -= landed - (index - 1)  # landed that many frames too late: ask for as many earlier
            if target < _DECODE_FROM_START_BELOW:
                break
        return self._decode_from_start(index)

    def _capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise InputError(f"video file {self.name} cannot be opened")
        return cap

    def _decode_from_start(self, index: int) -> cv2.VideoCapture:
        cap = self._capture()
        for _ in range(index):  # a frame that fails to decode still counts, as `_read_run` counts it
            cap.grab()
        return cap

    def _timeline(self) -> Callable[[float], int | None]:
        """Maps a decoded frame's timestamp (`CAP_PROP_POS_MSEC`, ms) to its index (None: not a known frame, or
        frame 0, whose 0 ms OpenCV also reports after a failed decode). Built on the first seek, once per file
        (the AI Tracker opens the same kept file on every call).

        Constant frame rate, the common case, is proven from the packet timestamps alone (OpenCV's raw mode reads
        them without decoding); the timeline is then a grid anchored on decoded frame 1. Otherwise one grab-only
        pass records every decoded frame's own timestamp, which later seeks are looked up in exactly.
        """
        with self._timeline_lock:
            if self._locate is None:
                stat = os.stat(self.path)
                key = (os.path.realpath(self.path), stat.st_size, stat.st_mtime_ns, self.num_frames)
                with _TIMELINES_LOCK:
                    self._locate = _TIMELINES.get(key)
                if self._locate is None:
                    self._locate = self._constant_rate_grid() or self._decoded_timestamps()
                    with _TIMELINES_LOCK:
                        _TIMELINES[key] = self._locate
                        while len(_TIMELINES) > 16:
                            _TIMELINES.popitem(last=False)
            return self._locate

    def _constant_rate_grid(self) -> Callable[[float], int | None] | None:
        cap = self._capture()
        try:
            if not cap.set(cv2.CAP_PROP_FORMAT, -1):  # this backend has no raw mode
                return None
            stamps = []
            while cap.grab():
                stamps.append(cap.get(cv2.CAP_PROP_POS_MSEC))
        finally:
            cap.release()
        n = len(stamps)
        if n != self.num_frames or n < 3:
            return None
        stamps.sort()  # packets come in decoding order
        step = (stamps[-1] - stamps[0]) / (n - 1)
        if not step > 0 or any(abs(t - stamps[0] - k * step) > _GRID_TOLERANCE * step for k, t in enumerate(stamps)):
            return None
        cap = self._capture()
        try:
            if not (cap.grab() and cap.grab()):
                return None
            origin = cap.get(cv2.CAP_PROP_POS_MSEC) - step  # frame 1: frame 0 may carry a decoding timestamp
        finally:
            cap.release()
        num_frames = n

        def locate(msec: float) -> int | None:
            position = (msec - origin) / step
            k = round(position)
            return k if 1 <= k < num_frames and abs(position - k) <= 2 * _GRID_TOLERANCE else None

        return locate

    def _decoded_timestamps(self) -> Callable[[float], int | None]:
        cap = self._capture()
        index_of: dict[float, int | None] = {}
        try:
            k, failures = 0, 0
            while k < self.num_frames and failures < _MAX_CONSECUTIVE_FAILURES:
                if cap.grab():
                    failures = 0
                    key = round(cap.get(cv2.CAP_PROP_POS_MSEC), 3)
                    index_of[key] = None if key in index_of else k  # a repeated timestamp names no frame
                else:
                    failures += 1
                k += 1
        finally:
            cap.release()
        log.info("%s: frame timestamps are not evenly spaced (variable frame rate); seeks are checked against "
                 "each frame's own timestamp", self.name)

        def locate(msec: float) -> int | None:
            k = index_of.get(round(msec, 3))
            return k if k else None

        return locate

    def _read_run(self, first: int, count: int) -> Iterator[Frame]:
        """Frames first .. first+count-1 in order, from one seek; undecodable ones as error frames."""
        cap = self._open_at(first)
        try:
            index, failures = first, 0
            while index < first + count:
                ok, bgr = cap.read()
                if ok and bgr is not None:
                    failures = 0
                    if bgr.shape[:2] != (self.height, self.width):
                        yield Frame(index, None, f"frame {index} of {self.name} is {bgr.shape[1]}x{bgr.shape[0]}, "
                                                 f"the video is {self.width}x{self.height}: skipped")
                    else:
                        yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    index += 1
                    continue
                failures += 1
                yield Frame(index, None, f"frame {index} of {self.name} could not be decoded: skipped")
                index += 1
                if failures >= _MAX_CONSECUTIVE_FAILURES:
                    log.warning("%s: %d frames in a row could not be decoded after frame %d; taking it as the end "
                                "of the video (its header says %d frames)", self.name, failures, index - failures,
                                self.num_frames)
                    return
                cap.release()  # the decoder may be stuck on the broken frame: seek past it
                cap = self._open_at(index)
        finally:
            cap.release()

    def _generate(self, start: int, direction: int, count: int) -> Iterator[Frame]:
        if direction == 1:
            yield from self._read_run(start, count)
            return
        last = start - count + 1
        hi = start
        while hi >= last:
            lo = max(last, hi - self.backward_chunk + 1)
            chunk = list(self._read_run(lo, hi - lo + 1))
            if len(chunk) < hi - lo + 1:  # the run stopped early: the frames it did not reach are missing
                got = {f.index for f in chunk}
                chunk += [Frame(i, None, f"frame {i} of {self.name} could not be decoded: skipped")
                          for i in range(lo, hi + 1) if i not in got]
                chunk.sort(key=lambda f: f.index)
            for frame in reversed(chunk):
                yield frame
            del chunk
            hi = lo - 1


# --------------------------------------------------------------------------------------------- image folders


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class ImageFolderSource(FrameSource):
    """A folder of frame images (JPEG, PNG, ...), in the order of the numbers in their names (`00000.jpg`, ...)."""

    def __init__(self, folder: str | os.PathLike, name: str | None = None):
        self.folder = os.fspath(folder)
        self.name = name or os.path.basename(os.path.normpath(self.folder))
        if not os.path.isdir(self.folder):
            raise InputError(f"frame folder {self.name} not found")
        files = [n for n in os.listdir(self.folder)  # not hidden ones (macOS leaves ._name copies on shared drives)
                 if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS and not n.startswith(".")
                 and os.path.isfile(os.path.join(self.folder, n))]
        if not files:
            raise InputError(f"frame folder {self.name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.files = sorted(files, key=_natural_key)
        self.num_frames = len(self.files)
        self.fps = None
        for name_ in self.files:  # the first decodable image gives the size
            image = self._decode(name_)
            if image is not None:
                self.height, self.width = image.shape[:2]
                break
        else:
            raise InputError(f"frame folder {self.name}: none of its {len(self.files)} images can be decoded")

    def _decode(self, file_name: str) -> np.ndarray | None:
        path = os.path.join(self.folder, file_name)
        data = np.fromfile(path, dtype=np.uint8)  # imread cannot read non-ASCII paths on some platforms
        if data.size == 0:
            return None
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _generate(self, start: int, direction: int, count: int) -> Iterator[Frame]:
        for index in range(start, start + direction * count, direction):
            file_name = self.files[index]
            image = self._decode(file_name)
            if image is None:
                yield Frame(index, None, f"frame {index} ({file_name} in {self.name}) could not be decoded: skipped")
            elif image.shape[:2] != (self.height, self.width):
                yield Frame(index, None, f"frame {index} ({file_name} in {self.name}) is {image.shape[1]}x"
                                         f"{image.shape[0]}, the video is {self.width}x{self.height}: skipped")
            else:
                yield Frame(index, image)


# --------------------------------------------------------------------------------------------- HTTP(S) streams


class HttpVideoSource(VideoFileSource):
    """A video behind an HTTP(S) URL, streamed with the caller's headers into a local file, then decoded there.

    headers: sent with the request (e.g. an Authorization token); never logged. The URL's query string (where
        signed URLs keep their token) is never logged either. Redirects keep the headers only on the same host.
    downloads: where streamed files are kept between calls (default: the process's `STREAMED_VIDEOS`; a
        `StreamedVideos(max_bytes=0)` keeps none: the file goes on `close()`).
    """

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout: float = 60.0,
                 max_bytes: int | None = None, backward_chunk: int = 8, downloads: "StreamedVideos | None" = None):
        self.url = url
        safe = redact_url(url)
        store = downloads if downloads is not None else STREAMED_VIDEOS
        path, release = store.acquire(url, headers or {}, timeout, max_bytes)
        try:
            super().__init__(path, name=safe, backward_chunk=backward_chunk)
        except BaseException:
            release(keep=False)  # what does not open as a video is not kept for the next call
            raise
        self._finalizer = weakref.finalize(self, release)

    def close(self) -> None:
        self._finalizer()


@dataclass
class _Streamed:
    path: str
    size: int
    validators: tuple[str | None, str | None]  # ETag, Last-Modified
    last_used: float
    users: int = 0
    stale: bool = False


class StreamedVideos:
    """Videos streamed from http(s) URLs, kept on local disk after use (at most `max_bytes` in all; a file idle
    for `ttl` seconds goes at the next call), so that calls on the same video stream it once.

    Before a kept file serves a call, one request with that call's headers (asking for a single byte) checks that
    the caller may read the URL and that the video is unchanged (the same size, and the same ETag and
    Last-Modified where the server sends them); otherwise the video is streamed anew. A file in use is never
    deleted; what is left is deleted when the process exits.
    """

    def __init__(self, max_bytes: int = 2 << 30, ttl: float = 900.0, temp_dir: str | os.PathLike | None = None):
        self.max_bytes, self.ttl, self.temp_dir = max_bytes, ttl, temp_dir
        self.downloads = 0  # videos streamed whole, for tests and logs
        self._entries: dict[str, _Streamed] = {}
        self._lock = threading.Lock()
        _STORES.add(self)

    def acquire(self, url: str, headers: Mapping[str, str], timeout: float = 60.0,
                max_bytes: int | None = None) -> tuple[str, Callable[..., None]]:
        """(local path of the video at `url`, a function to call once done with it: with `keep=False` the file
        is not kept for later calls)."""
        safe = redact_url(url)
        with self._lock:
            self._trim()
            kept = self._entries.get(url)
        if kept is not None:
            size, validators = _probe(url, safe, headers, timeout)
            same = size == kept.size and all(a == b for a, b in zip(validators, kept.validators) if a and b)
            with self._lock:
                if same and not kept.stale and self._entries.get(url) is kept:
                    kept.users += 1
                    log.info("%s: the video streamed %.0f s ago, unchanged", safe, time.monotonic() - kept.last_used)
                    return kept.path, lambda keep=True: self._release(url, kept, keep)
                if self._entries.get(url) is kept:
                    self._drop(url)
        suffix = os.path.splitext(urllib.parse.urlsplit(url).path)[1][:8] or ".mp4"
        fd, path = tempfile.mkstemp(prefix="sam2-video-", suffix=suffix, dir=self.temp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                validators = _stream(url, safe, headers, timeout, out, max_bytes)
        except BaseException:
            _remove_file(path)
            raise
        size = os.path.getsize(path)
        log.info("streamed %s (%d bytes) to a local file", safe, size)
        entry = _Streamed(path, size, validators, time.monotonic(), users=1)
        with self._lock:
            self.downloads += 1
            if url in self._entries:
                self._drop(url)
            self._entries[url] = entry
        return path, lambda keep=True: self._release(url, entry, keep)

    def clear(self) -> None:
        """Deletes every kept file not in use (those in use, once released)."""
        with self._lock:
            for url in list(self._entries):
                self._drop(url)

    def _release(self, url: str, entry: _Streamed, keep: bool = True) -> None:
        with self._lock:
            entry.users -= 1
            entry.last_used = time.monotonic()
            if not keep and self._entries.get(url) is entry:
                self._drop(url)
            if entry.stale and entry.users == 0:
                _remove_file(entry.path)
            self._trim()

    def _drop(self, url: str) -> None:  # under the lock
        entry = self._entries.pop(url)
        entry.stale = True
        if entry.users == 0:
            _remove_file(entry.path)

    def _trim(self) -> None:  # under the lock: expired files, then the least recently used over the bound
        now = time.monotonic()
        idle = sorted((e.last_used, url) for url, e in self._entries.items() if e.users == 0)
        total = sum(e.size for e in self._entries.values())
        for last_used, url in idle:
            if now - last_used >= self.ttl or total > self.max_bytes:
                total -= self._entries[url].size
                self._drop(url)


_STORES: "weakref.WeakSet[StreamedVideos]" = weakref.WeakSet()
atexit.register(lambda: [store.clear() for store in list(_STORES)])

STREAMED_VIDEOS = StreamedVideos()
"""The process's kept streamed videos (2 GiB; a file idle 15 minutes goes at the next call), shared by every
tracker."""


def _request(url: str, safe: str, headers: Mapping[str, str], timeout: float, extra: Mapping[str, str] = {}):
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"video URL {safe}: only http and https are supported")
    request = urllib.request.Request(url, headers={**headers, **extra})
    opener = urllib.request.build_opener(_SameHostRedirects(set(headers)))
    try:
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise InputError(f"video URL {safe}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(f"video URL {safe} could not be read: {type(error).__name__}: "
                         f"{_scrub(str(reason), url, headers)}") from None


def _validators(response) -> tuple[str | None, str | None]:
    return response.headers.get("ETag"), response.headers.get("Last-Modified")


def _stream(url: str, safe: str, headers: Mapping[str, str], timeout: float, out,
            max_bytes: int | None) -> tuple[str | None, str | None]:
    """The body of `url` into `out`; returns the response's validators."""
    with _request(url, safe, headers, timeout) as response:
        total = 0
        try:
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise InputError(f"video URL {safe}: larger than the limit of {max_bytes} bytes")
                out.write(chunk)
        except (OSError, http.client.HTTPException) as error:  # IncompleteRead: a chunked body cut short
            raise InputError(f"video URL {safe} could not be read: {type(error).__name__}: "
                             f"{_scrub(str(error), url, headers)}") from None
        validators = _validators(response)
        length = response.headers.get("Content-Length")
    if total == 0:
        raise InputError(f"video URL {safe} returned no data")
    if length and length.isdigit() and total < int(length):  # http.client ends a body cut short without an error
        raise InputError(f"video URL {safe}: the connection closed after {total} of {length} bytes")
    return validators


def _probe(url: str, safe: str, headers: Mapping[str, str], timeout: float) -> tuple[int | None, tuple]:
    """(the video's size in bytes, or None when the server does not say; its validators), asking for one byte
    with the caller's headers: an InputError when the caller may not read it."""
    with _request(url, safe, headers, timeout, {"Range": "bytes=0-0"}) as response:
        whole = re.fullmatch(r"bytes 0-0/(\d+)", response.headers.get("Content-Range") or "")
        length = response.headers.get("Content-Length")
        if whole:
            size = int(whole.group(1))
        elif response.status == 200 and length and length.isdigit():  # the range ignored: the whole length
            size = int(length)
        else:
            size = None
        return size, _validators(response)


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, dropping the caller's headers (its token) when a redirect leaves the original host, or
    goes from https to plain http."""

    def __init__(self, header_names):
        super().__init__()
        self.header_names = {name.lower() for name in header_names} | {"authorization", "cookie"}

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        to, since = urllib.parse.urlsplit(newurl), urllib.parse.urlsplit(req.full_url)
        if new is not None and (to.netloc != since.netloc or (since.scheme == "https" and to.scheme != "https")):
            for name in list(new.headers):
                if name.lower() in self.header_names:
                    del new.headers[name]
        return new


def _scrub(text: str, url: str, headers: Mapping[str, str]) -> str:
    """Removes the URL (with its query) and header values from an error text."""
    secrets = [url, urllib.parse.urlsplit(url).query] + [str(v) for v in headers.values()]
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    return text


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------- entry point


def open_video(source: str | os.PathLike | FrameSource, *, headers: Mapping[str, str] | None = None,
               timeout: float = 60.0, temp_dir: str | os.PathLike | None = None) -> FrameSource:
    """A `FrameSource` for a video file, a folder of frame images, or an http(s) URL (streamed with `headers`)."""
    if isinstance(source, FrameSource):
        return source
    text = os.fspath(source)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        downloads = None if temp_dir is None else StreamedVideos(max_bytes=0, temp_dir=temp_dir)  # kept by none
        return HttpVideoSource(text, headers=headers, timeout=timeout, downloads=downloads)
    if os.path.isdir(text):
        return ImageFolderSource(text)
    if os.path.isfile(text):
        return VideoFileSource(text)
    raise InputError(f"video {os.path.basename(text) or text} not found")

