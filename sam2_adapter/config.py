"""The adapter's configuration: one place with its defaults.

The manifest's `models[].configuration` mirrors `Settings()` (a test keeps the two equal) and the README documents
every key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

from sam2_adapter.errors import InputError
from sam2_adapter.proposals import ProposalSettings

log = logging.getLogger(__name__)

# Keys the platform itself puts in a model configuration; not ours to validate.
_PLATFORM_KEYS = {"batch_size", "include_background", "include_model_annotations", "id_to_label_map",
                  "label_to_id_map", "embeddings_size", "predict_embed_subset_limit", "predict_embed_timeout",
                  "upload_annotations", "clean_annotations", "overwrite_annotations", "upload_features",
                  "root_path", "data_path", "output_path"}


@dataclass(frozen=True)
class Settings:
    model: str = "sam2.1_hiera_tiny"
    """Registry name of the checkpoint (sam2.1_hiera_tiny/small/base_plus/large, sam2_hiera_*, micro)."""
    config_file: str | None = None
    """A fine-tuned model's YAML config (a path, or a file name in the model's artifacts); replaces `model`."""
    checkpoint_file: str | None = None
    """A fine-tuned model's checkpoint `{"model": state_dict}` (a path, or a file name in the artifacts)."""
    device: str = "auto"
    """auto (cuda, then mps, then cpu), or a torch device string."""
    download: bool = True
    """Download official checkpoints that are neither in the artifacts nor in the local cache."""
    embedding_cache_mb: int = 2048
    """Bound of the image-feature cache in MiB (hiera models at 1024 px take about 16 MiB an image in fp32)."""
    mask_threshold: float = 0.0
    """Logit above which a pixel is in the mask."""
    box_margin: float = 0.0
    """Pixels a box's mask may reach past the box on each side: SAM 2's mask is cut where pixel centres leave the box
    grown by this much (0: the object inside the box; the studio's click refinement crops to the box as well)."""
    polygon_tolerance: float = 1.0
    """Douglas-Peucker tolerance in pixels when a mask becomes polygons."""
    polygon_min_area: float = 8.0
    """Parts and holes smaller than this many pixels are dropped from polygons."""
    max_prompts_per_call: int = 64
    """Prompts decoded together in one mask-decoder call at most (bounds decoder memory on large requests); on the
    CPU calls are smaller still, see `segment.CPU_DECODER_CALL_BYTES`."""
    refine_memory_objects: int = 256
    """Objects whose last logits are kept for click refinement."""
    output_type: str = "segmentation"
    """Batch jobs (predict_items / predict_dataset): `segmentation` (binary masks), `polygon`, or `both`."""
    replace_boxes: bool = False
    """Batch jobs: delete each source box (on videos, each tracked box, polygon or mask) once its results are
    uploaded (default: keep the sources)."""
    no_prompts: str = "skip"
    """Batch jobs, images without boxes: `skip` (reported) or `propose` (automatic mask proposals). Videos without
    boxes, polygons or masks are always skipped (reported)."""
    video_max_frames: int = 0
    """Batch jobs on videos: frames tracked each way from an annotation's outermost drawn frames, that frame
    included (0 = the whole video). Frames between its drawn frames are always tracked."""
    proposal_points_per_side: int = ProposalSettings.points_per_side
    """Proposals: a grid of n x n single clicks."""
    proposal_points_per_batch: int = ProposalSettings.points_per_batch
    """Proposals: clicks decoded per batch."""
    proposal_pred_iou_thresh: float = ProposalSettings.pred_iou_thresh
    """Proposals: keep masks whose predicted IoU is above this."""
    proposal_stability_score_thresh: float = ProposalSettings.stability_score_thresh
    """Proposals: keep masks whose stability score (IoU of the mask at logit +-offset) is at least this."""
    proposal_stability_offset: float = ProposalSettings.stability_offset
    """Proposals: the logit offset of the stability score."""
    proposal_min_mask_area: int = ProposalSettings.min_mask_area
    """Proposals: drop masks with fewer pixels."""
    proposal_nms_iou_thresh: float = ProposalSettings.nms_iou_thresh
    """Proposals: a mask overlapping a better one by more than this IoU is a duplicate."""
    proposal_max_proposals: int = ProposalSettings.max_proposals
    """Proposals: at most this many per image (0 = no cap)."""

    _CHOICES = {"output_type": ("segmentation", "polygon", "both"), "no_prompts": ("skip", "propose")}
    # The least value of a number (0 where not listed): mask_threshold is a logit, any finite value.
    _MINIMUM = {"mask_threshold": -math.inf, "max_prompts_per_call": 1}
    _PROPOSAL_PREFIX = "proposal_"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "Settings":
        """Settings from a model configuration: defaults for missing keys, a clear error for a bad value."""
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields) - _PLATFORM_KEYS)
        if unknown:
            log.warning("ignoring unknown configuration keys: %s", ", ".join(unknown))
        # the proposal keys are read (and checked) by ProposalSettings, with its own ranges
        kwargs = {cls._PROPOSAL_PREFIX + name: value for name, value in
                  ProposalSettings.from_mapping(values, prefix=cls._PROPOSAL_PREFIX).as_dict().items()}
        for name, field in fields.items():
            if name not in values or values[name] is None or name in kwargs:
                continue
            value = values[name]
            default = field.default
            try:
                if isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise ValueError("expected true or false")
                elif isinstance(default, (int, float)):
                    value = parse_number(value, integer=isinstance(default, int))
                    least = cls._MINIMUM.get(name, 0)
                    if value < least:
                        raise ValueError("must not be negative" if least == 0 else f"must be at least {least}")
                else:
                    value = str(value)
            except (TypeError, ValueError) as error:
                raise InputError(f"configuration key {name!r} has a bad value {values[name]!r}: {error}") from None
            kwargs[name] = value
        for name, allowed in cls._CHOICES.items():
            if name in kwargs and kwargs[name] not in allowed:
                raise InputError(f"configuration key {name!r} is {kwargs[name]!r}; expected one of {', '.join(allowed)}")
        return cls(**kwargs)

    def proposals(self) -> ProposalSettings:
        return ProposalSettings.from_mapping(self.as_dict(), prefix="proposal_")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_at_least(raw: Any, least: float = -math.inf) -> float:
    """A finite number (strings of numbers too) not below `least`; ValueError for anything else."""
    try:
        number = parse_number(raw, integer=False)
    except (TypeError, ValueError):
        number = math.nan
    if not number >= least:  # NaN too
        raise ValueError(f"expected a finite number >= {least:g}, got {raw!r}")
    return number


def parse_number(raw: Any, integer: bool) -> int | float:
    """A configuration number (strings of numbers too): finite, and whole where the key is an integer."""
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    number = float(raw)
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    if integer:
        if not number.is_integer():
            raise ValueError("expected a whole number")
        return int(number)
    return number
