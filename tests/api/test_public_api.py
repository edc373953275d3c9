"""The curated public API: every exported name exists and is documented; the README's Python example runs."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import torch

import sak.pipeline
import sak.student
from sak.manifests.errors import SakError
from sak.student.evaluate.evaluator import export_run
from sak.student.runs.rundir import RunDir


@pytest.mark.parametrize("package", [sak.pipeline, sak.student], ids=["pipeline", "student"])
def test_every_public_name_is_documented(package) -> None:
    assert package.__version__ == version("sak")
    assert (package.__doc__ or "").count("\n") > 5  # the package docstring shows how to use it
    for name in package.__all__:
        if name == "__version__":
            continue
        obj = getattr(package, name)
        assert (obj.__doc__ or "").strip(), f"{package.__name__}.{name} has no docstring"


def test_readme_python_example(demo_cache, tmp_path: Path) -> None:
    cache_path, _ = demo_cache
    report = sak.pipeline.extract(sak.pipeline.ExtractConfig(
        cache=str(cache_path), teachers=("test:tiny",), random_init=True, device="cpu", batch_size=16, segment_size=8))
    cache = sak.pipeline.open_cache(cache_path)
    store = cache.store("test:tiny")
    assert store.path == report.teachers[0].store and cache.datasets() == ["nyud"]
    sha = store.commits().column("image_sha256")[0].as_py()
    assert {k: v.shape for k, v in store.read_sample(sha).items()} == {i: (8, 10, 32) for i in store.spec.layers}  # student protocol at 64x80

    run = tmp_path / "run"
    result = sak.student.fit(sak.student.TrainConfig(cache=str(cache_path), backbone="test_vit", iters=2, batch_size=4,
                                                     ckpt_every=0, workers=1, out=str(run)))
    assert result.steps == 2
    metrics = sak.student.evaluate(run)["metrics"]
    assert metrics == pytest.approx(result.metrics, rel=1e-5)

    model = sak.student.load_student(run)
    assert not model.training
    ckpt = RunDir(run).load_checkpoint().weights
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt.items())

    exported = tmp_path / "semseg.safetensors"
    export_run(run, "semseg", exported, device="cpu", threshold=0.0)
    sub = sak.student.load_student(exported)
    assert sub.cfg.task_names == ("semseg",)


def test_load_student_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(SakError, match="not a training run"):
        sak.student.load_student(tmp_path)
    with pytest.raises(SakError, match="does not exist"):
        sak.student.load_student(tmp_path / "missing.safetensors")
