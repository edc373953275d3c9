"""Image sizes: one parser for ``HxW`` (the CLI, the configs and the pipeline share it) and one centring rule.

``"448x576"`` -> (448, 576); a single side (``"512"``, ``512``) is a square; a pair
(``(448, 576)`` or a JSON list) passes through checked. Anything else is a
:class:`ConfigError` that shows the expected form.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ConfigError


def parse_hw(value: int | str | Sequence[int], what: str = "image size") -> tuple[int, int]:
    """``448x576``, ``512``, 512 or (448, 576) -> (H, W) with positive sides; ``what`` names it in errors."""
    try:
        if isinstance(value, int):
            parts = [value]
        elif isinstance(value, str):
            parts = [int(p) for p in value.lower().replace(",", "x").split("x")]
        else:
            parts = [int(p) for p in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not HxW or a single side, e.g. 448x576 or 512") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ConfigError(f"{what} {value!r} is not HxW or a single side, e.g. 448x576 or 512")
    return (parts[0], parts[1])


def centre_offsets(hw: Sequence[int], out_hw: Sequence[int]) -> tuple[int, int]:
    """(top, left) that centre an ``hw`` image in ``out_hw`` (or centre an ``out_hw`` crop in it, when larger).

    The official SAK ``PadImage`` rule (``custom_transforms.py:231-233``): the odd extra row or column
    goes to the bottom/right. Extraction (teacher inputs) and the val transform both use it.
    """
    return (int(out_hw[0]) - int(hw[0])) // 2, (int(out_hw[1]) - int(hw[1])) // 2
