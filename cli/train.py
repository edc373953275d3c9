"""`sak-train`: train and evaluate SAK students from cached teacher features."""

from __future__ import annotations

import typer

from . import train_describe, train_eval, train_fit, train_predict
from .common import _main, with_exit_codes

app = typer.Typer(
    name="sak-train",
    help=(
        "Train the SAK multi-task student from a feature cache, many times, on any machine.\n\n"
        "  sak-train --cache ./cache             # defaults: the cache's dataset, every teacher store\n\n"
        "  sak-train fit --cache ./cache -t dinov2 -t sam -t clip --stage multitask --out runs/a\n\n"
        "  sak-train eval runs/a\n\n"
        "  sak-train predict runs/a photos/ --out preds\n\n"
        "  sak-train describe --backbone vit_base_patch16_384 --teacher dinov2,sam,clip"
    ),
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

train_describe.register(app)
train_fit.register(app)
train_eval.register(app)
train_predict.register(app)
with_exit_codes(app)


def main() -> None:
    _main(app)


if __name__ == "__main__":
    main()
