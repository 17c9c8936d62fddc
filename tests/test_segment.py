"""Image prediction through the real SAM 2 path with the micro model: what an annotator would see."""

import os
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_adapter import upsample
from sam2_adapter.embeddings import EmbeddingCache, ImageFeatures
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import enclosing_box, mask_iou, rotated_box_mask, validate_box
from sam2_adapter.scenes import next_click
from conftest import inside_box
from sam2_adapter.segment import BoxPrompt, ImageSegmenter, RefinementMemory, segment_box_prompts
from sam2_adapter.upsample import positive_region, upsample_logits


def reference_predictor(model, image):
    """SAM 2's own predictor on the same model; its feature sizes assume 1024 px input, so they are set from the
    model here (the fix our segmenter makes by reading them off the backbone)."""
    predictor = SAM2ImagePredictor(model)
    s = model.image_size
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    predictor.set_image(image)
    return predictor


def test_box_masks_equal_sam2_image_predictor(segmenter, scenes):
    scene = scenes[0]
    ours = segmenter.segment_boxes(segmenter.encode(scene.image), scene.boxes)
    theirs, scores, _ = reference_predictor(segmenter.model, scene.image).predict(box=scene.boxes, multimask_output=False)
    theirs = theirs.reshape(len(scene.boxes), *scene.image.shape[:2]) > 0
    for result, mask, score in zip(ours, theirs, np.asarray(scores).reshape(-1)):
        assert mask_iou(result.full(), mask) >= 0.99
        assert result.score == pytest.approx(float(score), abs=1e-4)


def test_clicks_with_previous_logits_equal_sam2_image_predictor(segmenter, scenes):
    scene = scenes[1]
    features = segmenter.encode(scene.image)
    predictor = reference_predictor(segmenter.model, scene.image)
    ys, xs = np.nonzero(scene.masks[0])
    click = np.array([[xs[len(xs) // 2] + 0.5, ys[len(ys) // 2] + 0.5]], np.float32)

    first = segmenter.segment_points(features, click, np.array([1]))
    masks, scores, logits = predictor.predict(point_coords=click, point_labels=np.array([1]), multimask_output=True)
    best = int(np.argmax(scores))
    assert mask_iou(first.full(), masks[best] > 0) >= 0.99

    second_click = np.concatenate([click, [[2.5, 2.5]]]).astype(np.float32)
    second = segmenter.segment_points(features, second_click, np.array([1, 0]), mask_input=first.low_res_logits)
    masks, _, _ = predictor.predict(point_coords=second_click, point_labels=np.array([1, 0]),
                                    mask_input=logits[best:best + 1], multimask_output=False)
    assert mask_iou(second.full(), masks[0] > 0) >= 0.99



def test_every_click_mask_equals_sam2_image_predictor_on_a_larger_image(segmenter):
    """All three masks of each click of a grid (what proposals keep), on an image larger than the model's input,
    where one low-res cell spans pixels: SAM 2 upsamples its logits before clamping them to +-32, and so must we
    (clamped first, 112 of these 768 masks differed, by up to 5 pixels)."""
    from sam2_adapter.proposals import grid_points
    from sam2_adapter.scenes import make_scene

    h, w = 480, 640
    image = make_scene(np.random.default_rng(5), h, w).image
    points = grid_points(16, h, w)
    ours = segmenter.segment_clicks(segmenter.encode(image), points, every_mask=True)
    masks, _, _ = reference_predictor(segmenter.model, image).predict(
        point_coords=points[:, None], point_labels=np.ones((len(points), 1)), multimask_output=True)
    differing = [int((mine.full() != theirs).sum()) for mine, theirs in zip(ours, masks.reshape(-1, h, w) > 0)]
    assert max(differing) <= 1, "beyond float rounding at a pixel"

@pytest.mark.parametrize("cells", [64, 256])
@pytest.mark.parametrize("hw", [(256, 256), (300, 451), (1080, 1920), (37, 1000)])
def test_region_upsampling_equals_full_interpolation(segmenter, hw, cells):
    torch.manual_seed(hw[0] + cells)
    logits = torch.randn(1, cells, cells) - 8  # one object, as real masks are
    logits[0, cells * 5 // 16:cells * 15 // 32, cells * 5 // 64:cells * 3 // 16] += 12
    result = segmenter._upsample(logits, logits.numpy(), 0.5, hw)
    full = F.interpolate(logits[None], hw, mode="bilinear", align_corners=False)[0, 0]
    differ = result.full() != (full > 0).numpy()
    # the two compute the same sums in another order: only pixels within float rounding of the threshold differ
    assert np.abs(full.numpy()[differ]).max(initial=0) < 1e-4
    assert result.crop.size < 0.1 * full.numel()
    assert result.area > 0


@pytest.mark.parametrize("macs_per_pixel", [0, 10**9], ids=["whole-image interpolation", "region products"])
@pytest.mark.parametrize("cells", [64, 256])
def test_upsampling_noise_over_the_whole_image_equals_full_interpolation(monkeypatch, macs_per_pixel, cells):
    """Either way of upsampling (the cheaper is picked by its cost) gives F.interpolate's mask."""
    monkeypatch.setattr(upsample, "FULL_INTERPOLATION_MACS_PER_PIXEL", macs_per_pixel)
    torch.manual_seed(cells)
    logits = torch.randn(cells, cells)  # what random weights give: positive cells everywhere
    crop, origin = upsample_logits(logits, (300, 451), 0.0)
    full = F.interpolate(logits[None, None], (300, 451), mode="bilinear", align_corners=False)[0, 0]
    assert origin == (0, 0) and crop.shape == (300, 451)
    differ = crop != (full > 0).numpy()
    assert np.abs(full.numpy()[differ]).max(initial=0) < 1e-4
    # bounded by the caller: only the pixels inside `within` are computed, the same values
    part, (x0, y0) = upsample_logits(logits, (300, 451), 0.0, within=(40, 30, 200, 90))
    assert (x0, y0) == (40, 30) and np.array_equal(part, crop[30:90, 40:200])
    assert upsample_logits(logits, (300, 451), 0.0, within=(40, 30, 40, 90)) is None
    region = torch.full((cells, cells), -8.0)
    region[cells // 4:cells // 2, cells // 3:cells // 2] = 4.0
    crop, (x0, y0) = upsample_logits(region, (300, 451), 0.0)
    full = F.interpolate(region[None, None], (300, 451), mode="bilinear", align_corners=False)[0, 0] > 0
    assert full.sum() == crop.sum() > 0
    assert np.array_equal(full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]].numpy(), crop)
    assert upsample_logits(torch.full((64, 64), -3.0), (300, 451), 0.0) is None


def test_region_of_empty_logits_is_none():
    assert positive_region(np.zeros((64, 64), bool), (100, 100)) is None


def test_decoder_calls_are_sized_by_the_bytes_they_copy_and_give_the_same_masks(micro_model, scenes):
    scene = scenes[1]
    whole = ImageSegmenter(micro_model)
    features = whole.encode(scene.image)
    # the micro model's features are small: every box of a request in one call, up to max_prompts_per_call
    assert whole.prompts_per_call(features) == 64
    one_by_one = ImageSegmenter(micro_model, max_prompts_per_call=1)
    assert one_by_one.prompts_per_call(features) == 1
    boxes = np.asarray(scene.boxes, np.float32)
    for a, b in zip(whole.segment_boxes(features, boxes), one_by_one.segment_boxes(features, boxes), strict=True):
        assert a.origin == b.origin and np.array_equal(a.crop, b.crop)
        assert a.score == pytest.approx(b.score, abs=1e-5)
    # hiera at 1024 px: 16 MiB of features a prompt, 2 prompts a CPU call
    hiera = ImageFeatures(torch.zeros(1, 256, 64, 64), (torch.zeros(1, 32, 256, 256), torch.zeros(1, 64, 128, 128)),
                          (1080, 1920))
    assert hiera.nbytes == 16 * 2**20 and whole.prompts_per_call(hiera) == 2


def test_bad_boxes_are_reported_and_the_others_still_segmented(segmenter, scenes):
    scene = scenes[2]
    h, w = scene.image.shape[:2]
    prompts = [
        BoxPrompt("annotation good-0", scene.boxes[0]),
        BoxPrompt("annotation nan-box", [float("nan"), 3, 20, 20]),
        BoxPrompt("annotation inf-box", [0, 0, float("inf"), 20]),
        BoxPrompt("annotation flat-box", [10, 10, 10, 50]),
        BoxPrompt("annotation outside-box", [w + 10, h + 10, w + 50, h + 60]),
        BoxPrompt("annotation inverted", scene.boxes[1][[2, 3, 0, 1]]),
        BoxPrompt("annotation bad-angle", scene.boxes[0], angle=float("nan")),
        BoxPrompt("annotation sliver", [scene.boxes[0][0] + 0.6, 5, scene.boxes[0][0] + 1.4, 60]),  # no pixel centre
    ]
    outcomes = segment_box_prompts(segmenter, segmenter.encode(scene.image), prompts)
    for prompt, outcome in zip(prompts, outcomes):
        if prompt.name in ("annotation good-0", "annotation inverted"):
            assert not isinstance(outcome, InputError), outcome
        else:
            assert isinstance(outcome, InputError) and prompt.name in str(outcome), (prompt.name, outcome)
    direct = segmenter.segment_boxes(segmenter.encode(scene.image), scene.boxes[:2])
    inside = [inside_box(box, 0, h, w) for box in scene.boxes[:2]]
    assert np.array_equal(outcomes[0].full(), direct[0].full() & inside[0])
    assert np.array_equal(outcomes[5].full(), direct[1].full() & inside[1]), "inverted corners are put in order"
    assert "no pixel's centre" in str(outcomes[-1]), "a box thinner than a pixel is not blamed on SAM 2"
    # a box reaching 0.4 px into the image: what of it lies inside is thinner than a pixel
    (edge,) = segment_box_prompts(segmenter, segmenter.encode(scene.image),
                                  [BoxPrompt("annotation rim", [-40, 100, 0.4, 140])])
    assert isinstance(edge, InputError) and "covers no pixel's centre" in str(edge)


def test_then_runs_on_each_mask_beside_the_decoder_in_order(micro_model, scenes):
    """Box to Polygon traces each mask on segment_box_prompts' worker while the decoder runs the next boxes."""
    scene = scenes[2]
    segmenter = ImageSegmenter(micro_model, max_prompts_per_call=1, overlap_then=True)  # one decoder call a box
    features = segmenter.encode(scene.image)
    prompts = [BoxPrompt("annotation flat-box", [10, 10, 10, 50])]
    prompts += [BoxPrompt(f"annotation {k}", box) for k, box in enumerate(scene.boxes)]
    plain = segment_box_prompts(segmenter, features, prompts)

    decode, calls, second_call = segmenter._decode_low_res, [], threading.Event()

    def counted(*args, **kwargs):  # the real decoder call, counted
        calls.append(len(calls))
        if len(calls) == 2:
            second_call.set()
        return decode(*args, **kwargs)

    segmenter._decode_low_res = counted
    seen = []

    def then(k, result):
        if not seen:  # the decoder starts on the next box only if this first mask's work runs beside it
            assert second_call.wait(timeout=60), "the decoder waited for the geometry of the first mask"
        seen.append((k, threading.current_thread().name))
        return k, result

    outcomes = segment_box_prompts(segmenter, features, prompts, then=then)
    assert len(calls) == len(scene.boxes)
    masked = [k for k, outcome in enumerate(plain) if not isinstance(outcome, InputError)]
    assert len(masked) >= 2 and [k for k, _ in seen] == masked
    assert all(name.startswith("sam2-geometry") for _, name in seen)
    for k, (outcome, expected) in enumerate(zip(outcomes, plain)):
        if isinstance(expected, InputError):
            assert isinstance(outcome, InputError) and str(outcome) == str(expected)
        else:
            assert outcome[0] == k and np.array_equal(outcome[1].crop, expected.crop)

    inline = ImageSegmenter(micro_model, overlap_then=False)
    names = []
    again = segment_box_prompts(inline, features, prompts, then=lambda k, r: names.append(k) or (k, r))
    assert names == masked and [type(a) for a in again] == [type(o) for o in outcomes]


def test_geometry_overlaps_the_decoder_only_where_it_has_a_core_and_a_next_call(micro_model, scenes):
    features = ImageSegmenter(micro_model).encode(scenes[0].image)
    several_calls = ImageSegmenter(micro_model, max_prompts_per_call=2)
    cores, threads = len(os.sched_getaffinity(0)), torch.get_num_threads()
    try:
        torch.set_num_threads(cores)
        assert not several_calls.overlaps_then(features, 5), "torch's threads take every core"
        if cores > 1:
            torch.set_num_threads(cores - 1)
            assert several_calls.overlaps_then(features, 5)
            assert not several_calls.overlaps_then(features, 2), "one decoder call: nothing to run beside"
    finally:
        torch.set_num_threads(threads)
    assert ImageSegmenter(micro_model, overlap_then=True).overlaps_then(features, 1)
    assert not ImageSegmenter(micro_model, overlap_then=False).overlaps_then(features, 100)


def test_box_partly_outside_is_clamped(segmenter, scenes):
    """A box drawn past the image edge nearest to its object is cut at the edge, not rejected."""
    scene = scenes[3]
    box = scene.boxes[0]
    h, w = scene.image.shape[:2]
    gaps = np.array([box[0], box[1], w - box[2], h - box[3]])
    side = int(gaps.argmin())
    grown, clamped = box.copy(), box.copy()
    grown[side] += 500 if side >= 2 else -500
    clamped[side] = (0, 0, w, h)[side]
    features = segmenter.encode(scene.image)
    (outcome,) = segment_box_prompts(segmenter, features, [BoxPrompt("annotation a", grown)])
    assert not isinstance(outcome, InputError), outcome
    (direct,) = segmenter.segment_boxes(features, clamped[None])
    assert np.array_equal(outcome.full(), direct.full() & inside_box(clamped, 0, h, w))


def test_box_mask_is_cut_at_the_box_grown_by_the_margin(segmenter, scenes):
    """SAM 2 (the micro model often) spills past a box onto what lies beside the object. Box prompts keep the
    object inside the box: SAM 2's mask cut where pixel centres leave the box, grown by `margin` when asked."""
    spills = 0
    for scene in scenes[:4]:
        h, w = scene.image.shape[:2]
        features = segmenter.encode(scene.image)
        # the boxes as drawn, and moved by fractions of a pixel (edges through pixel centres among them)
        boxes = np.concatenate([scene.boxes, scene.boxes + [0.5, -0.3, 0.2, 0.5],
                                scene.boxes + [0.2, 0.2, -0.2, -0.2]]).astype(np.float64)
        raw = segmenter.segment_boxes(features, boxes.clip(0, [w, h, w, h]))  # SAM 2 is prompted with them clamped
        prompts = [BoxPrompt(f"annotation {k}", box) for k, box in enumerate(boxes)]
        for margin in (0.0, 3.7, 6.5):
            outcomes = segment_box_prompts(segmenter, features, prompts, margin=margin)
            for prompt, direct, outcome in zip(prompts, raw, outcomes, strict=True):
                inside = inside_box(prompt.box, margin, h, w)
                expected = direct.full() & inside
                if expected.any():
                    assert np.array_equal(outcome.full(), expected), (prompt.name, margin)
                else:
                    assert isinstance(outcome, InputError) and prompt.name in str(outcome)
                spills += margin == 0 and bool((direct.full() & ~inside).any())
        # a margin past the image's size keeps SAM 2's whole mask
        for direct, outcome in zip(raw, segment_box_prompts(segmenter, features, prompts, margin=1e308)):
            assert np.array_equal(outcome.full(), direct.full())
    assert spills >= 5, "too few spills in the scenes for this test to mean anything"
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="box margin"):
            segment_box_prompts(segmenter, features, prompts, margin=bad)


def test_rotated_box_keeps_only_the_mask_inside_the_rotated_rectangle(segmenter, scenes):
    scene = scenes[4]
    x1, y1, x2, y2 = scene.boxes[0]
    features = segmenter.encode(scene.image)
    prompt = BoxPrompt("annotation rot", scene.boxes[0], angle=30.0)
    h, w = scene.image.shape[:2]
    enclosing = validate_box(enclosing_box(scene.boxes[0], 30.0), w, h, "enclosing box")
    (direct,) = segmenter.segment_boxes(features, enclosing[None])
    for margin in (0.0, 5.0):  # the rotated rectangle grown by the margin; SAM 2's prompt stays the same
        (outcome,) = segment_box_prompts(segmenter, features, [prompt], margin=margin)
        inside = rotated_box_mask(scene.boxes[0] + [-margin, -margin, margin, margin], 30.0, h, w)
        expected = direct.full() & inside
        if not expected.any():
            assert isinstance(outcome, InputError) and "annotation rot" in str(outcome)
        else:
            assert np.array_equal(outcome.full(), expected), "the enclosing box's mask, cut to the rotated rectangle"


def test_threads_each_get_their_own_images_masks(segmenter, scenes):
    expected = [[r.full() for r in segmenter.segment_boxes(segmenter.encode(s.image), s.boxes)] for s in scenes]
    got, errors = [None] * len(scenes), []
    start = threading.Barrier(len(scenes))

    def work(i):
        try:
            start.wait()
            features = segmenter.features(("scene", i), lambda: scenes[i].image)
            got[i] = [r.full() for r in segmenter.segment_boxes(features, scenes[i].boxes)]
        except Exception as error:  # surfaced below
            errors.append(error)

    segmenter.cache = EmbeddingCache(1 << 30)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(scenes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for mine, theirs in zip(got, expected):
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            assert mask_iou(a, b) >= 0.99


def test_refinement_memory_continues_only_the_same_object():
    memory = RefinementMemory(max_objects=2)
    logits = np.ones((1, 64, 64), np.float32)
    pts, labels = np.array([[10.0, 10.0]]), np.array([1])
    memory.remember("img", (0, 0, 50, 50), pts, labels, logits)
    more = np.array([[10.0, 10.0], [20.0, 20.0]])
    assert memory.previous("img", (0, 0, 50, 50), more, np.array([1, 0])) is logits
    assert memory.previous("img", (0, 0, 60, 50), more, np.array([1, 0])) is None, "another box is another object"
    assert memory.previous("img", (0, 0, 50, 50), np.array([[30.0, 30.0], [1.0, 1.0]]), np.array([1, 0])) is None
    assert memory.previous("other", (0, 0, 50, 50), more, np.array([1, 0])) is None
    memory.remember("img", (0, 0, 50, 50), more, np.array([1, 0]), 2 * logits, used=logits)
    assert memory.previous("img", (0, 0, 50, 50), more, np.array([1, 0])) is logits, "a repeat gets the same input"
    assert memory.previous("img", (0, 0, 50, 50), pts, labels) is None, "fewer clicks start afresh"
    memory.remember("a", None, pts, labels, logits)
    memory.remember("b", None, pts, labels, logits)
    assert memory.previous("img", (0, 0, 50, 50), more, np.array([1, 0])) is None, "oldest object forgotten"


# ------------------------------------------------------------------------------ what an annotator sees, trained model
# Thresholds sit below what the shipped micro checkpoint gives on these held-out scenes (box mIoU 0.74 over 29
# objects, 0.21 with x and y swapped; 90 % of masks match their own object best, 93 % cover it to 70 %; 20 of 21
# spills shrink, 38 % less spill in all), far above what a pipeline that loses the prompt would give (a click
# that did not reach the decoder would shrink no spill).

def test_box_gives_a_mask_covering_the_object_inside_it(segmenter, scenes):
    """Box to Segmentation as an annotator sees it: boxes' masks cover their objects and match them better than
    any other object of the scene. The same boxes with x and y swapped (the coordinate-order bug that tests on
    random weights cannot see) give far worse masks."""
    def masks(features, boxes):  # as Box to Segmentation makes them; a box with no object inside: empty
        outcomes = segment_box_prompts(segmenter, features, [BoxPrompt(f"box {k}", b) for k, b in enumerate(boxes)])
        return [np.zeros(features.orig_hw, bool) if isinstance(r, InputError) else r.full() for r in outcomes]

    ious, swapped, covered, own_best = [], [], [], []
    for scene in scenes:
        features = segmenter.encode(scene.image)
        for k, mask in enumerate(masks(features, scene.boxes)):
            truth = scene.masks[k]
            per_object = [mask_iou(mask, other) for other in scene.masks]
            ious.append(per_object[k])
            own_best.append(per_object[k] > 0 and per_object[k] == max(per_object))
            covered.append((mask & truth).sum() / truth.sum())
        for truth, mask in zip(scene.masks, masks(features, scene.boxes[:, [1, 0, 3, 2]])):
            swapped.append(mask_iou(mask, truth))
    assert np.mean(ious) >= 0.55, ious
    assert np.mean(own_best) >= 0.75, own_best
    assert np.mean(np.array(covered) >= 0.7) >= 0.8, covered
    assert np.mean(swapped) <= 0.5 * np.mean(ious), (np.mean(swapped), np.mean(ious))


def test_negative_click_removes_a_region(segmenter, scenes):
    """Where a box's mask spills over, a negative click in the middle of the largest spill (where an annotator
    clicks; the previous logits fed back, as the studio does) shrinks the spill."""
    before, after = [], []
    for scene in scenes:
        features = segmenter.encode(scene.image)
        for box, truth, first in zip(scene.boxes, scene.masks, segmenter.segment_boxes(features, scene.boxes)):
            mask = first.full()
            xy, label = next_click(mask, truth)
            if label != 0 or (mask & ~truth).sum() < 30:
                continue  # no spill to remove: the next click would be a positive one
            again = segmenter.segment_points(features, xy[None], np.array([0]), box=box,
                                             mask_input=first.low_res_logits).full()
            before.append((mask & ~truth).sum())
            after.append((again & ~truth).sum())
    before, after = np.array(before), np.array(after)
    assert len(before) >= 10, "too few spills in the scenes to say anything"
    assert np.mean(after < before) >= 0.75, (before, after)
    assert after.sum() <= 0.75 * before.sum(), (before.sum(), after.sum())
