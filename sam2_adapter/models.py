"""SAM 2 checkpoints: the registry, where a checkpoint comes from, and building a model on a device.

Every model, official or fine-tuned or the bundled micro model, goes through `load_model`: a YAML config in the
official format, instantiated with hydra, and a `{"model": state_dict}` checkpoint read with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import sam2
from sam2.modeling.sam2_base import SAM2Base

from sam2_adapter.errors import InputError

log = logging.getLogger(__name__)

SAM2_PACKAGE_DIR = Path(sam2.__file__).parent
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CACHE_DIR = Path(os.environ.get("SAM2_ADAPTER_CACHE", Path.home() / ".cache" / "sam2_adapter"))

_URL_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_URL_SAM21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


class CheckpointError(InputError):
    """A checkpoint or config that is missing, truncated, corrupt or does not match its model."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One known model: its config, its checkpoint file name and where to download it.

    `config` is a path relative to the installed sam2 package (official models) or an absolute path.
    `approx_bytes` is the published size: a file much smaller than that is a truncated download.
    """

    name: str
    config: str
    filename: str
    url: str | None
    approx_bytes: int | None

    @property
    def config_path(self) -> Path:
        path = Path(self.config)
        return path if path.is_absolute() else SAM2_PACKAGE_DIR / path


def _official(version: str, size: str, short: str, mb: int) -> CheckpointSpec:
    prefix = "sam2.1" if version == "2.1" else "sam2"
    return CheckpointSpec(
        name=f"{prefix}_hiera_{size}",
        config=f"configs/{prefix}/{prefix}_hiera_{short}.yaml",
        filename=f"{prefix}_hiera_{size}.pt",
        url=(_URL_SAM21 if version == "2.1" else _URL_SAM2) + f"{prefix}_hiera_{size}.pt",
        approx_bytes=mb * 1024 * 1024,
    )


CHECKPOINTS: dict[str, CheckpointSpec] = {
    spec.name: spec
    for spec in [
        _official("2.1", "tiny", "t", 149),
        _official("2.1", "small", "s", 176),
        _official("2.1", "base_plus", "b+", 309),
        _official("2.1", "large", "l", 856),
        _official("2", "tiny", "t", 149),
        _official("2", "small", "s", 176),
        _official("2", "base_plus", "b+", 309),
        _official("2", "large", "l", 856),
        # Trained on generated scenes by tools/train_micro.py; ships in the repository.
        CheckpointSpec(
            name="micro",
            config=str(ASSETS_DIR / "micro" / "sam2_micro.yaml"),
            filename="sam2_micro.pt",
            url=None,
            approx_bytes=None,
        ),
    ]
}

# Overrides `sam2.build_sam` applies to the models it builds for inference; we apply the same. One model serves
# images and video: binarising clicked masks before the memory encoder only matters to tracking.
_OVERRIDES = {
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
    "binarize_mask_from_pts_for_mem_enc": True,
}
# ... and for SAM 2's own video predictor (the reference the tracker is checked against).
_VIDEO_PREDICTOR_OVERRIDES = {
    **_OVERRIDES,
    "_target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "fill_hole_area": 8,
}


def spec_for(name: str) -> CheckpointSpec:
    try:
        return CHECKPOINTS[name]
    except KeyError:
        known = ", ".join(sorted(CHECKPOINTS))
        raise CheckpointError(f"unknown model {name!r}: known models are {known}") from None


def resolve_checkpoint(
    spec: CheckpointSpec,
    search_dirs: Iterable[str | os.PathLike] = (),
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    download: bool = True,
) -> Path:
    """Finds `spec`'s checkpoint: the given dirs (e.g. Dataloop model artifacts), then the bundled assets and
    the local cache, then downloads it into the cache."""
    cached = Path(cache_dir) / spec.filename
    candidates = [Path(d) / spec.filename for d in search_dirs]
    candidates += [ASSETS_DIR / "micro" / spec.filename, cached]
    for path in candidates:
        if path.is_file():
            if path == cached and download and spec.url and _too_small(path, spec.approx_bytes):
                # downloads land whole, so this was put there by other means: fetch it again
                log.warning("%s is %d bytes, expected about %d: downloading it again", path, path.stat().st_size,
                            spec.approx_bytes)
                break
            return path
    if spec.url is None:
        looked = ", ".join(str(p) for p in candidates)
        raise CheckpointError(f"checkpoint {spec.filename} for model {spec.name!r} not found (looked in {looked})")
    if not download:
        raise CheckpointError(f"checkpoint {spec.filename} for model {spec.name!r} is not cached and download is off")
    return download_checkpoint(spec.url, Path(cache_dir) / spec.filename, spec.approx_bytes)


def download_checkpoint(url: str, dest: Path, approx_bytes: int | None = None, progress: bool = True) -> Path:
    """Downloads `url` to `dest` atomically: a partial file never sits at `dest`."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    log.info("downloading %s to %s", url, dest)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            expected = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=expected or approx_bytes, unit="B", unit_scale=True, desc=dest.name,
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        got = tmp.stat().st_size
        if expected is not None and got != expected:
            raise CheckpointError(f"download of {url} is truncated: {got} of {expected} bytes")
        _check_size(tmp, approx_bytes, url)
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as error:
        raise CheckpointError(f"could not download {url} to {dest}: {error}") from error
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _too_small(path: Path, approx_bytes: int | None) -> bool:
    return bool(approx_bytes) and path.stat().st_size < 0.9 * approx_bytes


def _check_size(path: Path, approx_bytes: int | None, what: str) -> None:
    if _too_small(path, approx_bytes):
        raise CheckpointError(
            f"checkpoint {what} is {path.stat().st_size} bytes, expected about {approx_bytes}: truncated download?"
        )


def load_config(config: str | os.PathLike, video: bool = False) -> DictConfig:
    """Reads a model config in the official YAML format (`model:` with hydra `_target_`s) from a path."""
    path = Path(config)
    if not path.is_file():
        raise CheckpointError(f"model config {path} not found")
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # yaml errors have no common base we can name
        raise CheckpointError(f"model config {path} is not valid YAML: {error}") from error
    if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("model"), DictConfig) or "_target_" not in cfg.model:
        raise CheckpointError(f"model config {path} has no `model._target_`: not a SAM 2 config")
    try:
        cfg = OmegaConf.merge(cfg, {"model": _VIDEO_PREDICTOR_OVERRIDES if video else _OVERRIDES})
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as error:
        raise CheckpointError(f"model config {path} cannot be read as a SAM 2 config: {error}") from None
    return cfg


def select_device(preference: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if preference != "auto":
        try:
            device = torch.device(preference)
        except (RuntimeError, TypeError) as error:
            raise InputError(f"device {preference!r} is not one of auto, cpu, cuda, cuda:N, mps ({error})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {preference!r}: torch finds no CUDA GPU here (no GPU, or no driver for it)")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"device {preference!r}: torch finds no MPS device here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def uses_bf16(device: torch.device) -> bool:
    """Whether `device` runs SAM 2 under bf16 autocast (what SAM 2 was trained for): CUDA GPUs of compute
    capability 8.0 (Ampere) or later. Older ones (a T4, a V100) have no bf16 units; torch emulates bf16 there and
    its attention kernels fall back to the plain one, so they run in fp32, as the CPU and MPS do."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def inference_context(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where `uses_bf16`; fp32 elsewhere."""
    if uses_bf16(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_model(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    device: str | torch.device = "auto",
    video: bool = False,
) -> SAM2Base:
    """Builds the model of `config` and loads `checkpoint` (`{"model": state_dict}`) into it, in eval mode.

    `video=True` builds a `SAM2VideoPredictor` with the settings `sam2.build_sam.build_sam2_video_predictor`
    uses (the reference the tracker is checked against). `checkpoint=None` keeps random weights (benchmarks).
    """
    cfg = load_config(config, video=video)
    try:
        model = instantiate(cfg.model, _recursive_=True)
    except Exception as error:
        raise CheckpointError(f"model config {config} does not build a SAM 2 model: {error}") from error
    if not isinstance(model, SAM2Base):
        raise CheckpointError(f"model config {config} builds a {type(model).__name__}, not a SAM 2 model (SAM2Base)")
    if checkpoint is not None:
        _load_state(model, Path(checkpoint), config)
    device = select_device(device) if isinstance(device, str) else device
    if uses_bf16(device):  # TF32 exists from Ampere on
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return model.to(device).eval()


def _load_state(model: torch.nn.Module, path: Path, config: str | os.PathLike) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read: truncated or not a torch file ({error})"
        ) from error
    if (not isinstance(state, dict) or not isinstance(state.get("model"), dict)
            or not all(isinstance(v, torch.Tensor) for v in state["model"].values())):
        raise CheckpointError(f"checkpoint {path} is not in the official format {{'model': state_dict}}")
    result = model.load_state_dict(state["model"], strict=False) if _shapes_match(model, state["model"]) else None
    if result is None or result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"checkpoint {path} does not match model config {config}: {_mismatch(model, state['model'])}")


def _shapes_match(model: torch.nn.Module, state: dict) -> bool:
    own = model.state_dict()
    return all(key not in own or own[key].shape == value.shape for key, value in state.items())


def _mismatch(model: torch.nn.Module, state: dict) -> str:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and own[k].shape != state[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shape", resized)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    return "; ".join(parts)


def load_named_model(
    name: str,
    device: str | torch.device = "auto",
    search_dirs: Sequence[str | os.PathLike] = (),
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    download: bool = True,
    video: bool = False,
) -> SAM2Base:
    """A registry model by name (`sam2.1_hiera_tiny`, ..., `micro`), its checkpoint resolved as `resolve_checkpoint` does."""
    spec = spec_for(name)
    path = resolve_checkpoint(spec, search_dirs, cache_dir, download)
    _check_size(path, spec.approx_bytes, str(path))
    return load_model(spec.config_path, path, device, video=video)

