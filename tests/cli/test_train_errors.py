"""Issue 16 item 5 (train side): an error raised while fit sets up prints alone, not under an empty live view, and
log records keep their bracketed text (the RichHandler reads no markup)."""

from __future__ import annotations

import logging

from typer.testing import CliRunner

from sak.cli.common import setup_logging
from sak.cli.train import app as train_app

runner = CliRunner()


def test_a_setup_error_prints_without_an_empty_live_view(demo_cache, tmp_path) -> None:
    cache, _ = demo_cache  # indexed, no feature store: fit refuses in its setup
    res = runner.invoke(train_app, ["fit", "--cache", str(cache), "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert res.exit_code == 2 and "no feature stores in" in res.output
    assert "loss part" not in res.output and "training" not in res.output.split("error:")[0]


def test_log_records_keep_bracketed_text(capsys) -> None:
    setup_logging()
    logging.getLogger("sak.test").warning("missing keys [blocks.0.attn.qkv.weight, pos_embed, ...] (54 in all)")
    assert "missing keys [blocks.0.attn.qkv.weight, pos_embed, ...] (54 in all)" in capsys.readouterr().err
