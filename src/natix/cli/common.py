"""What every command module shares: checked numeric options, choices read from the registries,
comma-separated names, strict JSON output, ``--force``, renamed options, a quiet transformers.
Nothing here imports a heavy library at module level, and nothing a command's ``--help`` reads
imports one either (torch, scikit-learn, h5py): the names of registries are read when needed."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click
from click.core import ParameterSource

__all__ = ["AGGREGATOR", "CALIBRATOR", "CHALLENGE", "COUNT", "EXIT_RULE", "HEAD", "LEVEL", "METRIC", "POLICY",
           "SEED", "THREADS", "LazyChoice", "Names", "Number", "Numbers", "comma_names", "echo_json", "echo_result",
           "force_option", "json_option", "names_in", "quiet_transformers", "renamed_option", "take_renamed"]


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


class LazyChoice(click.Choice):
    """One of the names ``names()`` returns, read each time they are needed (help, shell
    completion, checking a value) and never when the CLI is imported, so a registry stays the one
    list of its names. `names` must be light enough for ``--help`` (no torch, scikit-learn, h5py).
    """

    def __init__(self, names: Callable[[], Iterable[str]]):
        self.names = names
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.names())

    @choices.setter
    def choices(self, _given) -> None:
        """click's constructor stores its (empty) tuple here: `names` is the one list."""


class Names(click.ParamType):
    """Comma-separated names (or a list in a ``--config`` file), each one of `choice`'s; converts to
    a tuple. Help shows them as ``[a|b|c],...``; an unknown or missing name is one usage line
    listing the valid ones; shell completion completes the name after the last comma."""

    name = "names"

    def __init__(self, choice: click.Choice):
        self.choice = choice

    def __repr__(self) -> str:
        return f"Names({list(self.choice.choices)})"

    def get_metavar(self, param, ctx=None) -> str:  # click < 8.2 passes no ctx
        return "[" + "|".join(self.choice.choices) + "],..."

    def convert(self, value, param, ctx):
        listed = isinstance(value, (list, tuple))
        items = [str(v).strip() for v in value] if listed else comma_names(str(value))
        text = ",".join(items) if listed else str(value)
        valid = self.choice.choices
        if not items:
            self.fail(f"'{text}' names none: pass one or more of {', '.join(valid)}, comma-separated", param, ctx)
        for item in items:
            if item not in valid:
                self.fail(f"'{item}' in '{text}' is not one of {', '.join(map(repr, valid))}: pass comma-separated "
                          "names from them", param, ctx)
        return tuple(items)

    def shell_complete(self, ctx, param, incomplete: str):
        from click.shell_completion import CompletionItem

        done, comma, last = incomplete.rpartition(",")
        return [CompletionItem(done + comma + n) for n in self.choice.choices if n.startswith(last)]


# --------------------------------------------------------------------------- registered names
# Each reads its registry (or the library's tuple of names) when asked. The calibrator and exit
# rule registries live in modules that import scikit-learn and SciPy, too slow for --help: their
# built-in names are listed here (tests/test_cli_consistency.py keeps them equal to the
# registries), plus whatever was registered when the registry module is already loaded.
BUILTIN_CALIBRATORS = ("temperature", "platt", "beta", "isotonic")
BUILTIN_EXIT_RULES = ("ltt", "crc", "scrc", "budget")


def names_in(module: str, attr: str) -> LazyChoice:
    """A choice of the names `module.attr` holds (a tuple, or a registry in registration order),
    imported when first asked; `module` must be light (no torch, scikit-learn, h5py)."""
    return LazyChoice(lambda: list(getattr(importlib.import_module(module), attr)))


def _names(builtin: Iterable[str], registry) -> list[str]:
    """`builtin` then the other names of `registry` (None: not loaded), each once, in registration order."""
    return list(dict.fromkeys([*builtin, *(registry if registry is not None else ())]))


def _loaded(module: str, attr: str):
    """`module.attr` when `module` is already imported, else None (importing it is too slow for --help)."""
    mod = sys.modules.get(module)
    return getattr(mod, attr) if mod is not None else None


def head_names() -> list[str]:
    """The built-in heads (named without importing torch), then any registered since."""
    from natix.heads.registry import BUILTIN_HEADS, HEADS

    return _names(BUILTIN_HEADS, HEADS)


def aggregator_names() -> list[str]:
    """The built-in view aggregators (named without importing torch), then any registered since."""
    from natix.heads.registry import AGGREGATORS, BUILTIN_AGGREGATORS

    return _names(BUILTIN_AGGREGATORS, AGGREGATORS)


def calibrator_names() -> list[str]:
    return _names(BUILTIN_CALIBRATORS, _loaded("natix.calibrate.calibrators", "CALIBRATORS"))


def exit_rule_names() -> list[str]:
    return _names(BUILTIN_EXIT_RULES, _loaded("natix.calibrate.exits", "EXIT_RULES"))


HEAD = LazyChoice(head_names)
AGGREGATOR = LazyChoice(aggregator_names)
POLICY = names_in("natix.heads.config", "POLICIES")
METRIC = names_in("natix.metrics", "METRIC_NAMES")
CHALLENGE = names_in("natix.data", "CHALLENGES")
CALIBRATOR = LazyChoice(calibrator_names)
EXIT_RULE = LazyChoice(lambda: ["none", *exit_rule_names()])  # none: answer every image


# --------------------------------------------------------------------------- shared options


def json_option(fn):
    """The ``--json`` flag of a command that prints a result."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as strict JSON on stdout (status lines go to stderr).")(fn)


def force_option(what: str):
    """The ``--force`` flag of a command that writes `what` into ``--out``."""
    return click.option("--force", is_flag=True,
                        help=f"Replace the {what} already at --out (anything else there is never replaced).")


# How explicitly a value was given: the command line beats the environment beats a --config file
# beats the default.
_EXPLICIT = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP,
             ParameterSource.DEFAULT)


def renamed_option(old: str, new: str, type: click.ParamType):
    """The hidden old spelling `old` of the option `new`, kept working for one release.

    Using it (on the command line or as a ``--config`` key) prints a one-line deprecation warning
    on stderr; giving both on the command line is a usage error. The option `new` takes
    ``callback=take_renamed``.
    """

    def remember(ctx: click.Context, param: click.Parameter, value):
        if value is None:
            return
        click.echo(f"Warning: {old} is deprecated and goes away in the next release: use {new}", err=True)
        dest = new.lstrip("-").replace("-", "_")
        ctx.meta[("natix.renamed", dest)] = (old, value, ctx.get_parameter_source(param.name))
        if dest in ctx.params:  # `new` was processed first
            ctx.params[dest] = _newest(ctx, dest, new, ctx.params[dest])

    return click.option(old, type=type, default=None, hidden=True, expose_value=False, callback=remember)


def take_renamed(ctx: click.Context, param: click.Parameter, value):
    """Callback of an option that has a :func:`renamed_option`: the old spelling's value when it is
    the more explicit one."""
    return _newest(ctx, param.name, param.opts[0], value)


def _newest(ctx: click.Context, dest: str, new: str, value):
    """`value` of option `new`, or the value given under its old name when that is more explicit."""
    given = ctx.meta.get(("natix.renamed", dest))
    if given is None:
        return value
    old, old_value, old_source = given
    source = ctx.get_parameter_source(dest)
    if source is ParameterSource.COMMANDLINE and old_source is ParameterSource.COMMANDLINE:
        raise click.UsageError(f"{old} is the old name of {new}: pass {new} only", ctx)
    rank = {s: i for i, s in enumerate(_EXPLICIT)}
    return value if rank.get(source, len(rank)) <= rank.get(old_source, len(rank)) else old_value


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
