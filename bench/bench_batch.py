"""The local boxes-to-masks job end to end against the bare model (the limit) and against the existing adapter's
sequential approach, measured in one run on the same images, printed as images per second and ratios.

    python bench/bench_batch.py                 # hiera-tiny architecture, random weights (timing only)
    python bench/bench_batch.py --model micro   # the trained micro model: real, compact masks
    python bench/bench_batch.py --polygons      # also time the job with polygon output
    python bench/bench_batch.py --device cuda   # on a GPU (bf16 autocast, as the adapter runs there)

Polygon output is off by default with random weights: their masks are noise, specks and holes all over
each box, and tracing every one into the polygons (`geometry.mask_to_polygons`) says nothing about real masks.
`dl.Polygon.from_segmentation` in the existing approach keeps outer contours only.

16 generated 1280x720 images with 10 boxes each, written as PNG files with a COCO file of the boxes.

* limit: the sum over the images of the bare image encoder (`ImageSegmenter.encode` on the decoded image) and the
  bare prompt encoder + mask decoder on an image's boxes, in the calls ours makes (all in one, or on the CPU as
  many as `segment.CPU_DECODER_CALL_BYTES` allows); no file reading, image decoding, upsampling, geometry or
  output.
* ours: `sam2_adapter.coco.boxes_to_masks` on the folder, everything included (reading and decoding the PNG files,
  masks, RLE or polygons, the journal with an fsync per image, the final COCO file), image decoding and geometry
  overlapped with the model on a thread pool.
* existing: what the existing Dataloop adapter does per image, one after the other: decode the image, encode it,
  one decoder call per box, the logits upsampled to the full image, `dl.Polygon.from_segmentation` per mask.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DATALOOP_PATH", tempfile.mkdtemp(prefix="bench-dtlpy-"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sam2_adapter.coco import boxes_to_masks  # noqa: E402
from sam2_adapter.images import decode_image  # noqa: E402
from sam2_adapter.models import SAM2_PACKAGE_DIR, load_model, load_named_model  # noqa: E402
from sam2_adapter.scenes import make_scene  # noqa: E402
from sam2_adapter.segment import ImageSegmenter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import bare_decoder, device_name, sync  # noqa: E402  (the same limit as the image bench)


def write_dataset(folder: Path, n_images: int, n_boxes: int, height: int, width: int, seed: int = 0):
    """PNG files and a COCO file of their boxes: the scene's objects, topped up with random boxes to n_boxes."""
    rng = np.random.default_rng(seed)
    images, annotations, arrays = [], [], []
    for n in range(n_images):
        scene = make_scene(rng, height, width, n_objects=(min(8, n_boxes), min(8, n_boxes)))
        extra = max(n_boxes - len(scene.boxes), 0)
        xy = rng.uniform([0, 0], [width - 300, height - 300], size=(extra, 2))
        wh = rng.uniform(60, 300, size=(extra, 2))
        boxes = np.concatenate([scene.boxes, np.concatenate([xy, xy + wh], axis=1)])[:n_boxes]
        name = f"image_{n:03d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        images.append({"id": n + 1, "file_name": name, "width": width, "height": height})
        for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1, "category_id": 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1]})
        arrays.append((scene.image, boxes.astype(np.float32)))
    coco = folder / "boxes.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}))
    return coco, arrays


def existing_approach(segmenter: ImageSegmenter, folder: Path, coco: Path) -> int:
    import dtlpy as dl

    document = json.loads(coco.read_text())
    rings = 0
    for image in document["images"]:
        pixels = decode_image((folder / image["file_name"]).read_bytes(), image["file_name"])
        features = segmenter.encode(pixels)
        h, w = features.orig_hw
        for ann in document["annotations"]:
            if ann["image_id"] != image["id"]:
                continue
            x, y, bw, bh = ann["bbox"]
            (low_res, _, _, _) = bare_decoder(segmenter, features, np.array([[x, y, x + bw, y + bh]], np.float32))
            full = F.interpolate(low_res.float(), (h, w), mode="bilinear", align_corners=False)[0, 0]
            mask = (full > 0).cpu().numpy()
            polygon = dl.Polygon.from_segmentation(mask=mask, label="object")
            rings += len(polygon) if isinstance(polygon, list) else 1
    return rings


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hiera-tiny", help="hiera-tiny (random weights) or a registry name")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--polygons", action="store_true", help="also time the job with polygon output")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    if args.model == "hiera-tiny":
        model = load_model(SAM2_PACKAGE_DIR / "configs/sam2.1/sam2.1_hiera_t.yaml", None, args.device)
    else:
        model = load_named_model(args.model, args.device)
    segmenter = ImageSegmenter(model)

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        coco, arrays = write_dataset(folder, args.images, args.boxes, args.height, args.width)
        bare_decoder(segmenter, segmenter.encode(arrays[0][0]), arrays[0][1])  # warm-up

        encode_s = decode_s = 0.0
        for image, boxes in arrays:
            sync()
            start = time.perf_counter()
            features = segmenter.encode(image)
            sync()
            middle = time.perf_counter()
            bare_decoder(segmenter, features, boxes)
            sync()
            encode_s += middle - start
            decode_s += time.perf_counter() - middle
        limit_s = encode_s + decode_s

        skipped_boxes = {}

        def ours(polygons: bool) -> float:
            out = folder / f"out_{int(polygons)}.json"
            seconds = timed(lambda: boxes_to_masks(folder, coco, out, segmenter, polygons=polygons,
                                                   workers=args.workers))
            written = json.loads(out.read_text())
            skipped = [p for p in written["sam2_adapter"]["skipped"] if p.get("annotation_id") is not None]
            # every box comes back, as a mask or as a reported skip (a box where the model finds nothing)
            assert len(written["annotations"]) + len(skipped) == args.images * args.boxes, skipped
            skipped_boxes[polygons] = len(skipped)
            return seconds

        rle_s = ours(False)
        polygon_s = ours(True) if args.polygons else None
        existing_s = timed(lambda: existing_approach(segmenter, folder, coco))

    n = args.images
    print(f"model: {args.model}, {n} images {args.width}x{args.height} (PNG files), {args.boxes} boxes each, "
          f"torch {torch.__version__}, {device_name(segmenter.device)}, {torch.get_num_threads()} CPU threads, "
          f"{args.workers} pipeline workers")
    print(f"  bare image encoder, sum over the images            {encode_s:7.2f} s")
    print(f"  bare decoder, an image's boxes in ours' calls      {decode_s:7.2f} s")
    print(f"  limit (encoder + decoder)                          {limit_s:7.2f} s   {n / limit_s:6.3f} images/s")
    for label, seconds in (("ours, boxes-to-masks end to end, RLE", rle_s),
                           ("ours, boxes-to-masks end to end, polygons", polygon_s)):
        if seconds is None:
            continue
        print(f"  {label:<49} {seconds:7.2f} s   {n / seconds:6.3f} images/s   {limit_s / seconds:5.2f}x the "
              f"limit, {existing_s / seconds:5.2f}x the existing approach")
    if any(skipped_boxes.values()):
        print(f"  (ours reported {max(skipped_boxes.values())} of {n * args.boxes} boxes as giving no mask)")
    print(f"  existing approach (sequential, polygons)           {existing_s:7.2f} s   {n / existing_s:6.3f} images/s"
          f"   {limit_s / existing_s:5.2f}x the limit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
