"""Box to Polygon on a 1920x1080 image with 20 boxes: ours against the bare SAM 2 decoder (the limit) and against
the existing Dataloop adapter's approach, measured in one run, printed as ratios.

    python bench/bench_image.py                 # hiera-tiny architecture, random weights (timing only)
    python bench/bench_image.py --model micro   # the trained micro model: real, compact masks
    python bench/bench_image.py --device cuda   # on a GPU (bf16 autocast, as the adapter runs there)

The limit decodes the boxes in the calls ours makes (on the CPU, calls sized by the bytes of image features they
copy; see `segment.CPU_DECODER_CALL_BYTES`); the time of one call for all boxes is printed too.
Ours traces each mask's polygons beside the decoder's next calls where a core is free for it (on the CPU: with
--threads below the number of cores) and the boxes take several calls (see `ImageSegmenter.overlaps_then`),
after the decoder otherwise. Ours keeps each mask inside its box (`box_margin` 0, the adapter's default); the
existing approach keeps SAM 2's whole mask (with random weights, noise over most of the image) and traces only its
largest outline.
All three start from the same cached image features (the encoder runs once per image in every approach; its time
is printed for scale). The existing approach: one decoder call per box, the logits upsampled to the full image,
`dl.Polygon.from_segmentation` per mask.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DATALOOP_PATH", tempfile.mkdtemp(prefix="bench-dtlpy-"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sam2_adapter.geometry import mask_to_polygons  # noqa: E402
from sam2_adapter.models import SAM2_PACKAGE_DIR, inference_context, load_model, load_named_model  # noqa: E402
from sam2_adapter.scenes import make_scene  # noqa: E402
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, segment_box_prompts  # noqa: E402


def sync() -> None:
    """Waits for the GPU's queued work, so that a timer read after it counts that work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def best_times(fns: dict, repeat: int) -> dict:
    """Fastest of `repeat` rounds of each function, the functions taking turns within a round: a virtual
    machine's speed drifts over seconds and other jobs only ever slow a run, so the ratios of interleaved best
    times are what holds still between runs."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bare_decoder(segmenter: ImageSegmenter, features, boxes: np.ndarray, per_call: int | None = None):
    """Prompt encoder + mask decoder on every box, in calls of `per_call` boxes (None: as many as the segmenter
    puts in one call): the least work any approach must do. Returns the last call's outputs."""
    per_call = per_call or segmenter.prompts_per_call(features)
    for start in range(0, len(boxes), per_call):
        chunk = np.asarray(boxes[start:start + per_call], np.float32).reshape(-1, 2, 2)
        out = bare_call(segmenter, features, chunk, np.tile([2, 3], (len(chunk), 1)))
    return out


def bare_call(segmenter: ImageSegmenter, features, coords: np.ndarray, labels: np.ndarray,
              mask_input: np.ndarray | None = None):
    """One prompt encoder + mask decoder call on (B, P, 2) points in image pixels with (B, P) labels, and one
    object's previous low-res logits as mask input when given (a refinement click). In the segmenter's
    precision (bf16 autocast on CUDA)."""
    model, device = segmenter.model, segmenter.device
    h, w = features.orig_hw
    scale = torch.tensor([model.image_size / w, model.image_size / h], device=device)
    masks = None if mask_input is None else torch.as_tensor(mask_input, device=device)[None]
    with torch.inference_mode(), inference_context(device):
        points = (torch.as_tensor(coords, dtype=torch.float32, device=device) * scale,
                  torch.as_tensor(labels, device=device))
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=masks)
        return model.sam_mask_decoder(
            image_embeddings=features.image_embed, image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            repeat_image=len(coords) > 1, high_res_features=list(features.high_res))


def ours(segmenter: ImageSegmenter, features, boxes: np.ndarray) -> int:
    """As Box to Polygon runs: the polygons of each mask are traced on `segment_box_prompts`' worker thread
    while the decoder goes on with the next boxes."""
    prompts = [BoxPrompt(f"box {k}", box) for k, box in enumerate(boxes)]
    outcomes = segment_box_prompts(segmenter, features, prompts, then=lambda _, mask: mask_to_polygons(mask.crop))
    return sum(len(rings) for rings in outcomes if not isinstance(rings, Exception))


def existing_approach(segmenter: ImageSegmenter, features, boxes: np.ndarray) -> int:
    import dtlpy as dl

    h, w = features.orig_hw
    rings = 0
    for box in boxes:
        (low_res, _, _, _) = bare_decoder(segmenter, features, box[None])
        full = F.interpolate(low_res.float(), (h, w), mode="bilinear", align_corners=False)[0, 0]
        mask = (full > 0).cpu().numpy()
        polygon = dl.Polygon.from_segmentation(mask=mask, label="object")
        rings += len(polygon) if isinstance(polygon, list) else 1
    return rings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hiera-tiny", help="hiera-tiny (random weights) or a registry name")
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the fastest of each counts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--calls", default="", help="also time the bare decoder in calls of these many boxes, "
                                                    "e.g. 1,2,4,10,20 (what CPU_DECODER_CALL_BYTES rests on)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "hiera-tiny":
        model = load_model(SAM2_PACKAGE_DIR / "configs/sam2.1/sam2.1_hiera_t.yaml", None, args.device)
    else:
        model = load_named_model(args.model, args.device)
    segmenter = ImageSegmenter(model)

    # A 1920x1080 generated scene; boxes around its objects, topped up with random boxes to --boxes.
    rng = np.random.default_rng(0)
    scene = make_scene(rng, 1080, 1920, n_objects=(8, 8))
    extra = args.boxes - len(scene.boxes)
    xy = rng.uniform([0, 0], [1600, 800], size=(max(extra, 0), 2))
    wh = rng.uniform(60, 300, size=(max(extra, 0), 2))
    boxes = np.concatenate([scene.boxes, np.concatenate([xy, xy + wh], axis=1)])[:args.boxes].astype(np.float32)

    segmenter.encode(scene.image)  # warm-up (on a GPU the first call also compiles kernels)
    sync()
    start = time.perf_counter()
    features = segmenter.encode(scene.image)
    sync()
    encode_s = time.perf_counter() - start
    ours(segmenter, features, boxes)  # warm-up
    prompts = [BoxPrompt(f"box {k}", box) for k, box in enumerate(boxes)]
    crops = [r.crop for r in segment_box_prompts(segmenter, features, prompts) if not isinstance(r, Exception)]
    t = best_times({
        "limit": lambda: bare_decoder(segmenter, features, boxes),
        "all_in_one": lambda: bare_decoder(segmenter, features, boxes, per_call=len(boxes)),
        "ours": lambda: ours(segmenter, features, boxes),
        "masks": lambda: segment_box_prompts(segmenter, features, prompts),
        "polygons": lambda: [mask_to_polygons(crop) for crop in crops],
        "existing": lambda: existing_approach(segmenter, features, boxes),
    }, args.repeat)
    limit, mine, masks, polygons, theirs = t["limit"], t["ours"], t["masks"], t["polygons"], t["existing"]
    all_in_one, per_call = t["all_in_one"], segmenter.prompts_per_call(features)

    # A warm refinement click: a second click on an encoded image, previous logits fed back.
    click = np.array([[boxes[0, 0] + 20, boxes[0, 1] + 20], [boxes[0, 2] - 5, boxes[0, 3] - 5]], np.float32)
    first = segmenter.segment_points(features, click[:1], np.array([1]), box=boxes[0])
    box_and_clicks = np.concatenate([boxes[0].reshape(2, 2), click])[None]
    t = best_times({
        "refine": lambda: segmenter.segment_points(features, click, np.array([1, 0]), box=boxes[0],
                                                   mask_input=first.low_res_logits),
        "one_call": lambda: bare_decoder(segmenter, features, boxes[:1]),
        "same_prompts": lambda: bare_call(segmenter, features, box_and_clicks, np.array([[2, 3, 1, 0]]),
                                          first.low_res_logits),
    }, args.repeat * 3)
    refine, one_call, same_prompts = t["refine"], t["one_call"], t["same_prompts"]

    print(f"model: {args.model}, image 1920x1080, {len(boxes)} boxes, torch {torch.__version__}, "
          f"{device_name(segmenter.device)}, {torch.get_num_threads()} CPU threads")
    print(f"  image encoder (once per image, all approaches)  {encode_s * 1000:8.1f} ms")
    print(f"  bare decoder, {min(per_call, len(boxes)):2d} boxes a call (limit)         {limit * 1000:8.1f} ms   "
          f"(all {len(boxes)} in one call: {all_in_one * 1000:.1f} ms)")
    where = "beside the decoder" if segmenter.overlaps_then(features, len(boxes)) else "after the decoder"
    print(f"  ours: Box to Polygon end to end                  {mine * 1000:8.1f} ms   {mine / limit:5.2f}x the limit"
          f"   (polygons traced {where})")
    print(f"    its two stages, each timed on its own: masks (decoder + upsampling) {masks * 1000:.1f} ms, "
          f"polygons {polygons * 1000:.1f} ms")
    print(f"  existing approach                                {theirs * 1000:8.1f} ms   {theirs / limit:5.2f}x the limit,"
          f" {theirs / mine:5.2f}x ours")
    print(f"  warm refinement click                            {refine * 1000:8.1f} ms   {refine / one_call:5.2f}x one "
          f"bare decoder call on a box ({one_call * 1000:.1f} ms), {refine / same_prompts:5.2f}x one on the click's "
          f"own prompts: box, 2 clicks, previous logits ({same_prompts * 1000:.1f} ms)")
    if args.calls:
        sizes = [int(n) for n in args.calls.split(",")]
        t = best_times({n: (lambda n=n: bare_decoder(segmenter, features, boxes, per_call=n)) for n in sizes},
                       args.repeat)
        print("  bare decoder on all boxes, in calls of " + ", ".join(f"{n}: {t[n] * 1000:.1f} ms" for n in sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
