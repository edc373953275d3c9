"""Shared CLI plumbing: one rich console, logging, and SakError -> clean message + exit code."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from ..manifests.errors import ConfigError, SakError
from ..manifests.sizes import parse_hw

console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes: 0 ok, 1 the job ran but some items failed, 2 bad input / refused.
EXIT_PARTIAL = 1
EXIT_ERROR = 2


def setup_logging(verbose: bool = False) -> None:
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


def friendly_errors(fn: F) -> F:
    """Turn a :class:`SakError` into a one-paragraph message and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SakError as exc:
            print_error(exc)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: committed work is kept; run the same command again to resume.")
            raise typer.Exit(130) from None

    return cast(F, wrapper)  # functools.wraps keeps fn's signature


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


def _main(app: typer.Typer) -> None:
    try:
        app()
    except SakError as exc:  # raised outside a wrapped command (e.g. in a callback)
        print_error(exc)
        sys.exit(EXIT_ERROR)
