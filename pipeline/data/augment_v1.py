"""The ``sak-v1`` views: sak's own augmentation before issue 12, kept so old stores replay exactly.

Stores extracted with ``--aug sak`` before issue 12 hold these views (JSON without a ``policy``
key); :mod:`sak.pipeline.data.augment` dispatches them here. New extractions get them with
``--aug sak-v1``. Padding and the depth scale rule are the tasks' ``v1_pad_value`` /
``v1_scale_values`` (the rules these views were written with), not the official ones.

A view is a :class:`ViewParams` record (stored as canonical JSON in the commit row's
``view_params``). It is sampled deterministically from (image sha256, view index, seed)
with a hash-seeded numpy Generator (never a global RNG), so extraction and training agree
on every view without talking to each other, and the trainer replays exactly the
augmentation whose teacher features were cached.

The policy, in this order (mmseg-style, as sak read SAK before checking the official code):
1. scale the image by s ~ U(0.5, 2.0) (bilinear, antialiased; labels: nearest);
2. crop ``crop_hw`` at a uniform random position; where the scaled image is smaller, it is
   kept at the top-left and padded bottom/right;
3. horizontal flip with p = 0.5 (the mirrored normals' x component is negated);
4. photometric distortion (image only): brightness delta U(-32/255, 32/255), contrast factor
   U(0.5, 1.5) either right after brightness or last, saturation factor U(0.5, 1.5),
   hue shift U(-0.1, 0.1) turns (18 of OpenCV's 180 hue units); each applied with p = 0.5,
   values clamped to [0, 1] after every step;
5. pad to ``crop_hw``: image 0, labels with their task's v1 pad value (class maps 255 =
   ignore, the other built-in tasks 0).

What a flip or a scale does to a label (channels negated, values divided by the scale) and the
pad value are the task's rules (:mod:`sak.pipeline.tasks`); labels are always resampled nearest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...manifests.config import Config
from ...manifests.errors import ConfigError
from ..tasks import get_task

SCALE_RANGE = (0.5, 2.0)
FLIP_P = 0.5
PHOTO_P = 0.5
BRIGHTNESS_DELTA = 32 / 255
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 0.1  # turns


@dataclass(frozen=True, kw_only=True)
class ViewParams(Config):
    """One augmented view of one image; everything needed to replay it exactly."""

    view: int = 0
    image_hw: tuple[int, int]  # (H, W) of the source image the view was sampled for
    scale: float = 1.0  # informative; the geometry uses scaled_hw
    scaled_hw: tuple[int, int]  # (H, W) after scaling
    crop_box: tuple[int, int, int, int]  # (top, left, height, width) in the scaled image; height/width = out size
    flip: bool = False
    brightness: float = 0.0  # additive delta in [0, 1] units; 0 = off
    contrast: float = 1.0  # multiplicative factor; 1 = off
    saturation: float = 1.0  # blend factor with the grayscale image; 1 = off
    hue: float = 0.0  # hue shift in turns; 0 = off
    contrast_last: bool = False  # contrast after hue (True) or right after brightness (False)

    def __post_init__(self) -> None:
        if min(self.image_hw) <= 0 or min(self.scaled_hw) <= 0:
            raise ConfigError(f"view sizes must be positive: image_hw={self.image_hw}, scaled_hw={self.scaled_hw}")
        top, left, h, w = self.crop_box
        sh, sw = self.scaled_hw
        if h <= 0 or w <= 0 or not 0 <= top <= max(0, sh - h) or not 0 <= left <= max(0, sw - w):
            raise ConfigError(f"crop_box {self.crop_box} does not fit a scaled image of {self.scaled_hw}")
        if self.contrast <= 0 or self.saturation < 0 or abs(self.hue) > 0.5 or abs(self.brightness) > 1:
            raise ConfigError(
                f"photometric parameters out of range: brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue}"
            )

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.crop_box[2], self.crop_box[3]

    @property
    def valid_hw(self) -> tuple[int, int]:
        """Size of the part of the view that comes from the image (the rest is padding)."""
        top, left, h, w = self.crop_box
        return min(h, self.scaled_hw[0] - top), min(w, self.scaled_hw[1] - left)


def identity_view(image_hw: tuple[int, int], *, view: int = 0) -> ViewParams:
    """The whole image, unscaled, unflipped, no photometric change."""
    h, w = int(image_hw[0]), int(image_hw[1])
    return ViewParams(view=view, image_hw=(h, w), scale=1.0, scaled_hw=(h, w), crop_box=(0, 0, h, w))


def _rng(image_sha256: str, view: int, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"sak-view:{image_sha256}:{int(view)}:{int(seed)}".encode("ascii")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def sample_view_v1(
    image_sha256: str,
    view: int,
    image_hw: tuple[int, int],
    *,
    seed: int = 0,
    crop_hw: tuple[int, int] | None = None,
) -> ViewParams:
    """The ``view``-th ``sak-v1`` view of an image; a pure function of its arguments.

    ``crop_hw`` is the view size (H, W); None keeps the image's own size.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    ch, cw = (int(crop_hw[0]), int(crop_hw[1])) if crop_hw is not None else (h, w)
    if min(h, w, ch, cw) <= 0:
        raise ConfigError(f"image and crop sizes must be positive: image {image_hw}, crop {crop_hw}")
    rng = _rng(image_sha256, view, seed)
    scale = float(rng.uniform(*SCALE_RANGE))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    top = int(rng.integers(0, sh - ch + 1)) if sh > ch else 0
    left = int(rng.integers(0, sw - cw + 1)) if sw > cw else 0
    flip = bool(rng.random() < FLIP_P)
    # Every coin and value is drawn whether used or not, so the stream layout never shifts.
    coins = rng.random(4) < PHOTO_P
    values = (
        rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
        rng.uniform(*CONTRAST_RANGE),
        rng.uniform(*SATURATION_RANGE),
        rng.uniform(-HUE_DELTA, HUE_DELTA),
    )
    contrast_last = bool(rng.random() < 0.5)
    b, c, s, hue = (round(float(v), 6) if on else ident for v, on, ident in zip(values, coins, (0.0, 1.0, 1.0, 0.0), strict=True))
    return ViewParams(
        view=view, image_hw=(h, w), scale=round(scale, 6), scaled_hw=(sh, sw), crop_box=(top, left, ch, cw),
        flip=flip, brightness=b, contrast=c, saturation=s, hue=hue, contrast_last=contrast_last,
    )


def _tensor(a: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Tensor view of an array; read-only numpy arrays (decoded files) are copied instead of warned about."""
    if isinstance(a, np.ndarray):
        a = np.ascontiguousarray(a)
        return torch.from_numpy(a) if a.flags.writeable else torch.tensor(a)
    return torch.as_tensor(a)


def _check_hw(hw: tuple[int, ...], params: Any, what: str) -> None:
    """``params`` is any view with an ``image_hw`` (this policy's or the official one)."""
    if tuple(hw) != tuple(params.image_hw):
        raise ConfigError(
            f"{what} is {tuple(hw)} but the view was sampled for an image of {params.image_hw}; "
            "the dataset manifest and the cached view disagree: re-index or extract again."
        )


def _photometric(x: torch.Tensor, p: ViewParams) -> torch.Tensor:
    def contrast(t: torch.Tensor) -> torch.Tensor:
        return (t * p.contrast).clamp_(0.0, 1.0) if p.contrast != 1.0 else t

    if p.brightness != 0.0:
        x = (x + p.brightness).clamp_(0.0, 1.0)
    if not p.contrast_last:
        x = contrast(x)
    if p.saturation != 1.0 or p.hue != 0.0:
        from torchvision.transforms.v2 import functional as TF

        if p.saturation != 1.0:
            x = TF.adjust_saturation(x, p.saturation).clamp_(0.0, 1.0)
        if p.hue != 0.0:
            x = TF.adjust_hue(x, p.hue).clamp_(0.0, 1.0)
    if p.contrast_last:
        x = contrast(x)
    return x


def apply_image_v1(img_chw: torch.Tensor | np.ndarray, params: ViewParams) -> torch.Tensor:
    """(3, H, W) float image in [0, 1] -> (3, h, w) view, h, w = ``params.out_hw``."""
    x = src = _tensor(img_chw)
    if not x.is_floating_point():
        raise ConfigError(f"apply_view_image expects a float image in [0, 1], got dtype {x.dtype}")
    _check_hw(tuple(x.shape[-2:]), params, "image")
    if tuple(params.scaled_hw) != tuple(params.image_hw):
        x = F.interpolate(x[None], size=params.scaled_hw, mode="bilinear", align_corners=False, antialias=True)[0]
        x = x.clamp_(0.0, 1.0)
    top, left, h, w = params.crop_box
    vh, vw = params.valid_hw
    x = x[:, top : top + vh, left : left + vw]
    if params.flip:
        x = x.flip(-1)
    x = _photometric(x, params)
    if (vh, vw) == (h, w):
        shares_input = x.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()
        return x.clone(memory_format=torch.contiguous_format) if shares_input else x.contiguous()
    out = x.new_zeros((x.shape[0], h, w))
    out[:, :vh, :vw] = x
    return out


def _nearest_index(src: int, dst: int, device: torch.device) -> torch.Tensor:
    """Source index of each destination pixel for a nearest resize with pixel-centre alignment."""
    i = torch.arange(dst, device=device)
    return ((2 * i + 1) * src) // (2 * dst)


def apply_label_v1(label: torch.Tensor | np.ndarray, params: ViewParams, task: str) -> torch.Tensor:
    """(H, W) or (H, W, C) label -> the same layout at ``params.out_hw``; nearest, by the task's rules.

    Padding takes the task's v1 pad value (class maps 255 = ignore, built-in maps 0); on a flip
    the task's ``flip_negate`` channels change sign (the normals' x component); a task whose v1
    rule scales values has them divided by the view's scale.
    """
    spec = get_task(task)
    y = _tensor(label)
    if y.ndim not in (2, 3):
        raise ConfigError(f"{task} label must be (H, W) or (H, W, C), got shape {tuple(y.shape)}")
    _check_hw(tuple(y.shape[:2]), params, f"{task} label")
    top, left, h, w = params.crop_box
    vh, vw = params.valid_hw
    rows = _nearest_index(params.image_hw[0], params.scaled_hw[0], y.device)[top : top + vh]
    cols = _nearest_index(params.image_hw[1], params.scaled_hw[1], y.device)[left : left + vw]
    y = y.index_select(0, rows).index_select(1, cols)
    scale_values = spec.scale_values if spec.v1_scale_values is None else spec.v1_scale_values
    if scale_values and params.scale != 1.0:
        y = y / params.scale
    if params.flip:
        y = y.flip(1)
        for c in spec.flip_negate:
            if y.ndim == 2:  # a one-channel map
                y = -y
            else:
                y[..., c] = -y[..., c]
    if (vh, vw) == (h, w):
        return y.contiguous()
    pad = spec.pad_value if spec.v1_pad_value is None else spec.v1_pad_value
    out = torch.full((h, w, *y.shape[2:]), pad, dtype=y.dtype, device=y.device)
    out[:vh, :vw] = y
    return out
