"""The teacher adapter interface: preprocessing owned by the model, per-layer maps out.

An adapter wraps a frozen vision model. It owns its preprocessing (so a spec can
never pair a model with the wrong mean/std or resize policy), and returns, for the
requested block indices, patch-token maps shaped (B, h, w, C) plus optional
prefix (CLS/register) tokens shaped (B, p, C).
"""

from __future__ import annotations

import torch

from ...manifests.errors import ConfigError
from .info import TeacherInfo, default_layers
from .preprocess import Preprocess

__all__ = ["Preprocess", "Teacher", "default_layers"]


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
    def info(self) -> TeacherInfo:
        """This teacher's facts as the registry records them (``role`` empty): equal to ``teacher_info(name)`` at the native size."""
        return TeacherInfo(
            name=self.name,
            width=self.width,
            patch_size=self.patch_size,
            depth=self.num_blocks,
            default_layers=tuple(self.default_layers),
            preprocess=self.preprocess,
            num_prefix_tokens=self.num_prefix_tokens,
        )

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
