"""CLI plumbing: error messages keep their text (rich markup is escaped)."""

from __future__ import annotations

import pytest
import typer

from sak.cli.common import EXIT_ERROR, friendly_errors, warn
from sak.manifests.errors import SakError


def test_errors_keep_bracketed_text(capsys) -> None:
    """issue 12 (10b): rich markup ate ``[head.bias, head.weight]`` from error messages."""

    @friendly_errors
    def boom() -> None:
        raise SakError("unexpected keys [head.bias, head.weight] ([bold]2[/bold] in all): drop them")

    with pytest.raises(typer.Exit) as info:
        boom()
    assert info.value.exit_code == EXIT_ERROR
    err = capsys.readouterr().err
    assert "[head.bias, head.weight]" in err and "[bold]2[/bold]" in err


def test_warnings_keep_bracketed_text(capsys) -> None:
    warn("student backbone [vit] starts from RANDOM weights")
    err = capsys.readouterr().err
    assert "WARNING:" in err and "[vit]" in err
