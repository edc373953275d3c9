"""``test:tiny`` and ``test:tiny2``: deterministic tiny ViTs for tests and demos.

A timm ``VisionTransformer`` built directly (no registry lookup, no download) under a seed,
wrapped by the same :class:`~.timm_teacher.TimmTeacher` adapter as real timm teachers, so
tests exercise the production code path (student protocol included: built at the student's
``img_size``, any H x W, the patch grid floored). Input 64x64, patch 8 (grid 8x8), depth 4,
2 heads, one class token; ``tiny`` has width 32, ``tiny2`` width 48. The models are built
from their :class:`~.info.TeacherInfo` records below, so metadata and model cannot differ.
"""

from __future__ import annotations

from dataclasses import replace

from ...manifests.errors import TeacherUnavailable
from .base import Teacher
from .info import TeacherInfo
from .preprocess import Preprocess
from .source import TeacherRequest, TeacherSource
from .timm_teacher import UNUSED_PREFIXES, filter_state, wrap_timm_model
from .weights import load_strict, random_init_id, read_state_dict, seeded

NUM_HEADS = 2

TINY = TeacherInfo(
    name="test:tiny",
    width=32,
    patch_size=8,
    depth=4,
    default_layers=(0, 1, 2, 3),
    preprocess=Preprocess(resolution=(64, 64), resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    num_prefix_tokens=1,
)
TINY2 = replace(TINY, name="test:tiny2", width=48)

#: model name (after ``test:``) -> metadata the model is built from
TEST_TEACHERS: dict[str, TeacherInfo] = {info.name.split(":", 1)[1]: info for info in (TINY, TINY2)}


def describe_test_teacher(model_name: str) -> TeacherInfo:
    if model_name not in TEST_TEACHERS:
        raise TeacherUnavailable(f"unknown test teacher test:{model_name}; known: {', '.join('test:' + k for k in TEST_TEACHERS)}.")
    return TEST_TEACHERS[model_name]


def create_test_teacher(model_name: str, request: TeacherRequest) -> Teacher:
    from timm.models.vision_transformer import VisionTransformer

    info = describe_test_teacher(model_name)
    size = request.resolution or info.input_size[0]
    with seeded(request.seed):
        model = VisionTransformer(
            img_size=request.img_size or size, patch_size=info.patch_size, num_classes=0, embed_dim=info.width, depth=info.depth, num_heads=NUM_HEADS
        )
    weights_id = random_init_id(request.seed)
    if request.weights is not None:
        state, weights_id = read_state_dict(request.weights)
        state = filter_state(model, state)  # timm's own conversion: the pos-embed resampled to this grid
        load_strict(model, state, source=str(request.weights), what=info.name, unused_prefixes=UNUSED_PREFIXES)
    pre = info.preprocess
    return wrap_timm_model(model, name=info.name, weights_id=weights_id, resolution=(size, size), mean=pre.mean, std=pre.std,
                           img_size=request.img_size)


SOURCE = TeacherSource(prefix="test", build=create_test_teacher, describe=describe_test_teacher)
