"""`sam2-adapter track`: the contract of its outputs (masks per visible frame, absent frames recorded as absent, RLE
that pycocotools decodes, an overlay with one frame per video frame), directions, determinism, corrupt frames,
and every kind of bad input as exit status 2 with a one-line error.

The bundled micro checkpoint tracks these clips poorly (it is being retrained), so nothing here asserts tracking
accuracy: where presence matters, the model's object score is forced negative on chosen frames, as a trained
model's is when the object leaves the view.
"""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sam2_adapter import cli
from sam2_adapter.scenes import make_clip, mask_box, write_video

REPO = Path(__file__).resolve().parent.parent
T, H, W = 12, 128, 160
MODEL_ARGS = ["--model", "micro", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip():
    return make_clip(np.random.default_rng(5), n_frames=T, height=H, width=W, n_objects=2, leave_view=False)


@pytest.fixture(scope="module")
def video(clip, tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(clip.frames, path)
    return path


def box_arg(clip, frame: int, k: int, obj_id: str | None = None) -> str:
    coords = ",".join(f"{v:g}" for v in mask_box(clip.masks[frame, k]))
    return coords if obj_id is None else f"{obj_id}={coords}"


def track(video, out, *args) -> int:
    return cli.main(["track", str(video), "--out", str(out), *args, *MODEL_ARGS])


def read_record(out: Path) -> dict:
    return json.loads((out / "track.json").read_text())


def by_frame(record: dict) -> dict:
    return {entry["frame"]: entry for entry in record["frames"]}


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def decoded_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    return frames


@pytest.fixture
def absent_on(micro_model, monkeypatch):
    """The CLI gets the session's micro model, whose object score is forced negative (and its mask logits to SAM 2's
    no-object value) on the frames given: a trained model's output for an object out of view."""
    absent: set[int] = set()
    original = micro_model.track_step

    def track_step(**kwargs):
        out = original(**kwargs)
        if kwargs["frame_idx"] in absent:
            out["object_score_logits"] = torch.full_like(out["object_score_logits"], -5.0)
            out["pred_masks"] = torch.full_like(out["pred_masks"], -1024.0)
        return out

    monkeypatch.setattr(micro_model, "track_step", track_step)
    monkeypatch.setattr(cli, "load_named_model", lambda name, device: micro_model)
    return absent


def assert_png_contract(out: Path, record: dict, ids: list[str]):
    """A PNG of the frame's size for exactly the (object, frame) pairs the record says are visible, holding the
    record's area and box; nothing for absent or skipped frames."""
    expected = set()
    for entry in record["frames"]:
        for obj_id, obj in entry.get("objects", {}).items():
            if obj["visible"]:
                expected.add(f"masks/{obj_id}/{entry['frame']:05d}.png")
                png = cv2.imread(str(out / "masks" / obj_id / f"{entry['frame']:05d}.png"), cv2.IMREAD_UNCHANGED)
                assert png.shape == (H, W) and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
                ys, xs = np.nonzero(png)
                assert len(xs) == obj["area"] > 0
                assert obj["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert "rle" not in obj
            else:
                assert set(obj) == {"visible", "score"}  # no geometry at all
    written = {str(p.relative_to(out)) for p in (out / "masks").rglob("*.png")}
    assert written == expected
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(i for i in ids if any(
        e.get("objects", {}).get(i, {}).get("visible") for e in record["frames"]))


# --------------------------------------------------------------------------------------------- outputs


def test_png_masks_record_summary_and_mp4_overlay(clip, video, tmp_path, capsys):
    """The real model load path (--model micro), a named and an unnamed box, forward from frame 0."""
    out = tmp_path / "out"
    assert track(video, out, "--box", box_arg(clip, 0, 0, "car"), "--box", box_arg(clip, 0, 1)) == 0
    record = read_record(out)
    assert [o["id"] for o in record["objects"]] == ["car", "2"]
    assert record["objects"][0]["box"] == mask_box(clip.masks[0, 0]).tolist()
    assert (record["width"], record["height"], record["num_frames"]) == (W, H, T)
    assert record["masks"] == {"format": "png", "path": "masks/{object}/{frame:05d}.png"}
    assert [e["frame"] for e in record["frames"]] == list(range(T))
    assert all(set(e["objects"]) == {"car", "2"} for e in record["frames"])
    assert_png_contract(out, record, ["car", "2"])
    summary = record["summary"]
    assert summary["frames_tracked"] == T and summary["skipped"] == [] and summary["not_reached"] == []
    for obj_id in ("car", "2"):
        absent = [e["frame"] for e in record["frames"] if not e["objects"][obj_id]["visible"]]
        assert summary["absent"][obj_id] == absent

    printed = capsys.readouterr().out
    assert f"forward: frames 0-{T - 1}, {T} tracked" in printed
    assert "object car: visible on" in printed and "object 2: visible on" in printed

    frames = decoded_video(out / "overlay.mp4")
    assert len(frames) == T and frames[0].shape == (H, W, 3)
    # masks are drawn: the overlay differs from the video where a mask is
    first = record["frames"][0]["objects"]["car"]
    if first["visible"]:
        x1, y1, x2, y2 = (int(v) for v in first["box"])
        plain = cv2.cvtColor(clip.frames[0], cv2.COLOR_RGB2BGR)
        diff = np.abs(frames[0].astype(int) - plain.astype(int))[y1:y2, x1:x2].mean()
        assert diff > 10


def test_rle_backward_gif_and_an_identical_rerun(clip, video, tmp_path):
    out = tmp_path / "out"
    args = ["--box", box_arg(clip, 7, 0, "a"), "--box", box_arg(clip, 7, 1, "b"), "--frame", "7",
            "--direction", "backward", "--masks", "rle", "--overlay", "overlay.gif"]
    assert track(video, out, *args) == 0
    record = read_record(out)
    assert [e["frame"] for e in record["frames"]] == list(range(8))  # the frames before the start, and the start
    assert record["masks"]["format"] == "rle" and not (out / "masks").exists()
    for entry in record["frames"]:
        for obj in entry["objects"].values():
            if not obj["visible"]:
                assert set(obj) == {"visible", "score"}
                continue
            rle = obj["rle"]
            mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
            assert mask.shape == (H, W) and int(mask.sum()) == obj["area"] > 0
            ys, xs = np.nonzero(mask)
            assert obj["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (W, H)

    before = snapshot(out)
    assert track(video, out, *args) == 0
    assert snapshot(out) == before  # deterministic, and nothing left of the first run's temporaries


def test_both_directions_max_frames_and_a_rerun_replaces_everything(clip, video, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--box", box_arg(clip, 5, 0), "--frame", "5", "--direction", "both", "--max-frames", "3"]
    assert track(video, out, *args) == 0
    record = read_record(out)
    assert [e["frame"] for e in record["frames"]] == [3, 4, 5, 6, 7]
    assert_png_contract(out, record, ["1"])
    overlay = decoded_video(out / "overlay.mp4")
    assert len(overlay) == 5
    first = snapshot(out)
    assert track(video, out, *args) == 0
    second = snapshot(out)
    # the same files; the mp4 compared decoded (its bytes are the encoder's business)
    assert second.keys() == first.keys()
    first.pop("overlay.mp4"), second.pop("overlay.mp4")
    assert second == first
    again = decoded_video(out / "overlay.mp4")
    assert len(again) == len(overlay) and all(np.array_equal(a, b) for a, b in zip(again, overlay))

    # a shorter run into the same folder leaves none of the longer run's masks behind
    assert track(video, out, "--box", box_arg(clip, 5, 0), "--frame", "5", "--max-frames", "2", "--no-overlay") == 0
    record = read_record(out)
    assert [e["frame"] for e in record["frames"]] == [5, 6]
    assert_png_contract(out, record, ["1"])
    capsys.readouterr()


def test_absent_frames_are_recorded_as_absent(absent_on, clip, video, tmp_path, capsys):
    absent_on.update({3, 4, 9})
    boxes = ["--box", box_arg(clip, 0, 0, "a"), "--box", box_arg(clip, 0, 1, "b")]
    for masks in ("png", "rle"):
        out = tmp_path / masks
        assert track(video, out, *boxes, "--masks", masks) == 0  # absence is a result, not a failure
        record = read_record(out)
        frames = by_frame(record)
        for t in (3, 4, 9):
            for obj in frames[t]["objects"].values():
                assert obj == {"visible": False, "score": -5.0}
        for obj_id in ("a", "b"):
            assert {3, 4, 9} <= set(record["summary"]["absent"][obj_id])
        if masks == "png":
            assert_png_contract(out, record, ["a", "b"])
            assert not list((out / "masks").rglob("0000[349].png"))
        assert len(decoded_video(out / "overlay.mp4")) == T
        printed = capsys.readouterr().out
        assert "object a: visible on" in printed and "object b: visible on" in printed and "absent on" in printed


def mjpeg_avi(frames, path: Path) -> tuple[bytearray, list[int]]:
    """frames as an MJPEG AVI: (its bytes, where each frame's JPEG starts), for breaking it on purpose."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    assert len(starts) == len(frames)
    return data, starts


def test_corrupt_frame_in_the_middle_is_reported_and_the_rest_tracked(clip, tmp_path, capsys):
    """An MJPEG AVI whose frame 6 has its JPEG data wiped: skipped with its reason, exit status 1, every other
    frame tracked and written, the overlay keeps one frame per video frame."""
    data, starts = mjpeg_avi(clip.frames, tmp_path / "clip.avi")
    data[starts[6]:starts[7] - 16] = bytes(starts[7] - 16 - starts[6])
    (tmp_path / "broken.avi").write_bytes(bytes(data))

    out = tmp_path / "out"
    assert track(tmp_path / "broken.avi", out, "--box", box_arg(clip, 0, 0, "a"), "--masks", "png") == 1
    err = capsys.readouterr().err
    assert f"frames 0-{T - 1}, {T - 1} tracked" in err
    assert "skipped 1 frame:" in err and "frame 6 of broken.avi could not be decoded" in err
    record = read_record(out)
    frames = by_frame(record)
    assert sorted(frames) == list(range(T))
    assert frames[6] == {"frame": 6, "skipped": "frame 6 of broken.avi could not be decoded: skipped"}
    assert record["summary"]["skipped"] == [{"frame": 6, "reason": frames[6]["skipped"]}]
    assert record["summary"]["frames_tracked"] == T - 1 and 6 not in record["summary"]["absent"]["a"]
    assert all("objects" in frames[t] for t in range(T) if t != 6)
    assert_png_contract(out, record, ["a"])
    assert len(decoded_video(out / "overlay.mp4")) == T



def test_video_that_ends_before_its_header_says(clip, tmp_path, capsys):
    """An AVI cut off inside frame 7: its header still says 12 frames. Frames 7-9 fail to decode, the reader takes
    that as the end, and frames 10-11 are reported as never reached (exit status 1), not silently dropped."""
    data, starts = mjpeg_avi(clip.frames, tmp_path / "clip.avi")
    (tmp_path / "cut.avi").write_bytes(bytes(data[:starts[7] + 100]))
    out = tmp_path / "out"
    assert track(tmp_path / "cut.avi", out, "--box", box_arg(clip, 0, 0), "--masks", "rle") == 1
    err = capsys.readouterr().err
    assert "frames 10-11 of cut.avi were never decoded: the video ends before the 12 frames its header announces" in err
    summary = read_record(out)["summary"]
    assert [s["frame"] for s in summary["skipped"]] == [7, 8, 9] and summary["not_reached"] == [10, 11]
    assert summary["frames_tracked"] == 7
    assert len(decoded_video(out / "overlay.mp4")) == 10


def test_progress_bar_and_overlay_path_with_a_folder(clip, video, tmp_path, capsys):
    out = tmp_path / "out"
    gif = tmp_path / "elsewhere" / "watch.GIF"
    gif.parent.mkdir()
    code = cli.main(["track", str(video), "--out", str(out), "--box", box_arg(clip, 0, 0), "--max-frames", "3",
                     "--overlay", str(gif), "--model", "micro", "--device", "cpu"])
    assert code == 0
    assert "track: 100%" in capsys.readouterr().err  # tqdm
    with Image.open(gif) as image:
        assert image.n_frames == 3
    assert not (out / "overlay.mp4").exists() and sorted(p.name for p in gif.parent.iterdir()) == ["watch.GIF"]


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def no_model(monkeypatch):
    """Bad input is caught before the model loads."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for bad input")

    monkeypatch.setattr(cli, "load_named_model", refuse)
    monkeypatch.setattr(cli, "load_model", refuse)


def _bad_videos(folder: Path) -> dict:
    (folder / "notes.mp4").write_text("this is not a video")
    (folder / "empty.mp4").write_bytes(b"")
    writer = cv2.VideoWriter(str(folder / "zero.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    writer.release()  # a container with no frame in it (where OpenCV writes one at all)
    return {"notes.mp4": "notes.mp4", "empty.mp4": "empty.mp4", "missing.mp4": "missing.mp4 not found",
            **({"zero.mp4": "zero.mp4"} if (folder / "zero.mp4").exists() else {})}


BAD_ARGUMENTS = {
    # name: (extra arguments, what the one-line error must say)
    "frame beyond the end": (["--box", "10,10,50,50", "--frame", str(T)],
                             f"--frame {T} is beyond the video clip.mp4: it has frames 0..{T - 1}"),
    "negative frame": (["--box", "10,10,50,50", "--frame", "-1"], "--frame -1 is beyond the video clip.mp4"),
    "box outside the frame": (["--box", "a=200,150,260,190"],
                              f"--box 'a=200,150,260,190': box [200, 150, 260, 190] lies entirely outside the {W}x{H}"),
    "three numbers": (["--box", "10,20,30"], "--box '10,20,30': expected [ID=]x1,y1,x2,y2"),
    "not numbers": (["--box", "car=a,b,c,d"], "--box 'car=a,b,c,d': expected [ID=]x1,y1,x2,y2"),
    "not finite": (["--box", "10,nan,30,40"], "--box '10,nan,30,40': coordinates must be finite"),
    "width and height": (["--box", "50,60,20,20"], "--box '50,60,20,20': needs x1 < x2 and y1 < y2"),
    "empty id": (["--box", "=10,10,50,50"], "--box '=10,10,50,50': object id '' must be"),
    "id that is a path": (["--box", "../x=10,10,50,50"], "object id '../x' must be letters"),
    "duplicate ids": (["--box", "car=10,10,50,50", "--box", "car=20,20,60,60"],
                      "--box 'car=20,20,60,60': object id 'car' is also the id of --box 'car=10,10,50,50'"),
    "ids differing in case": (["--box", "Car=10,10,50,50", "--box", "car=20,20,60,60"], "object id 'car' is also"),
    "id of an unnamed box": (["--box", "10,10,50,50", "--box", "1=20,20,60,60"],
                             "object id '1' is also the id of --box '10,10,50,50'"),
    "max frames": (["--box", "10,10,50,50", "--max-frames", "0"], "--max-frames must be at least 1, got 0"),
    "overlay format": (["--box", "10,10,50,50", "--overlay", "watch.avi"], "--overlay watch.avi: the overlay is"),
    "half a custom model": (["--box", "10,10,50,50", "--config", "x.yaml"], "needs both --config and --checkpoint"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_exit_2_with_a_one_line_error(case, no_model, video, tmp_path, capsys):
    extra, message = BAD_ARGUMENTS[case]
    out = tmp_path / "out"
    assert cli.main(["track", str(video), "--out", str(out), *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message in err
    assert not out.exists()  # nothing written


def test_bad_videos_and_outputs_exit_2(no_model, video, tmp_path, capsys):
    for name, message in _bad_videos(tmp_path).items():
        assert cli.main(["track", str(tmp_path / name), "--out", str(tmp_path / "out"), "--box", "1,1,9,9"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, name
    (tmp_path / "file").write_text("")
    assert cli.main(["track", str(video), "--out", str(tmp_path / "file"), "--box", "1,1,9,9"]) == 2
    assert "--out" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    (foreign / "masks").mkdir(parents=True)
    assert cli.main(["track", str(video), "--out", str(foreign), "--box", "1,1,9,9"]) == 2
    assert "not written by sam2-adapter track" in capsys.readouterr().err
    assert (foreign / "masks").is_dir()  # left alone
    assert cli.main(["track", str(video), "--out", str(tmp_path / "file" / "sub"), "--box", "1,1,9,9"]) == 2
    assert "cannot be created" in capsys.readouterr().err  # was a traceback, after the model loaded
    before = video.read_bytes()
    assert cli.main(["track", str(video), "--out", str(tmp_path / "out"), "--box", "1,1,9,9",
                     "--overlay", str(video)]) == 2
    assert "is the input video" in capsys.readouterr().err and video.read_bytes() == before
    with pytest.raises(SystemExit) as exit_info:  # argparse: a required option missing
        cli.main(["track", str(video), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2


def test_corrupt_prompt_frame_is_bad_input(no_model, clip, tmp_path, capsys):
    (tmp_path / "frames").mkdir()
    for t, frame in enumerate(clip.frames):
        cv2.imwrite(str(tmp_path / "frames" / f"{t:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (tmp_path / "frames" / "00006.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    assert cli.main(["track", str(tmp_path / "frames"), "--out", str(out), "--box", box_arg(clip, 6, 0),
                     "--frame", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --frame 6 cannot be used: frame 6 (00006.png in frames) could not be decoded: skipped"
    assert not out.exists()


def test_python_m_entry_point(video, tmp_path):
    """`python -m sam2_adapter.cli track` is the same command, exit status included."""
    result = subprocess.run([sys.executable, "-m", "sam2_adapter.cli", "track", str(video), "--out",
                             str(tmp_path / "out"), "--box", "10,10,50,50", "--frame", "99"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --frame 99 is beyond the video clip.mp4: it has frames 0..{T - 1}"
