"""open_clip teachers: ``open_clip:<arch>@<pretrained tag>``, e.g. ``open_clip:ViT-B-16@openai``.

Only the image tower (``model.visual``, open_clip's own ``VisionTransformer``) is kept.
Layer maps are the outputs of ``visual.transformer.resblocks[i]`` captured with forward
hooks (the raw block outputs, like the timm adapter), class token split off as the prefix,
patch tokens reshaped to (B, h, w, C). The forward stops right after the deepest block
asked for. Blocks run batch-first in open_clip >= 2.24 (``transformer.batch_first``);
sequence-first outputs (L, B, C) of older releases are transposed.

Preprocessing: squash-resize to the tower's ``image_size`` (or ``resolution``), with the
tag's mean/std (open_clip's defaults, the OpenAI values, when no tag is named).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch

from ...manifests.errors import TeacherUnavailable
from . import weights
from .base import Teacher
from .info import TeacherInfo, default_layers
from .preprocess import Preprocess, rgb_triple, student_preprocess
from .source import TeacherRequest, TeacherSource
from .weights import hub_failure, hub_mode, load_strict, random_init_id, read_state_dict, seeded

log = logging.getLogger(__name__)


class _Transformer(Protocol):
    width: int
    resblocks: torch.nn.ModuleList


class _Tower(Protocol):
    """What this adapter reads of open_clip's ``VisionTransformer`` (nn.Module attributes are untyped)."""

    transformer: _Transformer
    patch_size: int | tuple[int, ...] | list[int]
    image_size: int | tuple[int, ...] | list[int]
    image_mean: Sequence[float]
    image_std: Sequence[float]


def _tower(visual: torch.nn.Module) -> _Tower:
    return cast(_Tower, visual)


class _Stop(Exception):
    """Raised by the hook on the deepest requested block to skip the rest of the forward."""


class OpenClipTeacher(Teacher):
    """Adapter around an open_clip ``VisionTransformer`` image tower."""

    def __init__(self, visual: torch.nn.Module, *, name: str, weights_id: str, preprocess: Preprocess) -> None:
        super().__init__()
        if not hasattr(visual, "transformer") or not hasattr(visual.transformer, "resblocks"):
            raise TeacherUnavailable(
                f"{name}: image tower {type(visual).__name__} is not open_clip's VisionTransformer; "
                "for timm-backed open_clip models use the timm: source."
            )
        self.visual = visual
        self.name = name
        self.weights_id = weights_id
        self.preprocess = preprocess
        tower = _tower(visual)
        size = tower.patch_size
        patch = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if patch[0] != patch[1]:
            raise TeacherUnavailable(f"{name}: non-square patches {patch} are not supported.")
        self.patch_size = int(patch[0])
        self.width = int(tower.transformer.width)
        self.num_blocks = len(tower.transformer.resblocks)
        self.num_prefix_tokens = 1  # open_clip's ViT always prepends one class token
        self.default_layers = default_layers(self.num_blocks)
        self._batch_first = bool(getattr(tower.transformer, "batch_first", False))

    def forward_layers(
        self, x_bchw: torch.Tensor, layers: tuple[int, ...]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Block outputs for ``layers`` in the order asked: (B, h, w, C) each, plus the (B, 1, C) class token."""
        layers = self.check_input(x_bchw, layers)
        take = sorted(set(layers))
        last = take[-1]
        tokens: dict[int, torch.Tensor] = {}

        def hook(index: int):
            def fn(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                tokens[index] = output if self._batch_first else output.transpose(0, 1)
                if index == last:
                    raise _Stop

            return fn

        blocks = _tower(self.visual).transformer.resblocks
        handles = [blocks[i].register_forward_hook(hook(i)) for i in take]
        try:
            with torch.no_grad():
                self.visual(x_bchw)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        b = x_bchw.shape[0]
        gh, gw = self.grid
        maps = [tokens[i][:, 1:].reshape(b, gh, gw, -1).contiguous() for i in layers]
        prefix = [tokens[i][:, :1].contiguous() for i in layers]
        return maps, prefix


def _parse(model_name: str) -> tuple[str, str | None]:
    arch, _, tag = model_name.partition("@")
    return arch, (tag or None)


def _resolve(model_name: str) -> tuple[str, str, str | None, dict[str, Any], dict[str, Any]]:
    """``arch[@tag]`` -> (arch, full name, tag, the tag's pretrained cfg, create_model keywords), or a clear refusal."""
    import open_clip  # heavy optional dependency: imported only when an open_clip teacher is asked for

    arch, tag = _parse(model_name)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        similar = [m for m in open_clip.list_models() if m.split("-")[:2] == arch.split("-")[:2]][:10]
        raise TeacherUnavailable(f"open_clip has no model config {arch!r}; similar: {similar or open_clip.list_models()[:10]}.")
    if "timm_model_name" in model_cfg.get("vision_cfg", {}):
        raise TeacherUnavailable(
            f"open_clip:{arch} uses a timm image tower ({model_cfg['vision_cfg']['timm_model_name']}); "
            "name it as a timm: teacher instead."
        )
    tag_cfg: dict[str, Any] = {}
    if tag is not None:
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        if not tag_cfg:
            raise TeacherUnavailable(
                f"open_clip has no pretrained tag {tag!r} for {arch}; known: {open_clip.list_pretrained_tags_by_model(arch)}."
            )
    name = f"open_clip:{arch}@{tag}" if tag else f"open_clip:{arch}"
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False))}
    return arch, name, tag, tag_cfg, kwargs


def _wrap(model: torch.nn.Module, *, name: str, weights_id: str, tag_cfg: dict[str, Any],
          img_size: tuple[int, int] | None = None) -> OpenClipTeacher:
    """Wrap the image tower; squash-resize to its image size with the tag's mean/std (the tower's when untagged),
    or the student protocol (the student's tensor, ImageNet mean/std) when ``img_size`` is given."""
    visual = cast(torch.nn.Module, model.visual)
    if img_size is not None:
        return OpenClipTeacher(visual, name=name, weights_id=weights_id, preprocess=student_preprocess(img_size, sam=False))
    tower = _tower(visual)
    image_size = tower.image_size
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    pre = Preprocess(
        resolution=(int(size[0]), int(size[1])),
        resize="squash",
        mean=rgb_triple(tag_cfg.get("mean") or tower.image_mean),
        std=rgb_triple(tag_cfg.get("std") or tower.image_std),
    )
    return OpenClipTeacher(visual, name=name, weights_id=weights_id, preprocess=pre)


def describe_open_clip_teacher(model_name: str) -> TeacherInfo:
    """Metadata of ``open_clip:<model_name>`` from the model built on the meta device (no weights, no memory)."""
    import open_clip

    arch, name, _, tag_cfg, kwargs = _resolve(model_name)
    try:
        with torch.device("meta"):
            model = open_clip.create_model(arch, pretrained=None, device="meta", **kwargs)
    except Exception as exc:
        raise TeacherUnavailable(f"{name} cannot be described on the meta device ({type(exc).__name__}: {exc}).") from None
    return _wrap(model, name=name, weights_id="meta", tag_cfg=tag_cfg).info


def create_open_clip_teacher(model_name: str, request: TeacherRequest) -> Teacher:
    import open_clip

    arch, name, tag, tag_cfg, kwargs = _resolve(model_name)
    if request.resolution is not None or request.img_size is not None:
        kwargs["force_image_size"] = request.img_size or request.resolution

    if request.weights is not None or request.random_init:
        with seeded(request.seed):
            model = open_clip.create_model(arch, pretrained=None, **kwargs)
        if request.weights is not None:
            state, weights_id = read_state_dict(request.weights)
            _load_visual(model, state, source=str(request.weights), what=name)
        else:
            weights_id = random_init_id(request.seed)
    else:
        if tag is None:
            raise TeacherUnavailable(
                f"open_clip:{arch} names no pretrained tag; use open_clip:{arch}@<tag> "
                f"(known: {open_clip.list_pretrained_tags_by_model(arch)}), --weights FILE.safetensors or --random-init."
            )
        online = weights.hub_reachable()  # looked up at call time so tests can simulate no network
        try:
            with hub_mode(online):
                model = open_clip.create_model(arch, pretrained=tag, **kwargs)
        except Exception as exc:
            raise hub_failure(name, exc, online=online) from None
        weights_id = f"hub:{arch}@{tag}"
    return _wrap(model, name=name, weights_id=weights_id, tag_cfg=tag_cfg, img_size=request.img_size)


def _load_visual(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, what: str) -> None:
    """Load image-tower weights from a visual-only or a full CLIP state dict, resampling the position grid."""
    from open_clip.model import resize_pos_embed

    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if "positional_embedding" in state:
        full = {"visual.positional_embedding": state["positional_embedding"]}
        resize_pos_embed(full, model)
        state["positional_embedding"] = full["visual.positional_embedding"]
    load_strict(cast(torch.nn.Module, model.visual), state, source=source, what=f"{what} image tower")


SOURCE = TeacherSource(prefix="open_clip", build=create_open_clip_teacher, describe=describe_open_clip_teacher)
