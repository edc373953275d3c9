"""`sak-cache`: index datasets, extract teacher features once, inspect and maintain stores."""

from __future__ import annotations

import typer

from . import cache_extract, cache_index, cache_inspect, cache_share, cache_teachers
from .common import _main, set_debug, setup_logging, version_option, with_exit_codes

app = typer.Typer(
    name="sak-cache",
    help=(
        "Run each vision foundation-model teacher ONCE and cache its multi-layer features.\n\n"
        "Typical use:\n\n"
        "  sak-cache demo-data ./demo            # a small procedural NYUD-v2-format dataset\n\n"
        "  sak-cache index ./demo --cache ./cache --name nyud\n\n"
        "  sak-cache datasets --cache ./cache     # every indexed dataset: layout, root, splits, labels\n\n"
        "  sak-cache extract --teacher dinov2 --dataset nyud --cache ./cache\n\n"
        "  sak-cache ls --cache ./cache           # --json for scripts, --wide for one row per store\n\n"
        "  sak-cache teachers                    # every teacher name -t accepts, built-in and plugins\n\n"
        "Then train students from the cache with `sak-train --cache ./cache`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

cache_index.register(app)
cache_extract.register(app)
cache_inspect.register(app)
cache_share.register(app)
cache_teachers.register(app)
with_exit_codes(app)


@app.callback()
def options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging; an internal error also prints its traceback (as SAK_DEBUG=1 does)."),
    version: bool = version_option("sak-cache"),
) -> None:
    if verbose:
        setup_logging(True)
    else:
        set_debug(False)


def main() -> None:
    _main(app)


if __name__ == "__main__":
    main()
