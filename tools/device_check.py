"""Checks the image and video paths on an accelerator against SAM 2's own predictors, with the micro model.

    python tools/device_check.py                  # the best device there is (cuda, then mps, then cpu)
    python tools/device_check.py --device cuda

Development and CI machines have no GPU, so the CUDA path (bf16 autocast, TF32, tensors on the device, the geometry
worker beside the decoder) is only exercised where one is lent; `tools/device_run.sh` runs this script and the
benchmarks there in one go. Every check prints its figure; the exit code is 1 if one misses its bar:

* box masks: ours (`ImageSegmenter`) against `SAM2ImagePredictor` on the same device under the same precision,
  every object of three generated scenes (IoU >= 0.98 each, as the CPU tests ask 0.99 in fp32);
* a refinement click (two clicks and the previous logits as mask input), the same comparison;
* device against CPU: our box masks on the device against ours on the CPU in fp32 (mean IoU >= 0.95: what bf16
  costs; on the CPU itself this reads 1);
* the batch job's encoder: box masks of images encoded as one batch against the same images encoded alone
  (IoU >= 0.98 each);
* Box to Polygon's worker: the polygons traced beside the decoder equal the ones traced after it;
* tracking: our streaming tracker against `SAM2VideoPredictor.propagate_in_video` on the same device and JPEG
  frames, three objects prompted by boxes (IoU >= 0.98 on every frame where both see the object, and the same
  frames seen).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from sam2_adapter.errors import InputError  # noqa: E402
from sam2_adapter.geometry import mask_iou, mask_to_polygons  # noqa: E402
from sam2_adapter.models import inference_context, load_named_model, select_device, spec_for  # noqa: E402
from sam2_adapter.scenes import make_clip, make_scene, mask_box, write_jpeg_folder  # noqa: E402
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, segment_box_prompts  # noqa: E402
from sam2_adapter.tracker import VideoTracker  # noqa: E402

SCENE_SEEDS = (0, 1, 2)


class Report:
    """Prints each check as it completes and remembers whether any missed its bar."""

    def __init__(self):
        self.failed = []

    def check(self, name: str, value: float, bar: float, detail: str = "") -> None:
        ok = value >= bar
        if not ok:
            self.failed.append(name)
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<58} {value:.4f} (bar {bar}){'  ' + detail if detail else ''}",
              flush=True)


def reference_predictor(model, image: np.ndarray, device: torch.device) -> SAM2ImagePredictor:
    """SAM 2's image predictor on our model; its feature sizes assume 1024 px input, so they are set from the
    model (the fix our segmenter makes by reading them off the backbone)."""
    predictor = SAM2ImagePredictor(model)
    size = model.image_size
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    with torch.inference_mode(), inference_context(device):
        predictor.set_image(image)
    return predictor


def check_images(model, cpu_model, device: torch.device, report: Report) -> None:
    segmenter, on_cpu = ImageSegmenter(model), ImageSegmenter(cpu_model)
    box_ious, device_ious, click_ious = [], [], []
    for seed in SCENE_SEEDS:
        scene = make_scene(np.random.default_rng(seed), 256, 384)
        features = segmenter.encode(scene.image)
        ours = segmenter.segment_boxes(features, scene.boxes)
        predictor = reference_predictor(model, scene.image, device)
        with torch.inference_mode(), inference_context(device):
            theirs, _, _ = predictor.predict(box=scene.boxes, multimask_output=False)
        theirs = np.asarray(theirs).reshape(len(scene.boxes), *scene.image.shape[:2]) > 0
        box_ious += [mask_iou(r.full(), m) for r, m in zip(ours, theirs)]
        cpu = on_cpu.segment_boxes(on_cpu.encode(scene.image), scene.boxes)
        device_ious += [mask_iou(a.full(), b.full()) for a, b in zip(ours, cpu)]

        ys, xs = np.nonzero(scene.masks[0])
        clicks = np.array([[xs[len(xs) // 2] + 0.5, ys[len(ys) // 2] + 0.5], [2.5, 2.5]], np.float32)
        first = segmenter.segment_points(features, clicks[:1], np.array([1]))
        second = segmenter.segment_points(features, clicks, np.array([1, 0]), mask_input=first.low_res_logits)
        with torch.inference_mode(), inference_context(device):
            masks, scores, logits = predictor.predict(point_coords=clicks[:1], point_labels=np.array([1]),
                                                      multimask_output=True)
            best = int(np.argmax(scores))
            again, _, _ = predictor.predict(point_coords=clicks, point_labels=np.array([1, 0]),
                                            mask_input=logits[best:best + 1], multimask_output=False)
        click_ious.append(mask_iou(second.full(), np.asarray(again)[0] > 0))
    report.check("box masks vs SAM2ImagePredictor (min IoU)", min(box_ious), 0.98, f"{len(box_ious)} boxes")
    report.check("refinement click vs SAM2ImagePredictor (min IoU)", min(click_ious), 0.98, f"{len(click_ious)} clicks")
    report.check("box masks on the device vs on the CPU in fp32 (mean IoU)", float(np.mean(device_ious)), 0.95,
                 f"min {min(device_ious):.4f}")

    # The batch job encodes several images in one encoder call: their masks must be the ones encoded alone give.
    batch = [make_scene(np.random.default_rng(seed), 256, 384) for seed in SCENE_SEEDS]
    together = segmenter.encode_many([scene.image for scene in batch])
    batch_ious = [mask_iou(a.full(), b.full())
                  for scene, features in zip(batch, together)
                  for a, b in zip(segmenter.segment_boxes(features, scene.boxes),
                                  segmenter.segment_boxes(segmenter.encode(scene.image), scene.boxes))]
    report.check("box masks, images encoded as one batch vs alone (min IoU)", min(batch_ious), 0.98,
                 f"{len(batch_ious)} boxes")

    # Box to Polygon's geometry on the worker beside the decoder (one decoder call a box, so there is a next
    # call to overlap with) gives what it gives after the decoder.
    scene = make_scene(np.random.default_rng(SCENE_SEEDS[0]), 256, 384)
    prompts = [BoxPrompt(f"box {k}", box) for k, box in enumerate(scene.boxes)]
    polygons = {}
    for overlap in (True, False):
        worker = ImageSegmenter(model, max_prompts_per_call=1, overlap_then=overlap)
        features = worker.encode(scene.image)
        polygons[overlap] = segment_box_prompts(worker, features, prompts, then=lambda _, m: mask_to_polygons(m.crop))

    def alike(a, b) -> bool:  # the same polygons, or the same box reported (no object inside it)
        if isinstance(a, InputError) or isinstance(b, InputError):
            return str(a) == str(b)
        return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))

    same = all(alike(a, b) for a, b in zip(polygons[True], polygons[False]))
    report.check("polygons traced beside the decoder == after it", float(same), 1.0, f"{len(prompts)} boxes")


def check_tracking(model, video_model, device: torch.device, report: Report) -> None:
    clip = make_clip(np.random.default_rng(3), n_frames=12, height=200, width=320, n_objects=3)
    boxes = [mask_box(clip.masks[0, k]) for k in range(3)]
    with tempfile.TemporaryDirectory(prefix="device-check-") as folder:
        write_jpeg_folder(clip.frames, folder)
        theirs = {}
        with torch.inference_mode(), inference_context(device), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SAM 2's hole filling wants its optional CUDA extension
            state = video_model.init_state(folder)
            for k, box in enumerate(boxes):
                video_model.add_new_points_or_box(state, frame_idx=0, obj_id=k, box=box)
            for t, ids, logits in video_model.propagate_in_video(state):
                scores = [float(state["output_dict_per_obj"][n][
                    "cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t]["object_score_logits"])
                    for n in range(len(ids))]
                theirs[t] = {i: (logits[n, 0] > 0).cpu().numpy() if scores[n] > 0 else None
                             for n, i in enumerate(ids)}
        with VideoTracker(model, folder) as tracker:
            for k, box in enumerate(boxes):
                tracker.add_box(k, 0, box)
            ours = {r.frame_idx: r for r in tracker.propagate()}
    ious, disagree = [], 0
    for t, objects in theirs.items():
        for k, mask in objects.items():
            mine = ours[t].objects[k]
            seen = mask is not None and mask.any()
            if mine.visible != seen:
                disagree += 1
            elif seen:
                ious.append(mask_iou(mine.mask(), mask))
    report.check("tracking vs SAM2VideoPredictor (min IoU, 3 objects)", min(ious, default=0.0), 0.98,
                 f"{len(ious)} object-frames")
    report.check("tracking vs SAM2VideoPredictor (object-frames seen alike)", 1 - disagree / (3 * len(theirs)), 1.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps or cpu")
    args = parser.parse_args(argv)
    try:
        device = select_device(args.device)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device: {name}, torch {torch.__version__}, micro model ({spec_for('micro').filename})",
          flush=True)
    start = time.perf_counter()
    report = Report()
    torch.manual_seed(0)
    model = load_named_model("micro", device)
    check_images(model, model if device.type == "cpu" else load_named_model("micro", "cpu"), device, report)
    check_tracking(model, load_named_model("micro", device, video=True), device, report)
    print(f"{'all checks passed' if not report.failed else 'FAILED: ' + ', '.join(report.failed)} "
          f"({time.perf_counter() - start:.1f} s)")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
