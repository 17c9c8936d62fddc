"""The shared image-feature cache: bounded in bytes, one encode per image version, safe across threads."""

import threading
import time

import pytest
import torch

from sam2_adapter.embeddings import EmbeddingCache, ImageFeatures


def features(mib: float) -> ImageFeatures:
    n = int(mib * 1024 * 1024 / 4)
    return ImageFeatures(torch.zeros(n), (), (10, 10))


def test_evicts_least_recently_used_by_bytes():
    cache = EmbeddingCache(max_bytes=3 * 1024 * 1024)
    for key in "abc":
        cache.get_or_compute(key, lambda: features(1))
    cache.get_or_compute("a", lambda: pytest.fail("a is cached"))  # a is now the most recent
    cache.get_or_compute("d", lambda: features(1))
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "abcd" if k in cache}
    assert cache.nbytes <= cache.max_bytes
    assert cache.stats.evictions == 1


def test_an_entry_larger_than_the_cache_is_served_not_kept():
    cache = EmbeddingCache(max_bytes=1024)
    value = cache.get_or_compute("big", lambda: features(1))
    assert value.image_embed.numel() > 0 and "big" not in cache and cache.nbytes == 0


def test_new_version_of_an_item_is_encoded_again():
    cache = EmbeddingCache(max_bytes=1 << 30)
    calls = []
    for version in ("2026-01-01", "2026-01-01", "2026-02-02"):
        cache.get_or_compute(("model", "item-1", version), lambda: calls.append(version) or features(0.1))
    assert calls == ["2026-01-01", "2026-02-02"]


def test_concurrent_first_requests_encode_once():
    cache = EmbeddingCache(max_bytes=1 << 30)
    calls, barrier = [], threading.Barrier(8)

    def slow_encode():
        calls.append(1)
        time.sleep(0.2)
        return features(0.1)

    def ask():
        barrier.wait()
        results.append(cache.get_or_compute("same-image", slow_encode))

    results = []
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_an_encoder_error_reaches_every_waiter_and_is_not_cached():
    cache = EmbeddingCache(max_bytes=1 << 30)
    barrier, errors = threading.Barrier(4), []

    def failing():
        time.sleep(0.1)
        raise RuntimeError("decoder exploded")

    def ask():
        barrier.wait()
        try:
            cache.get_or_compute("x", failing)
        except RuntimeError as error:
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and "x" not in cache
    assert all(str(e) == "decoder exploded" for e in errors)
    assert len({id(e) for e in errors}) == 4, "each request its own error, not one traceback piling up all four"
    assert cache.get_or_compute("x", lambda: features(0.1)) is not None
