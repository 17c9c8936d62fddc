"""Checkpoint registry, resolution, download and loading: the one path every model takes."""

import dataclasses
import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import torch

from sam2_adapter.errors import InputError
from sam2_adapter.models import (CHECKPOINTS, CheckpointError, download_checkpoint, load_model, load_named_model,
                                 resolve_checkpoint, select_device, spec_for, uses_bf16)

MICRO = spec_for("micro")
MICRO_CKPT = MICRO.config_path.parent / MICRO.filename


def test_registry_has_every_official_checkpoint():
    for version in ("sam2", "sam2.1"):
        for size in ("tiny", "small", "base_plus", "large"):
            spec = spec_for(f"{version}_hiera_{size}")
            assert spec.config_path.is_file(), spec.config
            assert spec.url.startswith("https://") and spec.url.endswith(f"{version}_hiera_{size}.pt")
    assert "micro" in CHECKPOINTS


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="sam2.1_hiera_large"):
        spec_for("sam3_huge")


def test_micro_checkpoint_is_official_format_and_loads_with_weights_only():
    state = torch.load(MICRO_CKPT, map_location="cpu", weights_only=True)
    assert set(state) == {"model"}
    model = load_named_model("micro", "cpu")
    assert model.image_size == 256 and not model.training
    assert MICRO_CKPT.stat().st_size <= 10 * 1024 * 1024
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 3_000_000


def test_artifacts_dir_comes_first(tmp_path):
    spec = spec_for("sam2.1_hiera_tiny")
    (tmp_path / spec.filename).write_bytes(b"x")
    assert resolve_checkpoint(spec, [tmp_path], cache_dir=tmp_path / "cache", download=False) == tmp_path / spec.filename


def test_missing_official_checkpoint_without_download_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="sam2.1_hiera_small.pt.*download is off"):
        resolve_checkpoint(spec_for("sam2.1_hiera_small"), [], cache_dir=tmp_path, download=False)


def test_truncated_checkpoint_names_the_file(tmp_path):
    broken = tmp_path / "sam2_micro.pt"
    broken.write_bytes(MICRO_CKPT.read_bytes()[:50_000])
    with pytest.raises(CheckpointError, match=r"sam2_micro\.pt.*truncated"):
        load_model(MICRO.config_path, broken, "cpu")


def test_checkpoint_of_another_model_names_the_config(tmp_path):
    tiny = spec_for("sam2.1_hiera_tiny")
    with pytest.raises(CheckpointError, match=r"does not match model config .*sam2\.1_hiera_t\.yaml.*missing"):
        load_model(tiny.config_path, MICRO_CKPT, "cpu")


def test_not_official_format_is_refused(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save({"weights": {}}, bare)
    with pytest.raises(CheckpointError, match="official format"):
        load_model(MICRO.config_path, bare, "cpu")


def test_custom_config_from_any_path(tmp_path):
    config = tmp_path / "my_finetune.yaml"
    shutil.copy(MICRO.config_path, config)
    checkpoint = tmp_path / "my_finetune.pt"
    shutil.copy(MICRO_CKPT, checkpoint)
    model = load_model(config, checkpoint, "cpu")
    reference = load_named_model("micro", "cpu")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match="bad.yaml"):
        load_model(bad, None, "cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.yaml", None, "cpu")


def test_device_selection_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type in (expected, "mps")
    assert select_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="device 'gpu' is not one of auto, cpu, cuda"):  # the `device` key's value
        select_device("gpu")


@pytest.mark.parametrize("capability, bf16", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_only_on_gpus_with_bf16_units(monkeypatch, capability, bf16):
    """A T4 (7.5) or V100 (7.0) runs in fp32; Ampere (8.0) and later under bf16 autocast. The GPU's answer is
    what is stood in for here (this machine has none); the CPU never uses bf16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert uses_bf16(torch.device("cuda")) is bf16
    assert uses_bf16(torch.device("cpu")) is False


class _Server:
    """A file server on 127.0.0.1 that can lie about Content-Length, to exercise truncated downloads."""

    def __init__(self, root: Path, lie: bool = False):
        class Handler(http.server.SimpleHTTPRequestHandler):
            def send_header(self, key, value):
                if lie and key == "Content-Length":
                    value = str(int(value) + 1000)
                super().send_header(key, value)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_is_atomic_and_checked(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(MICRO_CKPT, served / "sam2_micro.pt")
    server = _Server(served)
    try:
        dest = tmp_path / "cache" / "sam2_micro.pt"
        download_checkpoint(server.url + "sam2_micro.pt", dest, progress=False)
        assert dest.read_bytes() == MICRO_CKPT.read_bytes()
        with pytest.raises(CheckpointError, match="about"):
            download_checkpoint(server.url + "sam2_micro.pt", tmp_path / "small.pt",
                                approx_bytes=100 * MICRO_CKPT.stat().st_size, progress=False)
        assert not (tmp_path / "small.pt").exists()
        with pytest.raises(CheckpointError, match="could not download"):
            download_checkpoint(server.url + "missing.pt", tmp_path / "missing.pt", progress=False)
    finally:
        server.close()
    liar = _Server(served, lie=True)
    try:
        with pytest.raises(CheckpointError):
            download_checkpoint(liar.url + "sam2_micro.pt", tmp_path / "short.pt", progress=False)
        assert not (tmp_path / "short.pt").exists(), "a partial download never lands at the destination"
        assert not list(tmp_path.glob("short.pt.*")), "the partial file is removed"
    finally:
        liar.close()


def test_a_truncated_file_in_the_cache_is_downloaded_again(tmp_path):
    """Downloads land whole; a short file in the cache was put there otherwise (a copy, a full disk): with
    download on it is fetched again, with download off it is left for the loader to name."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(MICRO_CKPT, served / "official.pt")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "official.pt").write_bytes(MICRO_CKPT.read_bytes()[:50_000])
    server = _Server(served)
    try:
        spec = dataclasses.replace(MICRO, filename="official.pt", url=server.url + "official.pt",
                                   approx_bytes=MICRO_CKPT.stat().st_size)
        assert resolve_checkpoint(spec, cache_dir=cache, download=False).stat().st_size == 50_000
        path = resolve_checkpoint(spec, cache_dir=cache)
    finally:
        server.close()
    assert path == cache / "official.pt" and path.read_bytes() == MICRO_CKPT.read_bytes()
