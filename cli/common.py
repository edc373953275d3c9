"""Shared CLI plumbing: one rich console, logging, and every exception -> one clear message + exit code.

What reaches a command is one of three things (:func:`friendly_errors`):

* a :class:`SakError`: its message (it says the fix), exit 2;
* an ``OSError`` of the user's environment (disk full, quota, permissions, read-only file system,
  too many open files; found on the exception or anywhere in its cause chain): what happened to
  which path and what to do, exit 2;
* anything else is a bug: one ``internal error: ...`` line that names the log file holding the
  full traceback (``$XDG_STATE_HOME/sak/logs/``, else ``~/.local/state/sak/logs/``), exit 3. The
  traceback reaches the terminal only with ``--verbose`` or ``SAK_DEBUG=1``.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from typer.exceptions import TyperException

from ..manifests.errors import ConfigError, SakError
from ..manifests.sizes import parse_hw
from ..manifests.version import __version__

console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes (documented in every tool's --help, see EXIT_CODES_HELP).
EXIT_OK = 0
EXIT_PARTIAL = 1  # the job ran, but some items failed (or verify found damage)
EXIT_ERROR = 2  # bad input, refused, or the environment (disk full, permissions): the message says the fix
EXIT_INTERNAL = 3  # a bug in sak: the message names the log file with the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C (committed work is kept)

EXIT_CODES_HELP = (
    "[bold]Exit codes:[/] 0 ok; 1 the job ran but some items failed (or verify found damage); "
    "2 bad input, refused, or the environment (disk full, permissions, read-only file system): the message says "
    "the fix; 3 internal error, a bug in sak (the message names the log file with the traceback; "
    "SAK_DEBUG=1 also prints it); 130 interrupted (committed work is kept)."
)

#: set by setup_logging(verbose=True): internal errors also print their traceback
_debug = [False]


def debug_tracebacks() -> bool:
    """Whether internal errors print their traceback on the terminal too (--verbose or SAK_DEBUG=1)."""
    return _debug[0] or os.environ.get("SAK_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def set_debug(verbose: bool) -> None:
    _debug[0] = verbose


def setup_logging(verbose: bool = False) -> None:
    set_debug(verbose)
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=console, show_path=False, show_time=False, markup=False))
    root.setLevel(logging.WARNING)
    logging.getLogger("sak").setLevel(level)


def print_error(exc: BaseException) -> None:
    """``error: <message>`` on stderr; the message is escaped, so ``[head.bias, head.weight]`` stays visible."""
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A loud yellow ``WARNING:`` line on stderr (the message is escaped, never read as markup)."""
    console.print(f"[bold yellow]WARNING:[/] [yellow]{escape(message)}[/]", highlight=False, soft_wrap=True)


def deprecated(old: str, new: str) -> None:
    """The one-line warning of an old spelling that still works (a hidden option or command): names the new one."""
    warn(f"{old} is deprecated and will be removed: use {new}")


def version_option(prog: str) -> Any:
    """A ``--version`` option for a tool's callback: prints ``<prog> <version>`` (the installed distribution's) and exits."""

    def show(value: bool) -> None:
        if value:
            out.print(f"{prog} {__version__}", highlight=False, markup=False)
            raise typer.Exit(0)

    return typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version of sak and exit.")


#: errno -> (what happened to the path, what to do): the user's environment, not a bug in sak
ENVIRONMENT_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device holding {path}", "free space there (or use a bigger disk)"),
    errno.EDQUOT: ("disk quota exceeded writing {path}", "free space within your quota (or ask for a bigger one)"),
    errno.EACCES: ("permission denied on {path}", "give your user access to it (ls -l shows its owner and mode) "
                   "or use a location you can write"),
    errno.EPERM: ("operation not permitted on {path}", "give your user access to it (ls -l shows its owner and mode) "
                  "or use a location you can write"),
    errno.EROFS: ("{path} is on a read-only file system", "use a writable location (or remount it read-write)"),
    errno.EMFILE: ("too many open files (at {path})", "raise the open-file limit (ulimit -n 65536)"),
    errno.ENFILE: ("the system ran out of open files (at {path})", "close other programs or raise fs.file-max"),
}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or during (each once)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


#: Exception types that are programming errors even when raised while an OS error was being handled.
_BUG_TYPES = (AttributeError, NameError, TypeError, KeyError, IndexError, AssertionError, ZeroDivisionError, RecursionError)


def environment_error(exc: BaseException) -> tuple[int, str | None] | None:
    """(errno, path or None) when ``exc`` or its cause is an OS error of the user's environment, else None.

    Libraries re-raise OS errors in their own types (pyarrow, zarr, dask); their message keeps
    ``[Errno N]`` or the OS's text, so both are recognised. A programming error (``AttributeError``,
    ``KeyError``, ...) is a bug even when it happened while an OS error was being handled.
    """
    if isinstance(exc, _BUG_TYPES):
        return None
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRORS:
            path = e.filename if e.filename is not None else e.filename2
            return e.errno, None if path is None else os.fsdecode(path)
    for e in _chain(exc):
        text = str(e)
        m = _ERRNO_TEXT.search(text)
        if m and int(m.group(1)) in ENVIRONMENT_ERRORS:
            return int(m.group(1)), None
        for code in ENVIRONMENT_ERRORS:
            if os.strerror(code) in text:
                return code, None
    return None


def environment_message(code: int, path: str | None) -> str:
    """The message for an OS error of the environment: what happened, to which path, and what to do."""
    what, fix = ENVIRONMENT_ERRORS[code]
    where = path if path is not None else "a file sak was writing (the OS did not say which)"
    return (f"{what.format(path=where)} ({errno.errorcode.get(code, code)}): {fix}, then run the same command again; "
            "committed work is kept (extract and compact skip what is done, sak-train fit continues with --resume)")


def log_dir() -> Path:
    """Where internal-error reports go: ``$XDG_STATE_HOME/sak/logs``, else ``~/.local/state/sak/logs``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "sak" / "logs"


def write_bug_report(exc: BaseException, command: str) -> Path | None:
    """Write the traceback and the context of an internal error to a new log file; returns its path (in the
    system temp folder when the state folder cannot be written; None when no folder can be)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', command).strip('-') or 'sak'}-{stamp}-{os.getpid()}.log"
    text = (f"sak {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
            f"command: {' '.join(sys.argv)}\ntime (UTC): {stamp}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "sak-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def report_internal_error(exc: BaseException, command: str = "sak") -> None:
    """One bug-report line on stderr naming the log file with the traceback (printed too under --verbose)."""
    path = write_bug_report(exc, command)
    if path is None or debug_tracebacks():
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    where = "printed above (no log folder was writable)" if path is None else f"in {path}"
    message = str(exc).strip() or "(no message)"
    console.print(f"[bold red]internal error:[/] {escape(type(exc).__name__)}: {escape(message)}. This is a bug in sak "
                  f"{__version__}; the full traceback is {escape(where)}; please report it with that file",
                  highlight=False, soft_wrap=True)


def exit_code_of(exc: BaseException, command: str = "") -> int:
    """Print what the user needs to see about ``exc`` and return the exit code (see EXIT_CODES_HELP)."""
    if isinstance(exc, SakError):
        print_error(exc)
        return EXIT_ERROR
    if isinstance(exc, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]: committed work is kept; run the same command again to resume.")
        return EXIT_INTERRUPTED
    env = environment_error(exc)
    if env is not None:
        console.print(f"[bold red]error:[/] {escape(environment_message(*env))}", highlight=False, soft_wrap=True)
        return EXIT_ERROR
    report_internal_error(exc, " ".join(filter(None, (Path(sys.argv[0]).name, command))))
    return EXIT_INTERNAL


def friendly_errors(fn: F) -> F:
    """Run a command so that no traceback reaches the terminal: every exception becomes a message and an exit
    code (:func:`exit_code_of`); typer's own exits and usage errors pass through. Options declared with
    :func:`renamed` reach the command under their new name (:func:`accept_renamed`)."""
    fn = accept_renamed(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(exit_code_of(exc, fn.__name__)) from None

    wrapper._friendly = True  # type: ignore[attr-defined]
    return cast(F, wrapper)  # functools.wraps keeps fn's signature


#: the help of every STORE argument: what the one resolver (sak.pipeline.store.catalog.resolve_store) accepts
STORE_HELP = ("A store directory or URL, or inside --cache: a store name, a teacher name as extract -t took it (dinov2, "
              "timm:vit_tiny_patch16_224), NAME@RES to pick an input size, or a unique store-name prefix.")


#: attribute marking an OptionInfo made by renamed(): (old spelling, new spelling)
_RENAMED = "_sak_renamed"


def renamed(old: str, new: str, *also: str) -> Any:
    """The old spelling ``old`` of option ``new`` as a hidden option: one line in a command's signature.

    ``teachers_old: str | None = renamed("--teachers", "--teacher")`` accepts ``--teachers a,b``, logs a
    one-line deprecation warning naming ``--teacher``, and hands the value to the parameter of
    ``--teacher`` (a one-item list when that one is repeatable); giving both spellings is a usage
    error. ``also``: more old spellings of the same option (a short flag: ``renamed("--workers", "--threads", "-w")``).
    The command must run under :func:`friendly_errors` (every registered command does).
    """
    info = typer.Option(None, old, *also, hidden=True, help=f"Deprecated spelling of {new}.")
    setattr(info, _RENAMED, (old, new))
    return info


def renamed_options(fn: Callable[..., Any]) -> dict[str, tuple[str, str, str, str]]:
    """{old parameter: (new parameter, old spelling, new spelling, new parameter's kind)} of a command's
    :func:`renamed` options; kind is ``list`` for a repeatable option."""
    params = inspect.signature(fn).parameters
    flags = {decl: name for name, p in params.items()
             for decl in (getattr(p.default, "param_decls", None) or ()) if decl.startswith("-")}
    found = {}
    for name, p in params.items():
        spelled = getattr(p.default, _RENAMED, None)
        if spelled is not None:
            old, new = spelled
            if new not in flags:
                raise TypeError(f"{fn.__name__}: renamed({old!r}, {new!r}) names no option of the command")
            target = flags[new]
            kind = "list" if str(params[target].annotation).replace(" ", "").startswith(("list[", "list|")) else "one"
            found[name] = (target, old, new, kind)
    return found


def accept_renamed(fn: F) -> F:
    """Hand each :func:`renamed` option's value to its new parameter (the command never sees the old one)."""
    if getattr(fn, "_renames", None) is not None:
        return fn
    renames = renamed_options(fn)
    if not renames:
        return fn
    defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, (target, old, new, kind) in renames.items():
            value = kwargs.pop(name, None)
            if value is None:
                continue
            default = getattr(defaults[target], "default", defaults[target])
            if kwargs.get(target) not in (default, None, [], ()):
                raise typer.BadParameter(f"pass {new} only ({old} is its old spelling)", param_hint=old)
            deprecated(old, new)
            kwargs[target] = [value] if kind == "list" else value
        return fn(*args, **kwargs)

    wrapper._renames = renames  # type: ignore[attr-defined]
    return cast(F, wrapper)


def parse_int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    """Parse '2,5,8,11' into (2, 5, 8, 11); None stays None."""
    if text is None or text == "":
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip() != "")
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers like 2,5,8,11, got {text!r}") from None


def parse_str_list(text: str | None) -> tuple[str, ...] | None:
    if text is None or text == "":
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_names(values: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """A repeatable option's values, each of which may be a comma list: ``-t a,b -t c`` -> ("a", "b", "c")."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else values
    return tuple(name for item in items for name in (parse_str_list(item) or ()))


def parse_hw_option(text: str | None, option: str) -> tuple[int, int] | None:
    """Parse an ``HxW`` option ('448x576', or '512' for a square) with the project's one parser; empty -> None."""
    if text is None or text == "":
        return None
    try:
        return parse_hw(text, option)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None


def exit_code_for(failed: int) -> int:
    return EXIT_PARTIAL if failed else 0


def reflow(doc: str) -> str:
    """A command docstring for rich help: each prose paragraph on one line (rich keeps a docstring's line breaks,
    which then fall mid-sentence at the terminal's width); indented paragraphs (examples) stay as written."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith((" ", "\b")) else " ".join(line.strip() for line in p.splitlines())
                       for p in paragraphs)


def with_exit_codes(app: typer.Typer) -> None:
    """Every command of ``app`` runs under :func:`friendly_errors` (no traceback, documented exit codes) and its
    --help, like the tool's, ends with EXIT_CODES_HELP. Call it after the commands are registered."""
    app.info.epilog = EXIT_CODES_HELP
    for command in app.registered_commands:
        command.epilog = command.epilog or EXIT_CODES_HELP
        doc = command.help or (command.callback.__doc__ if command.callback is not None else None)
        if doc:
            command.help = reflow(doc)
        if command.callback is not None and not getattr(command.callback, "_friendly", False):
            command.callback = friendly_errors(command.callback)


def _main(app: typer.Typer) -> None:
    try:
        app()
    except (Exception, KeyboardInterrupt) as exc:  # raised outside a wrapped command (e.g. in a callback)
        sys.exit(exit_code_of(exc))
