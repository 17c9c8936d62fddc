"""Prompts (boxes, clicks, previous logits) -> masks and scores, on features encoded once per image.

Coordinates are image pixels: boxes x1, y1, x2, y2; points x, y. Masks come back cropped to the only region
where they can be non-empty, with that region's origin, so a 20-box request on a 4K image never builds 20
full-frame masks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from sam2.modeling.sam2_base import SAM2Base
from sam2.utils.transforms import SAM2Transforms

from sam2_adapter.embeddings import EmbeddingCache, ImageFeatures
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import box_window, enclosing_box, rotated_box_mask, validate_box
from sam2_adapter.models import inference_context
from sam2_adapter.upsample import upsample_logits

# Prompt-encoder labels of a box's two corners.
_BOX_LABELS = (2, 3)

# The mask decoder copies the image features once per prompt of a call (`repeat_image`). On the CPU a call whose
# copies outgrow the caches is slower per prompt than smaller calls: hiera-tiny at 1024 px has 16 MiB of features,
# and `bench/bench_image.py --model hiera-tiny --threads 2 --calls 1,2,4,10,20` decoded its 20 boxes in 2242 ms in
# one call, 1289 ms in calls of 2 (1546 ms in calls of 1). So CPU calls hold at most this many bytes of copies (the
# micro model's 20 boxes, 0.25 MiB of features, still go in one call, its fastest). GPUs gain from large calls:
# there only `max_prompts_per_call` bounds them.
CPU_DECODER_CALL_BYTES = 32 * 2**20


@dataclass(frozen=True)
class MaskResult:
    """One predicted mask.

    crop: (h, w) bool, the mask inside the region `origin` (x0, y0) .. (x0 + w, y0 + h) of the image; outside it
        the mask is empty by construction (see `upsample.positive_region`).
    score: SAM 2's predicted IoU of the mask.
    low_res_logits: (1, s, s) float32 logits at the decoder's resolution, to feed back as `mask_input`.
    """

    crop: np.ndarray
    origin: tuple[int, int]
    image_hw: tuple[int, int]
    score: float
    low_res_logits: np.ndarray

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    def full(self) -> np.ndarray:
        """The mask at image size, (H, W) bool."""
        mask = np.zeros(self.image_hw, dtype=bool)
        x0, y0 = self.origin
        mask[y0:y0 + self.crop.shape[0], x0:x0 + self.crop.shape[1]] = self.crop
        return mask


class ImageSegmenter:
    """SAM 2 image prediction for many prompts on one encoded image, thread-safe.

    Unlike `SAM2ImagePredictor` it holds no per-image state (features live in the shared cache), derives feature
    sizes from the model instead of assuming 1024 px input, decodes the boxes of a request together (in calls sized for
    the device, `prompts_per_call`), and upsamples logits only where the mask can be.
    """

    def __init__(self, model: SAM2Base, cache: EmbeddingCache | None = None, mask_threshold: float = 0.0,
                 max_prompts_per_call: int = 64, overlap_then: bool | None = None):
        self.model = model
        self.cache = cache
        self.mask_threshold = mask_threshold
        self.max_prompts_per_call = max_prompts_per_call
        self.device = next(model.parameters()).device
        self._overlap_then = overlap_then
        self._transforms = SAM2Transforms(resolution=model.image_size, mask_threshold=mask_threshold)

    # -- encoding ----------------------------------------------------------------------------------------------
    def features(self, key: Hashable, load_image: Callable[[], np.ndarray]) -> ImageFeatures:
        """Features of the image `key` names, from the cache; `load_image` () -> (H, W, 3) uint8 RGB is called
        (and the image encoded) only when they are not cached."""
        if self.cache is None:
            return self.encode(load_image())
        return self.cache.get_or_compute(key, lambda: self.encode(load_image()))

    def encode(self, image: np.ndarray) -> ImageFeatures:
        return self.encode_many([image])[0]

    @torch.inference_mode()
    def encode_many(self, images: Sequence[np.ndarray | None]) -> list[ImageFeatures | None]:
        """Features of (H, W, 3) uint8 RGB images of any sizes, encoded as one batch (each is resized to the
        model's input size first, so sizes may differ); on a GPU a batch costs less than its images one by one.
        A None in `images` (an item of a batch without usable pixels) gives None in its place."""
        present = [image for image in images if image is not None]
        if not present:
            return [None] * len(images)
        pixels = []
        for image in present:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
            # a read-only array (PIL's, a cache's) is copied: torch.from_numpy wants writable memory
            writable = np.require(image, requirements="W")
            tensor = torch.from_numpy(writable).to(self.device).permute(2, 0, 1).float() / 255.0
            pixels.append(self._transforms.transforms(tensor))
        with inference_context(self.device):
            backbone = self.model.forward_image(torch.stack(pixels))
            _, tokens, _, sizes = self.model._prepare_backbone_features(backbone)
            if self.model.directly_add_no_mem_embed:
                tokens[-1] = tokens[-1] + self.model.no_mem_embed
        maps = [t.permute(1, 2, 0).reshape(len(present), -1, *s) for t, s in zip(tokens, sizes)]

        def own(m: torch.Tensor, i: int) -> torch.Tensor:
            # a cached slice must not keep the whole batch alive
            return m[i:i + 1].clone() if len(present) > 1 else m

        encoded = iter([ImageFeatures(image_embed=own(maps[-1], i), high_res=tuple(own(m, i) for m in maps[:-1]),
                                      orig_hw=tuple(image.shape[:2])) for i, image in enumerate(present)])
        return [None if image is None else next(encoded) for image in images]

    # -- prompts -----------------------------------------------------------------------------------------------
    def prompts_per_call(self, features: ImageFeatures) -> int:
        """Prompts decoded together in one mask-decoder call: at most `max_prompts_per_call`, and on the CPU
        no more than keep their copies of the image features within `CPU_DECODER_CALL_BYTES`."""
        if self.device.type != "cpu":
            return self.max_prompts_per_call
        return max(1, min(self.max_prompts_per_call, CPU_DECODER_CALL_BYTES // max(features.nbytes, 1)))

    def overlaps_then(self, features: ImageFeatures, prompts: int) -> bool:
        """Whether `segment_box_prompts` runs its `then` (the geometry) on a worker beside the decoder for this
        many prompts: the `overlap_then` argument, or by default where that work has a core to itself (beside an
        accelerator; on the CPU only when torch's threads leave a core free) and a next decoder call to run
        beside (with one call the hand-offs cost more than they save). When torch's threads take every core the
        worker gains nothing: with hiera-tiny on 2 cores and 2 torch threads it took 1.00x and 1.07x the time
        of the geometry after the decoder (README)."""
        if self._overlap_then is not None:
            return self._overlap_then
        core_free = self.device.type != "cpu" or torch.get_num_threads() < _usable_cores()
        return core_free and prompts > self.prompts_per_call(features)

    def segment_boxes(self, features: ImageFeatures, boxes: np.ndarray) -> list[MaskResult]:
        """One mask per (N, 4) box, x1, y1, x2, y2 in image pixels (validated by the caller)."""
        return list(self.iter_boxes(features, boxes))

    def iter_boxes(self, features: ImageFeatures, boxes: np.ndarray,
                   within: Sequence[tuple[int, int, int, int]] | None = None) -> Iterator[MaskResult]:
        """`segment_boxes`, a mask at a time as each decoder call ends: the caller can work on the first masks
        while the decoder runs the next call. `within`, when given, bounds each box's mask to pixels x0, y0, x1,
        y1 (nothing outside them is kept; see `upsample_logits`)."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 2, 2)
        labels = np.tile(np.array(_BOX_LABELS, dtype=np.int32), (len(boxes), 1))
        return self._decode_iter(features, boxes, labels, None, multimask=False, within=within)

    def segment_clicks(self, features: ImageFeatures, points: np.ndarray,
                       keep: Callable[[np.ndarray, float], bool] | None = None,
                       every_mask: bool = False) -> list[MaskResult | None]:
        """Masks of single positive clicks (N, 2) x, y: the best of SAM 2's three by predicted IoU, one a click;
        or with `every_mask` all three (3N, click by click: whole object, part, subpart, in SAM 2's order), as
        SAM 2's automatic mask generator keeps them.

        `keep(low_res_logits, predicted_iou)`, when given, is asked before a mask is upsampled; a mask it turns
        down comes back as None (automatic proposals drop most of a grid's masks this way, unexpanded)."""
        coords = np.asarray(points, dtype=np.float32).reshape(-1, 1, 2)
        labels = np.ones((len(coords), 1), np.int32)
        return self._decode(features, coords, labels, None, multimask=True, keep=keep, every_mask=every_mask)

    def segment_points(self, features: ImageFeatures, points: np.ndarray, labels: np.ndarray,
                       box: Sequence[float] | None = None, mask_input: np.ndarray | None = None) -> MaskResult:
        """One object from clicks (P, 2) x, y with labels (P,) 1 = object, 0 = background, an optional box, and
        the previous `low_res_logits` of the same object as `mask_input`.

        A single click without box or previous mask is ambiguous: SAM 2 gives three masks and the one with the
        highest predicted IoU is kept, as in SAM 2's own demo.
        """
        coords = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        point_labels = np.asarray(labels, dtype=np.int32).reshape(-1)
        if box is not None:
            coords = np.concatenate([np.asarray(box, dtype=np.float32).reshape(2, 2), coords])
            point_labels = np.concatenate([np.array(_BOX_LABELS, dtype=np.int32), point_labels])
        multimask = len(point_labels) == 1 and mask_input is None
        return self._decode(features, coords[None], point_labels[None], mask_input, multimask)[0]

    def _decode(self, features: ImageFeatures, coords: np.ndarray, labels: np.ndarray,
                mask_input: np.ndarray | None, multimask: bool,
                keep: Callable[[np.ndarray, float], bool] | None = None,
                every_mask: bool = False) -> list[MaskResult | None]:
        return list(self._decode_iter(features, coords, labels, mask_input, multimask, keep, every_mask))

    def _decode_iter(self, features: ImageFeatures, coords: np.ndarray, labels: np.ndarray,
                     mask_input: np.ndarray | None, multimask: bool,
                     keep: Callable[[np.ndarray, float], bool] | None = None,
                     every_mask: bool = False,
                     within: Sequence[tuple[int, int, int, int]] | None = None) -> Iterator[MaskResult | None]:
        """Coords (B, P, 2) in image pixels with labels (B, P) -> B masks (3B with `multimask` and `every_mask`),
        in calls of `prompts_per_call`, yielded as each call ends; `within` bounds each prompt's mask."""
        step = self.prompts_per_call(features)
        for start in range(0, len(coords), step):
            logits, scores = self._decode_low_res(features, coords[start:start + step], labels[start:start + step],
                                                  mask_input, multimask, every_mask)
            for k, (one, score) in enumerate(zip(logits, scores.tolist()), start):
                # SAM 2 clamps the logits it hands back (for mask_input), not those it upsamples: clamped first,
                # a cell beyond +-32 beside the edge would move the edge by pixels
                low_res = one.clamp(-32.0, 32.0).cpu().numpy().copy()  # a copy, not a view of the whole call
                if keep is None or keep(low_res, score):
                    yield self._upsample(one, low_res, score, features.orig_hw, None if within is None else within[k])
                else:
                    yield None

    @torch.inference_mode()
    def _decode_low_res(self, features: ImageFeatures, coords: np.ndarray, labels: np.ndarray,
                        mask_input: np.ndarray | None, multimask: bool,
                        every_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder call: (B, 1, s, s) float32 low-res logits, unclamped, and (B,) predicted IoUs; with
        `multimask` the best of the three masks, or all of them with `every_mask` ((3B, 1, s, s), prompt by prompt)."""
        h, w = features.orig_hw
        size = self.model.image_size
        scale = torch.tensor([size / w, size / h], device=self.device)
        points = (torch.as_tensor(coords, device=self.device) * scale, torch.as_tensor(labels, device=self.device))
        masks = None
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float32, device=self.device)
            masks = masks.reshape(1, 1, *mask_input.shape[-2:])
        with inference_context(self.device):
            sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=masks)
            logits, scores, _, _ = self.model.sam_mask_decoder(
                image_embeddings=features.image_embed,
                image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=len(coords) > 1,
                high_res_features=list(features.high_res),
            )
        logits, scores = logits.float(), scores.float()
        if multimask and every_mask:
            return logits.flatten(0, 1)[:, None], scores.flatten()
        if multimask:
            best = scores.argmax(dim=1)
            rows = torch.arange(len(best), device=best.device)
            logits, scores = logits[rows, best][:, None], scores[rows, best][:, None]
        return logits, scores[:, 0]

    def _upsample(self, logits: torch.Tensor, low_res: np.ndarray, score: float, image_hw: tuple[int, int],
                  within: tuple[int, int, int, int] | None = None) -> MaskResult:
        upsampled = upsample_logits(logits[0], image_hw, self.mask_threshold, within)
        if upsampled is None:
            return MaskResult(np.zeros((0, 0), bool), (0, 0), image_hw, score, low_res)
        crop, origin = upsampled
        return MaskResult(crop, origin, image_hw, score, low_res)


class RefinementMemory:
    """The last low-res logits of each object an annotator is refining with clicks, so that the next click on the
    same object is decoded with them as `mask_input` (SAM 2's interactive loop).

    A call continues an object when it is on the same image with the same box and its clicks extend the clicks of
    the stored call; the same clicks again (a retry, another return type) get the `mask_input` the stored call
    had, so they get its mask again; anything else starts afresh. Bounded: the oldest objects are forgotten first.
    """

    def __init__(self, max_objects: int = 256):
        self.max_objects = max_objects
        # key -> (clicks, the mask_input they were decoded with, the logits they gave)
        self._entries: OrderedDict[Hashable, tuple[tuple, np.ndarray | None, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(image_key: Hashable, box: Sequence[float] | None) -> Hashable:
        return image_key, None if box is None else tuple(round(float(v), 1) for v in box)

    def previous(self, image_key: Hashable, box, points: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        clicks = _clicks(points, labels)
        with self._lock:
            entry = self._entries.get(self._key(image_key, box))
        if entry is None:
            return None
        stored, used, logits = entry
        if clicks == stored:
            return used
        if len(stored) < len(clicks) and clicks[:len(stored)] == stored:
            return logits
        return None

    def remember(self, image_key: Hashable, box, points: np.ndarray, labels: np.ndarray, logits: np.ndarray,
                 used: np.ndarray | None = None) -> None:
        """Stores a call's clicks, the logits it gave and the `mask_input` it was decoded with (`used`)."""
        key = self._key(image_key, box)
        with self._lock:
            self._entries[key] = (_clicks(points, labels), used, logits)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_objects:
                self._entries.popitem(last=False)


def _clicks(points: np.ndarray, labels: np.ndarray) -> tuple:
    return tuple((round(float(x), 1), round(float(y), 1), int(lab))
                 for (x, y), lab in zip(np.asarray(points).reshape(-1, 2), np.asarray(labels).reshape(-1)))


@dataclass(frozen=True)
class BoxPrompt:
    """A box as the user drew it: `name` says which input it is in messages (e.g. "annotation 65ab..");
    `angle` is a dtlpy rotated box's angle in degrees about the box centre."""

    name: str
    box: Sequence[float]
    angle: float = 0.0


T = TypeVar("T")


def segment_box_prompts(segmenter: ImageSegmenter, features: ImageFeatures, prompts: Sequence[BoxPrompt],
                        then: Callable[[int, MaskResult], T] | None = None,
                        margin: float = 0.0) -> list[MaskResult | T | InputError]:
    """A mask for every box of a request, decoded together; a bad or empty box gives its own InputError in its
    place and never costs the others their masks.

    Each mask is the object inside its box: pixels whose centre lies beyond the box grown by `margin` pixels on
    every side are not kept (`geometry.box_window`), and upsampled only where that is cheaper (`upsample_logits`).
    SAM 2 prompted with a box can spill past it onto what lies beside the object (the micro model does, often);
    the studio's click refinement crops its mask to the box as well (there with the corners truncated to whole
    pixels). A rotated box prompts SAM 2 with its enclosing box and keeps only the mask inside the rotated
    rectangle (grown by `margin` the same way). A box that holds no pixel's centre is reported before decoding.

    `then(index, mask)`, when given, turns the mask of `prompts[index]` into what the caller wants (polygons,
    annotations) and its value takes the mask's place. Where the segmenter `overlaps_then`, it runs on a worker
    thread, a mask at a time in order, while the decoder goes on with the next call.
    """
    if not (math.isfinite(margin) and margin >= 0):
        raise InputError(f"box margin: expected a finite number of pixels >= 0, got {margin!r}")
    height, width = features.orig_hw
    margin = min(margin, height + width)  # a larger one keeps no more, and keeps the arithmetic finite
    outcomes: list = [None] * len(prompts)
    valid: list[tuple[int, np.ndarray]] = []
    kept: dict[int, tuple] = {}  # index -> (the window its mask stays in, the grown box, the box's angle)
    for index, prompt in enumerate(prompts):
        try:
            angle = float(prompt.angle or 0.0)
            if not math.isfinite(angle):
                raise InputError(f"{prompt.name}: box angle {prompt.angle!r} is not a number")
            box = validate_box(enclosing_box(prompt.box, angle) if angle else prompt.box, width, height, prompt.name)
            grown = _grown(prompt.box, margin)
            window = box_window(grown, angle, height, width)
            if window is None:
                raise InputError(f"{prompt.name}: the box covers no pixel's centre of the {width}x{height} image "
                                 "(it lies outside the image, or is thinner than a pixel there)")
            valid.append((index, box))
            kept[index] = window, grown, angle
        except InputError as error:
            outcomes[index] = error
    if not valid:
        return outcomes

    def finish(index: int, result: MaskResult):
        prompt = prompts[index]
        _, grown, angle = kept[index]
        if angle and result.area:  # upright: upsampled within the window, which is the cut
            x0, y0 = result.origin
            inside = rotated_box_mask(grown, angle, *result.crop.shape, origin=(x0, y0))
            result = dataclasses.replace(result, crop=result.crop & inside)
        if not result.area:
            return InputError(f"{prompt.name}: SAM 2 found no object inside the box")
        return result if then is None else then(index, result)

    within = [kept[index][0] for index, _ in valid]
    masks = segmenter.iter_boxes(features, np.stack([box for _, box in valid]), within)
    if then is None or not segmenter.overlaps_then(features, len(valid)):
        for (index, _), result in zip(valid, masks):
            outcomes[index] = finish(index, result)
        return outcomes
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2-geometry") as worker:
        pending = [(index, worker.submit(finish, index, result)) for (index, _), result in zip(valid, masks)]
        for index, future in pending:
            outcomes[index] = future.result()
    return outcomes


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _grown(box: Sequence[float], margin: float) -> np.ndarray:
    """`box` x1, y1, x2, y2 (corners in any order) grown by `margin` on every side, float64."""
    b = np.asarray(box, np.float64).reshape(-1)
    (x1, x2), (y1, y2) = sorted(b[0::2]), sorted(b[1::2])
    return np.array([x1 - margin, y1 - margin, x2 + margin, y2 + margin])
