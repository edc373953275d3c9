"""``test:tiny`` and ``test:tiny2``: deterministic tiny ViTs for tests and demos.

A timm ``VisionTransformer`` built directly (no registry lookup, no download) under a seed,
wrapped by the same :class:`~.timm_teacher.TimmTeacher` adapter as real timm teachers, so
tests exercise the production code path. Input 64x64, patch 8 (grid 8x8), depth 4,
2 heads, one class token; ``tiny`` has width 32, ``tiny2`` width 48.
"""

from __future__ import annotations

from ...manifests.errors import TeacherUnavailable

from .base import Teacher
from .registry import TeacherRequest, register_source
from .timm_teacher import wrap_timm_model
from .weights import load_strict, random_init_id, read_state_dict, seeded

#: name -> VisionTransformer arguments
TEST_MODELS: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=32, depth=4, num_heads=2),
    "tiny2": dict(embed_dim=48, depth=4, num_heads=2),
}
IMG_SIZE = 64
PATCH_SIZE = 8
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@register_source("test")
def create_test_teacher(model_name: str, request: TeacherRequest) -> Teacher:
    from timm.models.vision_transformer import VisionTransformer

    if model_name not in TEST_MODELS:
        raise TeacherUnavailable(f"unknown test teacher test:{model_name}; known: {', '.join('test:' + k for k in TEST_MODELS)}.")
    size = request.resolution or IMG_SIZE
    with seeded(request.seed):
        model = VisionTransformer(img_size=size, patch_size=PATCH_SIZE, num_classes=0, **TEST_MODELS[model_name])
    name = f"test:{model_name}"
    weights_id = random_init_id(request.seed)
    if request.weights is not None:
        state, weights_id = read_state_dict(request.weights)
        load_strict(model, state, source=str(request.weights), what=name)
    return wrap_timm_model(model, name=name, weights_id=weights_id, resolution=(size, size), mean=MEAN, std=STD)
