"""Local batch jobs on a folder of images and COCO files: boxes to masks, and automatic mask proposals.

    boxes_to_masks(images_dir, coco_in, coco_out, segmenter)   # every box annotation gets a mask
    auto(images_dir, coco_out, segmenter, ProposalSettings())  # every image gets proposals

Throughput: `run_pipeline` reads and decodes the next images and turns finished masks into RLE/polygons (and
previews) on a thread pool while the calling thread keeps the model busy encoding (a batch of images at a time
on a GPU) and decoding; each image's result is appended to a journal as soon as it is complete.

Resumable: the journal is a JSON-lines sidecar `coco_out + ".partial"` (a header naming the job, then one line per
finished image, flushed and fsync'd). A run that finds a journal of the same job skips the images it holds; a run
killed mid-line leaves a torn last line, which is cut off. When every image is done the output is written
atomically (temporary file + rename) from the journal in image order, and the journal removed, so an interrupted
and resumed run writes the same bytes as an uninterrupted one.

Bad input never stops the job: a missing or corrupt image, a box outside its image, an annotation of an unknown
image id... becomes a `Problem` (what, and why) in the `JobSummary` and in the output file under
`"sam2_adapter": {"skipped": [...]}` (COCO readers ignore unknown top-level keys); every other image is finished.
A preview that cannot be written is reported too (the image's masks are kept). Only what makes the whole job
impossible (a missing folder, an unreadable COCO file, NaN or Infinity in it) raises InputError.

Previews go to `previews_dir/<file_name>.png`, always inside `previews_dir`: a file_name that is absolute or climbs
out with `..` is taken relative to the images folder when it points inside it, else with its root and `..` parts
dropped; an image whose preview name is taken (case-insensitively) by an earlier image gets `<image id>_<name>`.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import os
import stat
import re
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import cv2
import numpy as np

from sam2_adapter.config import parse_at_least
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import DEFAULT_MIN_AREA, mask_to_polygons, mask_to_rle, object_polygons
from sam2_adapter.images import decode_image
from sam2_adapter.proposals import ProposalSettings, propose_masks
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, MaskResult, segment_box_prompts

__all__ = [
    "IMAGE_EXTENSIONS",
    "JobSummary",
    "Problem",
    "auto",
    "boxes_to_masks",
    "draw_overlay",
    "mask_annotation_fields",
    "default_batch",
    "run_pipeline",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Files the `auto` job takes from a folder (case-insensitive)."""

_JOURNAL_VERSION = 1
_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                     (145, 30, 180), (70, 240, 240), (240, 50, 230)], dtype=np.uint8)

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Problem:
    """One thing the job skipped: an image (annotation_id None) or one annotation, and why."""

    reason: str
    image_id: Any = None
    file_name: str | None = None
    annotation_id: Any = None

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> "Problem":
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})

    def __str__(self) -> str:
        return self.reason


@dataclass
class JobSummary:
    """What a job did. `ok` is False when anything was skipped or a preview not written (the CLI exits 1 then)."""

    job: str
    output: Path
    images: int = 0
    """Images the job covers."""
    resumed: int = 0
    """Of those, finished by an earlier, interrupted run (taken from the journal)."""
    processed: int = 0
    """Finished by this run."""
    annotations: int = 0
    """Annotations in the output file."""
    problems: list[Problem] = field(default_factory=list)
    preview_failures: list[Problem] = field(default_factory=list)
    """Previews that could not be written; the images' masks are in the output all the same."""
    notes: list[str] = field(default_factory=list)
    """Things the user should know that are not failures (e.g. a journal of another job was discarded)."""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.preview_failures

    def report(self) -> str:
        """A human summary: counts, then every skipped image and annotation with its reason."""
        lines = list(self.notes)
        resumed = f" ({self.resumed} done before, resumed)" if self.resumed else ""
        lines.append(f"{self.job}: {self.images} images{resumed}, {self.annotations} annotations written to "
                     f"{self.output}")
        if self.problems:
            images = sum(1 for p in self.problems if p.annotation_id is None)
            boxes = len(self.problems) - images
            lines.append(f"skipped {images} image{'s' * (images != 1)} and {boxes} annotation{'s' * (boxes != 1)}:")
            lines += [f"  {p.reason}" for p in self.problems]
        if self.preview_failures:
            n = len(self.preview_failures)
            lines.append(f"{n} preview{'s' * (n != 1)} not written (the masks are in the output):")
            lines += [f"  {p.reason}" for p in self.preview_failures]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- pipeline


def run_pipeline(items: Iterable[T], prepare: Callable[[T], P], infer: Callable[[list[T], list[P]], list[R]],
                 finish: Callable[[T, R], None], *, workers: int = 2, prefetch: int = 4, batch: int = 1) -> None:
    """Runs `prepare` (I/O, decoding, prompt parsing) and `finish` (geometry, encoding, writing) on a pool of
    `workers` threads while `infer` (the model) runs on the calling thread, on up to `batch` items at a time
    in order (a list of items and their prepared values in, one result per item out).

    At most `max(prefetch, batch)` prepared items wait for the model, and at most `workers + prefetch` items
    wait to be finished, so memory stays bounded on any number of items. `finish` runs as soon as `infer` has
    returned, in any order across items. The stage functions deal with bad input themselves (returning it as a
    value); an exception escaping any of them stops the pipeline and is raised here once the running work has
    stopped.
    """
    iterator = iter(items)
    batch = max(1, batch)
    ahead = max(1, prefetch, batch)
    with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="sam2-pipeline") as pool:
        loading: deque[tuple[T, cf.Future]] = deque()
        finishing: set[cf.Future] = set()

        def refill() -> None:
            while len(loading) < ahead:
                item = next(iterator, _END)
                if item is _END:
                    return
                loading.append((item, pool.submit(prepare, item)))

        try:
            refill()
            while loading:
                taken = [loading.popleft() for _ in range(min(batch, len(loading)))]
                group, prepared = [item for item, _ in taken], [future.result() for _, future in taken]
                refill()
                results = infer(group, prepared)
                if len(results) != len(group):
                    raise RuntimeError(f"infer returned {len(results)} results for {len(group)} items")
                for item, result in zip(group, results):
                    finishing.add(pool.submit(finish, item, result))
                done = {f for f in finishing if f.done()}
                for f in done:
                    f.result()  # re-raises a failure in `finish`
                finishing -= done
                if len(finishing) > max(1, workers) + max(1, prefetch):
                    done, finishing = cf.wait(finishing, return_when=cf.FIRST_COMPLETED)
                    for f in done:
                        f.result()
            for f in cf.as_completed(finishing):
                f.result()
        except BaseException:
            for _, f in loading:
                f.cancel()
            for f in finishing:
                f.cancel()
            raise


def default_batch(device) -> int:
    """Images encoded together by the local jobs: 4 on a GPU, where a batch costs less than its images one by
    one; 1 on the CPU, where it costs the same and only holds more memory."""
    return 4 if str(device).startswith(("cuda", "mps")) else 1


_END = object()


# --------------------------------------------------------------------------------------------- journal


class _Journal:
    """The `.partial` sidecar: a header line naming the job, then one JSON line per finished image."""

    def __init__(self, path: Path, job: dict, progress=None):
        self.path = path
        self.job = job
        self.records: dict[Any, dict] = {}
        self.discarded = False
        self._lock = threading.Lock()
        self._file = None
        self._progress = progress

    def open(self) -> None:
        """Reads the records of an earlier run of the same job (cutting a torn last line), or starts afresh."""
        header = {"sam2_adapter_journal": _JOURNAL_VERSION, "job": self.job}
        good_bytes = 0
        if self.path.exists():
            data = self.path.read_bytes()
            lines = data.split(b"\n")
            try:
                found = json.loads(lines[0]) if len(lines) > 1 else None  # no newline: a torn header
            except ValueError:
                found = None
            if found == header:
                good_bytes = len(lines[0]) + 1
                for line in lines[1:-1]:  # the part after the last newline is empty or torn
                    try:
                        record = json.loads(line)
                    except ValueError:
                        break
                    self.records[_key(record["image_id"])] = record
                    good_bytes += len(line) + 1
            else:
                self.discarded = found is not None
        if good_bytes:
            self._file = open(self.path, "r+b")
            self._file.truncate(good_bytes)
            self._file.seek(good_bytes)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")
            self._write(header)

    def append(self, record: dict) -> None:
        with self._lock:
            self._write(record)
            self.records[_key(record["image_id"])] = record
            if self._progress is not None:
                self._progress.update(1)

    def _write(self, obj: dict) -> None:
        self._file.write(_dumps(obj).encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _key(image_id: Any) -> str:
    """Image ids as dict keys that survive a JSON round trip (1 and "1" stay different)."""
    return json.dumps(image_id)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _write_atomically(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file owner-only: give it the mode the file it replaces had, or a new file's
        os.fchmod(fd, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as out:
            out.write(_dumps(obj).encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


def check_output(coco_out) -> Path:
    """`coco_out` as a file the job can write (its folder created), or InputError: checked before any work, so
    that a bad `--out` does not cost a whole run."""
    path = Path(coco_out)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; --out names the COCO file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{path}: its folder cannot be created ({error.strerror or error})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{path}: cannot be written (permission denied)")
    return path


def _previews_id(previews_dir) -> str | None:
    """The previews folder as the job identity holds it: a run resumed with other previews starts over."""
    return str(Path(previews_dir).resolve()) if previews_dir else None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- masks -> COCO


# What a journal record holds and how its geometry was made; a journal of another format is not resumed (2: COCO
# polygons traced at twice the resolution).
_RECORD_FORMAT = 2


def mask_annotation_fields(result: MaskResult, polygons: bool = False, polygon_tolerance: float = 1.0,
                           polygon_min_area: float = DEFAULT_MIN_AREA) -> dict:
    """The COCO fields of one mask: `segmentation` (compressed RLE {"size", "counts": str} by default, else
    polygon lists [[x1, y1, x2, y2, ...], ...]), `area` (the mask's pixel count) and `score` (predicted IoU).

    Polygons are in COCO's frame, where pixel (col, row) covers [col, col + 1) x [row, row + 1) and pycocotools
    fills the pixels whose centres a ring encloses. Rings through the boundary pixels' centres (the studio's
    convention, see `geometry`) would lose the top and left rows and every part one pixel wide there, so the
    mask is traced at twice its resolution: each ring runs a quarter pixel inside the pixel edges, and with
    `polygon_tolerance` 0 fills back to exactly the mask. A mask with no part of `polygon_min_area` pixels
    still gets its small parts (`object_polygons`).
    """
    if polygons:
        doubled = np.repeat(np.repeat(result.crop, 2, axis=0), 2, axis=1)
        rings = object_polygons(doubled, 2 * polygon_tolerance, 4 * polygon_min_area)
        # doubled pixel k's centre is at (k + 0.5) / 2 in the mask's pixel-corner frame
        offset = np.asarray(result.origin, np.float64) + 0.25
        segmentation = [[round(float(v), 2) for v in (ring / 2 + offset).ravel()] for ring in rings]
    else:
        segmentation = mask_to_rle(result.full())
    return {"segmentation": segmentation, "area": result.area, "score": round(float(result.score), 4)}


def _tight_box(result: MaskResult) -> list[float]:
    """COCO bbox [x, y, width, height] of the mask's pixels."""
    rows = np.flatnonzero(result.crop.any(axis=1))
    cols = np.flatnonzero(result.crop.any(axis=0))
    x0, y0 = result.origin
    return [float(x0 + cols[0]), float(y0 + rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def draw_overlay(image: np.ndarray, masks: list[np.ndarray], polygons: list[list[np.ndarray]],
                 boxes: np.ndarray) -> np.ndarray:
    """The image with each mask tinted, its polygons outlined and its prompt box drawn; RGB uint8."""
    out = image.astype(np.float32)
    for k, mask in enumerate(masks):
        out[mask] = 0.45 * out[mask] + 0.55 * _PALETTE[k % len(_PALETTE)]
    out = out.astype(np.uint8)
    for k, (rings, box) in enumerate(zip(polygons, boxes)):
        colour = tuple(int(c) for c in _PALETTE[k % len(_PALETTE)])
        for ring in rings:
            cv2.polylines(out, [np.round(ring).astype(np.int32)], True, (255, 255, 255), 1, cv2.LINE_AA)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, 1)
    return out


def _write_preview(path: Path, image: np.ndarray, results: Sequence[MaskResult],
                   boxes: Sequence[Sequence[float]]) -> None:
    """A PNG of the image and, beside it, the masks, their outlines and boxes. Raises OSError."""
    masks = [r.full() for r in results]
    rings = [[ring + np.asarray(r.origin) for ring in mask_to_polygons(r.crop)] for r in results]
    overlay = draw_overlay(image, masks, rings, np.asarray(boxes, np.float64).reshape(-1, 4))
    picture = cv2.cvtColor(np.concatenate([image, overlay], axis=1), cv2.COLOR_RGB2BGR)
    encoded, data = cv2.imencode(".png", picture)
    if not encoded:
        raise OSError("the PNG encoder failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())  # not cv2.imwrite: its False says nothing of why


def _preview_record(previews: dict[str, Path], task: _ImageTask, image: np.ndarray,
                    results: Sequence[MaskResult], boxes: Sequence[Sequence[float]]) -> dict:
    """Writes the task's preview; {} when done, else {"preview_problem": ...} for the journal record."""
    path = previews[_key(task.image_id)]
    try:
        _write_preview(path, image, results, boxes)
    except (OSError, ValueError, cv2.error) as error:
        detail = getattr(error, "strerror", None) or str(error)
        if getattr(error, "filename", None) not in (None, str(path)):
            detail += f" ({error.filename})"
        return {"preview_problem": task.problem(f"{task.name}: preview {path} not written: {detail}")}
    return {}


def _preview_paths(previews_dir: Path, tasks: Sequence[_ImageTask], images_dir: Path) -> dict[str, Path]:
    """Each task's preview file (by `_key(image_id)`), inside `previews_dir` whatever its file_name, and no
    two the same (compared case-insensitively, for the file systems that do). Deterministic in task order."""
    paths, taken = {}, set()
    for task in tasks:
        parts = _safe_parts(task.file_name, images_dir) or [f"image_{_safe_id(task.image_id)}"]
        candidate, n = parts, 0
        while "/".join(candidate).casefold() in taken:
            n += 1
            prefix = _safe_id(task.image_id) + (f"_{n}" if n > 1 else "")
            candidate = parts[:-1] + [f"{prefix}_{parts[-1]}"]
        taken.add("/".join(candidate).casefold())
        paths[_key(task.image_id)] = previews_dir.joinpath(*candidate[:-1], candidate[-1] + ".png")
    return paths


def _safe_parts(file_name: str, images_dir: Path) -> list[str]:
    """file_name as path parts with no root and no `.`/`..`: relative to the images folder when it points inside
    it (an absolute path, or `../images/x.png`), else as written with those parts dropped."""
    path = Path(os.path.normpath(images_dir / file_name))
    if path.is_relative_to(images_dir) and path != images_dir:
        path = path.relative_to(images_dir)
    else:
        path = Path(file_name)
    return [part for part in path.parts[1 if path.anchor else 0:] if part not in (".", "..")]


def _safe_id(image_id: Any) -> str:
    return re.sub(r"[^0-9A-Za-z._-]", "_", str(image_id))


# --------------------------------------------------------------------------------------------- the jobs


@dataclass
class _ImageTask:
    image_id: Any
    file_name: str
    path: Path
    declared_hw: tuple[int, int] | None = None
    annotations: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"image {self.image_id} ({self.file_name})" if self.image_id is not None else self.file_name

    def problem(self, reason: str, annotation_id: Any = None) -> dict:
        return Problem(reason, self.image_id, self.file_name, annotation_id).to_json()


@dataclass
class _Loaded:
    image: np.ndarray | None = None
    prompts: list[BoxPrompt] = field(default_factory=list)
    prompt_annotations: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    """Image problem (annotation_id None) or annotation problems found while preparing."""


def _load_image(task: _ImageTask) -> np.ndarray:
    try:
        data = task.path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{task.name}: file not found: {task.path}") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL in the name
        reason = getattr(error, "strerror", None) or error
        raise InputError(f"{task.name}: cannot read {task.path}: {reason}") from None
    image = decode_image(data, task.name)
    if task.declared_hw is not None and image.shape[:2] != task.declared_hw:
        h, w = task.declared_hw
        raise InputError(f"{task.name}: the file is {image.shape[1]}x{image.shape[0]} but the COCO file says "
                         f"{w}x{h}")
    return image


class _Job:
    """What both jobs share: journal, progress bar, pipeline, the final file."""

    def __init__(self, name: str, coco_out, job_identity: dict, progress: bool, workers: int, prefetch: int,
                 batch: int, on_image_done: Callable[[Any], None] | None):
        self.name = name
        self.batch = batch
        self.out = Path(coco_out)
        self.identity = job_identity
        self.progress = progress
        self.workers = workers
        self.prefetch = prefetch
        self.on_image_done = on_image_done

    def run(self, tasks: list[_ImageTask], prepare, infer, finish) -> tuple[_Journal, JobSummary]:
        from tqdm import tqdm

        summary = JobSummary(self.name, self.out, images=len(tasks))
        bar = tqdm(total=len(tasks), unit="img", desc=self.name, disable=not self.progress, dynamic_ncols=True)
        journal = _Journal(Path(str(self.out) + ".partial"), self.identity, bar)
        journal.open()
        try:
            if journal.discarded:
                summary.notes.append(f"note: {journal.path} was left by a different job and has been restarted")
            todo = [t for t in tasks if _key(t.image_id) not in journal.records]
            summary.resumed = len(tasks) - len(todo)
            bar.update(summary.resumed)

            def finish_and_record(task: _ImageTask, result) -> None:
                journal.append(finish(task, result))
                if self.on_image_done is not None:
                    self.on_image_done(task.image_id)

            run_pipeline(todo, prepare, infer, finish_and_record, workers=self.workers, prefetch=self.prefetch,
                         batch=self.batch)
            summary.processed = len(todo)
        finally:
            bar.close()
            journal.close()
        return journal, summary


def boxes_to_masks(images_dir, coco_in, coco_out, segmenter: ImageSegmenter, *, polygons: bool = False,
                   previews_dir=None, polygon_tolerance: float = 1.0, polygon_min_area: float = DEFAULT_MIN_AREA,
                   box_margin: float = 0.0, model_name: str = "", workers: int = 2, prefetch: int = 4,
                   batch: int | None = None, progress: bool = False,
                   on_image_done: Callable[[Any], None] | None = None) -> JobSummary:
    """A COCO file with boxes -> the same file with a SAM 2 mask for every box annotation.

    Every annotation keeps its fields (id, image_id, category_id, bbox, ...) and gets `segmentation` (RLE, or
    polygons with `polygons=True`), `area` (mask pixels) and `score` (SAM 2's predicted IoU); an annotation whose
    box gives no mask (bad box, box outside its image, unknown image id, image missing or unreadable) is left
    out of `annotations` and reported. Images and categories are copied; annotations come in image-id order,
    then input order. Images without annotations are not read. A mask is cut where it leaves its box grown by
    `box_margin` pixels (see `segment_box_prompts`).

    `batch` images are encoded together (None: `default_batch` of the segmenter's device). `model_name` goes
    into the job identity (a journal of another model is not resumed); `on_image_done(id)` is called after each
    image is journaled (progress hooks, tests). Raises InputError only when the job cannot run at all (folder
    missing, COCO file unreadable or malformed, an option not a number >= 0), before any work.
    """
    polygon_tolerance, polygon_min_area, box_margin = (_option(value, name) for value, name in (
        (polygon_tolerance, "polygon_tolerance"), (polygon_min_area, "polygon_min_area"), (box_margin, "box_margin")))
    images_dir = _check_dir(images_dir)
    check_output(coco_out)
    coco_in = Path(coco_in)
    document = _read_coco(coco_in)
    tasks, early_problems = _box_tasks(document, images_dir)
    identity = {"job": "boxes-to-masks", "format": _RECORD_FORMAT, "coco_in": _file_digest(coco_in),
                "images_dir": str(images_dir),
                "polygons": polygons, "tolerance": polygon_tolerance, "min_area": polygon_min_area,
                "box_margin": box_margin, "model": model_name, "mask_threshold": segmenter.mask_threshold,
                "previews": _previews_id(previews_dir)}
    previews = _preview_paths(Path(previews_dir), tasks, images_dir) if previews_dir else None

    def prepare(task: _ImageTask) -> _Loaded:
        loaded = _Loaded()
        try:
            loaded.image = _load_image(task)
        except InputError as error:
            loaded.problems.append(task.problem(str(error)))
            return loaded
        for ann in task.annotations:
            try:
                loaded.prompts.append(BoxPrompt(f"annotation {ann['id']}", _xywh_to_xyxy(ann)))
                loaded.prompt_annotations.append(ann)
            except InputError as error:
                loaded.problems.append(task.problem(str(error), ann["id"]))
        return loaded

    def infer(group: list[_ImageTask], prepared: list[_Loaded]) -> list:
        features = segmenter.encode_many([loaded.image if loaded.prompts else None for loaded in prepared])
        return [(loaded, [] if f is None else segment_box_prompts(segmenter, f, loaded.prompts, margin=box_margin))
                for loaded, f in zip(prepared, features)]

    def finish(task: _ImageTask, result) -> dict:
        loaded, outcomes = result
        annotations, problems = [], list(loaded.problems)
        shown, boxes = [], []
        for ann, prompt, outcome in zip(loaded.prompt_annotations, loaded.prompts, outcomes):
            if isinstance(outcome, InputError):
                problems.append(task.problem(f"{outcome} (COCO bbox {ann.get('bbox')})", ann["id"]))
                continue
            annotations.append({**ann, **mask_annotation_fields(outcome, polygons, polygon_tolerance,
                                                                 polygon_min_area)})
            shown.append(outcome)
            boxes.append(prompt.box)
        record = {"image_id": task.image_id, "annotations": annotations, "problems": problems}
        if loaded.image is not None:
            record["height"], record["width"] = (int(v) for v in loaded.image.shape[:2])
            if previews is not None:
                record.update(_preview_record(previews, task, loaded.image, shown, boxes))
        return record

    job = _Job("boxes-to-masks", coco_out, identity, progress, workers, prefetch,
               default_batch(segmenter.device) if batch is None else batch, on_image_done)
    journal, summary = job.run(tasks, prepare, infer, finish)

    # Every image is done: assemble the output from the journal, in image-id order.
    records = [journal.records[_key(t.image_id)] for t in tasks]
    order = {_key(t.image_id): n for n, t in enumerate(tasks)}
    annotations, problems, preview_failures = [], list(early_problems), []
    for record in records:
        annotations += record["annotations"]
        problems += record["problems"]
        if "preview_problem" in record:
            preview_failures.append(Problem.from_json(record["preview_problem"]))
    images = []
    for image in document["images"]:
        record = journal.records.get(_key(image["id"]))
        if record is not None and "width" in record and ("width" not in image or "height" not in image):
            image = {**image, "width": record["width"], "height": record["height"]}
        images.append(image)
    problems.sort(key=lambda p: (order.get(_key(p.get("image_id")), len(order)), _sort_id(p.get("image_id")),
                                 p.get("annotation_id") is not None, _sort_id(p.get("annotation_id"))))
    output = {**document, "images": images, "annotations": annotations,
              "sam2_adapter": {"job": "boxes-to-masks", "skipped": problems}}
    _write_atomically(job.out, output)
    journal.remove()
    summary.annotations = len(annotations)
    summary.problems = [Problem.from_json(p) for p in problems]
    summary.preview_failures = preview_failures
    return summary


def auto(images_dir, coco_out, segmenter: ImageSegmenter, settings: ProposalSettings = ProposalSettings(), *,
         polygons: bool = False, previews_dir=None, polygon_tolerance: float = 1.0,
         polygon_min_area: float = DEFAULT_MIN_AREA, category_name: str = "object", model_name: str = "",
         workers: int = 2, prefetch: int = 4, batch: int | None = None, progress: bool = False,
         on_image_done: Callable[[Any], None] | None = None) -> JobSummary:
    """A folder of images (searched recursively, `IMAGE_EXTENSIONS`) -> a COCO file of mask proposals.

    Images get ids 1, 2, ... in the order of their paths relative to the folder (file_name, with "/").
    Each proposal is an annotation of the one category `category_name` (id 1) with bbox (of the mask),
    segmentation, area, score (predicted IoU), stability_score, point_coords (the click), iscrowd 0; ids
    1, 2, ... in image order, best score first within an image. An image that cannot be read is left out of
    `images` and reported. `batch` images are encoded together (None: `default_batch` of the device). Raises
    InputError when the folder is missing or holds no image, or a polygon option is not a number >= 0.
    """
    polygon_tolerance = _option(polygon_tolerance, "polygon_tolerance")
    polygon_min_area = _option(polygon_min_area, "polygon_min_area")
    images_dir = _check_dir(images_dir)
    check_output(coco_out)
    if previews_dir and Path(previews_dir).resolve() == images_dir:
        raise InputError(f"{previews_dir}: the previews folder cannot be the images folder (a re-run would take "
                         f"the previews for images)")
    files = _list_images(images_dir, [Path(p) for p in (previews_dir, coco_out) if p])
    if not files:
        raise InputError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
    tasks = [_ImageTask(n, name, images_dir / name) for n, name in enumerate(files, start=1)]
    identity = {"job": "auto", "format": _RECORD_FORMAT, "images_dir": str(images_dir), "files": _digest_list(files),
                "settings": settings.as_dict(), "polygons": polygons, "tolerance": polygon_tolerance,
                "min_area": polygon_min_area, "category": category_name, "model": model_name,
                "mask_threshold": segmenter.mask_threshold, "previews": _previews_id(previews_dir)}
    previews = _preview_paths(Path(previews_dir), tasks, images_dir) if previews_dir else None

    def prepare(task: _ImageTask):
        try:
            return _load_image(task)
        except InputError as error:
            return error

    def infer(group: list[_ImageTask], images: list) -> list:
        features = segmenter.encode_many([None if isinstance(image, InputError) else image for image in images])
        return [(image, [] if f is None else propose_masks(segmenter, f, settings))
                for image, f in zip(images, features)]

    def finish(task: _ImageTask, result) -> dict:
        image, proposals = result
        if isinstance(image, InputError):
            return {"image_id": task.image_id, "annotations": [], "problems": [task.problem(str(image))]}
        annotations = []
        for proposal in proposals:
            annotations.append({"image_id": task.image_id, "category_id": 1, "bbox": _tight_box(proposal),
                                **mask_annotation_fields(proposal, polygons, polygon_tolerance, polygon_min_area),
                                "stability_score": round(float(proposal.stability), 4),
                                "point_coords": [[round(proposal.point[0], 2), round(proposal.point[1], 2)]],
                                "iscrowd": 0})
        record = {"image_id": task.image_id, "annotations": annotations, "problems": [],
                  "height": int(image.shape[0]), "width": int(image.shape[1])}
        if previews is not None:
            boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (a["bbox"] for a in annotations)]
            record.update(_preview_record(previews, task, image, proposals, boxes))
        return record

    job = _Job("auto", coco_out, identity, progress, workers, prefetch,
               default_batch(segmenter.device) if batch is None else batch, on_image_done)
    journal, summary = job.run(tasks, prepare, infer, finish)

    images, annotations, problems, preview_failures = [], [], [], []
    for task in tasks:
        record = journal.records[_key(task.image_id)]
        problems += record["problems"]
        if "preview_problem" in record:
            preview_failures.append(Problem.from_json(record["preview_problem"]))
        if "width" not in record:
            continue
        images.append({"id": task.image_id, "file_name": task.file_name, "width": record["width"],
                       "height": record["height"]})
        for ann in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, **ann})
    output = {"info": {"description": "SAM 2 mask proposals"}, "images": images, "annotations": annotations,
              "categories": [{"id": 1, "name": category_name, "supercategory": category_name}],
              "sam2_adapter": {"job": "auto", "settings": settings.as_dict(), "skipped": problems}}
    _write_atomically(job.out, output)
    journal.remove()
    summary.annotations = len(annotations)
    summary.problems = [Problem.from_json(p) for p in problems]
    summary.preview_failures = preview_failures
    return summary


# --------------------------------------------------------------------------------------------- input checks


def _list_images(images_dir: Path, outputs: list[Path]) -> list[str]:
    """The image files under the folder (relative, with "/", sorted), less the job's own outputs (previews, the
    output file) where they lie inside it: a resumed run must see the same list."""
    left_out = {q for p in outputs for q in (Path(os.path.abspath(p)), p.resolve())
                if q != images_dir and q.is_relative_to(images_dir)}  # a folder holding the images holds no output

    def ours(path: Path) -> bool:
        return any(path == q or path.is_relative_to(q) for q in left_out)

    return sorted(p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not ours(p))


def _option(value, name: str) -> float:
    """A job's number option: finite and >= 0 (strings of numbers too), or an InputError naming it."""
    try:
        return parse_at_least(value, 0.0)
    except ValueError as error:
        raise InputError(f"{name}: {error}") from None


def _check_dir(images_dir) -> Path:
    path = Path(images_dir).resolve()
    if not path.is_dir():
        raise InputError(f"{images_dir}: images folder not found")
    return path


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NonFinite(name)


def _read_coco(path: Path) -> dict:
    try:
        data = path.read_bytes()
        document = json.loads(data, parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise InputError(f"{path}: COCO file not found") from None
    except _NonFinite as error:
        # Python writes and reads NaN/Infinity, JSON has no such numbers; where is worth a second parse
        where = _find_constant(json.loads(data, parse_constant=_NonFinite))
        raise InputError(f"{path}: {where or 'a value'} is {error}, which is not a JSON number; COCO files need finite "
                         f"numbers") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable COCO JSON file ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise InputError(f"{path}: not a COCO file (no 'images' list)")
    if not isinstance(document.get("annotations", []), list):
        raise InputError(f"{path}: 'annotations' is not a list")
    seen = set()
    for n, image in enumerate(document["images"]):
        if not isinstance(image, dict) or not _is_id(image.get("id")):
            raise InputError(f"{path}: images[{n}] needs an id (integer or string)")
        if not isinstance(image.get("file_name", ""), str):
            raise InputError(f"{path}: images[{n}] (id {image['id']!r}): file_name must be a string")
        if _key(image["id"]) in seen:
            raise InputError(f"{path}: image id {image['id']!r} appears twice")
        seen.add(_key(image["id"]))
    seen = set()
    for n, ann in enumerate(document.get("annotations", [])):
        if not isinstance(ann, dict) or not _is_id(ann.get("id")):
            raise InputError(f"{path}: annotations[{n}] needs an id (integer or string)")
        if _key(ann["id"]) in seen:
            raise InputError(f"{path}: annotation id {ann['id']!r} appears twice")
        seen.add(_key(ann["id"]))
    return document


def _find_constant(value: Any, where: str = "") -> str | None:
    """Where the first _NonFinite is in a parsed document, e.g. `annotations[3] (id 7).bbox[0]`."""
    if isinstance(value, _NonFinite):
        return where or "the top level"
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{n}]" + (f" (id {v['id']})" if isinstance(v, dict) and _is_id(v.get("id")) else ""), v)
                 for n, v in enumerate(value))
    else:
        return None
    for inner_where, inner in items:
        found = _find_constant(inner, inner_where)
        if found is not None:
            return found
    return None


def _is_id(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _sort_id(value) -> tuple:
    """A total order on ids: integers (None as 0), then strings, then anything else."""
    if value is None:
        return (0, 0)
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, _key(value))


def _box_tasks(document: dict, images_dir: Path) -> tuple[list[_ImageTask], list[dict]]:
    """One task per image that has annotations, in image-id order; problems of annotations of unknown images."""
    tasks: dict[str, _ImageTask] = {}
    nameless = set()
    for image in document["images"]:
        if not image.get("file_name"):  # e.g. listed by coco_url only: fine unless it has boxes to convert
            nameless.add(_key(image["id"]))
            continue
        declared = None
        if isinstance(image.get("width"), int) and isinstance(image.get("height"), int):
            declared = (image["height"], image["width"])
        tasks[_key(image["id"])] = _ImageTask(image["id"], image["file_name"], images_dir / image["file_name"],
                                              declared)
    problems = []
    for ann in document.get("annotations", []):
        if not _is_id(ann.get("image_id")):
            problems.append(Problem(f"annotation {ann['id']}: image_id must be an integer or a string, got "
                                    f"{ann.get('image_id')!r}", None, None, ann["id"]).to_json())
            continue
        if _key(ann.get("image_id")) in nameless:
            problems.append(Problem(f"annotation {ann['id']}: image {ann['image_id']!r} has no file_name in the "
                                    f"COCO file: not read", ann["image_id"], None, ann["id"]).to_json())
            continue
        task = tasks.get(_key(ann.get("image_id")))
        if task is None:
            problems.append(Problem(f"annotation {ann['id']}: image id {ann.get('image_id')!r} is not in the "
                                    f"COCO file's images", ann.get("image_id"), None, ann["id"]).to_json())
            continue
        task.annotations.append(ann)
    ordered = sorted((t for t in tasks.values() if t.annotations), key=lambda t: _sort_id(t.image_id))
    return ordered, problems


def _xywh_to_xyxy(ann: dict) -> list[float]:
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputError(f"annotation {ann['id']}: bbox must be four numbers [x, y, width, height], "
                         f"got {bbox!r}") from None
    if w < 0 or h < 0:
        raise InputError(f"annotation {ann['id']}: bbox {bbox!r} has a negative width or height")
    return [x, y, x + w, y + h]


def _digest_list(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()
