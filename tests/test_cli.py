"""The local jobs end to end: COCO round trip, problems reported while the rest finishes, resume after a kill."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from conftest import box_masks
from sam2_adapter import cli
from sam2_adapter.coco import auto, boxes_to_masks, mask_annotation_fields, run_pipeline
from sam2_adapter.config import Settings
from sam2_adapter.errors import InputError
from sam2_adapter.geometry import mask_iou
from sam2_adapter.proposals import ProposalSettings
from sam2_adapter.scenes import make_scene
from sam2_adapter.segment import MaskResult

REPO = Path(__file__).resolve().parent.parent
MODEL_ARGS = ["--model", "micro", "--device", "cpu"]


def write_dataset(folder: Path, n_images: int, seed: int = 11):
    """n generated 256 px scenes as PNG files and a COCO file of their boxes; returns (coco path, scenes)."""
    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    images, annotations, scenes = [], [], {}
    for n in range(n_images):
        scene = make_scene(rng, 256, 256, n_objects=(2, 4))
        image_id = 10 * (n + 1)
        name = f"scene_{n:02d}.png"
        cv2.imwrite(str(images_dir / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": name, "width": 256, "height": 256})
        for k, (x1, y1, x2, y2) in enumerate(scene.boxes.tolist()):
            annotations.append({"id": 1000 * (n + 1) + k, "image_id": image_id, "category_id": 1 + k % 2,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0, "area": (x2 - x1) * (y2 - y1)})
        scenes[image_id] = scene
    document = {"info": {"description": "generated"}, "images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    coco = folder / "boxes.json"
    coco.write_text(json.dumps(document))
    return coco, scenes


def add_problems(coco: Path) -> dict:
    """A missing image, a corrupt image, a box outside its image and an annotation of an unknown image id."""
    document = json.loads(coco.read_text())
    images_dir = coco.parent / "images"
    (images_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    document["images"] += [{"id": 901, "file_name": "missing.png", "width": 256, "height": 256},
                           {"id": 902, "file_name": "corrupt.png", "width": 256, "height": 256}]
    first = document["images"][0]["id"]
    document["annotations"] += [
        {"id": 9001, "image_id": 901, "category_id": 1, "bbox": [10, 10, 50, 50]},
        {"id": 9002, "image_id": 902, "category_id": 1, "bbox": [10, 10, 50, 50]},
        {"id": 9003, "image_id": first, "category_id": 1, "bbox": [300, 300, 40, 40]},
        {"id": 9004, "image_id": 777, "category_id": 1, "bbox": [10, 10, 50, 50]},
    ]
    coco.write_text(json.dumps(document))
    return document


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path, 3)


# images encoded one by one, and two together; masks cut at the boxes, or 4.5 px past them
@pytest.mark.parametrize("batch, margin", [("1", "0"), ("2", "4.5")])
def test_boxes_to_masks_round_trips_through_pycocotools(dataset, segmenter, tmp_path, capsys, batch, margin):
    coco_in, scenes = dataset
    out = tmp_path / "out" / "masks.json"
    assert cli.main(["boxes-to-masks", str(coco_in.parent / "images"), str(coco_in), "--out", str(out),
                     "--no-progress", "--batch", batch, "--box-margin", margin, *MODEL_ARGS]) == 0
    assert "3 images" in capsys.readouterr().out
    source = json.loads(coco_in.read_text())
    result = COCO(str(out))
    assert len(result.anns) == len(source["annotations"])
    assert not Path(str(out) + ".partial").exists()
    for image_id, scene in scenes.items():
        direct = box_masks(segmenter, scene.image, scene.boxes, float(margin))
        anns = [a for a in source["annotations"] if a["image_id"] == image_id]
        for ann, expected in zip(anns, direct):
            got = result.anns[ann["id"]]
            for key in ("id", "image_id", "category_id", "bbox", "iscrowd"):
                assert got[key] == ann[key]
            assert isinstance(got["segmentation"]["counts"], str)
            mask = result.annToMask(got).astype(bool)
            assert np.array_equal(mask, expected.full())
            assert got["area"] == int(mask.sum())
            assert got["score"] == pytest.approx(expected.score, abs=1e-4)
    assert json.loads(out.read_text())["sam2_adapter"]["skipped"] == []


def test_problems_are_reported_and_every_other_image_finished(dataset, tmp_path, capsys):
    coco_in, scenes = dataset
    document = add_problems(coco_in)
    out = tmp_path / "masks.json"
    code = cli.main(["boxes-to-masks", str(coco_in.parent / "images"), str(coco_in), "--out", str(out),
                     "--no-progress", "--batch", "3", *MODEL_ARGS])  # bad images share batches with good ones
    assert code == 1
    report = capsys.readouterr().err
    written = json.loads(out.read_text())
    good = [a["id"] for a in document["annotations"] if a["id"] < 9000]
    assert [a["id"] for a in written["annotations"]] == good
    skipped = {p["annotation_id"] if "annotation_id" in p else p["image_id"]: p["reason"]
               for p in written["sam2_adapter"]["skipped"]}
    assert set(skipped) == {901, 902, 9003, 9004}
    assert "file not found" in skipped[901] and "missing.png" in skipped[901]
    assert "not a readable image" in skipped[902]
    assert "outside" in skipped[9003] and "annotation 9003" in skipped[9003]
    assert "777" in skipped[9004]
    for reason in skipped.values():
        assert reason in report
    assert "skipped 2 images and 2 annotations" in report
    COCO(str(out))  # still a valid COCO file


def test_job_options_are_checked_before_any_work(dataset, segmenter, tmp_path):
    """Called from Python (the CLI's own checks aside), a bad number option is one clear error before the job
    starts: no journal, no output."""
    coco_in, _ = dataset
    out = tmp_path / "checked.json"
    bad_options = [("box_margin", -1), ("box_margin", None), ("box_margin", "abc"), ("polygon_tolerance", math.nan)]
    for name, bad in bad_options:
        with pytest.raises(InputError, match=name):
            boxes_to_masks(coco_in.parent / "images", coco_in, out, segmenter, **{name: bad})
    with pytest.raises(InputError, match="polygon_min_area"):
        auto(coco_in.parent / "images", out, segmenter, polygon_min_area=-3)
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_polygons_and_previews(dataset, segmenter, tmp_path):
    coco_in, scenes = dataset
    out = tmp_path / "polygons.json"
    previews = tmp_path / "previews"
    summary = boxes_to_masks(coco_in.parent / "images", coco_in, out, segmenter, polygons=True,
                             previews_dir=previews)
    assert summary.ok and summary.processed == 3
    result = COCO(str(out))
    ious = []
    for image_id, scene in scenes.items():
        direct = box_masks(segmenter, scene.image, scene.boxes)
        for ann, expected in zip(result.imgToAnns[image_id], direct):
            rings = ann["segmentation"]
            assert isinstance(rings, list) and rings and all(len(ring) >= 6 for ring in rings)
            assert ann["area"] == expected.area
            ious.append(mask_iou(result.annToMask(ann).astype(bool), expected.full()))
    # pycocotools fills the rings back to the masks, but for Douglas-Peucker's 1 px (rings through the boundary
    # pixels' centres lost the top and left rows: mean IoU 0.934, the worst 0.875)
    assert len(ious) >= 3 and min(ious) >= 0.9 and np.mean(ious) >= 0.97, ious
    assert sorted(p.name for p in previews.iterdir()) == [f"scene_{n:02d}.png.png" for n in range(3)]
    assert cv2.imread(str(previews / "scene_00.png.png")).shape == (256, 512, 3)



def test_coco_polygons_at_tolerance_0_fill_back_to_the_mask_exactly():
    """Holes, a part one pixel wide and a single pixel: pycocotools rasterises the polygons to the same pixels."""
    h, w = 60, 80
    mask = np.zeros((h, w), np.uint8)
    mask[10:40, 10:50] = 1
    mask[20:30, 20:30] = 0
    mask[45, 5:70] = 1
    mask[52, 60] = 1
    cv2.circle(mask, (65, 20), 8, 1, -1)
    mask = mask.astype(bool)
    result = MaskResult(mask, (0, 0), (h, w), 0.9, np.zeros((1, 1), np.float32))
    fields = mask_annotation_fields(result, polygons=True, polygon_tolerance=0, polygon_min_area=0)
    assert len(fields["segmentation"]) == 4
    filled = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(fields["segmentation"], h, w)))
    assert np.array_equal(filled.astype(bool), mask)

def test_resume_after_an_interruption_skips_done_images_and_writes_the_same_file(tmp_path, segmenter):
    coco_in, _ = write_dataset(tmp_path, 3)
    add_problems(coco_in)
    images = coco_in.parent / "images"
    reference = tmp_path / "reference.json"
    assert not boxes_to_masks(images, coco_in, reference, segmenter).ok

    out = tmp_path / "resumed.json"
    journal = Path(str(out) + ".partial")

    class Interrupted(Exception):
        pass

    def interrupt(image_id):
        raise Interrupted(image_id)

    with pytest.raises(Interrupted):
        boxes_to_masks(images, coco_in, out, segmenter, workers=1, prefetch=1, on_image_done=interrupt)
    assert not out.exists()
    done = journal.read_text().splitlines()[1:]
    assert 1 <= len(done) < 5
    with open(journal, "ab") as f:  # a kill in the middle of writing a line
        f.write(b'{"image_id": 30, "annotations": [{"id"')

    seen = []
    summary = boxes_to_masks(images, coco_in, out, segmenter, on_image_done=seen.append)
    assert summary.resumed == len(done) and summary.processed == 5 - len(done)
    assert not {json.loads(line)["image_id"] for line in done} & set(seen)
    assert out.read_bytes() == reference.read_bytes()
    assert not journal.exists()


def test_a_journal_of_another_job_is_not_resumed(dataset, segmenter, tmp_path):
    coco_in, _ = dataset
    out = tmp_path / "masks.json"
    Path(str(out) + ".partial").write_text('{"sam2_adapter_journal": 1, "job": {"job": "other"}}\n'
                                           '{"image_id": 10, "annotations": [], "problems": []}\n')
    summary = boxes_to_masks(coco_in.parent / "images", coco_in, out, segmenter)
    assert summary.resumed == 0 and summary.processed == 3 and summary.notes
    assert len(json.loads(out.read_text())["annotations"]) == len(json.loads(coco_in.read_text())["annotations"])


def _journaled_images(journal: Path) -> int:
    try:
        return max(0, journal.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def test_cli_killed_mid_job_resumes_without_duplicates(tmp_path, segmenter):
    coco_in, _ = write_dataset(tmp_path, 6, seed=5)
    images = coco_in.parent / "images"
    reference = tmp_path / "reference.json"
    expected_code = 0 if boxes_to_masks(images, coco_in, reference, segmenter).ok else 1

    out = tmp_path / "killed.json"
    journal = Path(str(out) + ".partial")
    command = [sys.executable, "-m", "sam2_adapter.cli", "boxes-to-masks", str(images), str(coco_in),
               "--out", str(out), "--no-progress", "--workers", "1", *MODEL_ARGS]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while _journaled_images(journal) < 1 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    done = _journaled_images(journal)
    assert 1 <= done < 6 and not out.exists(), f"killed after {done} images"

    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == expected_code, finished.stdout + finished.stderr
    assert f"6 images ({done} done before, resumed)" in finished.stdout + finished.stderr
    written = json.loads(out.read_text())
    ids = [a["id"] for a in written["annotations"]]
    assert len(ids) == len(set(ids))
    assert out.read_bytes() == reference.read_bytes()  # the same bytes as an uninterrupted run
    assert not journal.exists()


def test_auto_writes_proposals_as_coco(tmp_path, capsys):
    rng = np.random.default_rng(3)
    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    scenes = []
    for n in range(2):
        scene = make_scene(rng, 256, 256, n_objects=(3, 4))
        scenes.append(scene)
        cv2.imwrite(str(images / f"{n}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "proposals.json"
    code = cli.main(["auto", str(tmp_path / "images"), "--out", str(out), "--no-progress",
                     "--points-per-side", "16", "--pred-iou-thresh", "0", "--stability-score-thresh", "0.5",
                     "--previews", str(tmp_path / "previews"), *MODEL_ARGS])
    assert code == 1
    assert "sub/broken.jpg" in capsys.readouterr().err
    result = COCO(str(out))
    assert [img["file_name"] for img in result.dataset["images"]] == ["sub/0.png", "sub/1.png"]
    assert [img["id"] for img in result.dataset["images"]] == [1, 2]
    assert [a["id"] for a in result.dataset["annotations"]] == list(range(1, len(result.anns) + 1))
    assert result.dataset["sam2_adapter"]["settings"]["points_per_side"] == 16
    for image_id, scene in zip((1, 2), scenes):
        masks = [result.annToMask(a).astype(bool) for a in result.imgToAnns[image_id]]
        assert masks, "no proposal on a scene with objects"
        for ann, mask in zip(result.imgToAnns[image_id], masks):
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            # scores are written to 4 decimals: a mask kept with a predicted IoU just above the threshold 0 reads 0.0
            assert ann["area"] == mask.sum() and 0.0 <= ann["score"] <= 1.0 and ann["stability_score"] >= 0.5
    assert sorted(p.name for p in (tmp_path / "previews" / "sub").iterdir()) == ["0.png.png", "1.png.png"]


def test_auto_resumes_with_its_previews_inside_the_images_folder(tmp_path, segmenter):
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(8)
    for n in range(3):
        cv2.imwrite(str(images / f"{n}.png"), cv2.cvtColor(make_scene(rng, 256, 256).image, cv2.COLOR_RGB2BGR))
    out, previews = tmp_path / "proposals.json", images / "previews"
    settings = ProposalSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)

    class Interrupted(Exception):
        pass

    def interrupt(image_id):
        raise Interrupted(image_id)

    with pytest.raises(Interrupted):
        auto(images, out, segmenter, settings, previews_dir=previews, workers=1, prefetch=1, on_image_done=interrupt)
    assert list(previews.iterdir())  # a preview now lies among the images
    summary = auto(images, out, segmenter, settings, previews_dir=previews)  # the same command again
    assert summary.resumed >= 1 and summary.processed == 3 - summary.resumed and not summary.notes
    assert [i["file_name"] for i in json.loads(out.read_text())["images"]] == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in previews.iterdir()) == ["0.png.png", "1.png.png", "2.png.png"]
    with pytest.raises(InputError, match="cannot be the images folder"):
        auto(images, out, segmenter, settings, previews_dir=images)
    # previews in a folder that holds the images folder (e.g. `--previews .`): every image is still an input
    shutil.rmtree(previews)
    parent = auto(images, tmp_path / "again.json", segmenter, settings, previews_dir=tmp_path, workers=1)
    assert parent.processed == 3 and (tmp_path / "0.png.png").is_file()


def test_previews_stay_in_the_previews_folder_whatever_the_file_names(tmp_path, segmenter):
    coco_in, _ = write_dataset(tmp_path, 3)
    images = coco_in.parent / "images"
    (tmp_path / "outside").mkdir()
    (images / "scene_02.png").rename(tmp_path / "outside" / "scene_02.png")
    document = json.loads(coco_in.read_text())
    document["images"][0]["file_name"] = str(images / "scene_00.png")  # absolute, as many exporters write
    document["images"][1]["file_name"] = "../images/scene_01.png"
    document["images"][2]["file_name"] = "../outside/scene_02.png"
    document["images"].append({"id": 40, "file_name": "scene_00.png", "width": 256, "height": 256})
    document["annotations"].append({**document["annotations"][0], "id": 4000, "image_id": 40})
    coco_in.write_text(json.dumps(document))
    previews = tmp_path / "previews"
    summary = boxes_to_masks(images, coco_in, tmp_path / "masks.json", segmenter, previews_dir=previews)
    assert summary.ok
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png.png"))
    assert written == ["previews/40_scene_00.png.png", "previews/outside/scene_02.png.png",
                       "previews/scene_00.png.png", "previews/scene_01.png.png"]


def test_a_preview_that_cannot_be_written_is_reported_and_the_masks_kept(dataset, tmp_path, capsys):
    coco_in, _ = dataset
    images = coco_in.parent / "images"
    long_name = "x" * 248 + ".png"  # a valid file name; its preview's, 4 bytes longer, is not
    (images / "scene_01.png").rename(images / long_name)
    document = json.loads(coco_in.read_text())
    document["images"][1]["file_name"] = long_name
    coco_in.write_text(json.dumps(document))
    out, previews = tmp_path / "masks.json", tmp_path / "previews"
    assert cli.main(["boxes-to-masks", str(images), str(coco_in), "--out", str(out), "--previews", str(previews),
                     "--no-progress", "--workers", "1", *MODEL_ARGS]) == 1
    report = capsys.readouterr().err
    assert "1 preview not written" in report and f"image 20 ({long_name})" in report and "skipped" not in report
    written = json.loads(out.read_text())
    assert len(written["annotations"]) == len(document["annotations"]) and written["sam2_adapter"]["skipped"] == []
    assert sorted(p.name for p in previews.iterdir()) == ["scene_00.png.png", "scene_02.png.png"]


def test_nan_in_the_coco_file_is_refused_naming_the_file_and_the_field(dataset, tmp_path, capsys):
    coco_in, _ = dataset
    document = json.loads(coco_in.read_text())
    document["annotations"][-1]["truncated_ratio"] = float("nan")  # json.dumps writes it, JSON has no NaN
    coco_in.write_text(json.dumps(document))
    out = tmp_path / "masks.json"
    assert cli.main(["boxes-to-masks", str(coco_in.parent / "images"), str(coco_in), "--out", str(out),
                     "--no-progress", *MODEL_ARGS]) == 2
    last = document["annotations"][-1]["id"]
    assert f"{coco_in}: annotations[{len(document['annotations']) - 1}] (id {last}).truncated_ratio is NaN" \
        in capsys.readouterr().err
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_a_malformed_image_id_is_reported_and_the_rest_written(dataset, tmp_path, capsys):
    coco_in, _ = dataset
    document = json.loads(coco_in.read_text())
    good = [a["id"] for a in document["annotations"]]
    document["annotations"] += [{"id": 9001, "image_id": [3], "category_id": 1, "bbox": [1, 1, 5, 5]},
                                {"id": 9002, "image_id": {"id": 10}, "category_id": 1, "bbox": [1, 1, 5, 5]},
                                {"id": 9003, "image_id": 777, "category_id": 1, "bbox": [1, 1, 5, 5]}]
    coco_in.write_text(json.dumps(document))
    out = tmp_path / "masks.json"
    assert cli.main(["boxes-to-masks", str(coco_in.parent / "images"), str(coco_in), "--out", str(out),
                     "--no-progress", *MODEL_ARGS]) == 1
    report = capsys.readouterr().err
    assert "annotation 9001: image_id must be an integer or a string, got [3]" in report
    assert "annotation 9002: image_id must be an integer or a string" in report
    written = json.loads(out.read_text())
    assert [a["id"] for a in written["annotations"]] == good
    assert sorted(p["annotation_id"] for p in written["sam2_adapter"]["skipped"]) == [9001, 9002, 9003]
    assert not Path(str(out) + ".partial").exists()


def test_bad_command_line_input_exits_2(tmp_path, capsys):
    assert cli.main(["boxes-to-masks", str(tmp_path / "nowhere"), str(tmp_path / "x.json"), "--out",
                     str(tmp_path / "o.json"), *MODEL_ARGS]) == 2
    assert "images folder not found" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    assert cli.main(["boxes-to-masks", str(tmp_path), str(tmp_path / "broken.json"), "--out",
                     str(tmp_path / "o.json"), *MODEL_ARGS]) == 2
    assert "not a readable COCO JSON file" in capsys.readouterr().err
    (tmp_path / "dupes.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                                      "annotations": [{"id": 5}, {"id": 5}]}))
    assert cli.main(["boxes-to-masks", str(tmp_path), str(tmp_path / "dupes.json"), "--out",
                     str(tmp_path / "o.json"), *MODEL_ARGS]) == 2
    assert "annotation id 5 appears twice" in capsys.readouterr().err
    assert cli.main(["auto", str(tmp_path / "empty-dir-missing"), "--out", str(tmp_path / "o.json")]) == 2
    assert cli.main(["auto", str(tmp_path), "--out", str(tmp_path / "o.json"), "--points-per-side", "0"]) == 2
    assert "points_per_side" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["boxes-to-masks", str(tmp_path)])
    assert exit_info.value.code == 2


def test_a_bad_out_or_option_fails_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    """Checked before the model loads: an --out that is a folder (or cannot be made), non-finite or negative
    polygon options. Before, a folder as --out failed with a traceback after every image was done."""
    coco_in, _ = dataset
    images = str(coco_in.parent / "images")
    monkeypatch.setattr(cli, "_segmenter", lambda args: pytest.fail("the model was loaded"))
    (tmp_path / "outdir").mkdir()
    for out, said in ((tmp_path / "outdir", "is a folder"), (coco_in / "x.json", "cannot be created")):
        assert cli.main(["boxes-to-masks", images, str(coco_in), "--out", str(out), *MODEL_ARGS]) == 2
        assert said in capsys.readouterr().err
        assert cli.main(["auto", images, "--out", str(out), *MODEL_ARGS]) == 2
        assert said in capsys.readouterr().err
    for option, value in (("--polygon-tolerance", "nan"), ("--polygon-tolerance", "-3"),
                          ("--polygon-min-area", "-5"), ("--mask-threshold", "inf")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["boxes-to-masks", images, str(coco_in), "--out", str(tmp_path / "o.json"), option, value])
        assert exit_info.value.code == 2 and f"argument {option}: {value} is not a finite number" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.partial"))


def test_outputs_are_readable_as_any_file_the_user_writes(dataset, segmenter, tmp_path):
    """The output is written aside and swapped in; it gets a new file's mode (mkstemp's is owner-only), or the
    mode of the file it replaces."""
    coco_in, _ = dataset
    mask = os.umask(0o022)
    os.umask(mask)
    out = tmp_path / "masks.json"
    boxes_to_masks(coco_in.parent / "images", coco_in, out, segmenter)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    out.chmod(0o640)
    boxes_to_masks(coco_in.parent / "images", coco_in, out, segmenter)
    assert out.stat().st_mode & 0o777 == 0o640


def test_an_image_listed_without_a_file_name_costs_only_its_own_boxes(dataset, segmenter, tmp_path):
    coco_in, _ = dataset
    document = json.loads(coco_in.read_text())
    document["images"] += [{"id": 501, "coco_url": "http://images.example/501.jpg"},
                           {"id": 502, "coco_url": "http://images.example/502.jpg"}]
    document["annotations"].append({"id": 5021, "image_id": 502, "category_id": 1, "bbox": [1, 1, 9, 9]})
    document["annotations"].append({"id": 5022, "image_id": 10, "category_id": 1, "bbox": [20, 20, 0, 30]})
    coco_in.write_text(json.dumps(document))
    out = tmp_path / "masks.json"
    summary = boxes_to_masks(coco_in.parent / "images", coco_in, out, segmenter)
    skipped = {p["annotation_id"]: p["reason"] for p in json.loads(out.read_text())["sam2_adapter"]["skipped"]}
    assert "image 502 has no file_name" in skipped[5021]
    assert "COCO bbox [20, 20, 0, 30]" in skipped[5022]  # the user's own x, y, w, h, beside the corners
    assert summary.processed == 3 and len(json.loads(out.read_text())["images"]) == 5


def test_resuming_with_other_previews_starts_over(dataset, segmenter, tmp_path):
    """A run interrupted without --previews and resumed with them would leave the done images without one."""
    coco_in, _ = dataset
    images, out, previews = coco_in.parent / "images", tmp_path / "masks.json", tmp_path / "previews"

    def interrupt(image_id):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        boxes_to_masks(images, coco_in, out, segmenter, workers=1, prefetch=1, on_image_done=interrupt)
    summary = boxes_to_masks(images, coco_in, out, segmenter, previews_dir=previews)
    assert summary.resumed == 0 and summary.notes
    assert len(list(previews.iterdir())) == 3


def test_demo_still_runs(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--images", "1", "--device", "cpu"]) == 0
    assert "box-to-mask IoU" in capsys.readouterr().out
    assert (tmp_path / "demo" / "scene_00.png").exists()


def test_console_script_points_at_main():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sam2-adapter"] == "sam2_adapter.cli:main"


def test_pipeline_overlaps_stages_and_raises_stage_errors():
    for batch in (1, 3, 4):
        finished, groups = [], []

        def infer(items, prepared):
            groups.append(list(items))
            return [p + 1 for p in prepared]

        run_pipeline(range(10), lambda i: i * 2, infer, lambda i, r: finished.append((i, r)),
                     workers=2, prefetch=3, batch=batch)
        assert sorted(finished) == [(i, 2 * i + 1) for i in range(10)]
        assert [i for g in groups for i in g] == list(range(10))  # in order, each item once
        assert max(len(g) for g in groups) == batch

    def bad_finish(i, r):
        if i == 3:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(range(10), lambda i: i, lambda items, prepared: prepared, bad_finish)
    with pytest.raises(InputError):
        auto(Path("/nonexistent-folder"), Path("/tmp/x.json"), None)


def test_the_jobs_default_to_the_adapters_model_and_the_demo_to_the_micro_one(dataset, micro_model, tmp_path,
                                                                                monkeypatch):
    """The micro model is not for real images: a job run without --model uses the adapter's default model."""
    asked = []

    def load(name, device):
        asked.append(name)
        return micro_model

    monkeypatch.setattr(cli, "load_named_model", load)
    coco_in, _ = dataset
    assert cli.main(["boxes-to-masks", str(coco_in.parent / "images"), str(coco_in), "--out",
                     str(tmp_path / "masks.json"), "--no-progress", "--device", "cpu"]) == 0
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--images", "1", "--device", "cpu"]) == 0
    assert asked == [Settings().model, "micro"]


def test_the_console_script_is_installed_beside_the_interpreter():
    """`make` installs the project from this checkout, so the README's `sam2-adapter` command exists."""
    script = Path(sys.executable).parent / "sam2-adapter"
    assert script.is_file(), f"{script} is missing: install the project with `pip install --no-deps -e .` (make does)"
    done = subprocess.run([str(script), "track", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--direction" in done.stdout
