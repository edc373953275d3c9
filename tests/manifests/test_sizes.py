"""parse_hw: the one HxW parser of the CLI, the configs and the pipeline."""

from __future__ import annotations

import pytest

from sak.manifests.errors import ConfigError
from sak.manifests.sizes import parse_hw


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
