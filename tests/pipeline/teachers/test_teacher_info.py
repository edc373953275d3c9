"""Teacher metadata: known without building, and equal to what the built teacher (or timm's config) reports."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from sak.manifests.errors import ConfigError
from sak.pipeline.teachers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SOURCES,
    Preprocess,
    TeacherInfo,
    aliases,
    create_teacher,
    preprocess,
    teacher_info,
    timm_teacher,
)
from sak.pipeline.teachers.base import default_layers


@pytest.mark.parametrize(
    "name, width",
    [("test:tiny", 32), ("test:tiny2", 48)],
)
def test_test_teachers_metadata_equals_the_built_teacher(name, width):
    info = teacher_info(name)
    assert info == TeacherInfo(
        name=name, width=width, patch_size=8, depth=4, default_layers=(0, 1, 2, 3),
        preprocess=Preprocess(resolution=(64, 64), resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        num_prefix_tokens=1,
    )
    assert (info.source, info.input_size, info.grid) == ("test", (64, 64), (8, 8))
    built = create_teacher(name, seed=3)
    assert built.info == info
    maps, prefix = built.forward_layers(torch.zeros(1, 3, 64, 64), info.default_layers)
    assert [tuple(m.shape) for m in maps] == [(1, *info.grid, info.width)] * 4
    assert [tuple(p.shape) for p in prefix] == [(1, info.num_prefix_tokens, info.width)] * 4


def test_timm_vit_tiny_metadata_from_the_meta_device_equals_a_random_init_build():
    info = teacher_info("timm:vit_tiny_patch16_224")  # not registered: described on the meta device
    assert info == TeacherInfo(
        name="timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", width=192, patch_size=16, depth=12,
        default_layers=(2, 5, 8, 11),
        preprocess=Preprocess(resolution=(224, 224), resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        num_prefix_tokens=1,
    )
    assert create_teacher("timm:vit_tiny_patch16_224", random_init=True, seed=1).info == info


def _timm_facts(model_name: str) -> dict:
    """What timm itself says about a tag, from its config on the meta device (no weights)."""
    import timm
    from timm.data import resolve_data_config

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    cfg = resolve_data_config(model=model)
    is_sam = type(model).__name__ == "VisionTransformerSAM"
    return dict(
        name=f"timm:{model_name}",
        width=model.embed_dim,
        patch_size=model.patch_embed.patch_size[0],
        depth=len(model.blocks),
        num_prefix_tokens=getattr(model, "num_prefix_tokens", 0),
        resolution=tuple(cfg["input_size"][1:]),
        resize="longest-pad" if is_sam else "squash",
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )


@pytest.mark.parametrize("alias", ["dinov2", "dinov2-l", "sam", "sam-l", "clip", "clip-l"])
def test_paper_alias_metadata_matches_timm_config(alias, monkeypatch):
    calls = []
    real = timm_teacher._create_model
    monkeypatch.setattr(timm_teacher, "_create_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    info = teacher_info(alias)
    assert calls == []  # registered metadata: nothing built
    facts = _timm_facts(aliases()[alias].split(":", 1)[1])
    assert info.name == facts["name"] and info.role
    assert (info.width, info.patch_size, info.depth, info.num_prefix_tokens) == (
        facts["width"], facts["patch_size"], facts["depth"], facts["num_prefix_tokens"]
    )
    assert info.preprocess == Preprocess(
        resolution=facts["resolution"], resize=facts["resize"], mean=facts["mean"], std=facts["std"]
    )
    assert info.default_layers == default_layers(info.depth) == ((2, 5, 8, 11) if info.depth == 12 else (5, 11, 17, 23))
    # the registered record is what the timm source describes (the adapter's own code path, meta device)
    assert replace(info, role="") == SOURCES.get("timm").describe(info.name.split(":", 1)[1]) == teacher_info(info.name)


def test_paper_metadata_spot_values():
    assert teacher_info("dinov2").grid == (37, 37)
    assert teacher_info("sam").preprocess.resize == "longest-pad" and teacher_info("sam").num_prefix_tokens == 0
    assert teacher_info("clip").preprocess.mean == (0.48145466, 0.4578275, 0.40821073)
    assert teacher_info("clip-l").input_size == (336, 336) and teacher_info("clip-l").patch_size == 14
    assert teacher_info("dinov2-l").width == teacher_info("sam-l").width == 1024


def test_open_clip_metadata_from_the_meta_device():
    info = teacher_info("open_clip:ViT-B-16@openai")
    assert (info.width, info.patch_size, info.depth, info.num_prefix_tokens, info.input_size) == (768, 16, 12, 1, (224, 224))
    assert info.preprocess.mean == (0.48145466, 0.4578275, 0.40821073)


def test_a_build_that_contradicts_its_record_is_reported(monkeypatch, caplog):
    real = timm_teacher._create_model
    monkeypatch.setattr(timm_teacher, "_create_model", lambda name, **kw: real(
        name, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], neck_chans=16, **kw))
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.teachers.registry"):
        create_teacher("sam", random_init=True, resolution=64)
    text = " ".join(r.getMessage() for r in caplog.records if "registered metadata" in r.getMessage())
    assert "width: registered 768, built 32" in text and "depth: registered 12, built 2" in text
    assert "preprocess" not in text  # a --resolution override is not a contradiction
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.teachers.registry"):
        create_teacher("test:tiny", resolution=32)
    assert not [r for r in caplog.records if "registered metadata" in r.getMessage()]


def test_info_validation_and_round_trip():
    info = teacher_info("sam")
    assert TeacherInfo.from_json(info.to_json()) == info
    with pytest.raises(ConfigError, match="'<source>:<model>'"):
        replace(info, name="sam")
    with pytest.raises(ConfigError, match=r"in 0\.\.11; SAK's choice is \[2, 5, 8, 11\]"):
        replace(info, default_layers=(12,))
    with pytest.raises(ConfigError, match="width must be positive"):
        replace(info, width=0)


def test_one_imagenet_constant_for_teachers_and_student():
    from sak.student.data import cached

    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert cached.IMAGENET_MEAN is preprocess.IMAGENET_MEAN and cached.IMAGENET_STD is preprocess.IMAGENET_STD
    assert Preprocess(resolution=(4, 4)).mean is IMAGENET_MEAN and teacher_info("dinov2").preprocess.std == IMAGENET_STD


def test_student_parameter_accounting_reads_the_registry(monkeypatch):
    from sak.student.model import params

    monkeypatch.setattr(timm_teacher, "_create_model", lambda *a, **k: pytest.fail("a registered teacher was built"))
    assert [params.teacher_width(n) for n in ("dinov2", "sam-l", "test:tiny2")] == [768, 1024, 48]
    assert params.teacher_width("mine", {"mine": 7}) == 7
    with pytest.raises(ConfigError, match="unknown width for teacher 'mine'.*--teacher-widths 'mine=768'"):
        params.teacher_width("mine")
