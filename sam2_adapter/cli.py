"""Local jobs for users without the platform.

    python -m sam2_adapter.cli demo --out out/demo
    sam2-adapter boxes-to-masks IMAGES_DIR boxes.json --out masks.json [--polygons] [--previews DIR]
    sam2-adapter auto IMAGES_DIR --out proposals.json [--points-per-side 32 ...]

The jobs are resumable: after an interruption, the same command skips the images already done (they are in
OUT.partial) and writes the same file. Exit status: 0 when everything was done, 1 when some images or boxes were
skipped (listed at the end, and in the output file under "sam2_adapter"), 2 for bad command-line input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from sam2_adapter.coco import auto, boxes_to_masks, draw_overlay
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import DEFAULT_MIN_AREA, mask_iou, mask_to_polygons
from sam2_adapter.models import load_model, load_named_model
from sam2_adapter.proposals import ProposalSettings
from sam2_adapter.scenes import make_scene
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, segment_box_prompts

__all__ = ["draw_overlay", "main"]


def run_demo(args: argparse.Namespace) -> int:
    """Box to Polygon on generated sample scenes with the bundled micro model; writes overlays to --out."""
    model = (load_model(args.config, args.checkpoint, args.device) if args.config
             else load_named_model(args.model, args.device))
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


def _segmenter(args: argparse.Namespace) -> tuple[ImageSegmenter, str]:
    if args.config or args.checkpoint:
        if not (args.config and args.checkpoint):
            raise InputError("a custom model needs both --config and --checkpoint")
        model, name = load_model(args.config, args.checkpoint, args.device), f"custom {Path(args.checkpoint).name}"
    else:
        model, name = load_named_model(args.model, args.device), args.model
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
    segmenter, name = _segmenter(args)
    summary = boxes_to_masks(args.images, args.coco, args.out, segmenter, polygons=args.polygons,
                             previews_dir=args.previews, polygon_tolerance=args.polygon_tolerance,
                             polygon_min_area=args.polygon_min_area, model_name=name, workers=args.workers,
                             progress=not args.no_progress)
    return _finish(summary)


def run_auto(args: argparse.Namespace) -> int:
    """images folder -> COCO file of mask proposals."""
    settings = ProposalSettings.from_mapping(vars(args))
    _check_inputs(args.images)
    segmenter, name = _segmenter(args)
    summary = auto(args.images, args.out, segmenter, settings, polygons=args.polygons, previews_dir=args.previews,
                   polygon_tolerance=args.polygon_tolerance, polygon_min_area=args.polygon_min_area,
                   category_name=args.category, model_name=name, workers=args.workers,
                   progress=not args.no_progress)
    return _finish(summary)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="micro", help="registry name of the model (default: the bundled micro)")
    parser.add_argument("--config", help="a custom model's YAML (with --checkpoint)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--device", default="auto")


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="the COCO JSON file to write")
    parser.add_argument("--polygons", action="store_true", help="polygons instead of RLE segmentations")
    parser.add_argument("--previews", metavar="DIR", help="also write overlay previews (IMAGE.png) to DIR")
    parser.add_argument("--polygon-tolerance", type=float, default=1.0, help="Douglas-Peucker tolerance, px")
    parser.add_argument("--polygon-min-area", type=float, default=DEFAULT_MIN_AREA,
                        help="polygon parts and holes smaller than this many pixels are dropped")
    parser.add_argument("--mask-threshold", type=float, default=0.0, help="logit above which a pixel is in")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images and encoding masks")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sam2-adapter", description="SAM 2 jobs on local files.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Box to Polygon on generated scenes; writes overlay images")
    demo.add_argument("--out", default="out/demo")
    _add_model_arguments(demo)
    demo.add_argument("--images", type=int, default=6)
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=run_demo)

    boxes = sub.add_parser("boxes-to-masks", help="COCO boxes -> COCO masks (RLE or polygons), resumable",
                           description=run_boxes_to_masks.__doc__)
    boxes.add_argument("images", help="the images folder (file_name in the COCO file is relative to it)")
    boxes.add_argument("coco", help="the COCO JSON file with box annotations")
    _add_job_arguments(boxes)
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

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
