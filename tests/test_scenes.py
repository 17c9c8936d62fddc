"""Tests for the synthetic scene/clip generator (sam2_adapter.scenes); quick, numpy + OpenCV only."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from sam2_adapter.scenes import (
    KINDS,
    MIN_CLIP_AREA,
    MIN_LEAVE_FRAMES,
    MIN_SCENE_AREA,
    Clip,
    Scene,
    make_clip,
    make_scene,
    mask_box,
    write_jpeg_folder,
    write_video,
)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [make_scene(rng(seed)) for seed in range(40)]


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    return [make_clip(rng(1000 + seed)) for seed in range(8)]


# --------------------------------------------------------------------------- scenes


def test_scene_is_deterministic_per_seed():
    a, b, c = make_scene(rng(7)), make_scene(rng(7)), make_scene(rng(8))
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.boxes, b.boxes)
    assert a.kinds == b.kinds
    assert not np.array_equal(a.image, c.image)


def test_generators_do_not_touch_global_random_state():
    before = np.random.get_state()
    make_scene(rng(3))
    make_clip(rng(3), n_frames=4)
    after = np.random.get_state()
    assert np.array_equal(after[1], before[1]) and after[2:] == before[2:]


def test_scene_layout(scenes):
    for sc in scenes:
        k = len(sc.kinds)
        assert 2 <= k <= 6
        assert sc.image.shape == (256, 256, 3) and sc.image.dtype == np.uint8
        assert sc.masks.shape == (k, 256, 256) and sc.masks.dtype == bool
        assert sc.boxes.shape == (k, 4) and sc.boxes.dtype == np.float32
        assert set(sc.kinds) <= set(KINDS)
    # every kind shows up
    assert {kd for sc in scenes for kd in sc.kinds} == set(KINDS)


def test_scene_other_sizes_and_counts():
    sc = make_scene(rng(11), height=160, width=224, n_objects=3)
    assert sc.image.shape == (160, 224, 3)
    assert sc.masks.shape == (3, 160, 224)
    sc = make_scene(rng(12), n_objects=(1, 1))
    assert len(sc.kinds) == 1


def test_boxes_exactly_enclose_masks(scenes):
    for sc in scenes:
        for m, b in zip(sc.masks, sc.boxes):
            assert m.sum() >= MIN_SCENE_AREA
            assert b.tolist() == tight_box(m)
            x1, y1, x2, y2 = (int(v) for v in b)
            assert m[y1:y2, x1:x2].sum() == m.sum()
            # tight: every edge row/column of the box holds mask pixels
            assert m[y1].any() and m[y2 - 1].any() and m[:, x1].any() and m[:, x2 - 1].any()


def test_mask_box_empty_and_single_pixel():
    m = np.zeros((5, 7), bool)
    assert mask_box(m).tolist() == [0, 0, 0, 0]
    m[2, 3] = True
    assert mask_box(m).tolist() == [3, 2, 4, 3]


def test_masks_are_disjoint_and_objects_overlap(scenes):
    touching = 0
    for sc in scenes:
        assert sc.masks.sum(axis=0).max() <= 1
        k = len(sc.kinds)
        grown = [cv2.dilate(m.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool) for m in sc.masks]
        touching += any((grown[i] & sc.masks[j]).any() for i in range(k) for j in range(i + 1, k))
    # objects overlap / touch in a good share of scenes (occlusion is exercised)
    assert touching >= len(scenes) // 3


def test_objects_stand_out_from_their_surroundings(scenes):
    """Not camouflaged: mean colour inside a mask differs from a thin band around it."""
    dists = []
    kernel = np.ones((7, 7), np.uint8)
    for sc in scenes:
        img = sc.image.astype(np.float64)
        for m in sc.masks:
            band = cv2.dilate(m.view(np.uint8), kernel).view(bool) & ~m
            if band.sum() < 20:
                continue
            dists.append(np.linalg.norm(img[m].mean(axis=0) - img[band].mean(axis=0)))
    dists = np.array(dists)
    assert np.median(dists) > 90
    assert np.percentile(dists, 10) > 40


def test_rings_have_holes_and_splits_two_parts():
    """Single-object scenes (nothing occludes): rings have a hole, split objects two components."""
    rings = splits = 0
    seed = 0
    while (rings < 6 or splits < 6) and seed < 400:
        sc = make_scene(rng(50_000 + seed), n_objects=1)
        seed += 1
        m = sc.masks[0]
        if touches_border(m):  # the border may cut a ring open or a part off
            continue
        if sc.kinds[0] == "ring":
            contours, hierarchy = cv2.findContours(m.view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            assert hierarchy is not None and (hierarchy[0, :, 3] >= 0).any(), "ring without a hole"
            rings += 1
        elif sc.kinds[0] == "split":
            n, _ = cv2.connectedComponents(m.view(np.uint8), connectivity=8)
            assert n - 1 == 2, f"split object with {n - 1} components"
            splits += 1
        elif sc.kinds[0] in ("ellipse", "polygon", "bar"):
            n, _ = cv2.connectedComponents(m.view(np.uint8), connectivity=8)
            assert n - 1 == 1
    assert rings >= 6 and splits >= 6


def test_bars_are_thin():
    found = 0
    for seed in range(200):
        sc = make_scene(rng(70_000 + seed), n_objects=1)
        if sc.kinds[0] != "bar" or touches_border(sc.masks[0]):
            continue
        found += 1
        # thickness: the half-width (distance transform maximum) is at most a tenth of the bar's length
        dist = cv2.distanceTransform(np.pad(sc.masks[0], 1).view(np.uint8), cv2.DIST_L2, 3)
        _, (w, h), _ = cv2.minAreaRect(np.argwhere(sc.masks[0]).astype(np.float32))
        assert dist.max() <= 0.1 * max(w, h) + 1.0
        if found == 4:
            break
    assert found == 4


def test_bad_arguments():
    with pytest.raises(TypeError):
        make_scene(np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_scene(rng(0), n_objects=(3, 2))
    with pytest.raises(ValueError):
        make_scene(rng(0), n_objects=0)
    with pytest.raises(ValueError):
        make_clip(rng(0), n_frames=MIN_LEAVE_FRAMES - 1, leave_view=True)


# --------------------------------------------------------------------------- clips


def test_clip_is_deterministic_per_seed():
    a, b, c = make_clip(rng(5), n_frames=8), make_clip(rng(5), n_frames=8), make_clip(rng(6), n_frames=8)
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.visible, b.visible)
    assert a.kinds == b.kinds
    assert not np.array_equal(a.frames, c.frames)


def test_clip_layout(clips):
    for cl in clips:
        t, k = cl.visible.shape
        assert t == 24 and 1 <= k <= 3 and len(cl.kinds) == k
        assert cl.frames.shape == (24, 256, 256, 3) and cl.frames.dtype == np.uint8
        assert cl.masks.shape == (24, k, 256, 256) and cl.masks.dtype == bool
        assert cl.visible.dtype == bool
        area = cl.masks.sum(axis=(2, 3))
        assert np.array_equal(area > 0, cl.visible)
        assert (area[cl.visible] >= MIN_CLIP_AREA).all()
        assert cl.masks.sum(axis=1).max() <= 1  # disjoint within each frame
        assert cl.visible[0].all()  # the prompt frame shows every object


def test_clip_objects_move(clips):
    for cl in clips:
        for i in range(len(cl.kinds)):
            c0 = centroid(cl.masks[0, i])
            moved = max(np.linalg.norm(centroid(cl.masks[f, i]) - c0) for f in np.flatnonzero(cl.visible[:, i]))
            assert moved >= 6.0, f"object {i} ({cl.kinds[i]}) barely moves"


def test_clip_occlusion_changes_visible_pixels():
    """Objects pass behind each other: some clips have frames where an object loses pixels to a later one."""
    occluded = 0
    for seed in range(8):
        cl = make_clip(rng(2000 + seed), n_objects=3, leave_view=False)
        k = len(cl.kinds)
        for f in range(cl.frames.shape[0]):
            grown = [cv2.dilate(m.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool) for m in cl.masks[f]]
            if any((grown[i] & cl.masks[f, j]).any() for i in range(k) for j in range(i + 1, k)):
                occluded += 1
                break
    assert occluded >= 3


def test_single_object_stays_in_view_without_leave():
    for seed in range(6):
        cl = make_clip(rng(3000 + seed), n_objects=1, leave_view=False)
        assert cl.visible.all()


def test_leaving_object_disappears_and_comes_back():
    for seed in range(6):
        cl = make_clip(rng(4000 + seed), n_objects=1, leave_view=True)
        vis = cl.visible[:, 0]
        gone = np.flatnonzero(~vis)
        assert gone.size >= 3, "object should be out of view for several frames"
        assert np.array_equal(gone, np.arange(gone[0], gone[-1] + 1)), "one continuous absence"
        assert vis[0] and vis[gone[-1] + 1 :].any(), "object comes back"
        assert not cl.masks[gone, 0].any()


def test_leave_view_with_several_objects():
    for seed in range(4):
        cl = make_clip(rng(4500 + seed), n_objects=(2, 3), leave_view=True)
        assert cl.visible[0].all()
        back = False
        for i in range(len(cl.kinds)):
            gone = np.flatnonzero(~cl.visible[:, i])
            if gone.size >= 3 and cl.visible[gone[-1] + 1 :, i].any():
                back = True
        assert back


def test_leave_view_none_leaves_sometimes():
    left = 0
    for seed in range(20):
        cl = make_clip(rng(5000 + seed), n_frames=16, height=96, width=96, n_objects=1)
        left += not cl.visible.all()
    assert 1 <= left <= 14


def test_clip_appearance_is_constant():
    for seed in range(4):
        cl = make_clip(rng(6000 + seed), n_objects=1, leave_view=False)
        colours = np.array([cl.frames[f][cl.masks[f, 0]].mean(axis=0) for f in range(cl.frames.shape[0])])
        assert np.linalg.norm(colours - colours[0], axis=1).max() < 40


def test_small_clip_sizes():
    cl = make_clip(rng(9), n_frames=3, height=80, width=120, n_objects=2)
    assert cl.frames.shape == (3, 80, 120, 3)
    assert cl.masks.shape == (3, 2, 80, 120)


# --------------------------------------------------------------------------- writers


def test_write_video_round_trip(tmp_path):
    cl = make_clip(rng(21), n_frames=7, height=96, width=128, n_objects=1)
    frames = cl.frames.copy()
    frames[:, :8, :8] = (255, 0, 0)  # a red corner checks RGB -> BGR
    path = tmp_path / "sub" / "clip.mp4"
    write_video(frames, path, fps=10)
    cap = cv2.VideoCapture(str(path))
    try:
        assert cap.isOpened()
        got = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            got.append(frame)
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    finally:
        cap.release()
    assert len(got) == 7
    assert got[0].shape == (96, 128, 3)
    b, g, r = got[3][2:6, 2:6].reshape(-1, 3).mean(axis=0)
    assert r > 150 and b < 100 and g < 100
    # lossy, but the picture is the same
    rgb = cv2.cvtColor(got[3], cv2.COLOR_BGR2RGB).astype(np.float64)
    assert np.abs(rgb - frames[3]).mean() < 20


def test_write_jpeg_folder(tmp_path):
    cl = make_clip(rng(22), n_frames=12, height=64, width=80, n_objects=1)
    folder = tmp_path / "frames"
    paths = write_jpeg_folder(cl.frames, folder)
    names = [os.path.basename(p) for p in paths]
    assert names == [f"{i:05d}.jpg" for i in range(12)]
    assert sorted(os.listdir(folder)) == names
    # SAM2's loader sorts by int(stem): same order, plain integers
    assert sorted(names, key=lambda n: int(os.path.splitext(n)[0])) == names
    img = cv2.imread(paths[5])
    assert img.shape == (64, 80, 3)
    assert np.abs(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float64) - cl.frames[5]).mean() < 10
    # writing the same frames again overwrites; stale extra frames are refused
    assert write_jpeg_folder(cl.frames, folder) == paths
    with pytest.raises(FileExistsError):
        write_jpeg_folder(cl.frames[:5], folder)


def test_writers_reject_bad_frames(tmp_path):
    with pytest.raises(ValueError):
        write_video(np.zeros((2, 8, 8), np.uint8), tmp_path / "x.mp4")
    with pytest.raises(ValueError):
        write_jpeg_folder(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "f")
