"""Online-teacher mode: the official SAK way, teachers run on every training batch.

:class:`OnlineTeachers` rebuilds each store's teacher from its spec (same name, weights,
input protocol, size, layers) and runs it on the same augmented images the student sees (the
loader adds each teacher's preprocessed input, ``Batch.teacher_inputs``). Under the student
protocol (official) the teacher is built at the student's input size (any H x W) and its input
is the student's own tensor (SAM: resized to 1024), as in ``models/mt_distiller.py:72-83``. With the same
seed, online and cached training see the same samples in the same order, so their
losses agree step by step up to the store's float16 rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from ...manifests.errors import ConfigError, SpecMismatch, TeacherUnavailable
from ...pipeline.teachers import create_teacher

log = logging.getLogger(__name__)


def _weights_for(store: Any, key: str, weights: Mapping[str, str]) -> str | None:
    for name in (key, store.name, store.spec.teacher):
        if name in weights:
            return weights[name]
    return None


def teacher_for_store(store: Any, key: str, weights: Mapping[str, str] | None = None) -> Any:
    """Build the teacher a store was extracted with, or say exactly what is missing."""
    spec = store.spec
    h, w = spec.resolution
    student = spec.input_protocol == "student"
    if h != w and not student:
        raise ConfigError(f"store {store.name} was extracted at {h}x{w}; online teachers of the native protocol take a "
                          "square resolution (the student protocol takes any: extract with --input-protocol student)")
    size = {"img_size": tuple(spec.img_size)} if student else {"resolution": h}
    path = _weights_for(store, key, weights or {})
    if spec.weights.startswith("file:") and path is None:
        raise TeacherUnavailable(
            f"store {store.name} was extracted with the weights file of sha256 {spec.weights[5:17]}...; "
            f"online mode needs that file: pass --teacher-weights {key}=/path/to/weights.safetensors"
        )
    if spec.random_init:
        teacher = create_teacher(spec.teacher, random_init=True, seed=int(spec.weights.split(":", 1)[1]), **size)
    else:
        teacher = create_teacher(spec.teacher, weights=path, **size)
    pre = teacher.preprocess
    got = {
        "weights": teacher.weights_id, "width": teacher.width, "grid": tuple(teacher.grid), "mean": tuple(pre.mean),
        "std": tuple(pre.std), "resize": pre.resize, "resolution": tuple(pre.resolution), "protocol": pre.protocol,
    }
    want = {"weights": spec.weights, "width": spec.width, "grid": tuple(spec.grid), "mean": tuple(spec.mean),
            "std": tuple(spec.std), "resize": spec.resize, "resolution": tuple(spec.resolution),
            "protocol": spec.input_protocol}
    diffs = [f"{k}: store {want[k]!r}, teacher {got[k]!r}" for k in want if got[k] != want[k]]
    if diffs:
        raise SpecMismatch(
            f"the teacher built for store {store.name} does not match its spec ({'; '.join(diffs)}); "
            "pass the weights the store was extracted with (--teacher-weights), or train from the cache"
        )
    teacher.check_layers(tuple(spec.layers))
    return teacher


class OnlineTeachers:
    """Callable: a batch with ``teacher_inputs`` -> ``{key: [(B, C, h, w) float32 per layer]}``."""

    def __init__(self, stores: Sequence[Any], keys: Sequence[str], device: torch.device | str = "cpu", *,
                 weights: Mapping[str, str] | None = None, amp: bool = False) -> None:
        self.device = torch.device(device)
        self.layers = {k: tuple(s.spec.layers) for k, s in zip(keys, stores, strict=True)}
        self.teachers = {k: teacher_for_store(s, k, weights).to(self.device) for k, s in zip(keys, stores, strict=True)}
        self.amp = amp and self.device.type == "cuda"

    @property
    def preprocess(self) -> dict[str, Any]:
        """What the loader applies to each augmented image for each teacher."""
        return {k: t.preprocess for k, t in self.teachers.items()}

    @torch.no_grad()
    def __call__(self, batch: Any) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {}
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        with ctx:
            for key, teacher in self.teachers.items():
                maps, _ = teacher.forward_layers(batch.teacher_inputs[key].to(self.device), self.layers[key])
                out[key] = [m.permute(0, 3, 1, 2).float().contiguous() for m in maps]
        return out
