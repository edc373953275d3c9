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


def test_bug_report_falls_back_to_the_temp_folder_and_says_the_path(tmp_path, monkeypatch, capsys) -> None:
    """An internal error's log goes to $XDG_STATE_HOME/sak/logs; when that cannot be written, to the temp folder."""
    import os
    import tempfile
    from pathlib import Path

    from sak.cli.common import EXIT_INTERNAL, exit_code_of

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # $XDG_STATE_HOME is a file: its sak/logs cannot be created
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.delenv("SAK_DEBUG", raising=False)
    try:
        raise KeyError("missing")
    except KeyError as exc:
        assert exit_code_of(exc, "ls") == EXIT_INTERNAL
    err = " ".join(capsys.readouterr().err.split())
    logs = list((tmp_path / "tmp" / "sak-logs").iterdir())
    assert len(logs) == 1 and logs[0].name.endswith(f"-{os.getpid()}.log") and "-ls-" in logs[0].name
    assert "internal error: KeyError: 'missing'. This is a bug in sak" in err
    assert f"the full traceback is in {logs[0]}; please report it with that file" in err
    text = Path(logs[0]).read_text()
    assert text.startswith("sak ") and "command: " in text and "KeyError: 'missing'" in text and "Traceback" not in err
