"""Teacher input preprocessing: how an RGB image becomes a teacher's input, and the usual constants.

The one home of the ImageNet mean/std: teachers default to it, and the student's image
normalization (``student.data``) imports it from here, so the two can never drift apart.

Two protocols (``FeatureSpec.input_protocol``):

- ``native`` (sak's first behaviour, kept as an option): each image is squashed to the teacher's
  native square (``squash``: bicubic + antialias) with the teacher's own mean/std; SAM
  (``longest-pad``): longest side bilinear + antialias, ``round``, zero pad bottom/right.
- ``student`` (the official SAK recipe, ``models/mt_distiller.py:72-83``): the teacher receives the
  student's own tensor: the view normalized with ImageNet mean/std, centre-padded with 0 (normalized
  space) to the student input ``frame`` when smaller (official val ``PadImage``,
  ``datasets/custom_transforms.py:198-254``). ViTs take it as is (``none``); SAM alone is resized
  (``longest-bicubic``, :func:`sam_resize_pad`: official ``models/backbones/timm_encoders.py:14-28``).
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
from ...manifests.sizes import centre_offsets

#: Resize policies: native ones, then the student protocol's.
NATIVE_RESIZE = ("squash", "longest-pad")
STUDENT_RESIZE = ("none", "longest-bicubic")
RESIZE_POLICIES = NATIVE_RESIZE + STUDENT_RESIZE

#: ImageNet channel statistics (timm's IMAGENET_DEFAULT_MEAN/STD): DINOv2, SAM and the student.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: OpenAI CLIP's channel statistics (timm's OPENAI_CLIP_MEAN/STD, open_clip's defaults).
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: SAM's input side in the official protocol: built and fed at 1024 whatever the student's size.
SAM_SIDE = 1024


def rgb_triple(values: Iterable[float]) -> tuple[float, float, float]:
    """Per-channel mean or std as the floats :class:`Preprocess` keeps (timm and open_clip hand lists or tuples)."""
    return cast(tuple[float, float, float], tuple(float(v) for v in values))


@dataclass(frozen=True, kw_only=True)
class Preprocess(Config):
    """How an RGB uint8 image becomes the teacher's input tensor."""

    resolution: tuple[int, int]  # (H, W) of the teacher input
    resize: str = "squash"  # one of RESIZE_POLICIES (see the module docstring)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    frame: tuple[int, int] | None = None  # student protocol: the student's (H, W) input; None: native

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        student = self.resize in STUDENT_RESIZE
        if student != (self.frame is not None):
            need = "needs a student frame" if student else "takes no student frame"
            raise ConfigError(f"resize {self.resize!r} {need} (got frame {self.frame})")
        if self.resize == "none" and tuple(self.resolution) != tuple(self.frame or ()):
            raise ConfigError(f"resize 'none' feeds the student's tensor as is: resolution {self.resolution} must equal frame {self.frame}")

    @property
    def protocol(self) -> str:
        """``student`` (official: the student's tensor) or ``native`` (the teacher's own square)."""
        return "student" if self.frame is not None else "native"

    def __call__(self, rgb_hwc: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H', W') float32, normalized."""
        arr = np.ascontiguousarray(rgb_hwc)  # decoded images are often read-only views: copy those, never warn
        x = (torch.from_numpy(arr) if arr.flags.writeable else torch.tensor(arr)).permute(2, 0, 1).float().div_(255.0)
        return self.from_tensor(x)

    def from_tensor(self, x_chw: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float in [0, 1] -> (3, H', W') normalized teacher input."""
        if self.frame is not None:
            return self._student(x_chw)
        th, tw = self.resolution
        h, w = x_chw.shape[-2:]
        if self.resize == "squash":
            if (h, w) != (th, tw):
                x_chw = F.interpolate(x_chw[None], size=(th, tw), mode="bicubic", align_corners=False, antialias=True)[0]
            x_chw = x_chw.clamp_(0.0, 1.0)
        if self.resize == "longest-pad":
            side = max(th, tw)
            scale = side / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            x_chw = F.interpolate(x_chw[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
            x_chw = normalize(x_chw.clamp_(0.0, 1.0), self.mean, self.std)
            out = torch.zeros(3, th, tw, dtype=x_chw.dtype)
            out[:, : min(nh, th), : min(nw, tw)] = x_chw[:, :th, :tw]
            return out
        return normalize(x_chw, self.mean, self.std)

    def _student(self, x_chw: torch.Tensor) -> torch.Tensor:
        """The student's tensor (normalized, centre-padded to the frame), then SAM's resize when asked."""
        assert self.frame is not None
        fh, fw = self.frame
        h, w = int(x_chw.shape[-2]), int(x_chw.shape[-1])
        if h > fh or w > fw:
            raise ConfigError(
                f"image {h}x{w} is larger than the student input {fh}x{fw}: the official protocol only pads. "
                f"Pass --aug sak --aug-crop {fh}x{fw} (crops of the student size) or a larger --img-size"
            )
        x = normalize(x_chw, self.mean, self.std)
        if (h, w) != (fh, fw):
            out = x.new_zeros((x.shape[0], fh, fw))
            top, left = centre_offsets((h, w), (fh, fw))  # official PadImage
            out[:, top : top + h, left : left + w] = x
            x = out
        if self.resize == "longest-bicubic":
            return sam_resize_pad(x[None], max(self.resolution))[0]
        return x


def normalize(x_chw: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float]) -> torch.Tensor:
    """(x - mean) / std per channel (a new tensor)."""
    m = torch.tensor(mean, dtype=x_chw.dtype, device=x_chw.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x_chw.dtype, device=x_chw.device).view(3, 1, 1)
    return (x_chw - m) / s


def sam_resize_pad(x_bchw: torch.Tensor, side: int) -> torch.Tensor:
    """SAM's input as official (``timm_encoders.py:14-28``): longest side to ``side``, bicubic, no antialias, no clamp;
    sizes ``int(x * scale + 0.5)``; zeros padded at the bottom and right (0 in normalized space)."""
    h, w = int(x_bchw.shape[-2]), int(x_bchw.shape[-1])
    scale = side * 1.0 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    x = F.interpolate(x_bchw, size=(nh, nw), mode="bicubic", align_corners=False)
    return F.pad(x, (0, side - nw, 0, side - nh))


def student_preprocess(img_size: tuple[int, int], *, sam: bool) -> Preprocess:
    """The official protocol for a student input ``img_size``: ViTs take it as is, SAM at 1024 (``timm_encoders.py:126-129``)."""
    frame = (int(img_size[0]), int(img_size[1]))
    if sam:
        return Preprocess(resolution=(SAM_SIDE, SAM_SIDE), resize="longest-bicubic", frame=frame)
    return Preprocess(resolution=frame, resize="none", frame=frame)
