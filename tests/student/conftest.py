"""Student fixtures: a ViT-Ti SAK student at 32x48 with 3 teachers (widths 32, 48, 64) and 4 NYUD tasks.

The test folders mirror the package (model/, data/, runs/, evaluate/, train/); ``_caches.py`` (demo caches
with test-teacher stores) sits here, so this folder goes on ``sys.path`` for every test below it.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from sak.student.model.config import StudentConfig, TaskSpec, TeacherTarget

sys.path.insert(0, str(Path(__file__).parent))

TINY_TEACHERS = (
    TeacherTarget(name="a", width=32),
    TeacherTarget(name="test:tiny2", width=48, grid=(8, 8)),
    TeacherTarget(name="c", width=64),
)
TINY_TASKS = (
    TaskSpec(name="semseg", channels=5),
    TaskSpec(name="depth", channels=1),
    TaskSpec(name="normals", channels=3),
    TaskSpec(name="edge", channels=1),
)


@pytest.fixture(scope="session")
def tiny_student_cfg() -> StudentConfig:
    return StudentConfig.for_backbone(
        "vit_tiny_patch16_224", img_size=(32, 48), teachers=TINY_TEACHERS, tasks=TINY_TASKS
    )


@pytest.fixture(scope="session")
def _tiny_student_master(tiny_student_cfg: StudentConfig):
    from sak.student.model.student import SAKStudent

    torch.manual_seed(0)
    return SAKStudent(tiny_student_cfg)


@pytest.fixture()
def tiny_student(_tiny_student_master):
    """A fresh copy (tests may change its weights) of the seeded ViT-Ti student, in eval mode."""
    return copy.deepcopy(_tiny_student_master).eval()


@pytest.fixture()
def tiny_images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
