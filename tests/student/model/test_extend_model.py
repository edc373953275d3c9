"""Issue 15 item 3: a trained student extended with a teacher and a task keeps its old tasks' outputs bit for bit.

The ViT-Ti student of conftest (teachers a, test:tiny2, c; tasks semseg, depth, normals, edge) plays the trained
source; the extension adds teacher "d" (width 40) and task "parts" (7 classes)."""

from __future__ import annotations

import copy

import pytest
import torch

from sak.manifests.errors import ConfigError
from sak.student.model.config import StudentConfig, TaskSpec, TeacherTarget
from sak.student.model.export import export_submodel, routing_weights
from sak.student.model.student import SAKStudent
from sak.student.model.weights import HandoffError, handoff
from sak.student.runs.config import OptimConfig, TrainConfig
from sak.student.train.extend import extended_config, frozen_modules, prepare_extension, trainable_parameters
from sak.student.train.parts import build_optimizer

OLD_TASKS = ("semseg", "depth", "normals", "edge")
OLD_TEACHERS = ("a", "test:tiny2", "c")


def _extend(source: SAKStudent, *, unfreeze: bool = False) -> tuple[SAKStudent, dict]:
    cfg = extended_config(source.cfg, [TeacherTarget(name="d", width=40)], [TaskSpec(name="parts", channels=7)])
    torch.manual_seed(5)
    ext = SAKStudent(cfg)
    report = handoff(ext, source.state_dict(), source.cfg.teacher_names, teachers=cfg.teacher_names, source="src")
    assert report.kept == ["aligners.d", "heads.parts", "routers.parts", "tsap.d"]
    run = TrainConfig(cache="c", init="src", add_teachers=("d",), add_tasks=("parts",), unfreeze=unfreeze)
    start = prepare_extension(ext, run, {"init": "src", "init_kept": report.kept})
    return ext, start


def _same_old_outputs(a: SAKStudent, b: SAKStudent, x: torch.Tensor) -> bool:
    a.eval(), b.eval()
    with torch.no_grad():
        oa, ob = a(x), b(x)
    tasks = all(torch.equal(oa.tasks[t], ob.tasks[t]) and torch.equal(oa.gates[t], ob.gates[t]) for t in OLD_TASKS)
    maps = all(torch.equal(p, q) for t in OLD_TEACHERS for p, q in zip(oa.distill[t], ob.distill[t], strict=True))
    return tasks and maps


def test_extended_config_pins_old_tasks_to_their_teachers(tiny_student_cfg) -> None:
    cfg = extended_config(tiny_student_cfg, [TeacherTarget(name="d", width=40)], [TaskSpec(name="parts", channels=7)])
    assert cfg.teacher_names == ("a", "test:tiny2", "c", "d") and cfg.task_names == (*OLD_TASKS, "parts")
    assert [cfg.task_experts(t) for t in ("semseg", "parts")] == [("stem", *OLD_TEACHERS), ("stem", *OLD_TEACHERS, "d")]
    assert StudentConfig.from_dict(cfg.to_dict()) == cfg
    # a config written before the field: no "teachers" in its tasks, every teacher routed, as it meant
    old = tiny_student_cfg.to_dict()
    for task in old["tasks"]:
        del task["teachers"]
    assert StudentConfig.from_dict(old) == tiny_student_cfg
    assert tiny_student_cfg.task_experts("depth") == ("stem", *OLD_TEACHERS)
    with pytest.raises(ConfigError, match=r"already distills \['c'\]: --add-teacher takes teachers it does not have"):
        extended_config(tiny_student_cfg, [TeacherTarget(name="c", width=64)])
    with pytest.raises(ConfigError, match=r"already predicts \['depth'\]"):
        extended_config(tiny_student_cfg, tasks=[TaskSpec(name="depth", channels=1)])
    with pytest.raises(ConfigError, match="nothing to add"):
        extended_config(tiny_student_cfg)
    with pytest.raises(ConfigError, match=r"routes over teachers \['c', 'a'\], which must be some of the student's"):
        StudentConfig(teachers=tiny_student_cfg.teachers, tasks=(TaskSpec(name="x", channels=1, teachers=("c", "a")),))


def test_extension_reproduces_old_outputs_exactly_and_records_what_is_frozen(tiny_student, tiny_images) -> None:
    ext, start = _extend(tiny_student)
    assert _same_old_outputs(ext, tiny_student, tiny_images)
    with torch.no_grad():
        out = ext.eval()(tiny_images)
    assert tuple(out.tasks["parts"].shape) == (2, 7, 32, 48) and [tuple(m.shape) for m in out.distill["d"]] == [(2, 40, 2, 3)] * 4
    assert tuple(out.gates["semseg"].shape) == (2, 4, 4) and tuple(out.gates["parts"].shape) == (2, 4, 5)
    ext_record = start["extension"]
    assert ext_record["frozen"] == ["vit", "tsap.a", "tsap.test:tiny2", "tsap.c", "aligners.a", "aligners.test:tiny2",
                                    "aligners.c", *(f"routers.{t}" for t in OLD_TASKS), *(f"heads.{t}" for t in OLD_TASKS)]
    assert (ext_record["added_teachers"], ext_record["added_tasks"], ext_record["unfreeze"]) == (["d"], ["parts"], False)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, _ in trainable_parameters(ext)}
    assert trainable == {"tsap.3", "aligners.3", "routers.parts", "heads.parts"}
    assert ext_record["trainable_params"] == sum(p.numel() for _, p in trainable_parameters(ext))
    assert ext_record["trainable_params"] + ext_record["frozen_params"] == sum(p.numel() for p in ext.parameters())


def test_training_the_extension_moves_only_new_parts(tiny_student, tiny_images) -> None:
    ext, _ = _extend(tiny_student)
    opt = build_optimizer(ext, OptimConfig(stage="distill", lr=1e-2).resolved())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for _, p in trainable_parameters(ext))
    ext.train()  # the frozen parts stay in eval mode: BatchNorm statistics and gates do not move
    assert not ext.vit.training and not ext.heads["semseg"].training and not ext.routers["depth"].training
    assert ext.heads["parts"].training and ext.tsap[3].training and ext.training
    bn_before = copy.deepcopy(ext.heads["semseg"].fuse[1].state_dict())
    before = ext(tiny_images).tasks["parts"].detach().clone()
    losses = []
    for _ in range(4):
        out = ext(tiny_images)  # the old tasks are in the loss too: nothing of theirs can learn
        loss = sum(v.square().mean() for v in out.tasks.values()) + sum(m.square().mean() for m in out.distill["d"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(p.grad is None for n, p in ext.named_parameters() if not p.requires_grad)
    bn_after = ext.heads["semseg"].fuse[1].state_dict()
    assert all(torch.equal(bn_before[k], bn_after[k]) for k in bn_before)  # running stats and batch count unchanged
    assert _same_old_outputs(ext, tiny_student, tiny_images)  # bit for bit after training
    ext.train()
    assert not torch.equal(ext(tiny_images).tasks["parts"], before)  # the new head learned


def test_unfreeze_trains_the_old_parts_too(tiny_student, tiny_images) -> None:
    ext, start = _extend(tiny_student, unfreeze=True)
    assert start["extension"]["frozen"] == [] and all(p.requires_grad for p in ext.parameters())
    opt = build_optimizer(ext, OptimConfig(stage="distill", lr=1e-2).resolved())
    ext.train()
    out = ext(tiny_images)
    loss = sum(v.square().mean() for v in out.tasks.values())
    loss.backward()
    opt.step()
    assert not _same_old_outputs(ext, tiny_student, tiny_images)


def test_export_of_an_extended_student_uses_each_tasks_own_experts(tiny_student, tiny_images) -> None:
    ext, _ = _extend(tiny_student)
    ext.eval()
    assert tuple(routing_weights(ext, tiny_images, "semseg").shape) == (4, 4)
    assert tuple(routing_weights(ext, tiny_images, "parts").shape) == (4, 5)
    for task, kept_want in (("semseg", OLD_TEACHERS), ("parts", (*OLD_TEACHERS, "d"))):
        sub, kept = export_submodel(ext, task, 0.0, images=tiny_images)
        assert kept == kept_want and sub.cfg.teacher_names == kept_want and sub.cfg.tasks[0].teachers is None
        with torch.no_grad():
            assert torch.equal(sub(tiny_images).tasks[task], ext(tiny_images).tasks[task])
    with torch.no_grad():  # silence teacher "a" (expert 1) in the old semseg routers: it is dropped, "d" never was in
        for router in ext.routers["semseg"]:
            router.mlp[3].weight[1].zero_()
            router.mlp[3].bias[1] = -30.0
    sub, kept = export_submodel(ext, "semseg", 1e-3, images=tiny_images)
    assert kept == ("test:tiny2", "c") and len(sub.tsap) == 2
    with torch.no_grad():
        torch.testing.assert_close(sub(tiny_images).tasks["semseg"], ext(tiny_images).tasks["semseg"], rtol=1e-5, atol=1e-5)


def test_init_with_more_teachers_names_the_extension(tiny_student) -> None:
    """Before issue 15, --init RUN with more --teachers failed on the routers' shapes with a backbone hint."""
    cfg = StudentConfig(**{**{f: getattr(tiny_student.cfg, f) for f in ("backbone", "img_size", "levels", "tasks")},
                           "teachers": (*tiny_student.cfg.teachers, TeacherTarget(name="d", width=40))})
    with pytest.raises(HandoffError) as info:
        handoff(SAKStudent(cfg), tiny_student.state_dict(), OLD_TEACHERS, teachers=cfg.teacher_names, source="runs/s2")
    assert str(info.value).endswith("To add d to the trained student, extend it: sak-train fit --init runs/s2 "
                                    "--add-teacher d (its teachers stay as they are)")


def test_frozen_modules_of_a_distill_only_student() -> None:
    cfg = StudentConfig.for_backbone("vit_tiny_patch16_224", img_size=(32, 32), teachers=(TeacherTarget(name="a", width=8),),
                                     stem_norm=True)
    ext = SAKStudent(extended_config(cfg, [TeacherTarget(name="b", width=8)]))
    assert frozen_modules(ext, ("b",), ()) == ["vit", "tsap.0", "aligners.0", "stem_norms"]
