"""The teacher adapter interface: preprocessing owned by the model, per-layer maps out.

An adapter wraps a frozen vision model. It owns its preprocessing (so a spec can
never pair a model with the wrong mean/std or resize policy), and returns, for the
requested block indices, patch-token maps shaped (B, h, w, C) plus optional
prefix (CLS/register) tokens shaped (B, p, C).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...manifests.config import Config
from ...manifests.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Preprocess(Config):
    """How an RGB uint8 image becomes the teacher's input tensor."""

    resolution: tuple[int, int]  # (H, W)
    resize: str = "squash"  # or "longest-pad" (SAM: longest side to max(resolution), zero-pad bottom/right)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.resize not in ("squash", "longest-pad"):
            raise ConfigError(f"resize must be 'squash' or 'longest-pad', got {self.resize!r}")

    def __call__(self, rgb_hwc: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H', W') float32, normalized."""
        arr = np.ascontiguousarray(rgb_hwc)  # decoded images are often read-only views: copy those, never warn
        x = (torch.from_numpy(arr) if arr.flags.writeable else torch.tensor(arr)).permute(2, 0, 1).float().div_(255.0)
        return self.from_tensor(x)

    def from_tensor(self, x_chw: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float in [0, 1] -> (3, H', W') normalized teacher input."""
        th, tw = self.resolution
        h, w = x_chw.shape[-2:]
        if self.resize == "squash":
            if (h, w) != (th, tw):
                x_chw = F.interpolate(x_chw[None], size=(th, tw), mode="bicubic", align_corners=False, antialias=True)[0]
            x_chw = x_chw.clamp_(0.0, 1.0)
        mean = torch.tensor(self.mean, dtype=x_chw.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x_chw.dtype).view(3, 1, 1)
        if self.resize == "longest-pad":
            side = max(th, tw)
            scale = side / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            x_chw = F.interpolate(x_chw[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
            x_chw = (x_chw.clamp_(0.0, 1.0) - mean) / std
            out = torch.zeros(3, th, tw, dtype=x_chw.dtype)
            out[:, : min(nh, th), : min(nw, tw)] = x_chw[:, :th, :tw]
            return out
        return (x_chw - mean) / std


def default_layers(depth: int) -> tuple[int, ...]:
    """SAK's distilled blocks: 4 evenly spaced, ending at the last block.

    depth 12 (B/S) -> (2, 5, 8, 11); depth 24 (L) -> (5, 11, 17, 23); fewer than 4 blocks -> all.
    """
    if depth <= 4:
        return tuple(range(depth))
    return tuple(round(depth * (k + 1) / 4) - 1 for k in range(4))


class Teacher(torch.nn.Module):
    """A frozen teacher. Subclasses set the attributes below and implement ``forward_layers``."""

    name: str  # canonical source name, e.g. "timm:vit_base_patch14_dinov2.lvd142m"
    weights_id: str  # "hub:<tag>", "file:<sha256>" or "random-init:<seed>"
    width: int  # channels of each layer map
    patch_size: int
    num_blocks: int
    num_prefix_tokens: int
    default_layers: tuple[int, ...]
    preprocess: Preprocess

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.preprocess.resolution
        return h // self.patch_size, w // self.patch_size

    def check_layers(self, layers: tuple[int, ...]) -> None:
        bad = [i for i in layers if not 0 <= i < self.num_blocks]
        if bad:
            raise ConfigError(
                f"teacher {self.name} has blocks 0..{self.num_blocks - 1}; layer(s) {bad} do not exist. "
                f"Its default layers are {','.join(map(str, self.default_layers))}."
            )

    def check_input(self, x_bchw: torch.Tensor, layers: tuple[int, ...]) -> tuple[int, ...]:
        """Validate a forward call: layers exist and the input has this teacher's resolution."""
        layers = tuple(int(i) for i in layers)
        self.check_layers(layers)
        if tuple(x_bchw.shape[-2:]) != tuple(self.preprocess.resolution):
            raise ConfigError(
                f"{self.name} expects inputs of {self.preprocess.resolution}, got {tuple(x_bchw.shape[-2:])}; "
                "run images through teacher.preprocess first."
            )
        return layers

    def forward_layers(
        self, x_bchw: torch.Tensor, layers: tuple[int, ...]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Return ([ (B, h, w, C) per layer ], [ (B, p, C) per layer ] or None)."""
        raise NotImplementedError
