"""tools/: the micro model's training and evaluation scripts: bad input fails with a clear message, and training
is reproducible (the same seed writes the same checkpoint)."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_adapter.embeddings import ImageFeatures
from sam2_adapter.models import spec_for

REPO = Path(__file__).resolve().parent.parent
MICRO = spec_for("micro")
MICRO_CHECKPOINT = REPO / "assets" / "micro" / "sam2_micro.pt"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield load_tool("train_micro").main
    torch.set_num_threads(threads)  # the training sets both for the whole process
    torch.use_deterministic_algorithms(deterministic)


TINY_RUN = ["--steps", "2", "--pool", "4", "--pool-steps", "1", "--batch", "2", "--per-image", "1",
            "--image-only-steps", "1", "--video-every", "1", "--warmup", "1", "--decoder-steps", "2",
            "--decoder-video-every", "2"]


def test_training_refuses_a_missing_or_unwritable_output(train, tmp_path):
    with pytest.raises(SystemExit) as error:
        train(["--out", str(tmp_path / "missing" / "micro.pt"), *TINY_RUN])
    assert "output directory" in str(error.value.code) and "missing" in str(error.value.code)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as error:
        train(["--out", str(a_file / "micro.pt"), *TINY_RUN])
    assert str(a_file) in str(error.value.code)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SystemExit) as error:
            train(["--out", str(locked / "micro.pt"), *TINY_RUN])
        assert "permission denied" in str(error.value.code)


def test_bad_numbers_folders_and_files_fail_before_any_work_with_one_line(train, tmp_path, capsys):
    """Each once ended in a traceback from deep inside torch or numpy, some only after the whole run."""
    for option, value, said in (("--batch", "0", "--batch must be at least 1"),
                                ("--lr", "nan", "--lr must be a finite number above 0"),
                                ("--save-every", "0", "--save-every must be at least 1"),
                                ("--steps", "-1", "--steps must not be negative"),
                                ("--pool", "1", "--pool (1) must hold at least --batch (2)")):
        with pytest.raises(SystemExit) as error:
            train(["--out", str(tmp_path / "x.pt"), *TINY_RUN, option, value])
        assert error.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        train(["--out", str(tmp_path), *TINY_RUN])
    assert "is a folder" in str(error.value.code)
    (tmp_path / "x.tmp").mkdir()  # where the checkpoint would be written before the swap
    with pytest.raises(SystemExit) as error:
        train(["--out", str(tmp_path / "x.pt"), *TINY_RUN])
    assert "cannot be created" in str(error.value.code)
    not_sam2 = tmp_path / "identity.yaml"
    not_sam2.write_text("model:\n  _target_: torch.nn.Identity\n")
    unresolved = tmp_path / "unresolved.yaml"
    unresolved.write_text(MICRO.config_path.read_text().replace("image_size: 256", "image_size: ${nowhere}"))
    no_tensors = tmp_path / "none.pt"
    torch.save({"model": None}, no_tensors)
    evaluate = load_tool("evaluate_micro").main
    for config, checkpoint, said in ((not_sam2, MICRO_CHECKPOINT, "not a SAM 2 model"),
                                     (unresolved, MICRO_CHECKPOINT, "cannot be read as a SAM 2 config"),
                                     (MICRO.config_path, no_tensors, "not in the official format")):
        assert evaluate(["--config", str(config), "--checkpoint", str(checkpoint)]) == 2
        assert said in capsys.readouterr().err
    for args in (["--scenes", "0"], ["--frames", "1"], ["--json", str(tmp_path / "missing" / "f.json")]):
        with pytest.raises(SystemExit) as error:
            evaluate(args)
        assert error.value.code == 2
    device_check = load_tool("device_check").main
    if not torch.cuda.is_available():
        assert device_check(["--device", "cuda"]) == 2 and "finds no CUDA GPU" in capsys.readouterr().err


def test_training_and_evaluation_refuse_a_checkpoint_of_another_config(train, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(MICRO.config_path.read_text().replace("d_model: 64", "d_model: 32"))
    with pytest.raises(SystemExit) as error:
        train(["--out", str(tmp_path / "x.pt"), "--config", str(other), "--init", str(MICRO_CHECKPOINT), *TINY_RUN])
    assert "sam2_micro.pt" in str(error.value.code)
    evaluate = load_tool("evaluate_micro").main
    assert evaluate(["--config", str(other), "--checkpoint", str(MICRO_CHECKPOINT)]) == 2


def test_the_same_seed_trains_the_same_checkpoint(train, tmp_path):
    """Image and video steps, twice from scratch with one seed: identical weights; another seed: different."""
    states = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.pt"
        assert train(["--out", str(out), "--seed", seed, *TINY_RUN]) == 0
        states.append(torch.load(out, weights_only=True)["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_the_decoder_phase_depends_only_on_the_weights_it_starts_from(train, tmp_path):
    """A whole run equals its joint phase saved and the decoder phase then run from that checkpoint (`--init ...
    --steps 0`), so the phase can be tried on the shipped checkpoint without retraining it."""
    whole, joint, split = tmp_path / "whole.pt", tmp_path / "joint.pt", tmp_path / "split.pt"
    assert train(["--out", str(whole), *TINY_RUN]) == 0
    assert train(["--out", str(joint), *TINY_RUN, "--decoder-steps", "0"]) == 0
    assert train(["--out", str(split), "--init", str(joint), *TINY_RUN, "--steps", "0"]) == 0
    states = [torch.load(path, weights_only=True)["model"] for path in (whole, joint, split)]
    assert all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # the phase did train


def test_mask_loss_balance_moves_from_class_averages_to_the_pixel_average():
    mask_loss = load_tool("train_micro").mask_loss
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16) * 4
    target = torch.zeros(2, 3, 16, 16)
    target[..., 4:7, 5:9] = 1.0  # a small object: 12 of 256 pixels
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2)
    prob = logits.sigmoid().flatten(2)
    dice = 1 - (2 * (prob * target.flatten(2)).sum(-1) + 1) / (prob.sum(-1) + target.flatten(2).sum(-1) + 1)
    inside = target.flatten(2).bool()
    object_mean = (bce * inside).sum(-1) / inside.sum(-1)
    background_mean = (bce * ~inside).sum(-1) / (~inside).sum(-1)
    class_means = 0.5 * (object_mean + background_mean)
    assert torch.allclose(mask_loss(logits, target, 1.0), class_means + dice, atol=1e-5)
    assert torch.allclose(mask_loss(logits, target, 0.0), bce.mean(-1) + dice, atol=1e-5)
    # in between, a missed object pixel costs less than with the class averages and more than with the pixel mean
    missed = torch.full((1, 1, 16, 16), -8.0)
    costs = [mask_loss(missed, target[:1, :1], b).item() for b in (0.0, 0.5, 1.0)]
    assert costs[0] < costs[1] < costs[2]


def test_feature_probe_tells_separable_features_from_noise():
    """The evaluation's encoder diagnostic: an object that one feature channel spells out is found exactly on the
    cells it was not fitted on; on features of pure noise it is not."""
    probe = load_tool("evaluate_micro").feature_probe_iou
    yy, xx = np.mgrid[:16, :16]
    target = (yy - 7.5) ** 2 + (xx - 6.5) ** 2 <= 12  # a disc on the 16x16 low-res grid
    box = np.array([12, 16, 44, 48], np.float32)  # around it, in the 64x64 image's pixels
    gen = torch.Generator().manual_seed(0)

    def features(first_channel=None):
        stride4 = torch.randn(1, 4, 16, 16, generator=gen)
        if first_channel is not None:
            stride4[0, 0] = torch.from_numpy(first_channel).float()
        return ImageFeatures(torch.randn(1, 8, 4, 4, generator=gen), (stride4, torch.randn(1, 2, 8, 8)), (64, 64))

    assert probe(features(first_channel=target), target, box) == 1.0
    assert max(probe(features(), target, box) for _ in range(5)) < 0.5


def test_device_check_runs_every_check_and_passes_on_the_cpu(capsys):
    """The GPU check (tools/device_check.py, run where a GPU is lent) must not rot between such machines: here it
    runs on the CPU, where its agreement checks with SAM 2's own predictors are real (fp32 on both sides)."""
    assert load_tool("device_check").main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "(bar " in line]
    assert len(lines) == 7, out
    assert all(line.split()[0] == "ok" for line in lines), out
    assert "vs SAM2ImagePredictor" in out and "vs SAM2VideoPredictor" in out and "all checks passed" in out
