"""Evaluates a SAM 2 checkpoint on held-out generated scenes and clips (a seed the training never draws).

    python tools/evaluate_micro.py                      # the bundled micro model
    python tools/evaluate_micro.py --config my.yaml --checkpoint my.pt

Prints box-to-mask mIoU, one-click and three-click mIoU (each click at the interior of the largest error region,
as interactive-segmentation benchmarks place them), tracking mean J (region IoU) on clips where the object stays
visible with a box prompt on frame 0, and how often the object score marks frames without the object as absent.

Also, to tell a weak encoder from a weak decoder, box masks at the decoder's own resolution against a probe that
sees the answer: a linear classifier fitted to half of each object's box on the encoder's features and scored on the
other half (`feature_probe_iou`). A probe near 1 with box masks far below it says the features carry the objects
and the prompt-conditioned decoder is what falls short.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sam2_adapter.embeddings import ImageFeatures  # noqa: E402
from sam2_adapter.geometry import mask_iou  # noqa: E402
from sam2_adapter.models import CheckpointError, load_model, spec_for  # noqa: E402
from sam2_adapter.scenes import make_clip, make_scene, mask_box, next_click, write_jpeg_folder  # noqa: E402
from sam2_adapter.errors import InputError  # noqa: E402
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, segment_box_prompts  # noqa: E402

HELD_OUT_SEED = 20261122


def evaluate_images(segmenter: ImageSegmenter, rng: np.random.Generator, n_scenes: int) -> dict:
    box_ious, cut_ious, click_ious = [], [], {1: [], 3: []}
    low_res_ious, probe_ious = [], []
    for _ in range(n_scenes):
        scene = make_scene(rng)
        features = segmenter.encode(scene.image)
        for result, target, box in zip(segmenter.segment_boxes(features, scene.boxes), scene.masks, scene.boxes):
            box_ious.append(mask_iou(result.full(), target))
            low_target = low_res(target, result.low_res_logits.shape[-2:])
            if low_target.sum() >= 4:  # objects of a few low-res cells say nothing about either
                low_res_ious.append(mask_iou(result.low_res_logits[0] > 0, low_target))
                probe_ious.append(feature_probe_iou(features, low_target, box))
        # as Box to Segmentation gives them: cut at the box (a box with nothing left inside: an empty mask)
        prompts = [BoxPrompt(f"box {k}", box) for k, box in enumerate(scene.boxes)]
        for outcome, target in zip(segment_box_prompts(segmenter, features, prompts), scene.masks):
            cut_ious.append(0.0 if isinstance(outcome, InputError) else mask_iou(outcome.full(), target))
        for target in scene.masks:
            points, labels, logits = [], [], None
            pred = np.zeros_like(target)
            for n_clicks in (1, 2, 3):
                xy, label = next_click(pred, target)
                points.append(xy)
                labels.append(label)
                result = segmenter.segment_points(features, np.stack(points), np.array(labels), mask_input=logits)
                pred, logits = result.full(), result.low_res_logits
                if n_clicks in click_ious:
                    click_ious[n_clicks].append(mask_iou(pred, target))
    return {
        "objects": len(box_ious),
        "box_miou": float(np.mean(box_ious)),
        "box_miou_cut_at_box": float(np.mean(cut_ious)),
        "box_masks_below_0.3": float(np.mean(np.array(box_ious) < 0.3)),
        "box_miou_low_res": float(np.mean(low_res_ious)),
        "feature_probe_miou_low_res": float(np.mean(probe_ious)),
        "one_click_miou": float(np.mean(click_ious[1])),
        "three_click_miou": float(np.mean(click_ious[3])),
    }


def low_res(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An image-size mask on the decoder's low-res grid: cells at least half covered."""
    return cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA) >= 0.5


def feature_probe_iou(features: ImageFeatures, target: np.ndarray, box: np.ndarray, margin: int = 4) -> float:
    """How linearly separable an object is in the encoder's stride-4 features (the map the decoder adds in last
    before its linear read-out of the mask): a logistic regression fitted to `target` ((s, s) bool on the decoder's
    low-res grid) over the cells of `box` (image pixels) plus `margin` cells, on every other cell (a
    checkerboard), and its IoU on the remaining cells.

    A diagnostic that sees the answer, not a model: near 1 says the features carry the object's outline.
    """
    s_h, s_w = target.shape
    level = F.interpolate(features.high_res[0].float(), size=(s_h, s_w), mode="bilinear")[0]
    h, w = features.orig_hw
    x0, x1 = ((np.array([box[0], box[2]]) * s_w / w).astype(int) + (-margin, margin + 1)).clip(0, s_w)
    y0, y1 = ((np.array([box[1], box[3]]) * s_h / h).astype(int) + (-margin, margin + 1)).clip(0, s_h)
    x = level[:, y0:y1, x0:x1].flatten(1).T
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.from_numpy(target[y0:y1, x0:x1].ravel()).float()
    rows, cols = np.mgrid[y0:y1, x0:x1]
    fit = torch.from_numpy(((rows + cols) % 2 == 0).ravel())
    weights = torch.zeros(x.shape[1] + 1, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=60)

    def closure():
        optimiser.zero_grad()
        logits = x[fit] @ weights[:-1] + weights[-1]
        loss = F.binary_cross_entropy_with_logits(logits, y[fit]) + 1e-4 * weights[:-1].square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    with torch.no_grad():
        pred = (x[~fit] @ weights[:-1] + weights[-1] > 0).numpy()
    truth = y[~fit].numpy() > 0.5
    return float((pred & truth).sum() / max((pred | truth).sum(), 1))


def evaluate_tracking(config: Path, checkpoint: Path, rng: np.random.Generator, n_clips: int, n_frames: int) -> dict:
    """Box on frame 0 of each object, propagated with SAM 2's own video predictor over the clip's JPEG frames."""
    predictor = load_model(config, checkpoint, "cpu", video=True)
    steady_j, all_j, absent_hits, absent_frames = [], [], 0, 0
    for _ in range(n_clips):
        clip = make_clip(rng, n_frames=n_frames)
        with tempfile.TemporaryDirectory() as folder:
            write_jpeg_folder(clip.frames, folder)
            with torch.inference_mode():
                state = predictor.init_state(video_path=folder)
                for k in range(len(clip.kinds)):
                    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=k, box=mask_box(clip.masks[0, k]))
                masks = {t: (logits[:, 0] > 0).cpu().numpy() for t, _, logits in predictor.propagate_in_video(state)}
        for k in range(len(clip.kinds)):
            outputs = state["output_dict_per_obj"][k]
            ious = []
            for t in range(1, n_frames):
                out = outputs["non_cond_frame_outputs"][t]
                present = float(out["object_score_logits"].flatten()[0]) > 0
                if clip.visible[t, k]:
                    ious.append(mask_iou(masks[t][k], clip.masks[t, k]))
                else:
                    absent_frames += 1
                    absent_hits += not present
            all_j += ious
            if clip.visible[:, k].all():
                steady_j.append(float(np.mean(ious)))
    return {
        "clips": n_clips,
        "tracking_mean_j_always_visible": float(np.mean(steady_j)) if steady_j else float("nan"),
        "tracks_always_visible": len(steady_j),
        "tracking_mean_j_all_visible_frames": float(np.mean(all_j)),
        "absent_frames": absent_frames,
        "absent_marked_rate": absent_hits / absent_frames if absent_frames else float("nan"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=spec_for("micro").config_path)
    parser.add_argument("--checkpoint", type=Path, default=spec_for("micro").config_path.parent / "sam2_micro.pt")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--clips", type=int, default=30)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.clips < 1 or args.frames < 2:
        parser.error(f"--scenes and --clips must be at least 1 and --frames at least 2 (a first frame and one to "
                     f"track), got {args.scenes}, {args.clips}, {args.frames}")
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()
                                  or not os.access(args.json.parent, os.W_OK)):
        parser.error(f"--json {args.json}: not a file that can be written (its folder must exist)")
    torch.set_num_threads(2)
    try:
        model = load_model(args.config, args.checkpoint, "cpu")
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    figures = evaluate_images(ImageSegmenter(model), rng, args.scenes)
    figures.update(evaluate_tracking(args.config, args.checkpoint, rng, args.clips, args.frames))
    for key, value in figures.items():
        print(f"{key:36s} {value:.4f}" if isinstance(value, float) else f"{key:36s} {value}")
    if args.json:  # strict JSON: a figure with nothing to average over is null, not NaN
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in figures.items()}
        try:
            args.json.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
        except OSError as error:
            print(f"error: cannot write {args.json}: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
