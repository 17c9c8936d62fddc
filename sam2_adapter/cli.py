"""Local jobs for users without the platform.

    python -m sam2_adapter.cli demo --out out/demo
    sam2-adapter boxes-to-masks IMAGES_DIR boxes.json --out masks.json [--polygons] [--previews DIR]
    sam2-adapter auto IMAGES_DIR --out proposals.json [--points-per-side 32 ...]
    sam2-adapter track VIDEO --box [ID=]x1,y1,x2,y2 [--box ...] --frame N --out DIR [--masks png|rle]

The COCO jobs are resumable: after an interruption, the same command skips the images already done (they are in
OUT.partial) and writes the same file. `track` starts over (SAM 2's memory of the frames before an interruption is
gone), but builds its outputs aside and swaps them in when complete, so a re-run writes the same files and leaves
none of an earlier run's masks behind. Exit status: 0 when everything was done, 1 when some images, boxes or frames
were skipped or a preview or overlay could not be written (listed at the end, and in the output file), 2 for bad
command-line input.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image
from sam2.modeling.sam2_base import SAM2Base

from sam2_adapter.coco import _PALETTE, _write_atomically, auto, boxes_to_masks, check_output, draw_overlay
from sam2_adapter.config import Settings, parse_at_least
from sam2_adapter.errors import InputError
from sam2_adapter.frames import FrameSource, open_video
from sam2_adapter.geometry import DEFAULT_MIN_AREA, mask_iou, mask_to_polygons, mask_to_rle, rle_to_mask, validate_box
from sam2_adapter.models import load_model, load_named_model
from sam2_adapter.proposals import ProposalSettings
from sam2_adapter.scenes import make_scene
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, segment_box_prompts
from sam2_adapter.tracker import DIRECTIONS, ObjectMask, VideoTracker

__all__ = ["BoxArgument", "draw_overlay", "main", "parse_boxes", "run_track"]


def run_demo(args: argparse.Namespace) -> int:
    """Box to Polygon on generated sample scenes with the bundled micro model; writes overlays to --out."""
    model, _ = _load_model(args)
    segmenter = ImageSegmenter(model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    ious = []
    for n in range(args.images):
        scene = make_scene(rng, args.size, args.size)
        features = segmenter.encode(scene.image)
        prompts = [BoxPrompt(f"object {k}", box) for k, box in enumerate(scene.boxes)]
        masks, polygons = [], []
        for k, outcome in enumerate(segment_box_prompts(segmenter, features, prompts)):
            if isinstance(outcome, InputError):
                print(f"scene {n}: {outcome}")
                masks.append(np.zeros(scene.image.shape[:2], bool))
                polygons.append([])
                continue
            mask = outcome.full()
            masks.append(mask)
            polygons.append([r + outcome.origin for r in mask_to_polygons(outcome.crop)])
            ious.append(mask_iou(mask, scene.masks[k]))
        path = out_dir / f"scene_{n:02d}.png"
        overlay = draw_overlay(scene.image, masks, polygons, scene.boxes)
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([scene.image, overlay], axis=1), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.images} overlays (image | masks, polygons, boxes) to {out_dir}/")
    print(f"box-to-mask IoU against the generated ground truth: mean {np.mean(ious):.3f} over {len(ious)} objects")
    return 0


def _load_model(args: argparse.Namespace) -> tuple[SAM2Base, str]:
    """The model the shared options name (`_add_model_arguments`), and a name for reports and output files.

    Every subcommand loads through here, so `--model`, `--config/--checkpoint` and `--device` mean the same
    everywhere (a half-given custom model is an error, not silently random weights or the default model)."""
    if args.config or args.checkpoint:
        if not (args.config and args.checkpoint):
            raise InputError("a custom model needs both --config and --checkpoint")
        return load_model(args.config, args.checkpoint, args.device), f"custom {Path(args.checkpoint).name}"
    return load_named_model(args.model, args.device), args.model


def _segmenter(args: argparse.Namespace) -> tuple[ImageSegmenter, str]:
    model, name = _load_model(args)
    return ImageSegmenter(model, mask_threshold=args.mask_threshold), name


def _check_inputs(images: str, coco: str | None = None) -> None:
    """Fails fast, before the model loads, on inputs that cannot be there (the jobs check them fully)."""
    if not Path(images).is_dir():
        raise InputError(f"{images}: images folder not found")
    if coco is not None and not Path(coco).is_file():
        raise InputError(f"{coco}: COCO file not found")


def _finish(summary) -> int:
    print(summary.report(), file=sys.stderr if not summary.ok else sys.stdout)
    return 0 if summary.ok else 1


def run_boxes_to_masks(args: argparse.Namespace) -> int:
    """images folder + COCO file with boxes -> COCO file with a mask for every box."""
    _check_inputs(args.images, args.coco)
    check_output(args.out)
    segmenter, name = _segmenter(args)
    summary = boxes_to_masks(args.images, args.coco, args.out, segmenter, polygons=args.polygons,
                             previews_dir=args.previews, polygon_tolerance=args.polygon_tolerance,
                             polygon_min_area=args.polygon_min_area, box_margin=args.box_margin, model_name=name,
                             workers=args.workers, batch=args.batch, progress=not args.no_progress)
    return _finish(summary)


def run_auto(args: argparse.Namespace) -> int:
    """images folder -> COCO file of mask proposals."""
    settings = ProposalSettings.from_mapping(vars(args))
    _check_inputs(args.images)
    check_output(args.out)
    segmenter, name = _segmenter(args)
    summary = auto(args.images, args.out, segmenter, settings, polygons=args.polygons, previews_dir=args.previews,
                   polygon_tolerance=args.polygon_tolerance, polygon_min_area=args.polygon_min_area,
                   category_name=args.category, model_name=name, workers=args.workers,
                   batch=args.batch, progress=not args.no_progress)
    return _finish(summary)


# --------------------------------------------------------------------------------------------- track

OVERLAY_FORMATS = (".mp4", ".gif")
_OBJECT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_RECORD = "track.json"
_MASKS = "masks"


@dataclass(frozen=True)
class BoxArgument:
    """One `--box [ID=]x1,y1,x2,y2`: the object's id and its prompt box, x1, y1, x2, y2 in video pixels."""

    obj_id: str
    box: tuple[float, float, float, float]
    text: str
    """The option's value as typed, so that an error names the --box the user wrote."""


def parse_box_argument(text: str, position: int) -> BoxArgument:
    """`[ID=]x1,y1,x2,y2`. An unnamed box is object `position` (its 1-based place among the --box options), so
    ids can be read off the command line. Ids name folders (masks/<id>/), hence the restricted alphabet.

    Inverted corners are an error here, unlike in the platform functions (which put them in order): typed on a
    command line they are far more often an x, y, width, height box than a box drawn backwards."""
    where = f"--box {text!r}"
    obj_id, named, coords = text.rpartition("=")
    if not named:
        obj_id = str(position)
    elif not _OBJECT_ID.fullmatch(obj_id):
        raise InputError(f"{where}: object id {obj_id!r} must be letters, digits, '_', '-' or '.' (not first), "
                         f"as it names the object's mask folder")
    try:
        values = tuple(float(v) for v in coords.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(f"{where}: expected [ID=]x1,y1,x2,y2, four numbers in video pixels")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{where}: coordinates must be finite numbers")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"{where}: needs x1 < x2 and y1 < y2 (two corners, not a width and height)")
    return BoxArgument(obj_id, (x1, y1, x2, y2), text)


def parse_boxes(texts: Sequence[str]) -> list[BoxArgument]:
    """Every --box, ids unique. Ids differing only in case are duplicates too: on macOS and Windows their mask
    folders would be one folder."""
    boxes = [parse_box_argument(text, k) for k, text in enumerate(texts, 1)]
    seen: dict[str, BoxArgument] = {}
    for box in boxes:
        other = seen.setdefault(box.obj_id.casefold(), box)
        if other is not box:
            raise InputError(f"--box {box.text!r}: object id {box.obj_id!r} is also the id of --box {other.text!r}; "
                             f"ids must be unique (ignoring case), and an unnamed box is numbered by its position")
    return boxes


@dataclass
class _Track:
    """What tracking produced, kept compact (visible masks as COCO RLE) until every frame is done: `both` finishes
    out of frame order, and the record and the overlay are written in frame order."""

    objects: dict[str, np.ndarray]
    """Object id -> its prompt box (as clamped to the frame), in --box order (which is also colour order)."""
    frames: dict[int, dict[str, dict]] = field(default_factory=dict)
    """Frame -> object id -> {"visible", "score"} and, when visible, {"box", "area", "rle"}."""
    skipped: dict[int, str] = field(default_factory=dict)
    """Frame -> why it could not be tracked (undecodable, another size)."""
    unreached: list[int] = field(default_factory=list)
    """Frames that should have been tracked but never came out of the video (it ends before its header says)."""
    notes: list[str] = field(default_factory=list)

    def covered(self) -> list[int]:
        return sorted(self.frames.keys() | self.skipped.keys())

    def absent(self, obj_id: str) -> list[int]:
        return sorted(t for t, objects in self.frames.items() if not objects[obj_id]["visible"])

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.unreached


def _visiting_order(start: int, num_frames: int, direction: str, max_frames: int | None) -> list[int]:
    """The frames `VideoTracker.propagate` visits, in its order: the progress bar's length, and how frames that a
    broken video never delivers are noticed."""
    limit = num_frames if max_frames is None else max_frames
    order: list[int] = []
    if direction in ("forward", "both"):
        order += range(start, min(num_frames, start + limit))
    if direction == "backward":
        order += range(start, max(-1, start - limit), -1)
    if direction == "both" and limit > 1:
        order += range(start - 1, max(-1, start - limit), -1)
    return order


def _ranges(frames: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    spans: list[list[int]] = []
    for t in sorted(frames):
        if spans and t == spans[-1][1] + 1:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _frame_digits(num_frames: int) -> int:
    """Mask file names are zero-padded to 5 digits (more for longer videos), so they sort in frame order."""
    return max(5, len(str(num_frames - 1)))


def _object_entry(obj: ObjectMask, png_dir: Path | None, num_frames: int) -> dict:
    """One object on one frame for the record. Absent: no geometry at all (never an empty or carried-over mask)."""
    entry: dict = {"visible": obj.visible, "score": round(obj.object_score, 4)}
    if not obj.visible:
        return entry
    mask = obj.mask()
    if png_dir is not None:
        path = png_dir / str(obj.obj_id) / f"{obj.frame_idx:0{_frame_digits(num_frames)}d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), mask.view(np.uint8) * np.uint8(255)):
            raise OSError(f"could not write the mask {path}")
    entry.update(box=[float(v) for v in obj.box], area=obj.area, rle=mask_to_rle(mask))
    return entry


def _track_video(model: SAM2Base, video: FrameSource, objects: dict[str, np.ndarray], start: int, direction: str,
                 max_frames: int | None, mask_threshold: float, png_dir: Path | None, progress: bool) -> _Track:
    """Tracks every object from its box on `start`; PNGs (when `png_dir`) are written as frames come out."""
    from tqdm import tqdm

    order = _visiting_order(start, video.num_frames, direction, max_frames)
    track = _Track(objects)
    with VideoTracker(model, video, mask_threshold=mask_threshold) as tracker, \
            tqdm(total=len(order), unit="frame", desc="track", disable=not progress, dynamic_ncols=True) as bar:
        for obj_id, box in objects.items():
            if not tracker.add_box(obj_id, start, box).visible:
                track.notes.append(f"note: object {obj_id}: SAM 2 finds nothing in its box on frame {start}")
        for result in tracker.propagate(start_frame=start, direction=direction, max_frames=max_frames):
            if result.skipped:
                track.skipped[result.frame_idx] = result.error
            else:
                track.frames[result.frame_idx] = {str(obj_id): _object_entry(obj, png_dir, video.num_frames)
                                                  for obj_id, obj in result.objects.items()}
            bar.update()
    track.unreached = [t for t in order if t not in track.frames and t not in track.skipped]
    return track


def _track_record(track: _Track, video: FrameSource, args: argparse.Namespace, model_name: str) -> dict:
    """track.json: what was asked, every covered frame in order (each object's presence, score, box and, for
    --masks rle, its mask as COCO RLE), and the summary. Holds nothing that changes between identical runs."""
    rle = args.masks == "rle"
    frames = []
    for t in track.covered():
        if t in track.skipped:
            frames.append({"frame": t, "skipped": track.skipped[t]})
            continue
        frames.append({"frame": t, "objects": {obj_id: entry if rle else {k: v for k, v in entry.items() if k != "rle"}
                                               for obj_id, entry in track.frames[t].items()}})
    masks = ({"format": "rle", "encoding": "COCO compressed RLE of the full frame (pycocotools), in 'rle'"} if rle
             else {"format": "png", "path": f"{_MASKS}/{{object}}/{{frame:0{_frame_digits(video.num_frames)}d}}.png"})
    return {
        "video": video.name, "width": video.width, "height": video.height, "num_frames": video.num_frames,
        "fps": video.fps, "model": model_name, "prompt_frame": args.frame, "direction": args.direction,
        "max_frames": args.max_frames,
        "objects": [{"id": obj_id, "box": [float(v) for v in box]} for obj_id, box in track.objects.items()],
        "masks": masks,
        "frames": frames,
        "summary": {
            "frames_tracked": len(track.frames),
            "absent": {obj_id: track.absent(obj_id) for obj_id in track.objects},
            "skipped": [{"frame": t, "reason": reason} for t, reason in sorted(track.skipped.items())],
            "not_reached": track.unreached,
        },
    }


class _OverlayWriter:
    """Overlay frames -> an mp4 (OpenCV's VideoWriter, mp4v) or a GIF (Pillow), under a temporary name until
    `finish`, so an interrupted run never leaves a short overlay that looks complete.

    Pillow writes a GIF in one call, so GIF frames (palette images, a byte a pixel) wait in memory: GIF is for
    short clips. Pillow merges identical consecutive GIF frames; each overlay frame carries its frame number, so
    the GIF keeps one frame per video frame."""

    def __init__(self, path: Path, width: int, height: int, fps: float):
        self.path = path
        self.partial = path.with_name(f"{path.stem}.partial{path.suffix}")
        self.gif = path.suffix.lower() == ".gif"
        self.fps = fps
        self.count = 0
        self._gif_frames: list[Image.Image] = []
        self._writer = None
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.gif:
            self.size = (width + width % 2, height + height % 2)  # mpeg4 drops an odd last row/column
            self._writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, self.size)
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write the mp4 overlay {path}")

    def add(self, rgb: np.ndarray) -> None:
        if self.gif:
            self._gif_frames.append(Image.fromarray(rgb).quantize(256))
        else:
            pad = ((0, self.size[1] - rgb.shape[0]), (0, self.size[0] - rgb.shape[1]), (0, 0))
            self._writer.write(cv2.cvtColor(np.pad(rgb, pad) if any(pad[0] + pad[1]) else rgb, cv2.COLOR_RGB2BGR))
        self.count += 1

    def finish(self) -> None:
        if self.gif:
            first, *rest = self._gif_frames
            first.save(self.partial, format="GIF", save_all=True, append_images=rest, loop=0,
                       duration=max(20, round(1000 / self.fps)))
            self._gif_frames.clear()
        else:
            self._writer.release()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
        self._gif_frames.clear()
        self.partial.unlink(missing_ok=True)


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int],
              scale: float) -> None:
    """Text with a dark outline, readable on any background."""
    thickness = max(1, round(scale * 2))
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def _text_scale(height: int, width: int) -> float:
    return max(0.35, min(height, width) / 600)


def _overlay_frame(image: np.ndarray, frame_idx: int, track: _Track, prompt_frame: int) -> np.ndarray:
    """One tracked frame: masks tinted in each object's colour (`draw_overlay`), outlined, labelled with their ids;
    the prompt boxes on the prompt frame; the frame number and the absent objects in the corner."""
    height, width = image.shape[:2]
    scale = _text_scale(height, width)
    entries = track.frames[frame_idx]
    ids = list(track.objects)
    masks = [rle_to_mask(entries[i]["rle"]) if entries[i]["visible"] else np.zeros((height, width), bool) for i in ids]
    boxes = np.array([track.objects[i] for i in ids], np.float64) if frame_idx == prompt_frame else np.zeros((0, 4))
    out = draw_overlay(image, masks, [[] for _ in ids], boxes)
    for k, obj_id in enumerate(ids):
        if not entries[obj_id]["visible"]:
            continue
        colour = tuple(int(c) for c in _PALETTE[k % len(_PALETTE)])
        contours, _ = cv2.findContours(masks[k].view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, 1, cv2.LINE_AA)
        x1, y1 = (int(v) for v in entries[obj_id]["box"][:2])
        _put_text(out, obj_id, (x1, max(y1 - 4, round(14 * scale) + 2)), colour, scale)
    absent = [i for i in ids if not entries[i]["visible"]]
    stamp = f"frame {frame_idx}" + (f"  absent: {', '.join(absent)}" if absent else "")
    _put_text(out, stamp, (4, height - 6), (255, 255, 255), scale)
    return out


def _skipped_frame(height: int, width: int, frame_idx: int) -> np.ndarray:
    """A frame that could not be tracked: a dark frame that says so, so the overlay keeps the video's timing."""
    out = np.full((height, width, 3), 40, np.uint8)
    _put_text(out, f"frame {frame_idx}: skipped", (4, height - 6), (255, 200, 0), _text_scale(height, width))
    return out


def _write_overlay(path: Path, video: FrameSource, track: _Track, prompt_frame: int, progress: bool) -> int:
    """Decodes the covered frames again, in order, and draws each one's result; returns the frames written.
    (Decoding twice costs far less than holding the frames of a `both` run until its backward pass ends.)"""
    from tqdm import tqdm

    covered = track.covered()
    first, last = covered[0], covered[-1]
    writer = _OverlayWriter(path, video.width, video.height, video.fps or 10.0)
    try:
        with video.frames(first, 1, last - first + 1) as reader, \
                tqdm(total=last - first + 1, unit="frame", desc="overlay", disable=not progress,
                     dynamic_ncols=True) as bar:
            for frame in reader:
                if frame.ok and frame.index in track.frames:
                    writer.add(_overlay_frame(frame.image, frame.index, track, prompt_frame))
                else:
                    writer.add(_skipped_frame(video.height, video.width, frame.index))
                bar.update()
        for t in range(first + writer.count, last + 1):  # the reader stopped early: keep the timing
            writer.add(_skipped_frame(video.height, video.width, t))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return writer.count


def _check_track_out(out: Path) -> None:
    """Fails (before the model loads) where the outputs cannot be written or would replace something a track run
    did not write."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if (out / _MASKS).exists() and not (out / _RECORD).is_file():
        raise InputError(f"--out {out}: holds a {_MASKS} folder without a {_RECORD} beside it (not written by "
                         f"sam2-adapter track); choose another --out or remove it")
    nearest = next(folder for folder in (out, *out.absolute().parents) if folder.exists())
    if not nearest.is_dir():
        raise InputError(f"--out {out}: cannot be created ({nearest} is not a folder)")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: cannot be written ({nearest}: permission denied)")


def _overlay_path(value: str, out: Path) -> Path:
    """A bare file name goes into --out; a path with a folder is used as given."""
    path = Path(value)
    if path.suffix.lower() not in OVERLAY_FORMATS:
        raise InputError(f"--overlay {value}: the overlay is written as {' or '.join(OVERLAY_FORMATS)}; "
                         f"name a file with one of those extensions")
    has_folder = os.sep in value or (os.altsep is not None and os.altsep in value)
    return path if has_folder else out / path


def _track_report(track: _Track, video: FrameSource, args: argparse.Namespace, written: list[str],
                  elapsed: float) -> str:
    """The summary: frames tracked, where each object was absent, and every skipped frame with its reason."""
    n = len(track.frames)
    covered = track.covered()
    lines = list(track.notes)
    lines.append(f"track: {video.name} ({video.num_frames} frames, {video.width}x{video.height}), "
                 f"{len(track.objects)} object{'s' * (len(track.objects) != 1)} from frame {args.frame}, "
                 f"{args.direction}: " + (f"frames {_ranges(covered)}, " if covered else "")
                 + f"{n} tracked in {elapsed:.1f} s")
    lines.append("wrote " + ", ".join(written))
    for obj_id in track.objects:
        absent = track.absent(obj_id)
        visible = n - len(absent)
        lines.append(f"  object {obj_id}: visible on {visible} frame{'s' * (visible != 1)}, "
                     + (f"absent on {len(absent)}: {_ranges(absent)}" if absent else "never absent"))
    problems = len(track.skipped) + len(track.unreached)
    if problems:
        lines.append(f"skipped {problems} frame{'s' * (problems != 1)}:")
        lines += [f"  {reason}" for _, reason in sorted(track.skipped.items())]
        if track.unreached:
            lines.append(f"  frames {_ranges(track.unreached)} of {video.name} were never decoded: the video ends "
                         f"before the {video.num_frames} frames its header announces")
    return "\n".join(lines)


def run_track(args: argparse.Namespace) -> int:
    """video + boxes on one frame -> every object's mask on every frame (PNG files or COCO RLE), a record of the
    run (track.json: presence per frame, skipped frames) and an overlay video to watch."""
    boxes = parse_boxes(args.box)
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {args.max_frames}")
    out = Path(args.out)
    _check_track_out(out)
    overlay = None if args.no_overlay else _overlay_path(args.overlay, out)
    if overlay is not None and overlay.resolve() == Path(args.video).resolve():
        raise InputError(f"--overlay {args.overlay}: is the input video; name another file")
    with open_video(args.video) as video:
        start = video.check_index(args.frame, "--frame")
        prompt_frame = video.read(start)  # decoded again by the tracker; here so that a bad one fails before loading
        if not prompt_frame.ok:
            raise InputError(f"--frame {start} cannot be used: {prompt_frame.error}")
        del prompt_frame
        objects = {}
        for box in boxes:
            clamped = validate_box(box.box, video.width, video.height, f"--box {box.text!r}")
            objects[box.obj_id] = clamped
            if tuple(clamped.tolist()) != box.box:
                print(f"note: --box {box.text!r} reaches outside the {video.width}x{video.height} frame: "
                      f"clamped to {','.join(f'{v:g}' for v in clamped.tolist())}")
        model, model_name = _load_model(args)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"--out {out}: cannot be created ({error.strerror or error})") from None
        partial = out / f"{_MASKS}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
        began = time.perf_counter()
        try:
            track = _track_video(model, video, objects, start, args.direction, args.max_frames, args.mask_threshold,
                                 partial if args.masks == "png" else None, not args.no_progress)
            elapsed = time.perf_counter() - began
            _write_atomically(out / _RECORD, _track_record(track, video, args, model_name))
            written = [str(out / _RECORD) + (" (with the masks as RLE)" if args.masks == "rle" else "")]
            shutil.rmtree(out / _MASKS, ignore_errors=True)  # an earlier run's, never mixed with this one's
            if args.masks == "png":
                partial.mkdir(exist_ok=True)  # every object absent everywhere: still an (empty) masks folder
                partial.rename(out / _MASKS)
                written.append(f"{out / _MASKS}/<object>/<frame>.png")
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        failed = None
        if overlay is not None and track.frames:
            try:
                count = _write_overlay(overlay, video, track, start, not args.no_progress)
                written.append(f"{overlay} ({count} frames)")
            except OSError as error:  # the masks and the record are written: say so, and exit 1
                failed = f"the overlay {overlay} could not be written: {error}"
        report = _track_report(track, video, args, written, elapsed) + (f"\n{failed}" if failed else "")
        ok = track.ok and failed is None
        print(report, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _add_model_arguments(parser: argparse.ArgumentParser, default_model: str = Settings.model) -> None:
    # The jobs default to the adapter's model (downloaded on first use); the micro model is for tests and the demo.
    parser.add_argument("--model", default=default_model, help=f"registry name of the model (default: {default_model})")
    parser.add_argument("--config", help="a custom model's YAML (with --checkpoint)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--device", default="auto")


def _number(least: float = -math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number, at least `least`."""
    def parse(text: str) -> float:
        try:
            return parse_at_least(text, least)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text} is not a finite number"
                                             + (f" >= {least:g}" if least > -math.inf else "")) from None
    return parse


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="the COCO JSON file to write")
    parser.add_argument("--polygons", action="store_true", help="polygons instead of RLE segmentations")
    parser.add_argument("--previews", metavar="DIR", help="also write overlay previews (IMAGE.png) to DIR")
    parser.add_argument("--polygon-tolerance", type=_number(0.0), default=1.0, help="Douglas-Peucker tolerance, px")
    parser.add_argument("--polygon-min-area", type=_number(0.0), default=DEFAULT_MIN_AREA,
                        help="polygon parts and holes smaller than this many pixels are dropped")
    parser.add_argument("--mask-threshold", type=_number(), default=0.0, help="logit above which a pixel is in")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images and encoding masks")
    parser.add_argument("--batch", type=int, default=None,
                        help="images encoded together (default: 4 on a GPU, 1 on the CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sam2-adapter", description="SAM 2 jobs on local files.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Box to Polygon on generated scenes; writes overlay images")
    demo.add_argument("--out", default="out/demo")
    _add_model_arguments(demo, "micro")
    demo.add_argument("--images", type=int, default=6)
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=run_demo)

    boxes = sub.add_parser("boxes-to-masks", help="COCO boxes -> COCO masks (RLE or polygons), resumable",
                           description=run_boxes_to_masks.__doc__)
    boxes.add_argument("images", help="the images folder (file_name in the COCO file is relative to it)")
    boxes.add_argument("coco", help="the COCO JSON file with box annotations")
    _add_job_arguments(boxes)
    boxes.add_argument("--box-margin", metavar="PX", type=_number(0.0), default=0.0,
                       help="pixels a mask may reach past its box on each side (default 0: cut at the box)")
    boxes.set_defaults(run=run_boxes_to_masks)

    proposals = sub.add_parser("auto", help="images folder -> COCO mask proposals, resumable",
                               description=run_auto.__doc__)
    proposals.add_argument("images", help="the images folder (searched recursively)")
    _add_job_arguments(proposals)
    proposals.add_argument("--category", default="object", help="the one category of the proposals")
    defaults = ProposalSettings()
    for name, value in defaults.as_dict().items():
        proposals.add_argument("--" + name.replace("_", "-"), type=type(value), default=value,
                               help=f"default {value}")
    proposals.set_defaults(run=run_auto)

    track = sub.add_parser("track", help="video + boxes on one frame -> masks on every frame and an overlay video",
                           description=run_track.__doc__)
    track.add_argument("video", help="a video file OpenCV can decode (or a folder of frame images)")
    track.add_argument("--box", action="append", required=True, metavar="[ID=]x1,y1,x2,y2",
                       help="an object's box on --frame, in video pixels; repeat for more objects. Without ID= the "
                            "object is numbered by its position (1, 2, ...); a box starting with '-' needs --box=...")
    track.add_argument("--frame", type=int, default=0, help="the frame the boxes are on (from 0; default 0)")
    track.add_argument("--out", required=True, metavar="DIR", help="the folder for track.json, masks/ and the overlay")
    track.add_argument("--direction", choices=DIRECTIONS, default="forward",
                       help="from --frame to the end, to the start, or both (default forward)")
    track.add_argument("--max-frames", type=int, metavar="N",
                       help="at most N frames each way, --frame included (default: to the end of the video)")
    track.add_argument("--masks", choices=("png", "rle"), default="png",
                       help="png: DIR/masks/<object>/<frame>.png for every frame where the object is visible; "
                            "rle: COCO RLE inside DIR/track.json (default png)")
    track.add_argument("--overlay", default="overlay.mp4", metavar="FILE.mp4|FILE.gif",
                       help="the overlay video (masks and ids drawn on each frame); a bare name goes into --out "
                            "(default overlay.mp4). GIF keeps every frame in memory: for short clips")
    track.add_argument("--no-overlay", action="store_true", help="no overlay video")
    _add_model_arguments(track)
    track.add_argument("--mask-threshold", type=float, default=0.0, help="logit above which a pixel is in")
    track.add_argument("--no-progress", action="store_true", help="no progress bar")
    track.set_defaults(run=run_track, interrupted="interrupted: nothing half-written was kept; run the command "
                                                  "again (tracking starts over)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(getattr(args, "interrupted", "interrupted: run the same command again to resume"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
