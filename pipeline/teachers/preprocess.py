"""Teacher input preprocessing: how an RGB image becomes a teacher's input, and the usual constants.

The one home of the ImageNet mean/std: teachers default to it, and the student's image
normalization (``student.data``) imports it from here, so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ...manifests.config import Config
from ...manifests.errors import ConfigError

#: ImageNet channel statistics (timm's IMAGENET_DEFAULT_MEAN/STD): DINOv2, SAM and the student.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: OpenAI CLIP's channel statistics (timm's OPENAI_CLIP_MEAN/STD, open_clip's defaults).
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def rgb_triple(values: Iterable[float]) -> tuple[float, float, float]:
    """Per-channel mean or std as the floats :class:`Preprocess` keeps (timm and open_clip hand lists or tuples)."""
    return cast(tuple[float, float, float], tuple(float(v) for v in values))


@dataclass(frozen=True, kw_only=True)
class Preprocess(Config):
    """How an RGB uint8 image becomes the teacher's input tensor."""

    resolution: tuple[int, int]  # (H, W)
    resize: str = "squash"  # or "longest-pad" (SAM: longest side to max(resolution), zero-pad bottom/right)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

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
