"""Benchmark sam2_adapter.geometry against dtlpy on a 3840x2160 mask.

    python bench/bench_geometry.py [--runs N]

Prints, for one 4K mask with a few large objects (holes, several parts, an island inside a hole, a thin bar):

* segmentation encoding: ``mask_to_png_data_url`` vs ``dl.Segmentation(...).to_coordinates`` (median of N runs
  each, same process), the speed ratio, string sizes, and whether dtlpy's own decoder gives identical pixels;
* polygons: ``mask_to_polygons`` vs ``dl.Polygon.from_segmentation`` (median time, vertex count, IoU of the
  rasterised result with the mask; dtlpy's polygons are rasterised both with our ``polygons_to_mask`` and
  with dtlpy's own ``Segmentation.from_polygon``).

And, for a 1300x1080 noisy mask as a model with random weights outputs (one part with thousands of holes,
plus specks): ``mask_to_polygons`` against ``cv2.findContours`` on the same mask, the tracing it starts from,
as a ratio measured in the same run (the keyhole splicing should stay a small multiple of it).

Figures only: no assertions on time. dtlpy runs in a throwaway DATALOOP_PATH/HOME (it writes a cookie file
and logs on import), so nothing touches the real home directory.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_SANDBOX = tempfile.mkdtemp(prefix="bench-geometry-dtlpy-")
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)
os.environ["HOME"] = _SANDBOX
os.environ["DATALOOP_PATH"] = os.path.join(_SANDBOX, ".dataloop")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import dtlpy as dl  # noqa: E402
from sam2_adapter import geometry as geo  # noqa: E402

H, W = 2160, 3840
COLOR = (255, 128, 0)


def make_mask() -> np.ndarray:
    """A 4K mask: donut with an island in its hole, ellipse with two holes, a C, two discs, a bar, a star."""
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (700, 700), 520, 1, -1)
    cv2.circle(m, (700, 700), 260, 0, -1)
    cv2.circle(m, (700, 700), 90, 1, -1)  # island inside the hole: a separate part
    cv2.ellipse(m, (1900, 650), (600, 380), 20, 0, 360, 1, -1)
    cv2.ellipse(m, (1700, 600), (150, 90), -10, 0, 360, 0, -1)
    cv2.circle(m, (2150, 720), 110, 0, -1)
    cv2.ellipse(m, (3150, 700), (420, 420), 0, 45, 315, 1, thickness=130)
    cv2.circle(m, (900, 1650), 300, 1, -1)
    cv2.circle(m, (1650, 1650), 240, 1, -1)
    cv2.rectangle(m, (2200, 1500), (3700, 1530), 1, -1)
    star = [(3000 + 330 * np.cos(a) * (1 if k % 2 == 0 else 0.45), 1800 + 330 * np.sin(a) * (1 if k % 2 == 0 else 0.45))
            for k, a in enumerate(np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False))]
    cv2.fillPoly(m, [np.round(star).astype(np.int32)], 1)
    return m.astype(bool)


def make_noisy_mask() -> np.ndarray:
    """1300x1080: blurred noise thresholded at 0.5 (a random-weight model's mask) plus three large filled shapes."""
    h, w = 1080, 1300
    rng = np.random.default_rng(0)
    m = (cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5) > 0.5).astype(np.uint8)
    cv2.circle(m, (w // 4, h // 2), h // 5, 1, -1)
    cv2.rectangle(m, (w // 2, h // 8), (w // 2 + w // 5, h // 3), 1, -1)
    cv2.ellipse(m, (3 * w // 4, 2 * h // 3), (w // 8, h // 6), 30, 0, 360, 1, -1)
    return m.astype(bool)


def median_time(fn, runs: int):
    """Median wall time of ``runs`` calls, and the last result."""
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def race(fns: dict, runs: int) -> tuple[dict, dict, dict]:
    """Run the functions in alternation, ``runs`` rounds, so that both see the same background load.

    Returns median wall seconds, median CPU seconds of this process (less sensitive to other processes
    competing for the cores), and the last result, each keyed like ``fns``.
    """
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    out = {}
    for _ in range(runs):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out[k] = fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    med = lambda d: {k: float(np.median(v)) for k, v in d.items()}  # noqa: E731
    return med(wall), med(cpu), out


def dtlpy_rasterise(polygons: list[np.ndarray]) -> np.ndarray:
    """dtlpy's own rasterisation of separate polygon annotations: Segmentation.from_polygon each, OR-ed."""
    out = np.zeros((H, W), bool)
    for p in polygons:
        out |= dl.Segmentation.from_polygon(geo=p, label="x", shape=(H, W)).geo.astype(bool)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method (median reported)")
    args = parser.parse_args()
    runs = max(1, args.runs)

    mask = make_mask()
    print(f"mask {W}x{H}, {int(mask.sum())} px on ({mask.mean():.1%}), "
          f"parts (8-conn): {cv2.connectedComponents(mask.view(np.uint8), connectivity=8)[0] - 1}")
    print(f"median of {runs} runs each; OpenCV {cv2.__version__}, dtlpy {dl.__version__}, numpy {np.__version__}\n")

    # ---- segmentation encoding
    wall, cpu, out = race({
        "dtlpy": lambda: dl.Segmentation(geo=mask, label="x").to_coordinates(COLOR),
        "ours": lambda: geo.mask_to_png_data_url(mask, color=COLOR),
    }, runs)
    ours, theirs = out["ours"], out["dtlpy"]
    dec_ours = dl.Segmentation.from_coordinates(ours)
    dec_theirs = dl.Segmentation.from_coordinates(theirs)
    via_json = dl.Segmentation.from_json({"label": "x", "coordinates": ours}).geo.astype(bool)
    print(f"segmentation encoding (PNG data URL, color {COLOR}; runs alternate, median)")
    print(f"  {'':34s} {'wall':>9s} {'cpu':>9s} {'string':>9s}")
    print(f"  dtlpy Segmentation.to_coordinates  {wall['dtlpy'] * 1e3:7.1f}ms {cpu['dtlpy'] * 1e3:7.1f}ms "
          f"{len(theirs) / 1e3:7.1f}kB")
    print(f"  geometry.mask_to_png_data_url      {wall['ours'] * 1e3:7.1f}ms {cpu['ours'] * 1e3:7.1f}ms "
          f"{len(ours) / 1e3:7.1f}kB")
    print(f"  speed-up                           {wall['dtlpy'] / wall['ours']:8.1f}x {cpu['dtlpy'] / cpu['ours']:8.1f}x")
    print(f"  dtlpy decodes ours to the same RGBA pixels as its own: {np.array_equal(dec_ours, dec_theirs)}")
    print(f"  dtlpy Segmentation.from_json(ours).geo == mask       : {np.array_equal(via_json, mask)}")
    print(f"  geometry.png_data_url_to_mask(theirs) == mask         : "
          f"{np.array_equal(geo.png_data_url_to_mask(theirs), mask)}\n")

    # ---- polygons
    poly_runs = max(1, min(runs, 3))
    wall, _, out = race({
        "ours": lambda: geo.mask_to_polygons(mask),
        "dtlpy": lambda: dl.Polygon.from_segmentation(mask, label="x", max_instances=None),
    }, poly_runs)
    (t_poly, polys), (t_dlp, dl_all) = (wall["ours"], out["ours"]), (wall["dtlpy"], out["dtlpy"])
    dl_all = dl_all if isinstance(dl_all, list) else [dl_all]
    dl_default = dl.Polygon.from_segmentation(mask, label="x")  # max_instances=1: the largest contour only
    t_raster, ours_raster = median_time(lambda: geo.polygons_to_mask(polys, H, W), poly_runs)
    ours_iou = geo.mask_iou(ours_raster, mask)
    dl_rings = [np.asarray(p.geo, float) for p in dl_all]
    print("polygons (ours: default tolerance 1.0 px; dtlpy: its default epsilon = 0.0005 x perimeter of its\n"
          "largest contour; IoU of the rasterised polygons with the mask, all rasterised by polygons_to_mask\n"
          "unless noted; wall time, runs alternate, median)")
    print(f"  {'method':46s} {'time':>9s} {'rings':>6s} {'vertices':>9s} {'IoU':>8s}")
    print(f"  {'geometry.mask_to_polygons (keyhole holes)':46s} {t_poly * 1e3:7.1f}ms {len(polys):6d} "
          f"{sum(map(len, polys)):9d} {ours_iou:8.4f}")
    print(f"  {'  same, rasterised by dtlpy from_polygon':46s} {'':9s} {'':6s} {'':9s} "
          f"{geo.mask_iou(dtlpy_rasterise(polys), mask):8.4f}")
    print(f"  {'dl.Polygon.from_segmentation(max_instances=None)':46s} {t_dlp * 1e3:7.1f}ms {len(dl_rings):6d} "
          f"{sum(map(len, dl_rings)):9d} {geo.mask_iou(geo.polygons_to_mask(dl_rings, H, W), mask):8.4f}")
    print(f"  {'  same, rasterised by dtlpy from_polygon':46s} {'':9s} {'':6s} {'':9s} "
          f"{geo.mask_iou(dtlpy_rasterise(dl_rings), mask):8.4f}")
    print(f"  {'dl.Polygon.from_segmentation() default':46s} {'':9s} {1:6d} {len(dl_default.geo):9d} "
          f"{geo.mask_iou(geo.polygons_to_mask([dl_default.geo], H, W), mask):8.4f}")
    print(f"  geometry.polygons_to_mask: {t_raster * 1e3:.1f} ms")
    t_exact, exact = median_time(lambda: geo.mask_to_polygons(mask, tolerance=0), 1)
    print(f"  tolerance=0: {t_exact * 1e3:.1f} ms, {sum(map(len, exact))} vertices, rasterises back exactly: "
          f"{np.array_equal(geo.polygons_to_mask(exact, H, W), mask)}\n")

    # ---- many holes
    noisy = make_noisy_mask()
    nh, nw = noisy.shape
    trace = lambda: cv2.findContours(noisy.view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)  # noqa: E731
    parent = trace()[1][0][:, 3]
    wall, cpu, out = race({"findContours": trace, "ours": lambda: geo.mask_to_polygons(noisy)}, runs)
    polys = out["ours"]
    print(f"many holes ({nw}x{nh} noisy mask: {np.count_nonzero(parent < 0)} parts, {np.count_nonzero(parent >= 0)} "
          f"holes, {np.bincount(parent[parent >= 0]).max()} in the largest part; runs alternate, median)")
    print(f"  {'':40s} {'wall':>9s} {'cpu':>9s}")
    print(f"  {'cv2.findContours (RETR_CCOMP, SIMPLE)':40s} {wall['findContours'] * 1e3:7.1f}ms "
          f"{cpu['findContours'] * 1e3:7.1f}ms")
    print(f"  {'geometry.mask_to_polygons':40s} {wall['ours'] * 1e3:7.1f}ms {cpu['ours'] * 1e3:7.1f}ms  "
          f"{len(polys)} rings, {sum(map(len, polys))} vertices, "
          f"IoU {geo.mask_iou(geo.polygons_to_mask(polys, nh, nw), noisy):.4f}")
    print(f"  {'ratio':40s} {wall['ours'] / wall['findContours']:8.1f}x {cpu['ours'] / cpu['findContours']:8.1f}x")
    t_exact, exact = median_time(lambda: geo.mask_to_polygons(noisy, tolerance=0, min_area=0, min_hole_area=0), 1)
    print(f"  tolerance=0, every speck and hole kept: {t_exact * 1e3:.1f} ms, {len(exact)} rings, rasterises back "
          f"exactly: {np.array_equal(geo.polygons_to_mask(exact, nh, nw), noisy)}\n")

    # ---- RLE, for reference
    t_rle, rle = median_time(lambda: geo.mask_to_rle(mask), runs)
    t_unrle, back = median_time(lambda: geo.rle_to_mask(rle), runs)
    print(f"RLE: encode {t_rle * 1e3:.1f} ms, decode {t_unrle * 1e3:.1f} ms, {len(rle['counts']) / 1e3:.1f} kB, "
          f"round trip exact: {np.array_equal(back, mask)}")


if __name__ == "__main__":
    main()
