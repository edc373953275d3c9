"""Cached targets vs online teachers: same seed, same batches, same losses step by step (fp16 tolerance).

Cases: the native protocol without and with augmented views, and the official protocol ("student":
teachers built at the student's 64x80 input and fed its own tensor, ``models/mt_distiller.py:72-83``)
with augmented views replayed exactly; and an int8 store (codes + scales of the default quant mode,
dequantized on the training device), whose losses agree within the same tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _caches import extract_store, indexed_cache

from sak.pipeline.store import quant
from sak.student.runs.config import TrainConfig
from sak.student.train.trainer import fit

STEPS = 3


@pytest.fixture(scope="module", params=["none", "views2", "student-views2", "int8"])
def cache(request, tmp_path_factory, demo_nyud) -> Path:
    cache = indexed_cache(tmp_path_factory.mktemp(request.param), demo_nyud)
    if request.param == "none":
        extract_store(cache)
    elif request.param == "int8":
        store = extract_store(cache, dtype="int8")
        assert store.spec.quant == "token-channel-offset" and store.verify().ok
        assert min(v["std"]["mean"] for v in store.fidelity().values()) >= 0.9999
    elif request.param == "views2":
        extract_store(cache, views=2, aug="sak")
    else:
        store = extract_store(cache, views=2, aug="sak", input_protocol="student", img_size=(64, 80))
        assert (store.spec.input_protocol, store.spec.img_size, store.spec.grid) == ("student", (64, 80), (8, 10))
    return cache


def _losses(cache: Path, out: Path, online: bool) -> list[dict[str, float]]:
    fit(TrainConfig(cache=str(cache), backbone="test_vit", iters=STEPS, batch_size=4, lr=1e-3, block_size=4,
                    window=2, workers=0, log_every=1, val_split=None, online=online, out=str(out)))
    return [json.loads(line)["losses"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cached_and_online_losses_agree_step_by_step(cache, tmp_path) -> None:
    cached = _losses(cache, tmp_path / "cached", online=False)
    online = _losses(cache, tmp_path / "online", online=True)
    assert len(cached) == len(online) == STEPS
    for step, (a, b) in enumerate(zip(cached, online, strict=True), start=1):
        assert set(a) == set(b)
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-2), f"step {step} {key}"
    # the task losses see identical images and labels; only the fp16 rounding of the targets differs
    assert online[0]["task"] == pytest.approx(cached[0]["task"], rel=1e-6)


def test_online_targets_are_the_cached_ones_before_fp16_rounding(cache) -> None:
    import torch

    from sak.pipeline.data.datasets import open_dataset
    from sak.student.data.cached import CachedTargets
    from sak.student.data.online import OnlineTeachers
    from sak.student.data.stores import select_stores

    ds = open_dataset(cache, "nyud")
    stores = select_stores(str(cache), ds)
    teachers = OnlineTeachers(stores, ("tiny",))
    cached = CachedTargets(ds, stores, "train", (64, 80))
    live = CachedTargets(ds, stores, "train", (64, 80), read_targets=False, teacher_preprocess=teachers.preprocess)
    sampler = cached.sampler(block_size=4, seed=0)
    with cached.batches(4, sampler, workers=0) as a_it, live.batches(4, sampler, workers=0) as b_it:
        a, b = next(a_it), next(b_it)
    assert a.sample_ids == b.sample_ids and torch.equal(a.image, b.image) and b.targets == {}
    student = stores[0].spec.input_protocol == "student"
    # native: the teacher's own 64x64 square; student: the student's own tensor at 64x80
    assert tuple(b.teacher_inputs["tiny"].shape) == ((4, 3, 64, 80) if student else (4, 3, 64, 64))
    if student:
        assert torch.equal(b.teacher_inputs["tiny"], a.image)
    online = teachers(b)["tiny"]
    stored_maps = a.targets["tiny"].decode()
    assert len(online) == len(stored_maps) == 4
    for stored, live_map in zip(stored_maps, online, strict=True):
        if stores[0].spec.dtype == "int8":  # exactly the codes and scales of the teacher's map (same memory layout: the
            # channel means are reductions, equal to the last bit only in the same summation order), dequantized
            block = quant.quantize(live_map.permute(0, 2, 3, 1).contiguous(), stores[0].spec.quant)
            expected = torch.from_numpy(quant.dequantize_block(block.cpu_numpy())).permute(0, 3, 1, 2)
            assert torch.equal(stored, expected)
        else:
            assert torch.equal(stored, live_map.half().float())  # the store keeps exactly the fp16 rounding


def test_online_rebuilds_a_file_weights_teacher_only_from_that_file(tmp_path, demo_nyud) -> None:
    from safetensors.torch import save_file

    from sak.manifests.errors import TeacherUnavailable
    from sak.pipeline.extract.job import ExtractConfig, extract
    from sak.pipeline.teachers.registry import create_teacher

    weights = tmp_path / "tiny.safetensors"
    model = create_teacher("test:tiny", random_init=True, seed=5).model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    cache = indexed_cache(tmp_path, demo_nyud)
    extract(ExtractConfig(cache=str(cache), teachers=("test:tiny",), weights=(str(weights),), device="cpu"))
    cfg = dict(cache=str(cache), backbone="test_vit", iters=1, batch_size=4, workers=0, val_split=None, online=True)
    with pytest.raises(TeacherUnavailable, match="pass --teacher-weights tiny=/path/to/weights.safetensors"):
        fit(TrainConfig(**cfg, out=str(tmp_path / "a")))
    res = fit(TrainConfig(**cfg, teacher_weights=(f"tiny={weights}",), out=str(tmp_path / "b")))
    assert res.steps == 1 and res.losses["distill/tiny"] > 0


def test_training_refuses_a_store_of_another_student_size_naming_the_extract_that_fits(tmp_path, demo_nyud) -> None:
    from sak.manifests.errors import SpecMismatch

    cache = indexed_cache(tmp_path, demo_nyud)
    extract_store(cache, input_protocol="student", img_size=(64, 80))
    cfg = dict(cache=str(cache), backbone="test_vit", iters=1, batch_size=4, workers=0, val_split=None)
    with pytest.raises(SpecMismatch, match=r"extracted for a student input of 64x80, but this run trains at 64x64.*"
                       r"sak-cache extract --teacher test:tiny --dataset nyud .*--img-size 64x64 --input-protocol student"):
        fit(TrainConfig(**cfg, img_size=(64, 64), out=str(tmp_path / "a")))
    res = fit(TrainConfig(**cfg, out=str(tmp_path / "b")))  # the run's size defaults to the store's
    assert res.steps == 1
