"""One thread-safe, byte-bounded LRU cache of image features, shared by every image function."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch


@dataclass(frozen=True)
class ImageFeatures:
    """What the SAM 2 mask decoder needs of one image.

    image_embed: (1, C, h, w) at stride 16 of the model input, no-memory embedding already added.
    high_res: the stride-4 and stride-8 maps, (1, C/8, 4h, 4w) and (1, C/4, 2h, 2w).
    orig_hw: the image's own (height, width) in pixels; prompts are given in these coordinates.
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, ...]
    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.image_embed, *self.high_res))


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    value: ImageFeatures | None = None
    error: BaseException | None = None


class EmbeddingCache:
    """Least-recently-used image features, bounded by their size in bytes.

    Keys identify an image version (e.g. model, item id, a digest of its bytes): an edited image gets a new key and is
    encoded again. When several threads ask for the same missing key at once, one encodes and the others wait for
    its result; an encoder error reaches every waiter and nothing is cached.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, ImageFeatures] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get_or_compute(self, key: Hashable, compute: Callable[[], ImageFeatures]) -> ImageFeatures:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return self._entries[key]
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
                self.stats.misses += 1
            else:
                self.stats.hits += 1
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise _own_copy(pending.error) from pending.error
            return pending.value
        try:
            pending.value = compute()
        except BaseException as error:
            pending.error = error
            raise
        finally:
            try:
                with self._lock:
                    del self._pending[key]
                    if pending.value is not None:
                        self._insert(key, pending.value)
            finally:
                pending.done.set()  # whatever happens, no waiter waits forever
        return pending.value

    def _insert(self, key: Hashable, value: ImageFeatures) -> None:
        if value.nbytes > self.max_bytes:
            return  # larger than the whole cache: serve it, keep nothing
        if key in self._entries:
            self._bytes -= self._entries.pop(key).nbytes
        self._entries[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.stats.evictions += 1

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _own_copy(error: BaseException) -> BaseException:
    """The encoding error for one waiting request: raising the shared object in every waiter would pile every
    request's frames onto its one traceback (and keep them alive)."""
    try:
        return copy.copy(error).with_traceback(None)
    except Exception:  # an exception type that cannot be copied
        return RuntimeError(f"encoding failed in another request: {error!r}")
