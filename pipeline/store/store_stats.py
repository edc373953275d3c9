"""A store's statistics as training reads them: per-segment JSON files merged over the committed, deduplicated rows.

``stats/<segment>.json`` holds one segment's per-layer count / mean / M2 (float64) and, for int8 stores,
the fidelity measured at extraction. :func:`merged_stats` merges them over the segments holding ok rows
and subtracts the rows dedup hides (a sample committed twice), so the statistics describe exactly the
rows of ``FeatureStore.commits()``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.errors import StoreCorrupt
from ...manifests.schemas import STATUS_OK
from ..storage import Location
from .commits import dropped_ok_rows, merge_stacked, rows_by_segment
from .stats import Fidelity, LayerStats, fidelity_from_json, stats_from_json


def merged_stats(store, raw: pa.Table, parsed_cache: dict[str, dict[int, LayerStats]]) -> dict[int, LayerStats]:
    """Per-layer statistics over the ok rows of ``raw`` (a store's raw commits), deduplicated.

    ``parsed_cache``: segment id -> its parsed statistics file (files never change once committed).
    """
    ok_segments = sorted(pc.unique(raw.filter(pc.equal(raw.column("status"), STATUS_OK)).column("segment_id")).to_pylist())
    per_layer: dict[int, list[LayerStats]] = {i: [] for i in store.spec.layers}
    for seg in ok_segments:
        parsed = parsed_cache.get(seg)
        if parsed is None:
            path = store.path / "stats" / f"{seg}.json"
            if not path.exists():
                raise StoreCorrupt(f"{path} is missing for committed segment {seg}; run `sak-cache verify {store.path}`.")
            parsed = parsed_cache[seg] = stats_from_json(path.read_text(encoding="utf-8"), str(path))
        for layer, st in parsed.items():
            if layer in per_layer:
                per_layer[layer].append(st)
    totals = {i: merge_stacked(v, store.spec.width) for i, v in per_layer.items()}
    dropped = dropped_ok_rows(raw)
    if dropped.num_rows:  # duplicates from concurrent writers: remove what dedup hides
        for seg, rows in rows_by_segment(dropped).items():
            for layer, values in store.read_rows(seg, rows).items():
                for v in values:
                    totals[layer] = totals[layer].subtract(LayerStats.from_values(v))
    return totals


def segment_fidelity(store_path: Location, segment_id: str) -> Fidelity:
    """The fidelity record of one segment's statistics file ({} when it has none or no file)."""
    path = store_path / "stats" / f"{segment_id}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return fidelity_from_json(text, str(path))
