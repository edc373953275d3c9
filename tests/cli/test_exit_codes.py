"""Exit codes of both tools (issue 14, item 7): 0 ok, 1 some items failed, 2 bad input / refused / environment,
3 internal error (a bug: one line naming the log file with the traceback), 130 interrupted. No traceback reaches
the terminal unless --verbose or SAK_DEBUG=1."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sak.cli import cache_inspect, train_eval
from sak.cli.cache import app as cache_app
from sak.cli.common import EXIT_CODES_HELP, environment_error
from sak.cli.train import app as train_app
from sak.manifests.version import __version__
from sak.pipeline.store import writer

runner = CliRunner()
BUG = re.compile(r"internal error: RuntimeError: boom\. This is a bug in sak (\S+); the full traceback is in (\S+\.log); "
                 r"please report it with that file")


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch) -> Path:
    """Internal-error logs go to $XDG_STATE_HOME/sak/logs: a fresh folder per test, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SAK_DEBUG", raising=False)
    return tmp_path / "state"


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _one_line(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines at the terminal width


def test_exit_0_both_tools(tmp_path) -> None:
    res = runner.invoke(cache_app, ["ls", "--cache", str(tmp_path / "empty")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(train_app, ["recipes"])
    assert res.exit_code == 0 and "s1-vitb" in res.output


def test_exit_1_when_some_items_failed(tmp_path) -> None:
    """sak-cache only: sak-train has no partial result (a run finishes or stops with 2 or 3)."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not an image")
    res = runner.invoke(cache_app, ["index", str(folder), "--cache", str(tmp_path / "cache"), "--name", "imgs"])
    assert res.exit_code == 1, res.output


def test_exit_2_on_a_sak_error_both_tools(tmp_path) -> None:
    res = runner.invoke(cache_app, ["info", "nothing", "--cache", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(train_app, ["eval", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "is not a training run" in res.output


@pytest.mark.parametrize("code,text", [(errno.ENOSPC, "no space left on the device holding"),
                                       (errno.EACCES, "permission denied on"),
                                       (errno.EROFS, "is on a read-only file system"),
                                       (errno.EDQUOT, "disk quota exceeded writing"),
                                       (errno.EMFILE, "too many open files")])
def test_exit_2_on_an_os_error_of_the_environment_both_tools(monkeypatch, tmp_path, code, text) -> None:
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "/data/cache/features/x/stats/seg.json")

    monkeypatch.setattr(cache_inspect, "scan_stores", fail)
    monkeypatch.setattr(train_eval, "evaluate", fail)
    for app, args in ((cache_app, ["ls", "--cache", str(tmp_path)]), (train_app, ["eval", str(tmp_path / "run")])):
        res = runner.invoke(app, args)
        msg = _one_line(res.output)
        assert res.exit_code == 2, res.output
        assert f"{text}" in msg and "/data/cache/features/x/stats/seg.json" in msg, msg
        assert "run the same command again; committed work is kept" in msg and "Traceback" not in msg


def test_an_os_error_wrapped_by_a_library_is_recognised() -> None:
    """pyarrow and zarr re-raise OS errors in their own types, keeping only the text."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/c/f")
        except OSError as exc:
            raise ValueError("write failed") from exc
    except ValueError as wrapped:
        assert environment_error(wrapped) == (errno.ENOSPC, "/c/f")
    assert environment_error(OSError("IOError: [Errno 28] writing part-x.parquet")) == (errno.ENOSPC, None)
    assert environment_error(RuntimeError("write: Permission denied")) == (errno.EACCES, None)
    assert environment_error(OSError(errno.ENOENT, "No such file or directory", "/x")) is None  # not the environment
    assert environment_error(RuntimeError("boom")) is None


def test_a_bug_raised_while_handling_an_os_error_is_still_a_bug() -> None:
    """An AttributeError raised in an ``except OSError`` block carries the ENOSPC as its context: it is a bug (exit 3
    with a report), not "free some space"."""
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/c/f")
        except OSError:
            None.missing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert exc.__context__ is not None and environment_error(exc) is None
    else:
        pytest.fail("no AttributeError")


@pytest.mark.parametrize("target,code", [("write_text_atomic", errno.EACCES), ("write_parquet_atomic", errno.ENOSPC)])
def test_stats_and_part_write_errors_exit_2_naming_the_file(demo_cache, monkeypatch, target, code) -> None:
    """Issue 14 item 7: EACCES / ENOSPC on the stats or part write of an extraction were tracebacks with exit 1.
    Simulated here (root bypasses permissions); tests/reliability/test_enospc.py fills a real tmpfs."""
    cache, _ = demo_cache

    def fail(*args, **kwargs):  # write_text_atomic(path, text), write_parquet_atomic(table, path, schema)
        raise OSError(code, os.strerror(code), str(args[0] if target == "write_text_atomic" else args[1]))

    monkeypatch.setattr(writer, target, fail)
    res = runner.invoke(cache_app, ["extract", "-t", "test:tiny", "--random-init", "--cache", str(cache), "--device",
                                    "cpu", "--segment-size", "4", "--limit", "4"])
    msg = _one_line(res.output)
    assert res.exit_code == 2, msg + repr(res.exception)
    name = "stats/" if target == "write_text_atomic" else "manifest/part-"
    assert re.search(rf"{re.escape(str(cache))}/features/\S+/{name}\S+ \({errno.errorcode[code]}\)", msg), msg
    assert "Traceback" not in msg


def test_exit_3_on_an_internal_error_with_the_traceback_in_a_log_file(monkeypatch, tmp_path, state_home) -> None:
    monkeypatch.setattr(cache_inspect, "scan_stores", _boom)
    monkeypatch.setattr(train_eval, "evaluate", _boom)
    logs = []
    for app, args in ((cache_app, ["ls", "--cache", str(tmp_path)]), (train_app, ["eval", str(tmp_path / "run")])):
        res = runner.invoke(app, args)
        msg = _one_line(res.output)
        assert res.exit_code == 3, msg
        m = BUG.search(msg)
        assert m and m.group(1) == __version__, msg
        assert "Traceback" not in res.output
        log = Path(m.group(2))
        assert log.parent == state_home / "sak" / "logs" and log.is_file()
        text = log.read_text()
        assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text and "_boom" in text
        logs.append(log)
    assert logs[0] != logs[1]  # one file per invocation


def test_sak_debug_and_verbose_print_the_traceback_too(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cache_inspect, "scan_stores", _boom)
    monkeypatch.setattr(train_eval, "evaluate", _boom)
    res = runner.invoke(train_app, ["--verbose", "eval", str(tmp_path / "run")])
    assert res.exit_code == 3 and "Traceback (most recent call last)" in res.output and BUG.search(_one_line(res.output))
    res = runner.invoke(cache_app, ["ls", "--cache", str(tmp_path)])
    assert res.exit_code == 3 and "Traceback" not in res.output  # --verbose of the last call does not stick
    res = runner.invoke(cache_app, ["ls", "--cache", str(tmp_path)], env={"SAK_DEBUG": "1"})
    assert res.exit_code == 3 and "Traceback (most recent call last)" in res.output


def test_exit_130_when_interrupted_both_tools(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cache_inspect, "scan_stores", _interrupt)
    monkeypatch.setattr(train_eval, "evaluate", _interrupt)
    for app, args in ((cache_app, ["ls", "--cache", str(tmp_path)]), (train_app, ["eval", str(tmp_path / "run")])):
        res = runner.invoke(app, args)
        assert res.exit_code == 130 and "committed work is kept" in res.output, res.output


def test_help_of_each_tool_and_command_documents_the_exit_codes() -> None:
    for app, args in ((cache_app, ["--help"]), (cache_app, ["extract", "--help"]), (train_app, ["--help"]),
                      (train_app, ["fit", "--help"])):
        res = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert res.exit_code == 0
        assert "Exit codes: 0 ok; 1 the job ran but some items failed" in _one_line(res.output)
        assert "3 internal error" in _one_line(res.output) and "130 interrupted" in _one_line(res.output)
    assert "[bold]" in EXIT_CODES_HELP  # rendered, not shown


RUN_WITH_A_BUG = """
import sys
from sak.cli import cache, cache_inspect
def boom(*a, **k):
    raise RuntimeError("boom")
cache_inspect.scan_stores = boom
sys.argv = ["sak-cache", "ls", "--cache", sys.argv[1]]
cache.main()
"""


def test_console_scripts_exit_codes_in_a_subprocess(tmp_path, state_home) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(state_home), "COLUMNS": "200"}
    env.pop("SAK_DEBUG", None)
    bug = subprocess.run([sys.executable, "-c", RUN_WITH_A_BUG, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bug.returncode == 3 and "Traceback" not in bug.stderr + bug.stdout, bug.stderr
    m = BUG.search(_one_line(bug.stderr))
    assert m and Path(m.group(2)).parent == state_home / "sak" / "logs", bug.stderr
    scripts = Path(sys.executable).parent
    refused = subprocess.run([str(scripts / "sak-train"), "eval", str(tmp_path / "nothing")], capture_output=True,
                             text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "is not a training run" in refused.stderr, refused.stderr
