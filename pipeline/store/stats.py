"""Per-channel running statistics of stored feature maps (count, mean, M2 in float64).

Every segment writer accumulates one :class:`LayerStats` per layer over all spatial
positions of all its samples (the values as stored, so fp16 rounding is included),
and writes them to ``stats/<segment_id>.json`` before its commit record. A store's
statistics are the merge of its committed segments (Chan et al.'s parallel update),
which equals the mean/variance over all committed rows computed in one pass.

The JSON file is plain: ``{"format": 1, "segment_id": ..., "layers": {"<i>": {"count": n,
"mean": [...], "m2": [...]}}}``; Python writes floats with ``repr`` so float64 values
round-trip exactly. Statistics of an int8 store are those of the dequantized values (what
training reads).

Segments of quantized stores also record the fidelity measured when they were written
(optional key, absent in float stores and older files; readers of format 1 ignore it):
``"fidelity": {"<i>": {"raw": {"count": n, "total": sum of per-token cosines, "min": ...},
"std": {...}}}``: cosine between the stored and the teacher's values per token, raw and after
standardizing channels (see :func:`.quant.token_cosines`). Sums merge across segments exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ...manifests.errors import StoreCorrupt

STATS_FORMAT = 1


@dataclass(frozen=True)
class LayerStats:
    """Streaming per-channel statistics; ``var`` is the population variance (M2 / count)."""

    count: int
    mean: np.ndarray  # (C,) float64
    m2: np.ndarray  # (C,) float64: sum of squared deviations from the mean

    @classmethod
    def empty(cls, channels: int) -> LayerStats:
        return cls(0, np.zeros(channels, np.float64), np.zeros(channels, np.float64))

    @classmethod
    def from_values(cls, values: np.ndarray) -> LayerStats:
        """Statistics of an array whose last axis is the channel axis (all other axes are observations)."""
        x = np.asarray(values).reshape(-1, values.shape[-1]).astype(np.float64)
        if x.shape[0] == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        m2 = np.square(x - mean).sum(axis=0)
        return cls(int(x.shape[0]), mean, m2)

    @classmethod
    def from_blocks(cls, values: np.ndarray, max_elements: int = 1 << 22) -> LayerStats:
        """Like :meth:`from_values` for a large (n, ..., C) array, in float64 pieces of at most ``max_elements``."""
        n = values.shape[0]
        per_sample = max(1, int(np.prod(values.shape[1:])))
        step = max(1, max_elements // per_sample)
        total = cls.empty(values.shape[-1])
        for i in range(0, n, step):
            total = total.merge(cls.from_values(values[i : i + step]))
        return total

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def var(self) -> np.ndarray:
        if self.count == 0:
            return np.full(self.channels, np.nan)
        return self.m2 / self.count

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def merge(self, other: LayerStats) -> LayerStats:
        """Chan's parallel combination: statistics of the union of both sets of observations."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + np.square(delta) * (self.count * other.count / n)
        return LayerStats(n, mean, m2)

    def subtract(self, other: LayerStats) -> LayerStats:
        """Statistics with the observations of ``other`` (a subset of ours) removed: inverse of :meth:`merge`."""
        if other.count == 0:
            return self
        n = self.count - other.count
        if n < 0:
            raise ValueError(f"cannot remove {other.count} observations from {self.count}")
        if n == 0:
            return LayerStats.empty(self.channels)
        mean = (self.mean * self.count - other.mean * other.count) / n
        delta = other.mean - mean
        m2 = self.m2 - other.m2 - np.square(delta) * (n * other.count / self.count)
        return LayerStats(n, mean, np.maximum(m2, 0.0))

    def to_dict(self) -> dict:
        return {"count": self.count, "mean": [float(v) for v in self.mean], "m2": [float(v) for v in self.m2]}

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerStats:
        return cls(int(data["count"]), np.asarray(data["mean"], np.float64), np.asarray(data["m2"], np.float64))


def merge_all(items: list[LayerStats], channels: int) -> LayerStats:
    total = LayerStats.empty(channels)
    for item in items:
        total = total.merge(item)
    return total


@dataclass(frozen=True)
class FidelitySum:
    """Sum, count and minimum of per-token cosines of one layer and kind (``raw`` or ``std``)."""

    count: int
    total: float
    minimum: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def merge(self, other: FidelitySum) -> FidelitySum:
        return FidelitySum(self.count + other.count, self.total + other.total, min(self.minimum, other.minimum))

    def to_dict(self) -> dict:
        return {"count": self.count, "total": float(self.total), "min": float(self.minimum)}

    @classmethod
    def from_dict(cls, data: Mapping) -> FidelitySum:
        return cls(int(data["count"]), float(data["total"]), float(data["min"]))


#: {layer: {"raw" | "std": FidelitySum}}
Fidelity = dict[int, dict[str, FidelitySum]]
FIDELITY_KINDS = ("raw", "std")


def merge_fidelity(items: Iterable[Fidelity]) -> Fidelity:
    total: Fidelity = {}
    for item in items:
        for layer, kinds in item.items():
            mine = total.setdefault(layer, {})
            for kind, f in kinds.items():
                mine[kind] = mine[kind].merge(f) if kind in mine else f
    return total


def fidelity_summary(fidelity: Fidelity) -> dict[int, dict[str, dict[str, float]]]:
    """{layer: {kind: {"mean", "min", "count"}}} in layer order."""
    return {layer: {k: {"mean": f.mean, "min": f.minimum, "count": f.count} for k, f in sorted(kinds.items())}
            for layer, kinds in sorted(fidelity.items())}


def stats_to_json(segment_id: str, layers: Mapping[int, LayerStats], fidelity: Fidelity | None = None) -> str:
    data: dict = {"format": STATS_FORMAT, "segment_id": segment_id, "layers": {str(k): v.to_dict() for k, v in sorted(layers.items())}}
    if fidelity:
        data["fidelity"] = {str(k): {kind: f.to_dict() for kind, f in v.items()} for k, v in sorted(fidelity.items())}
    return json.dumps(data, sort_keys=True)


def fidelity_from_json(text: str, where: str) -> Fidelity:
    """The fidelity record of one segment's statistics file ({} when it has none)."""
    try:
        data = json.loads(text).get("fidelity") or {}
        return {int(k): {kind: FidelitySum.from_dict(f) for kind, f in v.items()} for k, v in data.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreCorrupt(f"{where}: unreadable fidelity record ({exc}). Run `sak-cache verify` on the store.") from exc


def stats_from_json(text: str, where: str) -> dict[int, LayerStats]:
    try:
        data = json.loads(text)
        if data.get("format") != STATS_FORMAT:
            raise StoreCorrupt(
                f"{where}: statistics format {data.get('format')!r} is not supported (expected {STATS_FORMAT}); upgrade sak."
            )
        return {int(k): LayerStats.from_dict(v) for k, v in data["layers"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreCorrupt(f"{where}: unreadable statistics file ({exc}). Run `sak-cache verify` on the store.") from exc
