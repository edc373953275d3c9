"""Where a teacher's weights come from: a local file, a seeded random init, or the hub.

Shared by every teacher source so the three paths behave the same everywhere:

- ``--weights FILE``: ``.safetensors`` (preferred) or a plain tensor file read with
  ``torch.load(weights_only=True)``; loaded with strict key and shape matching;
  ``weights_id = "file:<sha256 of the file>"``.
- ``--random-init``: parameters drawn under ``torch.manual_seed(seed)`` inside a forked
  RNG (the caller's global RNG is untouched); ``weights_id = "random-init:<seed>"``.
- the hub: tried only when the hub host answers within a few seconds; otherwise only the
  local Hugging Face cache is consulted (offline mode), so a machine without network fails
  in seconds, not after a minute of retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch

from ...manifests.errors import TeacherUnavailable
from ...manifests.hashing import sha256_file

log = logging.getLogger(__name__)

#: Seconds to wait for the hub host to accept a TCP connection (DNS included).
HUB_PROBE_TIMEOUT_S = 3.0

NO_HUB_ADVICE = (
    "no network access to the hub — pass --weights FILE.safetensors or --random-init (for tests/demos)"
)


def random_init_id(seed: int) -> str:
    return f"random-init:{seed}"


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body under ``torch.manual_seed(seed)`` without disturbing the caller's CPU RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Read a weights file into CPU tensors; returns (state_dict, "file:<sha256>").

    Never unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        raise TeacherUnavailable(f"weights file {path} does not exist; pass the path of a .safetensors file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TeacherUnavailable(
            f"cannot read weights file {path} ({type(exc).__name__}: {exc}). "
            "Use a .safetensors file (or a torch file of plain tensors)."
        ) from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):  # common wrappers around the tensors
            inner = state.get(key)
            if isinstance(inner, Mapping):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherUnavailable(f"weights file {path} is not a flat mapping of names to tensors; save model.state_dict().")
    return dict(state), f"file:{sha256_file(path)}"


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} in all)"


def load_strict(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    what: str,
    optional_prefixes: tuple[str, ...] = (),
    unused_prefixes: tuple[str, ...] = (),
) -> None:
    """Copy ``state`` into ``module`` requiring the same keys and shapes, or explain what differs.

    Keys under ``optional_prefixes`` (parts the adapter discards, e.g. SAM's neck) may be absent.
    Keys of the file under ``unused_prefixes`` that ``module`` does not have (parts the teacher never
    runs: a classifier head, a projection) are dropped with a warning that names them.
    """
    expected = module.state_dict()
    dropped = sorted(k for k in state if k not in expected and k.startswith(unused_prefixes)) if unused_prefixes else []
    if dropped:
        log.warning("weights file %s: dropped %d key(s) of parts %s does not use: %s",
                    source, len(dropped), what, ", ".join(dropped))
        gone = set(dropped)
        state = {k: v for k, v in state.items() if k not in gone}
    missing = [k for k in expected if k not in state and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches (file vs model) {_few(shapes, 3)}")
        raise TeacherUnavailable(
            f"weights file {source} does not fit {what}: {'; '.join(parts)}. "
            "Save the file from the same architecture (model.state_dict()) or pick the teacher it was saved from."
        )
    module.load_state_dict(dict(state), strict=False)


def _probe(host: str, port: int, result: list[bool]) -> None:
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            result.append(True)
    except OSError:
        result.append(False)


def hub_reachable() -> bool:
    """True if the Hugging Face hub host accepts a connection within a few seconds.

    With a proxy configured we cannot tell from here, so we assume yes and let the download decide.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:  # pragma: no cover - huggingface_hub is a timm dependency
        endpoint = urlparse("https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[bool] = []
    thread = threading.Thread(target=_probe, args=(host, port, result), daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 1.0)  # getaddrinfo has no timeout of its own
    return bool(result and result[0])


@contextlib.contextmanager
def hub_mode(online: bool) -> Iterator[None]:
    """When ``online`` is False, make huggingface_hub read its local cache only (no network calls)."""
    if online:
        yield
        return
    try:
        from huggingface_hub import constants
    except Exception:  # pragma: no cover
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def hub_failure(name: str, exc: BaseException, *, online: bool) -> TeacherUnavailable:
    """The error for a teacher whose pretrained weights could not be fetched."""
    where = "the hub could not be reached and the weights are not in the local cache" if not online else "the download failed"
    return TeacherUnavailable(
        f"cannot load pretrained weights for {name}: {where} ({type(exc).__name__}: {str(exc)[:200]}). "
        f"{NO_HUB_ADVICE[0].upper()}{NO_HUB_ADVICE[1:]}."
    )
