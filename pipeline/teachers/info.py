"""``TeacherInfo``: what a teacher is, known without building or downloading it.

The registry keeps one record per teacher name and alias, like timm's pretrained cfg beside
each entry point: width, patch size, depth, default layers, native input size and
preprocessing, prefix tokens. Parameter accounting (``sak-train describe``), store lookup and
``sak-cache teachers`` read it; :func:`~.registry.create_teacher` checks that the built
teacher reports the same facts (:attr:`~.base.Teacher.info`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...manifests.config import Config
from ...manifests.errors import ConfigError
from .preprocess import Preprocess


def default_layers(depth: int) -> tuple[int, ...]:
    """SAK's distilled blocks: 4 evenly spaced, ending at the last block.

    depth 12 (B/S) -> (2, 5, 8, 11); depth 24 (L) -> (5, 11, 17, 23); fewer than 4 blocks -> all.
    """
    if depth <= 4:
        return tuple(range(depth))
    return tuple(round(depth * (k + 1) / 4) - 1 for k in range(4))


@dataclass(frozen=True, kw_only=True)
class TeacherInfo(Config):
    """Metadata of one teacher; ``preprocess.resolution`` is its native (H, W) input size."""

    name: str  # full "<source>:<model>", e.g. "timm:vit_base_patch14_dinov2.lvd142m"
    width: int  # channels of each layer map
    patch_size: int
    depth: int  # transformer blocks
    default_layers: tuple[int, ...]
    preprocess: Preprocess  # native input size, resize policy ("longest-pad" for SAM), mean/std
    num_prefix_tokens: int  # class + register tokens before the patch tokens
    role: str = ""  # for aliases: the teacher's role in the SAK paper

    def __post_init__(self) -> None:
        source, sep, model = self.name.partition(":")
        if not sep or not source or not model:
            raise ConfigError(f"a teacher's full name looks like '<source>:<model>' (timm:vit_small_patch16_224), got {self.name!r}")
        for field in ("width", "patch_size", "depth"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"teacher {self.name}: {field} must be positive, got {getattr(self, field)}")
        if self.num_prefix_tokens < 0:
            raise ConfigError(f"teacher {self.name}: num_prefix_tokens must be >= 0, got {self.num_prefix_tokens}")
        bad = [i for i in self.default_layers if not 0 <= i < self.depth]
        if not self.default_layers or bad:
            raise ConfigError(
                f"teacher {self.name}: default_layers {list(self.default_layers)} must be non-empty block indices "
                f"in 0..{self.depth - 1}; SAK's choice is {list(default_layers(self.depth))}"
            )

    @property
    def source(self) -> str:
        """The source prefix (``timm``, ``open_clip``, ``test`` or a plugin's)."""
        return self.name.split(":", 1)[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """Native (H, W) input size."""
        return self.preprocess.resolution

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w) at the native input size."""
        h, w = self.preprocess.resolution
        return h // self.patch_size, w // self.patch_size
