"""SAM2 behind the Dataloop platform: the core, importable without dtlpy."""

from sam2_adapter.errors import InputError

__all__ = ["InputError"]
