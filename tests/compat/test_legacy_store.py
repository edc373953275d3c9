"""Stores written before the package was reorganised (commit f280f66, flat modules) still read and train identically.

``tests/data/legacy_v1`` holds a ``test:tiny`` store extracted by that commit over the demo dataset
(12 images, 64x80, seed 0) and ``golden.json``: the per-step losses and val metrics of a 6-step
``fit`` from it, recorded by that commit. The dataset is procedural and bit-identical per seed, so it is
made again here; the store is used as it was written. Any change to the store format, the reader, the
join, the sampler, the student or the losses shows up as a difference here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sak.pipeline.data.datasets import index_dataset, write_dataset_index
from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.feature_store import FeatureStore
from sak.student.runs.config import TrainConfig
from sak.student.train.trainer import fit

LEGACY = Path(__file__).parent.parent / "data" / "legacy_v1"
GOLDEN = json.loads((LEGACY / "golden.json").read_text())


def _indexed_cache(root: Path, data: Path) -> Path:
    cache = root / "cache"
    write_dataset_index(cache, "nyud", index_dataset(data, name="nyud", fmt="nyud", workers=1), data)
    return cache


@pytest.fixture(scope="module")
def legacy_cache(tmp_path_factory, demo_nyud) -> Path:
    cache = _indexed_cache(tmp_path_factory.mktemp("legacy"), demo_nyud)
    shutil.copytree(LEGACY / "features" / GOLDEN["store"], cache / "features" / GOLDEN["store"])
    return cache


def test_legacy_store_equals_a_fresh_extraction_byte_for_byte(legacy_cache, demo_nyud, tmp_path) -> None:
    old = FeatureStore.open(legacy_cache / "features" / GOLDEN["store"])
    # the settings the legacy store was extracted with (tests/student/_caches.py at f280f66)
    report = extract(ExtractConfig(cache=str(_indexed_cache(tmp_path, demo_nyud)), teachers=("test:tiny",),
                                   random_init=True, device="cpu", batch_size=16, segment_size=8, io_threads=1,
                                   input_protocol="native", codec="zstd"))
    new = FeatureStore.open(report.teachers[0].store)
    assert new.name == old.name == GOLDEN["store"]  # same spec -> same spec_id
    assert old.spec == new.spec
    a, b = old.commits(), new.commits()
    assert a.num_rows == b.num_rows == 12
    old_sum = dict(zip(a.column("image_sha256").to_pylist(), a.column("checksum").to_pylist(), strict=True))
    new_sum = dict(zip(b.column("image_sha256").to_pylist(), b.column("checksum").to_pylist(), strict=True))
    assert old_sum == new_sum  # sha256 over every stored byte of every sample
    for sha in list(old_sum)[:3]:
        for layer, values in old.read_sample(sha).items():
            np.testing.assert_array_equal(values, new.read_sample(sha)[layer])


def test_training_from_a_legacy_store_reproduces_the_recorded_losses(legacy_cache, tmp_path) -> None:
    # miou="present": the mIoU convention the golden val metrics were recorded with (official is the default now)
    cfg = TrainConfig(cache=str(legacy_cache), backbone="test_vit", batch_size=4, lr=1e-3, block_size=4, window=2,
                      workers=2, log_every=1, out=str(tmp_path / "run"), iters=6, ckpt_every=0, miou="present",
                      # the options of sak before issue 12, which recorded these losses
                      standardize=True, decay_scope="matrices", schedule_style="plain", student={"gate_noise": "image"})
    result = fit(cfg)
    losses = [json.loads(line)["losses"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.coverage == GOLDEN["coverage"]
    assert len(losses) == len(GOLDEN["losses"]) == 6
    for got, want in zip(losses, GOLDEN["losses"], strict=True):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    # every recorded metric reproduced; evaluation has since added the distillation cosines (issue 15), nothing else
    for got, want in ((result.metrics, GOLDEN["metrics"]), (result.baseline, GOLDEN["baseline"])):
        assert {k: v for k, v in got.items() if k in want} == pytest.approx(want, rel=1e-6, abs=1e-7)
        assert {k for k in got if k not in want} == {f"distill/tiny/level{i}/cosine" for i in (1, 2, 3, 4)} | {
            "distill/tiny/cosine"}
