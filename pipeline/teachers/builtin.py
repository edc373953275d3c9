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

# CLIP as official SAK (``models/backbones/model_set.py:17-18``: ``timmclip_base``/``timmclip_large``):
# timm's vit_base_patch16_clip_384 / vit_large_patch14_clip_336 with timm's default tag
# (timm 1.0.31: laion2b_ft_in12k_in1k, a LAION-2B CLIP trunk fine-tuned on ImageNet-12k then -1k).
# The full tag is written here so every spec records it. The native mean/std are timm's for the tag
# (OpenAI CLIP's for B, 0.5 for L); under the student protocol every teacher takes ImageNet mean/std.
CLIP_B = TeacherInfo(
    name="timm:vit_base_patch16_clip_384.laion2b_ft_in12k_in1k",
    width=768,
    patch_size=16,
    depth=12,
    default_layers=(2, 5, 8, 11),
    preprocess=Preprocess(resolution=(384, 384), resize="squash", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
    num_prefix_tokens=1,
)
CLIP_L = replace(
    CLIP_B,
    name="timm:vit_large_patch14_clip_336.laion2b_ft_in12k_in1k",
    width=1024,
    patch_size=14,
    depth=24,
    default_layers=(5, 11, 17, 23),
    preprocess=Preprocess(resolution=(336, 336), resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
)

#: The SAK paper's teachers: alias -> (metadata, role). ViT-B teachers for B/S students, ViT-L for L.
PAPER_TEACHERS: dict[str, tuple[TeacherInfo, str]] = {
    "dinov2": (DINOV2_B, "DINOv2 ViT-B/14, self-supervised: semantic and geometric local features"),
    "dinov2-l": (DINOV2_L, "DINOv2 ViT-L/14, self-supervised: semantic and geometric local features (ViT-L setting)"),
    "sam": (SAM_B, "SAM ViT-B/16 image encoder, promptable segmentation: boundaries and fine spatial detail"),
    "sam-l": (SAM_L, "SAM ViT-L/16 image encoder, promptable segmentation: boundaries and fine spatial detail (ViT-L setting)"),
    "clip": (CLIP_B, "CLIP ViT-B/16 (LAION-2B, ImageNet-12k/1k fine-tuned, timm) as official SAK: global, language-aligned semantics"),
    "clip-l": (CLIP_L, "CLIP ViT-L/14 (LAION-2B, ImageNet-12k/1k fine-tuned, timm) as official SAK: global, language-aligned semantics (ViT-L setting)"),
}

for _alias, (_info, _role) in PAPER_TEACHERS.items():
    register_teacher(_info, aliases={_alias: _role})
for _info in test_teacher.TEST_TEACHERS.values():
    register_teacher(_info)
