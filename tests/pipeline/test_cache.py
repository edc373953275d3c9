"""open_cache: datasets and stores of a cache root through one object; a wrong path is a clear error."""

from __future__ import annotations

import pytest

from sak.manifests.errors import SakError
from sak.pipeline.cache import open_cache
from sak.pipeline.store.feature_store import FeatureStore


def test_open_cache_lists_datasets_and_stores(demo_cache, st) -> None:
    cache_path, root = demo_cache
    cache = open_cache(cache_path)
    assert cache.datasets() == ["nyud"] and cache.stores() == []
    ds = cache.dataset("nyud")
    assert ds.name == "nyud" and ds.root == root.resolve() and len(ds) == 12
    store = FeatureStore.create(cache_path, st.make_spec())
    assert [s.name for s in cache.stores()] == [store.name]
    assert cache.store("test:tiny").name == store.name  # by teacher name
    assert cache.store(store.name[:8]).read_only


def test_open_cache_refuses_an_empty_or_missing_folder(tmp_path) -> None:
    with pytest.raises(SakError, match="holds no indexed dataset"):
        open_cache(tmp_path / "nope")
    with pytest.raises(SakError, match="sak-cache index <images> --cache"):
        open_cache(tmp_path)
