"""Evaluates a SAM 2 checkpoint on held-out generated scenes and clips (a seed the training never draws).

    python tools/evaluate_micro.py                      # the bundled micro model
    python tools/evaluate_micro.py --config my.yaml --checkpoint my.pt

Prints box-to-mask mIoU, one-click and three-click mIoU (each click at the interior of the largest error region,
as interactive-segmentation benchmarks place them), tracking mean J (region IoU) on clips where the object stays
visible with a box prompt on frame 0, and how often the object score marks frames without the object as absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sam2_adapter.geometry import mask_iou  # noqa: E402
from sam2_adapter.models import CheckpointError, load_model, spec_for  # noqa: E402
from sam2_adapter.scenes import make_clip, make_scene, mask_box, next_click, write_jpeg_folder  # noqa: E402
from sam2_adapter.segment import ImageSegmenter  # noqa: E402

HELD_OUT_SEED = 20261122


def evaluate_images(segmenter: ImageSegmenter, rng: np.random.Generator, n_scenes: int) -> dict:
    box_ious, click_ious = [], {1: [], 3: []}
    for _ in range(n_scenes):
        scene = make_scene(rng)
        features = segmenter.encode(scene.image)
        for result, target in zip(segmenter.segment_boxes(features, scene.boxes), scene.masks):
            box_ious.append(mask_iou(result.full(), target))
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
        "one_click_miou": float(np.mean(click_ious[1])),
        "three_click_miou": float(np.mean(click_ious[3])),
    }


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
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
