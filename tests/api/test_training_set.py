"""``sak.student.training_set``: one call from a cache to a torch Dataset (issue 16 item 10); the README example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import sak.pipeline
import sak.student
from sak.manifests.errors import SakError


@pytest.fixture()
def tiny_cache(demo_cache) -> Path:
    cache, _ = demo_cache
    sak.pipeline.extract(sak.pipeline.ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True,
                                                    device="cpu", batch_size=16, segment_size=8, io_threads=1))
    return cache


def test_training_set_is_a_torch_dataset_of_fits_samples(tiny_cache: Path) -> None:
    data = sak.student.training_set(tiny_cache, dataset="nyud", teachers=["tiny"], split="train")
    assert isinstance(data, Dataset)
    ds = sak.pipeline.open_cache(tiny_cache).dataset("nyud")
    n_train = sum(r["split"] == "train" for r in ds.ok_rows())
    assert len(data) == n_train == data.coverage.items
    assert (data.teachers, data.img_size, data.tasks) == (("tiny",), (64, 80), tuple(ds.tasks))
    store = data.stores[0]
    assert store.path == sak.pipeline.open_cache(tiny_cache).store("test:tiny").path
    sample = data[0]
    assert sorted(sample) == ["image", "labels", "masks", "sample_id", "targets"]
    assert sample["image"].shape == (3, 64, 80) and sample["image"].dtype == torch.float32
    assert [t.shape for t in sample["targets"]["tiny"]] == [(32, 8, 10)] * len(store.spec.layers)
    assert sample["labels"]["semseg"].shape == (64, 80) and sample["labels"]["semseg"].dtype == torch.int64
    assert sample["masks"] == {t: True for t in ds.tasks}
    with pytest.raises(IndexError):
        data[len(data)]
    # the same samples as the library's own loader path: the stored targets of that item
    item = data.data.items[0]
    want = store.read_sample(item.row["sha256"])
    assert all(torch.equal(got, torch.from_numpy(want[layer]).permute(2, 0, 1).float())
               for got, layer in zip(sample["targets"]["tiny"], store.spec.layers, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_the_default_dataloader_batches_it(tiny_cache: Path, workers: int) -> None:
    data = sak.student.training_set(str(tiny_cache))  # defaults: the only dataset, every store covering train
    batches = list(DataLoader(data, batch_size=3, num_workers=workers))
    assert [b["image"].shape[0] for b in batches] == [3] * (len(data) // 3) + ([len(data) % 3] if len(data) % 3 else [])
    first = batches[0]
    assert first["image"].shape == (3, 3, 64, 80) and first["labels"]["depth"].shape == (3, 1, 64, 80)
    assert [t.shape for t in first["targets"]["tiny"]] == [(3, 32, 8, 10)] * 4
    assert first["sample_id"] == [data[i]["sample_id"] for i in range(3)]
    assert torch.equal(first["image"][1], data[1]["image"])


def test_training_set_refuses_with_the_fix(tiny_cache: Path) -> None:
    with pytest.raises(SakError, match=re.escape(f"sak-cache extract -t sam -d nyud --cache {tiny_cache}")):
        sak.student.training_set(tiny_cache, teachers=["sam"])
    with pytest.raises(SakError, match="was extracted for a student input of 64x80, but this run trains at 32x32"):
        sak.student.training_set(tiny_cache, img_size=(32, 32))


def test_readme_example_runs(tiny_cache: Path, readme: str, monkeypatch, capsys) -> None:
    section = readme.split("### A torch dataset in one call", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 4 <= len([ln for ln in code.splitlines() if ln.strip()]) <= 6
    monkeypatch.chdir(tiny_cache.parent)  # the example's "cache"
    exec(compile(code, "README example", "exec"), {})
    printed = capsys.readouterr().out
    assert "('tiny',) torch.Size([4, 3, 64, 80]) [torch.Size([4, 32, 8, 10])," in printed
