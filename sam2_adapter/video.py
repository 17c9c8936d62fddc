"""Video tracking with SAM 2: the public API in one import.

    from sam2_adapter.video import VideoTracker, open_video

Frame sources live in `sam2_adapter.frames` (decoding on demand, read-ahead, seeking, HTTP streams), the tracker in
`sam2_adapter.tracker` (prompts, corrections, propagation, presence). See those modules for the details.
"""

from sam2_adapter.frames import (
    Frame,
    FrameReader,
    FrameSource,
    HttpVideoSource,
    ImageFolderSource,
    VideoFileSource,
    open_video,
    redact_url,
)
from sam2_adapter.tracker import (
    DIRECTIONS,
    PROMPT_TYPES,
    FrameResult,
    ObjectMask,
    PropagationReport,
    VideoTracker,
    polygon_mask,
)

__all__ = [
    "DIRECTIONS",
    "PROMPT_TYPES",
    "Frame",
    "FrameReader",
    "FrameResult",
    "FrameSource",
    "HttpVideoSource",
    "ImageFolderSource",
    "ObjectMask",
    "PropagationReport",
    "VideoFileSource",
    "VideoTracker",
    "open_video",
    "polygon_mask",
    "redact_url",
]
