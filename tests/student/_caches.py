"""Helpers for the trainer tests: a demo cache with test-teacher stores (imported by test_*.py here)."""

from __future__ import annotations

from pathlib import Path

from sak.pipeline.data.datasets import index_dataset, write_dataset_index
from sak.pipeline.store.feature_store import FeatureStore


def extract_store(cache: Path, teacher: str = "test:tiny", **kw) -> FeatureStore:
    """Extract a random-init test teacher over every indexed dataset of ``cache`` (segments of 8).

    The trainer tests' shapes and golden numbers were written for the native protocol (8x8 grids); it
    stays their default here. Pass ``input_protocol="student"`` (the extract default) for the official one.
    """
    from sak.pipeline.extract.job import ExtractConfig, extract

    kw.setdefault("input_protocol", "native")
    rep = extract(ExtractConfig(cache=str(cache), teachers=(teacher,), random_init=True, device="cpu", batch_size=16,
                                segment_size=8, io_threads=1, **kw))
    return FeatureStore.open(rep.teachers[0].store)


def indexed_cache(root: Path, data: Path) -> Path:
    """``root/cache`` with the dataset at ``data`` indexed as "nyud"."""
    cache = root / "cache"
    write_dataset_index(cache, "nyud", index_dataset(data, name="nyud", fmt="nyud", workers=1), data)
    return cache
