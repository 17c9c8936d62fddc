"""Frame sources: decoding on demand from video files, frame folders and HTTP streams; seeking, direction,
read-ahead, non-square frames, and every bad input as an InputError or a reported skip."""

import http.server
import logging
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from sam2_adapter.errors import InputError
from sam2_adapter.frames import (
    FrameSource,
    STREAMED_VIDEOS,
    HttpVideoSource,
    ImageFolderSource,
    StreamedVideos,
    VideoFileSource,
    _SameHostRedirects,
    open_video,
    redact_url,
)
from sam2_adapter.scenes import write_jpeg_folder, write_video
from vfr import frame_number, write_grey_mp4, write_vfr_mp4

H, W = 72, 120  # not square
N = 20
TOKEN = "s3cret-token-value"


def _frames(n=N, h=H, w=W):
    """Frames that differ a lot from each other (a frame number encoded as the brightness and a moving bar)."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, :, :, 0] = (10 * i) % 250
        frames[i, :, (5 * i) % w:(5 * i) % w + 8, 1] = 255
        frames[i, : h // 2, :, 2] = 128
    return frames


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(_frames(), path)
    return path


@pytest.fixture(scope="module")
def decoded(mp4):
    """Every frame of the mp4, decoded sequentially by OpenCV: what seeking must reproduce."""
    cap = cv2.VideoCapture(str(mp4))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def _indices(reader):
    with reader:
        return [(f.index, f.image) for f in reader]


def test_video_file_size_count_and_sequential_decode(mp4, decoded):
    with open_video(mp4) as video:
        assert isinstance(video, VideoFileSource)
        assert (video.num_frames, video.height, video.width) == (N, H, W)
        got = _indices(video.frames())
    assert [i for i, _ in got] == list(range(N))
    assert all(np.array_equal(image, decoded[i]) for i, image in got)


@pytest.mark.parametrize("start", [0, 7, 13, N - 1])
def test_video_file_seeks_to_start_frame(mp4, decoded, start):
    video = VideoFileSource(mp4)
    got = _indices(video.frames(start=start, max_frames=4))
    assert [i for i, _ in got] == list(range(start, min(start + 4, N)))
    for i, image in got:
        assert np.array_equal(image, decoded[i]), f"frame {i} after seeking to {start} differs"


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_video_file_backward_in_bounded_chunks(mp4, decoded, chunk):
    video = VideoFileSource(mp4, backward_chunk=chunk)
    got = _indices(video.frames(start=15, direction=-1))
    assert [i for i, _ in got] == list(range(15, -1, -1))
    assert all(np.array_equal(image, decoded[i]) for i, image in got)
    got = _indices(video.frames(start=15, direction=-1, max_frames=5))
    assert [i for i, _ in got] == [15, 14, 13, 12, 11]


VFR_N = 36  # frames 12.. last 3x as long: OpenCV's frame seek (by time at the average rate) misses from frame 17 on


@pytest.fixture(scope="module", params=["variable", "constant"])
def numbered_mp4(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("rate") / f"{request.param}.mp4"
    (write_vfr_mp4 if request.param == "variable" else write_grey_mp4)(path, VFR_N)
    return request.param, path


def _number(frame):
    return None if frame.image is None else frame_number(frame.image)


def _numbers(reader):
    with reader:
        return [(f.index, _number(f)) for f in reader]


def test_every_way_of_reaching_frame_k_gives_frame_k_at_any_frame_rate(numbered_mp4):
    """read(k), a pass forward from every start and a pass backward from every start give frame k's pixels under
    index k, on a variable-frame-rate video (as phones record) and a constant-rate one."""
    rate, path = numbered_mp4
    video = VideoFileSource(path, backward_chunk=5)
    if rate == "constant":  # proven constant from packet timestamps: no decoding pass to build a timeline
        video._decoded_timestamps = lambda: pytest.fail("a constant-rate video was decoded to index its frames")
    assert video.num_frames == VFR_N
    assert [(k, _number(video.read(k))) for k in range(VFR_N)] == [(k, k) for k in range(VFR_N)]
    for start in range(VFR_N):
        assert _numbers(video.frames(start)) == [(k, k) for k in range(start, VFR_N)], f"forward from {start}"
        assert _numbers(video.frames(start, -1)) == [(k, k) for k in range(start, -1, -1)], f"backward from {start}"
    # the same file opened again (the AI Tracker's kept video, call after call): its timeline is not built again
    again = VideoFileSource(path)
    again._constant_rate_grid = again._decoded_timestamps = lambda: pytest.fail("the timeline was built again")
    assert _number(again.read(VFR_N - 3)) == VFR_N - 3


def test_folder_numeric_order_non_square_and_prepare_in_reader_thread(tmp_path):
    frames = _frames(12)
    for i, frame in enumerate(frames):  # 0.png .. 11.png: numeric order, not string order
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (tmp_path / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # a macOS AppleDouble file: not a frame
    video = open_video(tmp_path)
    assert isinstance(video, ImageFolderSource)
    assert (video.num_frames, video.height, video.width) == (12, H, W)
    threads = set()

    def prepare(image):
        threads.add(threading.current_thread().name)
        return image.shape

    with video.frames(start=9, prepare=prepare) as reader:
        got = list(reader)
    assert [f.index for f in got] == [9, 10, 11]
    assert all(np.array_equal(f.image, frames[f.index]) for f in got)  # PNG: lossless
    assert all(f.prepared == (H, W, 3) for f in got)
    assert threading.current_thread().name not in threads
    assert [f.index for f in video.frames(start=2, direction=-1)] == [2, 1, 0]
    assert np.array_equal(video.read(4).image, frames[4])


def test_read_ahead_is_bounded_and_close_stops_the_thread(tmp_path):
    write_jpeg_folder(_frames(30), tmp_path)
    decoded = []

    class Counting(ImageFolderSource):
        def _decode(self, name):
            decoded.append(name)
            return super()._decode(name)

    video = Counting(tmp_path)
    decoded.clear()
    reader = video.frames(read_ahead=2)
    first = next(reader)
    time.sleep(0.3)
    assert first.index == 0
    assert len(decoded) <= 1 + 2 + 1  # the frame handed out, a full queue, one waiting to be queued
    reader.close()
    assert not reader._thread.is_alive()
    with pytest.raises(StopIteration):
        next(reader)


def test_corrupt_frame_in_the_middle_is_reported_and_the_rest_read(tmp_path):
    write_jpeg_folder(_frames(8), tmp_path)
    (tmp_path / "00003.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "00005.jpg").write_bytes(b"")
    got = list(open_video(tmp_path).frames())
    assert [f.index for f in got] == list(range(8))
    bad = {f.index: f.error for f in got if not f.ok}
    assert set(bad) == {3, 5}
    assert "frame 3" in bad[3] and "00003.jpg" in bad[3]
    assert all(f.image is not None for f in got if f.ok)


def test_corrupt_frame_in_the_middle_of_a_video_file(tmp_path):
    """An MJPEG AVI whose 11th frame's JPEG data is wiped: reported and skipped, forward and backward, the rest
    decoded (OpenCV cannot read past a broken frame, so the reader seeks past it)."""
    frames = _frames(20)
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = bytearray((tmp_path / "clip.avi").read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    assert len(starts) == 20
    data[starts[10]:starts[11] - 16] = bytes(starts[11] - 16 - starts[10])
    (tmp_path / "broken.avi").write_bytes(bytes(data))

    video = open_video(tmp_path / "broken.avi")
    got = list(video.frames())
    assert [f.index for f in got] == list(range(20))
    assert [f.index for f in got if not f.ok] == [10]
    assert "frame 10 of broken.avi" in got[10].error
    brightness = [int(np.median(f.image[..., 0])) for f in got if f.ok]
    assert all(abs(b - (10 * i) % 250) <= 3 for b, i in zip(brightness, [i for i in range(20) if i != 10]))
    back = list(video.frames(start=12, direction=-1, max_frames=5))
    assert [(f.index, f.ok) for f in back] == [(12, True), (11, True), (10, False), (9, True), (8, True)]


def test_frame_of_another_size_in_a_folder_is_skipped(tmp_path):
    write_jpeg_folder(_frames(4), tmp_path)
    cv2.imwrite(str(tmp_path / "00002.jpg"), np.zeros((10, 10, 3), np.uint8))
    got = list(open_video(tmp_path).frames())
    assert [f.ok for f in got] == [True, True, False, True]
    assert "10x10" in got[2].error


def test_start_frame_beyond_the_end(mp4, tmp_path):
    video = open_video(mp4)
    with pytest.raises(InputError, match=f"start frame {N}.*clip.mp4.*0..{N - 1}"):
        video.frames(start=N)
    with pytest.raises(InputError, match="start frame -1"):
        video.frames(start=-1)
    with pytest.raises(InputError, match="max_frames"):
        video.frames(start=0, max_frames=0)


def test_unreadable_and_empty_videos(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video")
    with pytest.raises(InputError, match="notes.mp4"):
        open_video(tmp_path / "notes.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp4"):
        open_video(tmp_path / "empty.mp4")
    writer = cv2.VideoWriter(str(tmp_path / "zero.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    writer.release()  # a container with no frame in it
    if (tmp_path / "zero.mp4").exists():
        with pytest.raises(InputError, match="zero.mp4"):
            open_video(tmp_path / "zero.mp4")
    with pytest.raises(InputError, match="missing.mp4 not found"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match="frames holds no images"):
        open_video(tmp_path / "frames")
    (tmp_path / "frames" / "00000.jpg").write_bytes(b"garbage")
    with pytest.raises(InputError, match="none of its 1 images"):
        open_video(tmp_path / "frames")


# --------------------------------------------------------------------------------------------- HTTP


class _Handler(http.server.SimpleHTTPRequestHandler):
    seen_auth: list = []
    seen_ranges: list = []

    def do_GET(self):
        _Handler.seen_auth.append(self.headers.get("Authorization"))
        _Handler.seen_ranges.append(self.headers.get("Range"))
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/clip.mp4?sig=abc")
            self.end_headers()
            return
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_error(401, "Unauthorized")
            return
        self.path = self.path.split("?")[0]
        if self.path.startswith(("/cut/", "/garbage/")):  # a body cut short; bytes that are no video
            cut = self.path.startswith("/cut/")
            body = (Path(self.directory) / self.path.split("/")[-1]).read_bytes() if cut else b"no video" * 512
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if cut else body)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(mp4):
    handler = lambda *a, **k: _Handler(*a, directory=str(mp4.parent), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


def test_http_stream_with_token_header(server, decoded, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    url = f"{server}/clip.mp4?token={TOKEN}"
    video = open_video(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert isinstance(video, HttpVideoSource)
    tmp = video.path
    assert os.path.isfile(tmp)
    assert (video.num_frames, video.height, video.width) == (N, H, W)
    got = _indices(video.frames(start=5, max_frames=3))
    assert [i for i, _ in got] == [5, 6, 7]
    assert all(np.array_equal(image, decoded[i]) for i, image in got)
    assert TOKEN not in video.name and TOKEN not in repr(video)
    video.close()
    assert os.path.exists(tmp), "kept for the next call on the same video"
    STREAMED_VIDEOS.clear()
    assert not os.path.exists(tmp)
    assert TOKEN not in caplog.text
    # a caller's own temporary folder: nothing is kept there once closed
    with open_video(url, headers={"Authorization": f"Bearer {TOKEN}"}, temp_dir=tmp_path) as video:
        assert os.path.dirname(video.path) == str(tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_streamed_video_serves_the_next_calls_while_unchanged_and_readable(mp4, tmp_path):
    """The AI Tracker calls again every few seconds on the same video: it is streamed once, and each later call
    only asks for one byte, with its own headers (a caller without access gets the server's refusal, never the
    kept file), to see that it may and that the video is the same."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copyfile(mp4, served / "clip.mp4")
    handler = lambda *a, **k: _Handler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url, auth = f"http://127.0.0.1:{httpd.server_address[1]}/clip.mp4", {"Authorization": f"Bearer {TOKEN}"}
    store = StreamedVideos(temp_dir=tmp_path)
    try:
        _Handler.seen_ranges.clear()
        first = HttpVideoSource(url, headers=auth, downloads=store)
        path = first.path
        first.close()
        with HttpVideoSource(url, headers=auth, downloads=store) as again:
            assert again.path == path and again.num_frames == N
            assert [i for i, _ in _indices(again.frames(start=3, max_frames=2))] == [3, 4]
        assert store.downloads == 1 and _Handler.seen_ranges == [None, "bytes=0-0"]
        with pytest.raises(InputError, match="401"):
            HttpVideoSource(url, headers={"Authorization": "Bearer someone-else"}, downloads=store)
        with open(served / "clip.mp4", "ab") as tail:  # the video changed on the server: streamed anew
            tail.write(b"\0" * 10)
        HttpVideoSource(url, headers=auth, downloads=store).close()
        assert store.downloads == 2 and not os.path.exists(path), "the stale file is gone"
        # past its time, or over the bound, a kept file goes; never while in use
        short = StreamedVideos(temp_dir=tmp_path, ttl=0.0)
        with HttpVideoSource(url, headers=auth, downloads=short) as video:
            kept = video.path
        HttpVideoSource(url, headers=auth, downloads=short).close()
        assert short.downloads == 2 and not os.path.exists(kept)
        none = StreamedVideos(temp_dir=tmp_path, max_bytes=0)
        with HttpVideoSource(url, headers=auth, downloads=none) as video:
            kept = video.path
            assert os.path.exists(kept)
        assert not os.path.exists(kept)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_stream_cut_short_or_not_a_video_is_an_error_and_nothing_is_kept(server, tmp_path):
    """http.client ends a body cut short without an error: the length the server announced tells. A file that
    does not open as a video is not kept for the next call either."""
    store = StreamedVideos(temp_dir=tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(InputError, match=r"connection closed after \d+ of \d+ bytes"):
        HttpVideoSource(f"{server}/cut/clip.mp4", headers=auth, downloads=store)
    with pytest.raises(InputError):
        HttpVideoSource(f"{server}/garbage/clip.mp4", headers=auth, downloads=store)
    assert list(tmp_path.iterdir()) == [] and store._entries == {}


def test_http_redirect_on_the_same_host_keeps_the_token(server):
    _Handler.seen_auth.clear()
    with open_video(f"{server}/redirect", headers={"Authorization": f"Bearer {TOKEN}"}) as video:
        assert video.num_frames == N
    assert _Handler.seen_auth == [f"Bearer {TOKEN}"] * 2


def test_redirect_to_another_host_drops_the_token():
    handler = _SameHostRedirects({"Authorization", "X-Api-Key"})
    request = urllib.request.Request("http://127.0.0.1:9/a.mp4", headers={"Authorization": "t", "X-Api-Key": "k",
                                                                          "Accept": "*/*"})
    other = handler.redirect_request(request, None, 302, "Found", {}, "http://elsewhere.invalid/a.mp4")
    assert "Authorization" not in other.headers and "X-api-key" not in other.headers
    assert other.headers.get("Accept") == "*/*"
    same = handler.redirect_request(request, None, 302, "Found", {}, "http://127.0.0.1:9/b.mp4")
    assert same.headers.get("Authorization") == "t"
    secure = urllib.request.Request("https://127.0.0.1:9/a.mp4", headers={"Authorization": "t"})
    downgraded = handler.redirect_request(secure, None, 302, "Found", {}, "http://127.0.0.1:9/a.mp4")
    assert "Authorization" not in downgraded.headers  # not in clear text, even to the same host


def test_http_errors_name_the_url_without_secrets(server, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InputError) as info:
        open_video(f"{server}/clip.mp4?token={TOKEN}", headers={"Authorization": "Bearer wrong-token"})
    message = str(info.value)
    assert "401" in message and "/clip.mp4" in message
    assert TOKEN not in message and "wrong-token" not in message
    with pytest.raises(InputError, match="404"):
        open_video(f"{server}/missing.mp4", headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(InputError, match="could not be read"):
        open_video("http://127.0.0.1:9/clip.mp4", timeout=2)  # nothing listens on port 9
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text


def test_redact_url():
    assert redact_url("https://user:pw@host.example:8443/v/1.mp4?jwt=abc#x") == "https://host.example:8443/v/1.mp4?<redacted>"
    assert redact_url("http://h/a.mp4") == "http://h/a.mp4"


def test_frame_source_is_the_extension_point():
    class Synthetic(FrameSource):
        name, num_frames, height, width = "synthetic", 5, 4, 6

        def _generate(self, start, direction, count):
            from sam2_adapter.frames import Frame
            for i in range(start, start + direction * count, direction):
                yield Frame(i, np.full((4, 6, 3), i, np.uint8))

    assert [f.index for f in Synthetic().frames(start=3, direction=-1)] == [3, 2, 1, 0]
    with pytest.raises(InputError, match="frame 5"):
        Synthetic().read(5)
