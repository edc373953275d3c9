"""Issue 15 item 1: a sample's task loss covers only the tasks it is labelled for.

A dataset without depth never contributes to the depth loss: on a batch with no depth label the depth
head's gradients are exactly zero (and non-zero once one sample has a depth label); a head named apart
from its task (``semseg_pascal``) gets its task's loss and weight; a task's loss is the mean over the
labelled samples only, exactly.
"""

from __future__ import annotations

import pytest
import torch

from sak.pipeline.tasks import get_task
from sak.student.data.cached import Batch, empty_label
from sak.student.model.config import StudentConfig, TaskSpec, TeacherTarget
from sak.student.model.student import SAKStudent
from sak.student.train.trainer import compute_losses, head_losses

SIZE = (32, 32)
KINDS = {"semseg": "semseg", "depth": "depth", "semseg_pascal": "semseg"}


@pytest.fixture(scope="module")
def student() -> SAKStudent:
    cfg = StudentConfig.for_backbone("test_vit", img_size=SIZE, teachers=(TeacherTarget(name="a", width=8),),
                                     tasks=(TaskSpec(name="semseg", channels=5), TaskSpec(name="depth", channels=1),
                                            TaskSpec(name="semseg_pascal", channels=3, kind="semseg")))
    torch.manual_seed(0)
    return SAKStudent(cfg).train()


def _batch(depth_mask: list[bool]) -> Batch:
    g = torch.Generator().manual_seed(0)
    b = len(depth_mask)
    depth = torch.stack([torch.rand(1, *SIZE, generator=g) + 0.5 if m else empty_label("depth", SIZE)
                         for m in depth_mask])
    return Batch(image=torch.randn(b, 3, *SIZE, generator=g),
                 labels={"semseg": torch.randint(0, 5, (b, *SIZE), generator=g), "depth": depth,
                         "semseg_pascal": torch.randint(0, 3, (b, *SIZE), generator=g)},
                 masks={"semseg": torch.ones(b, dtype=torch.bool), "depth": torch.tensor(depth_mask),
                        "semseg_pascal": torch.tensor([not m for m in depth_mask])},
                 targets={}, sample_ids=[str(i) for i in range(b)])


def _grads(student: SAKStudent, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    student.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the routers' gate noise
    out = student(batch.image, distill=False)
    total, parts = compute_losses(out, batch, {}, stage="multitask", alpha=1.0, stats=None, kinds=KINDS)
    total.backward()
    return {n: p.grad for n, p in student.named_parameters() if n.startswith("heads.depth.")}, parts


def test_the_depth_head_gets_exactly_zero_gradient_without_depth_labels(student) -> None:
    grads, parts = _grads(student, _batch([False, False, False]))
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads.values())
    assert parts["task/depth"].item() == 0.0 and parts["task/semseg_pascal"].item() > 0
    grads, parts = _grads(student, _batch([True, False, False]))
    assert any(torch.count_nonzero(g) > 0 for g in grads.values()) and parts["task/depth"].item() > 0


def test_a_task_loss_is_the_mean_over_its_labelled_samples_only(student) -> None:
    batch = _batch([True, False, True])
    student.eval()  # no gate noise: the same forward for the batch and its labelled part
    try:
        with torch.no_grad():
            out = student(batch.image, distill=False)
            _, parts = compute_losses(out, batch, {}, stage="multitask", alpha=1.0, stats=None, kinds=KINDS)
        keep = batch.masks["depth"]
        depth = get_task("depth")
        expected = depth.loss_weight * depth.loss(out.tasks["depth"][keep].float(), batch.labels["depth"][keep])
        assert parts["task/depth"].item() == expected.item()
        pascal = get_task("semseg").loss(out.tasks["semseg_pascal"][~keep].float(), batch.labels["semseg_pascal"][~keep])
        assert parts["task/semseg_pascal"].item() == (get_task("semseg").loss_weight * pascal).item()
    finally:
        student.train()


def test_heads_named_as_their_task_keep_the_registered_losses() -> None:
    assert head_losses({"semseg": "semseg", "depth": "depth"}) == {} and head_losses(None) == {}
    kw = head_losses(KINDS)
    assert kw["weights"] == {"semseg": 1.0, "depth": 1.0, "semseg_pascal": 1.0}
    assert kw["loss_fns"]["semseg_pascal"] is get_task("semseg").loss
