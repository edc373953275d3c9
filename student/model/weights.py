"""Where a student's weights start: the backbone's pretrained weights, and the stage 1 -> 2 hand-off.

**Backbone** (:func:`load_backbone_weights`, ``--backbone-weights hub|none|FILE.safetensors``). The
official student always starts from Google's AugReg ImageNet-21k -> 1k weights at 384
(``models/backbones/vit.py:752-772``), which timm serves as
``vit_{base,large}_patch16_384.augreg_in21k_ft_in1k``. ``hub`` builds timm's pretrained model at its
native size and copies its weights; a file is read with safetensors. Both load with strict keys
(the classifier ``head``/``fc_norm`` and the final ``norm`` that the student drops are
skipped and named in the log), and a position embedding of another grid is resampled
bilinearly without antialias, as the official ``_load_weights`` (``vit.py:529-530,600-614``).
``none`` keeps the random init, which every command reports loudly.

**Hand-off** (:func:`handoff`, ``--init``), as the official ``train_utils.py:121-152``: every tensor
of the new student that the source has *by name* is loaded; the position embedding is resampled
bicubic, ``antialias=False``, the CLS row kept (``timm.layers.resample_abs_pos_embed``); everything
else (routers, heads, aligners the source lacks) keeps its init and is listed. Our adapter paths
are stored by position (``tsap.<i>``), so names are compared through the teacher names of both
students: a source that distilled ``(sam, dinov2)`` loads the right path into a run with
``(dinov2, sam)``. A source that shares no teacher with the run, or a tensor of another shape
(a ViT-B source into a ViT-L student), is refused with a short message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...manifests.errors import SakError
from ...manifests.hashing import sha256_file
from ...pipeline.teachers.weights import hub_mode, hub_reachable

log = logging.getLogger(__name__)

#: timm ViT parts the student does not have (classifier, pooled-feature norm, final norm).
DROPPED_PREFIXES = ("head.", "fc_norm.", "norm.")
RANDOM_INIT = "random-init"


class BackboneWeightsError(SakError):
    """The student backbone's weights cannot be fetched, read or do not fit the backbone."""


class HandoffError(SakError):
    """The --init source cannot start this student (no shared teacher, other backbone)."""


def _few(items: Sequence[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def resample_pos_embed(pos: torch.Tensor, new_grid: tuple[int, int], *, num_prefix_tokens: int,
                       interpolation: str, antialias: bool = False) -> torch.Tensor:
    """A (1, prefix + h*w, C) position embedding on ``new_grid``; the prefix (CLS) rows are kept unchanged.

    The old grid is taken as square (every official checkpoint is: 24x24 at 384).
    """
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos, new_size=list(new_grid), num_prefix_tokens=num_prefix_tokens,
                                  interpolation=interpolation, antialias=antialias)


# -- backbone ---------------------------------------------------------------------------------------
def _fit_backbone(vit: Any, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy a timm ViT state dict into ``vit`` (strict keys; dropped parts skipped; pos-embed resampled)."""
    state = dict(state)
    if state and all(k.startswith("vit.") for k in state):  # a sak student's backbone
        state = {k[len("vit."):]: v for k, v in state.items()}
    expected = vit.state_dict()
    dropped = sorted(k for k in state if k not in expected and k.startswith(DROPPED_PREFIXES))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in dropped]
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in expected and pos.shape != expected["pos_embed"].shape:
        state["pos_embed"] = resample_pos_embed(pos, tuple(vit.patch_embed.grid_size),
                                                num_prefix_tokens=int(vit.num_prefix_tokens),
                                                interpolation="bilinear", antialias=False)
        log.info("backbone weights %s: pos_embed resampled %s -> %s (bilinear, no antialias, as official)",
                 source, tuple(pos.shape), tuple(expected["pos_embed"].shape))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{what} [{_few(keys)}]" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shapes (file vs model)", shapes)) if keys]
        raise BackboneWeightsError(
            f"backbone weights {source} do not fit the student backbone: {'; '.join(parts)}. Save the timm model of "
            "the same --backbone (safetensors.torch.save_file(model.state_dict(), FILE)), or pass --backbone-weights none"
        )
    if dropped:
        log.info("backbone weights %s: skipped %d tensors of parts the student drops (%s)", source, len(dropped),
                 _few(sorted({k.split('.', 1)[0] for k in dropped})))
    vit.load_state_dict(state, strict=False)  # strict above, minus the dropped final norm / head


def _hub_state(backbone: str) -> dict[str, torch.Tensor]:
    import timm

    online = hub_reachable()
    try:
        with hub_mode(online):
            model = timm.create_model(backbone, pretrained=True, num_classes=0)
    except Exception as exc:
        where = "the hub cannot be reached and they are not in the local cache" if not online else "the download failed"
        raise BackboneWeightsError(
            f"cannot load timm's pretrained weights of student backbone {backbone}: {where} "
            f"({type(exc).__name__}: {str(exc)[:160]}). Pass --backbone-weights FILE.safetensors (on a machine with "
            f"network: safetensors.torch.save_file(timm.create_model('{backbone}', pretrained=True).state_dict(), FILE)) "
            "or --backbone-weights none (random init: not the paper's student)"
        ) from None
    return model.state_dict()


def load_backbone_weights(vit: Any, weights: str, backbone: str) -> str:
    """Fill ``vit`` from ``weights`` ("hub", "none" or a .safetensors path); returns the weights id for the record:
    ``hub:<backbone>``, ``file:<sha256>`` or ``random-init``."""
    if weights == "none":
        return RANDOM_INIT
    if weights == "hub":
        _fit_backbone(vit, _hub_state(backbone), f"hub:{backbone}")
        return f"hub:{backbone}"
    path = Path(weights)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file {path} does not exist: pass a .safetensors file, "
                                   "--backbone-weights hub or --backbone-weights none")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise BackboneWeightsError(f"{path} is not a readable safetensors file ({type(exc).__name__}); save it again") from None
    _fit_backbone(vit, state, str(path))
    return f"file:{sha256_file(path)}"


# -- stage 1 -> 2 hand-off ----------------------------------------------------------------------------
_BY_TEACHER = re.compile(r"^(tsap|aligners)\.(\d+)\.")


def _named(key: str, teachers: Sequence[str]) -> str:
    """``tsap.<i>.x`` -> ``tsap.<teacher i>.x`` (and aligners): the key as the official ModuleDict names it."""
    m = _BY_TEACHER.match(key)
    if m is None:
        return key
    i = int(m.group(2))
    name = teachers[i] if i < len(teachers) else f"#{i}"
    return f"{m.group(1)}.{name}.{key[m.end():]}"


def _part(named_key: str) -> str:
    """The module a key belongs to, for the log: ``routers.semseg``, ``tsap.dinov2``, ``vit``."""
    parts = named_key.split(".")
    return ".".join(parts[:2]) if parts[0] in ("tsap", "aligners", "routers", "heads") else parts[0]


@dataclass
class Handoff:
    """What :func:`handoff` did: tensors loaded, modules kept at init, the pos-embed resampling."""

    loaded: int = 0
    kept: list[str] = field(default_factory=list)  # modules (routers.semseg, heads.depth, ...) kept at init
    resampled: str | None = None  # "24x24 -> 28x36" when the position embedding was resampled

    def summary(self) -> str:
        kept = f"kept at init: {', '.join(self.kept)}" if self.kept else "nothing kept at init"
        pos = f"; pos_embed {self.resampled} (bicubic, no antialias)" if self.resampled else ""
        return f"loaded {self.loaded} tensors by name{pos}; {kept}"


def handoff(model: nn.Module, state: Mapping[str, torch.Tensor], source_teachers: Sequence[str], *,
            teachers: Sequence[str], source: str) -> Handoff:
    """Load ``state`` (a student's weights whose adapter paths are ``source_teachers``) into ``model``
    (whose paths are ``teachers``) as the official hand-off does; see the module docstring."""
    if source_teachers and teachers and not set(source_teachers) & set(teachers):
        raise HandoffError(
            f"--init {source} distilled teachers {list(source_teachers)}, this run distills {list(teachers)}: no adapter "
            "path to load. Train with the same teacher names (--teacher) as the source run"
        )
    src = {_named(k, source_teachers): v for k, v in state.items()}
    own = model.state_dict()
    vit: Any = getattr(model, "vit", None)
    update: dict[str, torch.Tensor] = {}
    report = Handoff()
    kept: list[str] = []
    shapes: list[str] = []
    for key, value in own.items():
        named = _named(key, teachers)
        if named not in src:
            kept.append(_part(named))
            continue
        v = src[named]
        if named == "vit.pos_embed" and v.shape != value.shape and vit is not None and v.shape[-1] == value.shape[-1]:
            p = int(vit.num_prefix_tokens)
            side = round((v.shape[1] - p) ** 0.5)
            v = resample_pos_embed(v, tuple(vit.patch_embed.grid_size), num_prefix_tokens=p,
                                   interpolation="bicubic", antialias=False)
            report.resampled = f"{side}x{side} -> {'x'.join(map(str, vit.patch_embed.grid_size))}"
        if v.shape != value.shape:
            shapes.append(f"{key} {tuple(v.shape)} vs {tuple(value.shape)}")
            continue
        update[key] = v.to(value.dtype)
    if shapes and all(s.startswith("routers.") for s in shapes):  # the router experts differ: other teachers
        added = [t for t in teachers if t not in source_teachers]
        raise HandoffError(
            f"--init {source} routes over the stem and teachers {list(source_teachers)}, this student over "
            f"{list(teachers)}, so the routers do not fit ({len(shapes)} tensors, e.g. {_few(shapes, 1)}). To add "
            f"{'a teacher' if not added else ','.join(added)} to the trained student, extend it: sak-train fit --init "
            f"{source} --add-teacher {','.join(added) or 'NAME'} (its teachers stay as they are)"
        )
    if shapes:
        raise HandoffError(
            f"--init {source} does not fit this student: {len(shapes)} tensors have other shapes, e.g. "
            f"{_few(shapes, 2)}. Use the source's backbone (--backbone) and levels"
        )
    if not any(k.startswith("vit.") for k in update):
        raise HandoffError(f"--init {source} has no backbone tensor this student can load (names vit.*): "
                           "pass a sak run dir, its ckpt/last.safetensors or a student file")
    model.load_state_dict(update, strict=False)
    report.loaded = len(update)
    report.kept = sorted(set(kept))
    return report

