"""What every command module shares: checked numeric options, strict JSON output,
comma-separated values, a quiet transformers. Nothing here imports a heavy library at module level."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

__all__ = ["COUNT", "LEVEL", "SEED", "THREADS", "Number", "Numbers", "comma_names", "echo_json", "echo_result",
           "quiet_transformers"]


class Number(click.ParamType):
    """A finite number (or integer) in a range, checked when the command line is parsed.

    NaN, ±inf, text that is not a number and values out of range are one usage line (exit
    status 2) naming the option, the value and what to pass, before the command runs. Values
    from a ``--config`` file go through the same check.

    Parameters
    ----------
    min, max : the bounds (None: unbounded on that side)
    integer : accept integers only (a whole float from a YAML file, e.g. ``3.0``, is taken as 3)
    min_open, max_open : exclude the bound itself

    Examples
    --------
    ``type=Number(min=1, integer=True)`` for a count, ``Number(min=0, integer=True)`` where 0
    means "all" or "off", ``Number(min=0, max=1, max_open=True)`` for a dropout rate,
    ``Number(min=0, max=1, min_open=True, max_open=True)`` for a risk level.
    """

    def __init__(self, *, min: float | None = None, max: float | None = None, integer: bool = False,
                 min_open: bool = False, max_open: bool = False):
        self.min, self.max, self.integer = min, max, integer
        self.min_open, self.max_open = min_open, max_open
        self.name = "integer" if integer else "float"

    def __repr__(self) -> str:
        return f"Number({self.describe()})"

    def describe(self) -> str:
        """What a valid value is, e.g. ``an integer >= 1`` or ``a number in (0, 1]``."""
        what = "an integer" if self.integer else "a number"
        if self.min is not None and self.max is not None:
            return f"{what} in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"
        if self.min is not None:
            return f"{what} {'>' if self.min_open else '>='} {self.min:g}"
        if self.max is not None:
            return f"{what} {'<' if self.max_open else '<='} {self.max:g}"
        return what if self.integer else "a finite number"

    def check(self, value) -> tuple[int | float | None, str | None]:
        """``(the number, None)``, or ``(None, why value is refused)``."""
        x = self._parse(value)
        if x is None:
            return None, f"'{value}' is not {'an integer' if self.integer else 'a number'}"
        if isinstance(x, float) and not math.isfinite(x):
            return None, f"'{value}' is not a finite number"
        low = self.min is not None and (x <= self.min if self.min_open else x < self.min)
        high = self.max is not None and (x >= self.max if self.max_open else x > self.max)
        if low or high:
            return None, f"'{value}' is out of range"
        return x, None

    def _parse(self, value) -> int | float | None:
        """`value` as an int (integer options) or a float; None when it is not one."""
        if isinstance(value, bool):
            return None
        x = value
        if not isinstance(value, (int, float)):
            text = str(value).strip()
            try:
                x = int(text) if self.integer else float(text)
            except ValueError:
                try:
                    x = float(text)  # "nan", "inf", "2.5", "1e3" for an integer option
                except ValueError:
                    return None
        if self.integer:
            if isinstance(x, float) and math.isfinite(x):
                return int(x) if x.is_integer() else None
            return x  # an int, or NaN/±inf for check() to name
        try:
            return float(x)
        except OverflowError:  # an int beyond float range
            return math.inf

    def convert(self, value, param, ctx):
        x, why = self.check(value)
        if why is not None:
            self.fail(f"{why}: pass {self.describe()}", param, ctx)
        return x


# Types shared by many options.
COUNT = Number(min=1, integer=True)  # epochs, seeds, jobs, batch sizes
LEVEL = Number(min=0, max=1, min_open=True, max_open=True)  # a risk level, failure probability or rate
SEED = Number(integer=True)
THREADS = Number(min=0, integer=True)  # 0 = every available core


class Numbers(click.ParamType):
    """Comma-separated numbers (or a list in a ``--config`` file), each checked by `each`.

    Converts to a tuple of numbers. `what` describes the whole list for the error line (e.g.
    ``"four comma-separated fractions"``), `example` is a valid value, `count` fixes the length.
    """

    name = "numbers"

    def __init__(self, each: Number, *, what: str, example: str, count: int | None = None):
        self.each, self.what, self.example, self.count = each, what, example, count

    def __repr__(self) -> str:
        return f"Numbers({self.what})"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            items, text = list(value), ",".join(str(v) for v in value)
        else:
            text = str(value)
            items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or (self.count is not None and len(items) != self.count):
            self.fail(f"'{text}' is not {self.what}: pass e.g. {self.example}", param, ctx)
        values = []
        for item in items:
            x, why = self.each.check(item)
            if why is not None:
                self.fail(f"{why} in '{text}': pass {self.what}, each {self.each.describe()}, e.g. {self.example}",
                          param, ctx)
            values.append(x)
        return tuple(values)


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


def comma_names(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated list."""
    return [t.strip() for t in text.split(",") if t.strip()]


def quiet_transformers() -> None:
    """Hide transformers' per-load progress bars; our own bar reports progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def under_option(help_text: str = "Judge under this cache of the run's images (e.g. validator-e1 draws): its "
                                  "predictions there replace the stored ones."):
    """The `--under CACHE` option of the commands that read a run's predictions."""
    return click.option("--under", type=click.Path(dir_okay=False), default=None, help=help_text)


def opened(run: str, under: str | None):
    """`run` as given, or opened under the cache `under` (:func:`natix.heads.under.under_run`)."""
    if under is None:
        return run
    from natix.heads.under import under_run

    return under_run(run, under)


def under_line(res_under: dict | None) -> list[str]:
    """The line saying which cache the scores were judged under (none when they are the run's own)."""
    if not res_under:
        return []
    return [f"judged under {res_under['challenge']} ({res_under['path']}, {res_under['draws']} draw(s) per image)"]
