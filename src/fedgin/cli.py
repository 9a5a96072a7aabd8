"""The `fedgin` command line: a thin layer over the Python API."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="fedgin",
    help="Federated multi-modal abdominal organ segmentation with GIN augmentation (FedGIN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    app()
