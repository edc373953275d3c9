"""parse_hw: the one HxW parser of the CLI, the configs and the pipeline."""

from __future__ import annotations

import pytest

from sak.manifests.errors import ConfigError
from sak.manifests.sizes import centre_offsets, parse_hw


@pytest.mark.parametrize("value, hw", [
    ("448x576", (448, 576)), ("448X576", (448, 576)), (" 448 x 576 ", (448, 576)), ("448,576", (448, 576)),
    ("512", (512, 512)), (512, (512, 512)), ((448, 576), (448, 576)), ([64, 80], (64, 80)),
])
def test_accepted_forms(value, hw) -> None:
    assert parse_hw(value) == hw


@pytest.mark.parametrize("value", ["", "448x", "x576", "448x576x3", "axb", "0x4", "-4x4", (4, 0), (1, 2, 3), None])
def test_refused_forms_name_the_option_and_the_expected_form(value) -> None:
    with pytest.raises(ConfigError, match=r"--aug-crop .* is not HxW or a single side, e.g. 448x576 or 512"):
        parse_hw(value, "--aug-crop")


def test_centre_offsets_put_the_odd_row_and_column_bottom_right() -> None:
    # official PadImage (custom_transforms.py:231-233): top = delta_h // 2, left = delta_w // 2
    assert centre_offsets((4, 6), (5, 9)) == (0, 1)
    assert centre_offsets((448, 576), (448, 576)) == (0, 0)
    assert centre_offsets((375, 500), (512, 512)) == (68, 6)
