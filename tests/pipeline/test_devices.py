"""resolve_device: the one device resolver of extraction and training."""

from __future__ import annotations

import pytest
import torch

from sak.manifests.errors import ConfigError
from sak.pipeline.devices import resolve_device


def test_auto_cpu_and_devices() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="is not a device: use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_to_use_cpu() -> None:
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"--device {name}: torch sees no CUDA GPU; use --device cpu"):
            resolve_device(name)
