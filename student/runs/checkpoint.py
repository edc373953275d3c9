"""Training checkpoints: plain tensors in safetensors plus a JSON record, no pickle anywhere.

``ckpt/last.safetensors`` holds the model weights (``model.<name>``), the optimizer
state tensors (``optim.<param index>.<key>``) and the RNG byte states
(``rng.torch``, ``rng.cuda.<i>``, ``rng.numpy``). Everything else — step, sampler
position, optimizer hyper-parameters, Python/NumPy RNG scalars, the config — is
JSON stored in the safetensors metadata (key ``sak.checkpoint``), so the one file
is self-consistent; ``ckpt/last.json`` is a readable copy of the same record.
Both are written to a temporary file and moved into place with ``os.replace``.

:func:`load_weights` is the one reader of a student's weights from a file: a training
checkpoint (its ``model.*`` tensors) or a student file written by ``save_student``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ...manifests.atomic import atomic_write
from ...manifests.errors import SakError

META_KEY = "sak.checkpoint"
FORMAT = 1


class CheckpointError(SakError):
    """A checkpoint is missing, unreadable or from an incompatible run."""


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` reads back."""

    weights: dict[str, torch.Tensor]  # the model state dict
    optimizer: dict[str, Any] | None  # the optimizer state dict, when it was saved
    record: dict[str, Any]  # step, sampler position, config, ... plus the RNG states (rng, rng_tensors)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON; readers see the old file or the whole new one."""
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True)))
    return path


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch/CUDA/NumPy/Python global RNG states as (tensors, json)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    py = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_next = meta["python"]
    random.setstate((version, tuple(state), gauss_next))


def _flatten_optim(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optim(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    ckpt_dir: str | os.PathLike[str],
    *,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any] | None,
    record: dict[str, Any],
    name: str = "last",
) -> Path:
    """Write ``<ckpt_dir>/<name>.safetensors`` and ``<name>.json`` atomically; returns the safetensors path.

    ``record`` is JSON (step, sampler position, config, ...); the RNG states are added here.
    """
    ckpt_dir = Path(ckpt_dir)
    tensors = {f"model.{k}": v for k, v in model.items()}
    meta = dict(record, format=FORMAT)
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optim(optimizer)
        tensors.update(opt_tensors)
    rng_tensors, meta["rng"] = rng_state()
    tensors.update(rng_tensors)
    # safetensors refuses shared or non-contiguous storage: give every tensor its own CPU copy
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    text = json.dumps(meta, sort_keys=True)
    path = ckpt_dir / f"{name}.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: text}))
    readable = {k: v for k, v in meta.items() if k != "rng"}
    write_json_atomic(ckpt_dir / f"{name}.json", readable)
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Every tensor of a safetensors file and its checkpoint record text (None when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(META_KEY)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc}); delete it and train again") from exc
    return tensors, text


def _model_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The student state dict in a training checkpoint (``model.*``) or a student file (every tensor)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass a run dir or a .safetensors file")
    tensors, _ = _read(path)
    return _model_tensors(tensors) or tensors


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint: (model state dict, optimizer state dict or None, record incl. ``rng`` tensors/meta)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.safetensors"
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train first (sak-train fit), or drop --resume")
    tensors, text = _read(path)
    if text is None:
        raise CheckpointError(f"{path}: has no '{META_KEY}' record; it was not written by sak-train")
    meta = json.loads(text)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')} is not supported (expected {FORMAT})")
    model = _model_tensors(tensors)
    optim = None
    if "optimizer" in meta:
        optim = _unflatten_optim({k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
    meta["rng_tensors"] = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return Checkpoint(model, optim, meta)


def restore_rng(meta: dict[str, Any]) -> None:
    """Put the global RNGs back where :func:`save_checkpoint` found them."""
    set_rng_state(meta["rng_tensors"], meta["rng"])
