"""timm teachers: ``timm:<arch>[.<tag>]`` (DINOv2, SAM, CLIP image towers, any timm ViT).

Layer maps come from timm's own ``forward_intermediates`` with ``norm=False``: SAK distills
the raw outputs of transformer blocks, not the final-norm'd tokens. For SAM
(``samvit_*``) these are the block outputs before the neck; the neck (1x1/3x3 convs to
256 channels) is removed from the module, so ``width`` is the ViT's embed dim.

Input size: ViTs are built with ``img_size=<resolution>`` (timm resamples the position
embedding of pretrained or file weights to that grid when loading). SAM is built at its
native 1024 so that every checkpoint loads unchanged; its forward resamples the absolute
position embedding and the relative-position tables to the actual grid.

Student protocol (official SAK, ``models/backbones/timm_encoders.py:126-152``): ViTs are built at
the student's (H, W) with timm's own ``img_size`` (pos-embed resampled by timm's checkpoint filter:
DINOv2-B/14 at 448x576 gives 32x41, the stride-14 conv leaving the last 2 columns unseen); SAM is
built at 1024 and fed the student's tensor resized (:func:`.preprocess.sam_resize_pad`).

``--weights FILE`` may be a full timm checkpoint: keys of parts the teacher never runs (classifier
head, ``fc_norm``) are dropped with a warning naming them; any other mismatch is refused.
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Any, Protocol, cast

import torch

from ...manifests.errors import ConfigError, TeacherUnavailable
from . import weights
from .base import Teacher
from .info import TeacherInfo, default_layers
from .preprocess import Preprocess, rgb_triple, student_preprocess
from .source import TeacherRequest, TeacherSource
from .weights import hub_failure, hub_mode, load_strict, random_init_id, read_state_dict, seeded

log = logging.getLogger(__name__)


class _PatchEmbed(Protocol):
    patch_size: int | tuple[int, ...] | list[int]


class _TimmViT(Protocol):
    """What this adapter reads of a timm ViT (nn.Module attributes are untyped)."""

    patch_embed: _PatchEmbed
    embed_dim: int
    blocks: torch.nn.Sequential | torch.nn.ModuleList

    def forward_intermediates(self, x: torch.Tensor, **kwargs: Any) -> Any: ...


def _vit(model: torch.nn.Module) -> _TimmViT:
    return cast(_TimmViT, model)


class TimmTeacher(Teacher):
    """Adapter around a timm model that has ``forward_intermediates`` (VisionTransformer, SAM, ...)."""

    def __init__(self, model: torch.nn.Module, *, name: str, weights_id: str, preprocess: Preprocess) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "blocks"):
            raise TeacherUnavailable(
                f"{name}: {type(model).__name__} has no forward_intermediates/blocks; use a ViT-style timm model."
            )
        self.model = model
        self.name = name
        self.weights_id = weights_id
        self.preprocess = preprocess
        vit = _vit(model)
        size = vit.patch_embed.patch_size
        patch = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if patch[0] != patch[1]:
            raise TeacherUnavailable(f"{name}: non-square patches {patch} are not supported.")
        self.patch_size = int(patch[0])
        self.width = int(vit.embed_dim)
        self.num_blocks = len(vit.blocks)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.default_layers = default_layers(self.num_blocks)
        params = inspect.signature(vit.forward_intermediates).parameters
        self._prefix_kw = "return_prefix_tokens" in params and self.num_prefix_tokens > 0
        h, w = preprocess.resolution
        if preprocess.frame is None and (h % self.patch_size or w % self.patch_size):
            raise ConfigError(
                f"{name}: resolution {h}x{w} is not a multiple of the patch size {self.patch_size}; "
                f"pass --native-size {max(1, round(h / self.patch_size)) * self.patch_size}."
            )

    def forward_layers(
        self, x_bchw: torch.Tensor, layers: tuple[int, ...]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Block outputs (pre-norm) for ``layers``, in the order asked: (B, h, w, C) each, plus (B, p, C) prefix tokens."""
        layers = self.check_input(x_bchw, layers)
        take = sorted(set(layers))
        kwargs: dict[str, Any] = dict(indices=take, norm=False, stop_early=True, output_fmt="NCHW", intermediates_only=True)
        if self._prefix_kw:
            kwargs["return_prefix_tokens"] = True
        with torch.no_grad():
            out = _vit(self.model).forward_intermediates(x_bchw, **kwargs)
        if self._prefix_kw:
            maps = {i: y.permute(0, 2, 3, 1).contiguous() for i, (y, _) in zip(take, out, strict=True)}
            prefix = {i: p.contiguous() for i, (_, p) in zip(take, out, strict=True)}
            return [maps[i] for i in layers], [prefix[i] for i in layers]
        maps = {i: y.permute(0, 2, 3, 1).contiguous() for i, y in zip(take, out, strict=True)}
        return [maps[i] for i in layers], None


def _create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """timm.create_model, kept as a seam so tests can shrink architectures."""
    import timm

    return timm.create_model(name, **kwargs)


def filter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply timm's own checkpoint conversion for this model family (key remaps, pos-embed resampling)."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    return dict(fn(state, model))


def _pretrained_cfg(full: str) -> Any:
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(full)
    except RuntimeError as exc:  # invalid tag
        import timm

        arch = full.split(".", 1)[0]
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(arch) if "." in n]
        raise TeacherUnavailable(f"timm:{full}: {exc}. Known tags for {arch}: {tags or 'none'}.") from None


#: Parts of a timm checkpoint the teacher never runs: dropped from a --weights file, with a warning.
UNUSED_PREFIXES = ("head.", "fc_norm.", "head_drop.")


def is_sam_model(model: torch.nn.Module) -> bool:
    return type(model).__name__ == "VisionTransformerSAM"


def wrap_timm_model(
    model: torch.nn.Module, *, name: str, weights_id: str, resolution: tuple[int, int], mean, std,
    img_size: tuple[int, int] | None = None,
) -> TimmTeacher:
    """Wrap a built timm model: the student protocol when ``img_size`` is given, else SAM's longest-side+pad or the ViT squash."""
    is_sam = is_sam_model(model)
    if is_sam:
        model.neck = torch.nn.Identity()  # SAK distills block outputs; the neck is not part of the teacher
    if img_size is not None:
        return TimmTeacher(model, name=name, weights_id=weights_id, preprocess=student_preprocess(img_size, sam=is_sam))
    pre = Preprocess(
        resolution=resolution,
        resize="longest-pad" if is_sam else "squash",
        mean=rgb_triple(mean),
        std=rgb_triple(std),
    )
    return TimmTeacher(model, name=name, weights_id=weights_id, preprocess=pre)


def _resolve(model_name: str) -> tuple[str, str, Any]:
    """``arch[.tag]`` -> (full ``arch.tag`` with timm's default tag filled in, ``timm:<full>``, pretrained cfg)."""
    import timm

    arch = model_name.partition(".")[0]
    if not timm.is_model(arch):
        similar = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise TeacherUnavailable(f"timm has no architecture {arch!r} (timm {timm.__version__}); similar: {similar}.")
    cfg = _pretrained_cfg(model_name)
    full = f"{arch}.{cfg.tag}" if cfg is not None and cfg.tag else arch
    return full, f"timm:{full}", cfg


def _wrap_native(model: torch.nn.Module, *, name: str, weights_id: str, resolution: int | None,
                 img_size: tuple[int, int] | None = None) -> TimmTeacher:
    """Wrap with timm's data config for this model: native input size (unless overridden), mean, std."""
    from timm.data import resolve_data_config

    if img_size is not None:
        return wrap_timm_model(model, name=name, weights_id=weights_id, resolution=img_size, mean=(), std=(), img_size=img_size)
    data_cfg = resolve_data_config(model=model)
    _, native_h, native_w = data_cfg["input_size"]  # (C, H, W)
    native = (int(native_h), int(native_w))
    size = (resolution, resolution) if resolution is not None else native
    return wrap_timm_model(model, name=name, weights_id=weights_id, resolution=size, mean=data_cfg["mean"], std=data_cfg["std"])


def describe_timm_teacher(model_name: str) -> TeacherInfo:
    """Metadata of ``timm:<model_name>`` from the architecture built on the meta device (no weights, no memory)."""
    full, name, _ = _resolve(model_name)
    try:
        with torch.device("meta"):
            model = _create_model(full, pretrained=False, num_classes=0)
    except Exception as exc:
        raise TeacherUnavailable(f"{name} cannot be described on the meta device ({type(exc).__name__}: {exc}).") from None
    return _wrap_native(model, name=name, weights_id="meta", resolution=None).info


def create_timm_teacher(model_name: str, request: TeacherRequest) -> Teacher:
    full, name, cfg = _resolve(model_name)
    is_sam = full.startswith("samvit")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if request.img_size is not None and not is_sam:  # student protocol: built at the student's size; SAM at 1024
        kwargs["img_size"] = request.img_size
    elif request.resolution is not None and not is_sam:
        kwargs["img_size"] = request.resolution

    if request.weights is not None:
        state, weights_id = read_state_dict(request.weights)
        with seeded(request.seed):
            model = _create_model(full, pretrained=False, **kwargs)
        try:
            state = filter_state(model, state)
        except Exception as exc:
            raise TeacherUnavailable(
                f"weights file {request.weights} cannot be converted for {name} ({type(exc).__name__}: {exc})."
            ) from None
        load_strict(model, state, source=str(request.weights), what=name, optional_prefixes=("neck.",) if is_sam else (),
                    unused_prefixes=UNUSED_PREFIXES)
    elif request.random_init:
        with seeded(request.seed):
            model = _create_model(full, pretrained=False, **kwargs)
        weights_id = random_init_id(request.seed)
    else:
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise TeacherUnavailable(
                f"timm has no pretrained weights for {name}; pass --weights FILE.safetensors or --random-init."
            )
        online = weights.hub_reachable()  # looked up at call time so tests can simulate no network
        try:
            with hub_mode(online):
                model = _create_model(full, pretrained=True, **kwargs)
        except Exception as exc:
            raise hub_failure(name, exc, online=online) from None
        weights_id = f"hub:{full}"
    return _wrap_native(model, name=name, weights_id=weights_id, resolution=request.resolution, img_size=request.img_size)


SOURCE = TeacherSource(prefix="timm", build=create_timm_teacher, describe=describe_timm_teacher)
