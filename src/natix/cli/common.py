"""What every command module shares: strict JSON output, comma-separated values, a quiet
transformers. Nothing here imports a heavy library at module level."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["comma_floats", "comma_names", "echo_json", "echo_result", "quiet_transformers"]


def echo_json(value) -> None:
    """Print `value` as strict JSON (NaN → null, ±inf → "inf"/"-inf"; see `natix.jsonio`)."""
    from natix.jsonio import dumps

    click.echo(dumps(value))


def echo_result(as_json: bool, value, text: Callable[[Any], str]) -> None:
    """Print a command's result `value`: as strict JSON with ``--json``, else as ``text(value)``."""
    if as_json:
        echo_json(value)
    else:
        click.echo(text(value))


def comma_floats(text: str, option: str, example: str) -> tuple[float, ...]:
    """`text` as a non-empty tuple of numbers; a one-line usage error naming `option` otherwise."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values:
        raise click.BadParameter(f"'{text}' is not comma-separated numbers, e.g. {example}", param_hint=option)
    return values


def comma_names(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated list."""
    return [t.strip() for t in text.split(",") if t.strip()]


def quiet_transformers() -> None:
    """Hide transformers' per-load progress bars; our own bar reports progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
