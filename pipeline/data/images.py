"""Decode image files into RGB uint8 arrays, converting every mode we can and refusing the rest clearly.

Handled: RGB, RGBA/LA (composited on black), grayscale (L, 1, P), palette, CMYK, YCbCr,
16-bit and 32-bit integer / float grayscale (rescaled to 0..255 by their range).
Refused with :class:`BadImage`: missing, empty, truncated, not an image, decompression bombs.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from ...manifests.errors import BadImage

log = logging.getLogger(__name__)

#: Largest image accepted, in pixels (PIL's own default is ~89M; we keep the same order).
MAX_PIXELS = 89_478_485

# Never let PIL silently pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_rgb(img: Image.Image) -> np.ndarray:
    # np.array (not asarray): PIL hands out read-only buffers, and torch.from_numpy on those warns
    # and risks undefined behaviour downstream; one copy of a decoded image is cheap next to decoding.
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        gray = np.clip((arr - lo) * scale, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def open_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the header only; :class:`BadImage` if the file is not an image."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise BadImage(f"{path}: file not found. Re-index the dataset (sak-cache index) if it was moved.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{path}: refused as a decompression bomb ({exc}). Resize it below {MAX_PIXELS} pixels.") from None
    except Exception as exc:  # PIL raises many types for bad files
        raise BadImage(f"{path}: not a readable image ({type(exc).__name__}: {exc}). Replace or remove the file.") from None
    if w * h > MAX_PIXELS:
        raise BadImage(f"{path}: {w}x{h} exceeds {MAX_PIXELS} pixels (decompression-bomb guard). Resize it first.")
    return w, h


def decode_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a file to an (H, W, 3) uint8 array; :class:`BadImage` with the reason otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage(f"{path}: file is empty (0 bytes). Replace or remove the file.")
    except FileNotFoundError:
        raise BadImage(f"{path}: file not found. Re-index the dataset (sak-cache index) if it was moved.") from None
    open_image_size(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return _to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{path}: refused as a decompression bomb ({exc}).") from None
    except Exception as exc:
        raise BadImage(f"{path}: cannot decode ({type(exc).__name__}: {exc}); the file is probably truncated or corrupt.") from None
