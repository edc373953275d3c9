"""One device resolver for extraction and training: ``auto`` picks CUDA when torch sees a GPU."""

from __future__ import annotations

import torch

from ..manifests.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cpu``, ``cuda``, ``cuda:N`` are checked against what torch sees."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA GPU; use --device cpu")
    return dev
