"""The built-in teacher sources (timm, open_clip, test) and the SAK paper's teachers with their metadata.

Imported by the package ``__init__``, so every entry exists before any lookup; the registry
module itself never imports an adapter. This is the only table of teacher names in sak:
everything else (``sak-train describe``, store lookup, online teachers) asks the registry.

The paper records are timm's facts for each tag (checked against timm's model config on the
meta device in ``tests/pipeline/teachers/test_teacher_info.py``). Alias targets are part of every
store name (the spec hashes the full name): changing one is a format decision, not a cleanup.
"""

from __future__ import annotations

from dataclasses import replace

from . import open_clip_teacher, test_teacher, timm_teacher
from .info import TeacherInfo
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocess
from .registry import register_source, register_teacher

for _source in (timm_teacher.SOURCE, open_clip_teacher.SOURCE, test_teacher.SOURCE):
    register_source(_source)

DINOV2_B = TeacherInfo(
    name="timm:vit_base_patch14_dinov2.lvd142m",
    width=768,
    patch_size=14,
    depth=12,
    default_layers=(2, 5, 8, 11),
    preprocess=Preprocess(resolution=(518, 518), resize="squash", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    num_prefix_tokens=1,
)
DINOV2_L = replace(DINOV2_B, name="timm:vit_large_patch14_dinov2.lvd142m", width=1024, depth=24, default_layers=(5, 11, 17, 23))

# SAM: block outputs before the neck, so the width is the ViT's; built at 1024 px, inputs
# resized by the longest side and zero-padded (in normalized space), no class token.
SAM_B = TeacherInfo(
    name="timm:samvit_base_patch16.sa1b",
    width=768,
    patch_size=16,
    depth=12,
    default_layers=(2, 5, 8, 11),
    preprocess=Preprocess(resolution=(1024, 1024), resize="longest-pad", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    num_prefix_tokens=0,
)
SAM_L = replace(SAM_B, name="timm:samvit_large_patch16.sa1b", width=1024, depth=24, default_layers=(5, 11, 17, 23))

# OpenAI CLIP was trained with QuickGELU: timm's *_clip_quickgelu_* variants load the same
# weights with the right activation (the plain *_clip_* ones use GELU). There is no
# vit_base_patch16_clip_384.openai tag in timm; pass --resolution for a larger input.
CLIP_B = TeacherInfo(
    name="timm:vit_base_patch16_clip_quickgelu_224.openai",
    width=768,
    patch_size=16,
    depth=12,
    default_layers=(2, 5, 8, 11),
    preprocess=Preprocess(resolution=(224, 224), resize="squash", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
    num_prefix_tokens=1,
)
CLIP_L = replace(
    CLIP_B,
    name="timm:vit_large_patch14_clip_quickgelu_336.openai",
    width=1024,
    patch_size=14,
    depth=24,
    default_layers=(5, 11, 17, 23),
    preprocess=replace(CLIP_B.preprocess, resolution=(336, 336)),
)

#: The SAK paper's teachers: alias -> (metadata, role). ViT-B teachers for B/S students, ViT-L for L.
PAPER_TEACHERS: dict[str, tuple[TeacherInfo, str]] = {
    "dinov2": (DINOV2_B, "DINOv2 ViT-B/14, self-supervised: semantic and geometric local features"),
    "dinov2-l": (DINOV2_L, "DINOv2 ViT-L/14, self-supervised: semantic and geometric local features (ViT-L setting)"),
    "sam": (SAM_B, "SAM ViT-B/16 image encoder, promptable segmentation: boundaries and fine spatial detail"),
    "sam-l": (SAM_L, "SAM ViT-L/16 image encoder, promptable segmentation: boundaries and fine spatial detail (ViT-L setting)"),
    "clip": (CLIP_B, "OpenAI CLIP ViT-B/16 image tower, image-text contrastive: global, language-aligned semantics"),
    "clip-l": (CLIP_L, "OpenAI CLIP ViT-L/14 image tower, image-text contrastive: global, language-aligned semantics (ViT-L setting)"),
}

for _alias, (_info, _role) in PAPER_TEACHERS.items():
    register_teacher(_info, aliases={_alias: _role})
for _info in test_teacher.TEST_TEACHERS.values():
    register_teacher(_info)
