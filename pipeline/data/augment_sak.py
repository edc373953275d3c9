"""The official SAK augmentation (``--aug sak``) as replayable views, and the official val padding.

Official stage-2 training (``datasets/custom_transforms.py:16-29``) runs, in order: RandomScaling
(s ~ U[0.5, 2), size ``int(h*s), int(w*s)``, image ``cv2.INTER_LINEAR``, labels
``cv2.INTER_NEAREST``, depth divided by s), RandomCrop (inclusive random offsets; while the semseg
crop has one class, or one class holds >= 75% of the non-255 pixels, draw again, at most 10
checks, the 11th location unchecked), a horizontal flip (p 0.5, normals x negated),
PhotoMetricDistortion (uint8; brightness, contrast first or last, OpenCV HSV saturation and hue,
the RGB->HSV->RGB round trip always), Normalize (ImageNet), PadImage (centred: image 0 after
normalization, semseg/edge/parts/saliency 255, depth and normals 0) and AddIgnoreRegions (depth 0,
zero normals and parts maps of only 0/255 ignored). Validation only normalizes and pads
(``:30-38``): labels are scored at their stored resolution.

A :class:`SakView` records every random choice of one view (drawn from a generator seeded by the
image sha256, the view index and the seed, plus the semseg label for the crop retry), so
extraction and training replay the same pixels. Images travel in [0, 1] (8-bit values / 255):
the padding is the ImageNet mean colour, which normalizes to exactly 0, as official. Depth and
normals pads (0) are sak's invalid values already, so they are ignored without a 255 rewrite.
OpenCV's arithmetic is reproduced in numpy (:mod:`.cvops`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ...manifests.config import Config
from ...manifests.errors import ConfigError
from ...manifests.sizes import centre_offsets
from ..tasks import get_task
from ..teachers.preprocess import IMAGENET_MEAN
from .augment_v1 import _check_hw, _tensor
from .cvops import HSV_SIMD_BLOCK, convert, hsv_to_rgb, nearest_index, resize_linear, rgb_to_hsv

POLICY = "sak"
VERSION = 2
SCALE_RANGE = (0.5, 2.0)  # custom_transforms.py:20
CAT_MAX_RATIO = 0.75  # :21
CROP_CHECKS = 10  # :168
BRIGHTNESS_DELTA = 32.0  # :330 (uint8 units)
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # OpenCV hue units (0..179): shift ~ randint(-18, 17)
IGNORE = 255


@dataclass(frozen=True, kw_only=True)
class SakView(Config):
    """One official view of one image: every random choice, to replay it exactly."""

    policy: str = POLICY
    version: int = VERSION
    view: int = 0
    image_hw: tuple[int, int]  # source image (H, W)
    out_hw: tuple[int, int]  # the view's size: crop size = student input
    scale: float = 1.0  # as drawn; depth is divided by it
    scaled_hw: tuple[int, int]  # (int(H * scale), int(W * scale))
    crop_tl: tuple[int, int] = (0, 0)  # (top, left) of the crop in the scaled image
    crop_draws: int = 1  # crop locations drawn (1 + retries of the max-class-ratio check)
    flip: bool = False
    contrast_first: bool = False  # contrast before the HSV steps (else after)
    brightness: float = 0.0  # beta added in uint8 units; 0 = off
    contrast: float = 1.0  # alpha; 1 = off
    saturation: float = 1.0  # S multiplier; 1 = off
    hue: int = 0  # added to H (mod 180); 0 = off
    hsv_block: int = HSV_SIMD_BLOCK  # OpenCV's HSV->RGB vector block (see cvops.hsv_to_rgb)

    def __post_init__(self) -> None:
        if self.policy != POLICY or self.version != VERSION:
            raise ConfigError(f"view policy {self.policy!r} version {self.version} is not sak's {POLICY!r} "
                              f"version {VERSION}: upgrade sak to read this store")
        if min(*self.image_hw, *self.out_hw, *self.scaled_hw) <= 0:
            raise ConfigError(f"view sizes must be positive: image {self.image_hw}, out {self.out_hw}, "
                              f"scaled {self.scaled_hw}")
        (sh, sw), (oh, ow), (top, left) = self.scaled_hw, self.out_hw, self.crop_tl
        if not (0 <= top <= max(sh - oh, 0) and 0 <= left <= max(sw - ow, 0)):
            raise ConfigError(f"crop at {self.crop_tl} does not fit a scaled image of {self.scaled_hw} "
                              f"cropped to {self.out_hw}")
        if not (self.contrast > 0 and self.saturation >= 0 and abs(self.hue) < 180
                and abs(self.brightness) <= 255 and self.crop_draws >= 1 and self.hsv_block >= 0):
            raise ConfigError(f"photometric parameters out of range: brightness={self.brightness}, "
                              f"contrast={self.contrast}, saturation={self.saturation}, hue={self.hue}")

    @property
    def crop_hw(self) -> tuple[int, int]:
        """Size of the part that comes from the image (a side shorter than the crop is kept whole)."""
        return min(self.out_hw[0], self.scaled_hw[0]), min(self.out_hw[1], self.scaled_hw[1])

    @property
    def pad_tl(self) -> tuple[int, int]:
        """Where the image part sits in the view (centred; an odd extra row/column goes bottom/right)."""
        return centre_offsets(self.crop_hw, self.out_hw)


def _rng(image_sha256: str, view: int, seed: int, stream: str) -> np.random.Generator:
    text = f"sak-view-v{VERSION}:{stream}:{image_sha256}:{int(view)}:{int(seed)}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:16], "little"))


def _crop_ok(semseg: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
    """Official check (``custom_transforms.py:169-173``): >1 class besides 255 and none with >= 75%."""
    crop = semseg[np.ix_(rows, cols)]
    _, counts = np.unique(crop[crop != IGNORE], return_counts=True)
    return len(counts) > 1 and counts.max() / counts.sum() < CAT_MAX_RATIO


def sample_sak_view(
    image_sha256: str,
    view: int,
    image_hw: tuple[int, int],
    *,
    seed: int = 0,
    crop_hw: tuple[int, int] | None = None,
    semseg: np.ndarray | None = None,
) -> SakView:
    """The ``view``-th official view of an image: a pure function of its arguments.

    ``crop_hw``: the view size (the student input; None: the image's size). ``semseg``: the
    image's decoded semseg label (H, W), which drives the crop retry; None (no semseg label)
    skips the retry, as official.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    oh, ow = (int(crop_hw[0]), int(crop_hw[1])) if crop_hw is not None else (h, w)
    if min(h, w, oh, ow) <= 0:
        raise ConfigError(f"image and crop sizes must be positive: image {image_hw}, crop {crop_hw}")
    rng = _rng(image_sha256, view, seed, "view")
    scale = float(rng.uniform(*SCALE_RANGE))
    sh, sw = (h, w) if scale == 1.0 else (max(1, int(h * scale)), max(1, int(w * scale)))
    flip, contrast_first = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    # every coin and value is drawn, used or not, so the stream layout never shifts
    coins = rng.random(4) < 0.5
    beta = float(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
    alpha = float(rng.uniform(*CONTRAST_RANGE))
    sat = float(rng.uniform(*SATURATION_RANGE))
    hue = int(rng.integers(-HUE_DELTA, HUE_DELTA))  # randint(-18, 17), both ends included
    crop_rng = _rng(image_sha256, view, seed, "crop")  # its draws depend on the label: a stream of its own

    def draw() -> tuple[int, int]:
        return int(crop_rng.integers(0, max(sh - oh, 0) + 1)), int(crop_rng.integers(0, max(sw - ow, 0) + 1))

    top, left = draw()
    draws = 1
    if semseg is not None:
        label = np.asarray(semseg)
        label = label[..., 0] if label.ndim == 3 else label
        if tuple(label.shape) != (h, w):
            raise ConfigError(f"semseg label is {label.shape} but the image is {(h, w)}: re-index the dataset")
        ri, ci = nearest_index(h, sh), nearest_index(w, sw)
        ch, cw = min(oh, sh), min(ow, sw)
        for _ in range(CROP_CHECKS):
            if _crop_ok(label, ri[top : top + ch], ci[left : left + cw]):
                break
            top, left = draw()
            draws += 1
    return SakView(
        view=view, image_hw=(h, w), out_hw=(oh, ow), scale=scale, scaled_hw=(sh, sw), crop_tl=(top, left),
        crop_draws=draws, flip=flip, contrast_first=contrast_first,
        brightness=beta if coins[0] else 0.0, contrast=alpha if coins[1] else 1.0,
        saturation=sat if coins[2] else 1.0, hue=hue if coins[3] else 0,
    )


def photometric(img: np.ndarray, p: SakView) -> np.ndarray:
    """Official PhotoMetricDistortion (``custom_transforms.py:377-399``) of an (H, W, 3) image -> uint8."""
    u8 = np.asarray(img).astype(np.uint8)  # float -> uint8 truncates, as official
    if p.brightness != 0.0:
        u8 = convert(u8, beta=p.brightness)
    if p.contrast_first and p.contrast != 1.0:
        u8 = convert(u8, alpha=p.contrast)
    hsv = rgb_to_hsv(u8)
    if p.saturation != 1.0:
        hsv[..., 1] = convert(hsv[..., 1], alpha=p.saturation)
    if p.hue != 0:
        hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + p.hue) % 180).astype(np.uint8)
    u8 = hsv_to_rgb(hsv, p.hsv_block)
    if not p.contrast_first and p.contrast != 1.0:
        u8 = convert(u8, alpha=p.contrast)
    return u8


def _mean01(dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(IMAGENET_MEAN, dtype=dtype).view(3, 1, 1)


def _window(p: SakView) -> tuple[slice, slice]:
    (top, left), (ch, cw) = p.crop_tl, p.crop_hw
    return slice(top, top + ch), slice(left, left + cw)


def apply_sak_image(img_chw: torch.Tensor | np.ndarray, p: SakView) -> torch.Tensor:
    """(3, H, W) 8-bit image in [0, 1] -> (3, *out_hw) view in [0, 1], padded with the mean colour."""
    x = _tensor(img_chw)
    if not x.is_floating_point():
        raise ConfigError(f"apply_view_image expects a float image in [0, 1], got dtype {x.dtype}")
    _check_hw(tuple(x.shape[-2:]), p, "image")
    hwc = np.rint(x.detach().cpu().float().permute(1, 2, 0).numpy() * np.float32(255.0)).astype(np.float32)
    rows, cols = _window(p)
    part = resize_linear(hwc, p.scaled_hw, rows, cols) if p.scaled_hw != p.image_hw else hwc[rows, cols]
    if p.flip:
        part = part[:, ::-1]
    view = torch.from_numpy(photometric(part, p)).permute(2, 0, 1).to(torch.float32).div_(255.0)
    return _pad(view, p.out_hw, p.pad_tl, _mean01(view.dtype))


def _pad(x_chw: torch.Tensor, out_hw: tuple[int, int], tl: tuple[int, int], fill: torch.Tensor) -> torch.Tensor:
    if tuple(x_chw.shape[-2:]) == tuple(out_hw):
        return x_chw.contiguous()
    out = fill.expand(x_chw.shape[0], *out_hw).clone()
    out[:, tl[0] : tl[0] + x_chw.shape[-2], tl[1] : tl[1] + x_chw.shape[-1]] = x_chw
    return out


def _finish_label(y: np.ndarray, task: str, out_hw: tuple[int, int], tl: tuple[int, int]) -> torch.Tensor:
    """Centre-pad an (h, w[, C]) label with the task's pad value, then the all-ignored rule."""
    spec = get_task(task)
    if y.shape[:2] != tuple(out_hw):
        out = np.full((*out_hw, *y.shape[2:]), spec.pad_value, dtype=y.dtype)
        out[tl[0] : tl[0] + y.shape[0], tl[1] : tl[1] + y.shape[1]] = y
        y = out
    if spec.all_ignored_if_only and spec.ignore_value is not None and np.isin(y, spec.all_ignored_if_only).all():
        y = np.full_like(y, spec.ignore_value)
    return torch.from_numpy(np.ascontiguousarray(y))


def apply_sak_label(label: torch.Tensor | np.ndarray, p: SakView, task: str) -> torch.Tensor:
    """(H, W) or (H, W, C) label -> the same layout at ``out_hw`` by the official rules (see the module docstring)."""
    spec = get_task(task)
    y = label.numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if y.ndim not in (2, 3):
        raise ConfigError(f"{task} label must be (H, W) or (H, W, C), got shape {tuple(y.shape)}")
    _check_hw(tuple(y.shape[:2]), p, f"{task} label")
    rows, cols = _window(p)
    (h, w), (sh, sw) = p.image_hw, p.scaled_hw
    ri = nearest_index(h, sh)[rows] if sh != h else np.arange(h)[rows]
    ci = nearest_index(w, sw)[cols] if sw != w else np.arange(w)[cols]
    y = y[np.ix_(ri, ci)]
    if spec.scale_values and p.scale != 1.0:
        y = (y / np.float32(p.scale)).astype(y.dtype)  # float32 map / float32(s), as numpy does official's `/=`
    if p.flip:
        y = y[:, ::-1].copy()
        for c in spec.flip_negate:
            if y.ndim == 2:
                y = -y
            else:
                y[..., c] = -y[..., c]
    return _finish_label(y, task, p.out_hw, p.pad_tl)


def _eval_tl(hw: tuple[int, int], out_hw: tuple[int, int], what: str) -> tuple[int, int]:
    (h, w), (oh, ow) = hw, out_hw
    if h > oh or w > ow:
        raise ConfigError(
            f"{what} is {h}x{w}, larger than the student input {oh}x{ow}. Evaluation scores labels at their "
            f"stored resolution, centre-padded to the input size, and never crops (official val transform). "
            f"Train with --img-size of at least {h}x{w} (a patch multiple), or set eval_resize=True in the run "
            "config to resize images and labels to the input size (sak before issue 12)."
        )
    return centre_offsets(hw, out_hw)


def pad_eval_image(img01_chw: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Official val transform of an image in [0, 1]: centre-padded to ``out_hw`` with the mean colour."""
    tl = _eval_tl((int(img01_chw.shape[-2]), int(img01_chw.shape[-1])), out_hw, "image")
    return _pad(img01_chw, out_hw, tl, _mean01(img01_chw.dtype))


def pad_eval_label(label: np.ndarray, out_hw: tuple[int, int], task: str) -> torch.Tensor:
    """Official val transform of an (H, W[, C]) label: centre-padded with the task's pad value, then the all-ignored rule."""
    y = np.asarray(label)
    return _finish_label(y, task, out_hw, _eval_tl((int(y.shape[0]), int(y.shape[1])), out_hw, f"{task} label"))
