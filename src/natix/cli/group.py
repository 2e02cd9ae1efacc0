"""The `natix` click group: one-line errors, a YAML file of defaults, verbosity.

Library errors (`NatixError`) become one-line click errors with exit status 1, usage errors one
line with exit status 2; anything else keeps its traceback, because it is a bug.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from natix.errors import NatixError

__all__ = ["OneLineErrors", "cli", "library_errors", "load_config", "main"]


def library_errors(fn):
    """Turn a `NatixError` into a one-line click error (exit 1), without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NatixError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _flag_names(cmd: click.Command) -> dict[str, str]:
    """A command's long flags as config keys (`batch-size` and `batch_size`) → parameter names."""
    names = {}
    for p in cmd.params:
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                names[opt[2:]] = p.name
                names[opt[2:].replace("-", "_")] = p.name
    return names


def load_config(ctx: click.Context, _param, value):
    """Read a YAML file of defaults into ``ctx.default_map``; unknown keys are an error."""
    if not value:
        return value
    import yaml

    try:
        data = yaml.safe_load(Path(value).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read config file ({exc}): pass a readable YAML file") from None
    if not isinstance(data, dict):
        raise click.BadParameter("the config file must be a mapping of command names to option defaults")
    group = ctx.command
    for cmd_name, opts in data.items():
        cmd = group.commands.get(cmd_name) if isinstance(group, click.Group) else None
        if cmd is None:
            raise click.BadParameter(f"unknown command '{cmd_name}' in config file: use one of "
                                     f"{', '.join(sorted(group.commands))}")
        if isinstance(cmd, click.Group):
            continue
        names = _flag_names(cmd)
        bad = sorted(k for k in (opts or {}) if k not in names)
        if bad:
            raise click.BadParameter(f"unknown option(s) {', '.join(bad)} for '{cmd_name}' in config file: "
                                     f"use {', '.join(sorted(k for k in names if '_' not in k))}")
        data[cmd_name] = {names[k]: v for k, v in (opts or {}).items()}
    ctx.default_map = data
    return value


class OneLineErrors(click.Group):
    """A click group whose errors are one line on stderr: exit 2 for usage, 1 for the rest."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "natix"
            click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="natix")
@click.option("--config", type=click.Path(dir_okay=False), callback=load_config, is_eager=True,
              expose_value=False, help="YAML file of defaults per command (flags win).")
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """natix: extract DINOv3 view features once, train everything else from the cache."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console entry point."""
    cli(prog_name="natix")
