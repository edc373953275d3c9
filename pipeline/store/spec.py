"""FeatureSpec: everything that changes the numbers in a feature store, and its short hash.

Two extractions with equal specs produce interchangeable features; anything that
would change a single stored value belongs here. ``spec_id`` names the store
directory, so a store is exactly one spec and two specs never share a store.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...manifests.config import Config
from ...manifests.errors import ConfigError

#: Bump when the on-disk layout or the meaning of a stored value changes.
FORMAT_VERSION = 1

DTYPES = ("float16", "bfloat16", "float32")
RESIZE_POLICIES = ("squash", "longest-pad")
AUG_POLICIES = ("none", "sak")


@dataclass(frozen=True, kw_only=True)
class FeatureSpec(Config):
    """The identity of one feature store.

    ``weights`` is ``hub:<timm or open_clip tag>``, ``file:<sha256 of the weights file>``
    or ``random-init:<seed>``; the last one is loudly reported by every command.
    """

    format_version: int = FORMAT_VERSION
    teacher: str  # canonical source name, e.g. "timm:vit_base_patch14_dinov2.lvd142m"
    weights: str
    layers: tuple[int, ...]
    resolution: tuple[int, int]  # (H, W) of the teacher input
    resize: str  # "squash": resize to resolution; "longest-pad": SAM's longest side + pad bottom/right
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    width: int  # channels of every stored layer map
    grid: tuple[int, int]  # (h, w) of every stored layer map
    num_prefix_tokens: int = 0  # CLS/register tokens the teacher emits
    keep_prefix: bool = False  # store them as prefix_<i>
    dtype: str = "float16"
    views: int = 1  # augmented views per image (1 with aug "none")
    aug: str = "none"  # augmentation policy for the views
    aug_seed: int = 0  # seed of the view sampler (views are a function of image sha256, view index and seed)
    aug_crop: tuple[int, int] | None = None  # (H, W) of augmented views; None = each image's own size

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"feature spec format version {self.format_version} is not supported by this sak "
                f"(supports {FORMAT_VERSION}); upgrade sak or extract again."
            )
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ConfigError(f"layers must be distinct non-negative block indices, got {self.layers}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.aug not in AUG_POLICIES:
            raise ConfigError(f"aug must be one of {AUG_POLICIES}, got {self.aug!r}")
        if self.views < 1:
            raise ConfigError(f"views must be >= 1, got {self.views}")
        if self.aug == "none" and self.views != 1:
            raise ConfigError("--views K > 1 needs an augmentation policy: pass --aug sak")
        if self.aug_crop is not None and (self.aug == "none" or min(self.aug_crop) <= 0):
            raise ConfigError(
                f"aug_crop {self.aug_crop} needs --aug sak and positive sizes; leave it unset without augmentation"
            )
        if min(self.resolution) <= 0 or min(self.grid) <= 0 or self.width <= 0:
            raise ConfigError(f"resolution, grid and width must be positive: {self.resolution}, {self.grid}, {self.width}")

    @property
    def spec_id(self) -> str:
        return self.config_hash(12)

    @property
    def random_init(self) -> bool:
        return self.weights.startswith("random-init")

    @property
    def short_teacher(self) -> str:
        """A filesystem-safe teacher name for the store directory."""
        arch = self.teacher.split(":", 1)[-1]
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in arch)

    @property
    def store_name(self) -> str:
        return f"{self.short_teacher}-{self.spec_id}"
