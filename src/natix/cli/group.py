"""The `natix` click group: one-line errors, a YAML file of defaults, verbosity, Ctrl-C.

Library errors (`NatixError`) become one-line click errors with exit status 1, usage errors one
line with exit status 2, Ctrl-C one line with exit status 130 (128 + SIGINT, as a shell reports
it) saying what was kept; anything else keeps its traceback, because it is a bug.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from natix.errors import NatixError

__all__ = ["Interrupted", "NatixCommand", "OneLineErrors", "cli", "library_errors", "load_config", "main"]

INTERRUPTED = 130  # 128 + SIGINT: the exit status a shell gives a program stopped by Ctrl-C


class Interrupted(click.ClickException):
    """Ctrl-C stopped a command: exit status 130 and one line saying what was kept and how to go on."""

    exit_code = INTERRUPTED


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
    ctx.default_map = _group_defaults(ctx.command, data, "")
    return value


def _group_defaults(group: click.Group, entries, path: str) -> dict:
    """A config file's entries for the commands of `group` (reached by `path`), keyed as click keys them."""
    if not isinstance(entries, dict):
        where = f"'{path}' in the config file" if path else "the config file"
        raise click.BadParameter(f"{where} must be a mapping of command names to option defaults, got "
                                 f"{_shown(entries)}")
    defaults = {}
    for name, opts in entries.items():
        cmd = group.commands.get(name) if isinstance(name, str) else None
        where = f"{path} {name}".strip()
        if cmd is None:
            raise click.BadParameter(f"unknown command '{where}' in config file: use one of "
                                     f"{', '.join(sorted(group.commands))}")
        opts = {} if opts is None else opts
        if isinstance(cmd, click.Group):
            defaults[name] = _group_defaults(cmd, opts, where)
        else:
            defaults[name] = _command_defaults(cmd, opts, where)
    return defaults


def _command_defaults(cmd: click.Command, opts, where: str) -> dict:
    """A config file's option defaults for `cmd`, keyed by parameter name; unknown flags are an error."""
    if not isinstance(opts, dict):
        raise click.BadParameter(f"'{where}' in the config file must be a mapping of option names to values, got "
                                 f"{_shown(opts)}: write one 'option: value' per line under '{where.split()[-1]}:'")
    names = _flag_names(cmd)
    bad = sorted(str(k) for k in opts if k not in names)
    if bad:
        raise click.BadParameter(f"unknown option(s) {', '.join(bad)} for '{where}' in config file: "
                                 f"use {', '.join(sorted(k for k in names if '_' not in k))}")
    return {names[k]: v for k, v in opts.items()}


def _shown(value) -> str:
    """A config value for an error line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _set_quiet(_ctx, _param, value: bool) -> None:
    from natix.progress import QUIET, set_verbosity

    if value:
        set_verbosity(QUIET)


def _set_verbose(_ctx, _param, value: int) -> None:
    if value:
        _verbosity(value)


def _verbosity(verbose: int) -> None:
    """Progress and status lines (natix.progress) and the logging level for -v counted `verbose` times."""
    from natix.progress import NORMAL, set_verbosity

    set_verbosity(NORMAL + verbose)
    logging.getLogger().setLevel(logging.WARNING - 10 * min(verbose, 2))


class NatixCommand(click.Command):
    """A command with the same -q/--quiet and -v/--verbose as every other natix command; Ctrl-C
    while it runs is :class:`Interrupted` (a command that knows what it kept raises its own)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params += [
            click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_set_quiet,
                         help="No progress bars or status lines (warnings, errors and results still show)."),
            click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_set_verbose,
                         help="More detail on stderr (-vv: debug logs)."),
        ]

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            command = " ".join(["natix", *ctx.command_path.split()[1:]])  # the same under any program name
            raise Interrupted(f"{command} stopped by Ctrl-C") from None


class OneLineErrors(click.Group):
    """A click group whose errors are one line on stderr: exit 2 for usage, 1 for the rest; its
    commands are :class:`NatixCommand` s and its subgroups are like it."""

    command_class = NatixCommand
    group_class = type  # subgroups (`natix cache`) are OneLineErrors groups too

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except Interrupted as exc:
            click.echo(f"Interrupted: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "natix"
            click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):  # Ctrl-C before a command ran
                click.echo("Interrupted: stopped by Ctrl-C", err=True)
                sys.exit(INTERRUPTED)
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
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    _verbosity(verbose)  # every call starts here: a command's own -q or -v comes after


def main() -> None:
    """Console entry point."""
    cli(prog_name="natix")
