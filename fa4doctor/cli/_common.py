"""What every command shares: exit codes, and turning exceptions into them.

A user mistake (a bad flag value, an unreadable file, an unknown backend name) is exit 2 with a
one-line message naming what was wrong; a failure of fa4doctor itself is exit 1. Neither prints a
traceback unless `FA4DOCTOR_DEBUG=1`.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import time
from typing import Any, Callable, TypeVar

import click

from fa4doctor.exit_codes import EXIT_OK, EXIT_PROBLEMS, EXIT_TOOL_FAILED, EXIT_USAGE

__all__ = ["BACKENDS", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_TOOL_FAILED", "EXIT_USAGE", "SMOKE_LEVELS",
           "finish_report", "handle_errors", "load_env_option", "load_ledger_file", "load_ledger_option", "progress_printer",
           "usage_errors"]

# The levels of fa4doctor.smoke.cases.LEVELS and the values of dispatch.reasons.BackendName,
# repeated here so `--help` loads neither (tests/cli/test_check.py and tests/smoke/test_cases.py
# hold them equal).
SMOKE_LEVELS = ("quick", "standard", "thorough")
BACKENDS = ("fa4", "fa3", "fa2", "sdpa")

F = TypeVar("F", bound=Callable[..., Any])


def usage_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean the user asked for something invalid."""
    from fa4doctor.dispatch.reasons import PolicyError
    from fa4doctor.dispatch.spec import SpecError
    from fa4doctor.environment import SnapshotError
    from fa4doctor.records import RecordError

    return (SpecError, PolicyError, SnapshotError, RecordError)


def load_env_option(path):
    """The `Environment` snapshot a `--env FILE` option names; an unreadable one is a usage error."""
    from fa4doctor.environment import SnapshotError, load_environment

    try:
        return load_environment(path)
    except SnapshotError as exc:
        raise click.BadParameter(str(exc), param_hint="--env") from None


def load_ledger_option(path):
    """The entries of the ledger a `--ledger FILE` option names (none yet if it does not exist).
    One that exists but cannot be read as a ledger is a usage error naming it: the user asked for
    it, and deciding without it, or smoking for minutes and then not recording, would mislead."""
    return load_ledger_file(path).entries


def load_ledger_file(path, speed: bool = False):
    """The `LedgerRead` of a `--ledger FILE` option (`load_ledger_option`); with `speed`, speed
    records it cannot read are a usage error too (`bench` could not record its own beside them)."""
    from fa4doctor.probe.ledger import read_ledger

    read = read_ledger(path)
    problem = read.problem or (read.speed_problem if speed else None)
    if problem:
        raise click.BadParameter(problem, param_hint="--ledger")
    return read


def finish_report(report: Any, as_json: bool, view: str) -> None:
    """Print a smoke or bench report as JSON or through `view` ("module:function", imported only
    here), then exit 0 when it is healthy and 3 when it is not."""
    plain = report.to_plain()
    if as_json:
        click.echo(json.dumps(plain, indent=2))
    else:
        module, function = view.split(":")
        getattr(importlib.import_module(module), function)(plain)
    raise SystemExit(EXIT_OK if report.healthy else EXIT_PROBLEMS)


def handle_errors(function: F) -> F:
    """Wrap a command body: usage errors exit 2, anything unexpected exits 1, both without a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except usage_errors() as exc:
            raise click.UsageError(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # the tool itself failed: say so, exit 1
            if os.environ.get("FA4DOCTOR_DEBUG") == "1":
                import traceback

                traceback.print_exc()
            click.echo(f"fa4doctor: internal error: {type(exc).__name__}: {exc} "
                       "(set FA4DOCTOR_DEBUG=1 for the traceback)", err=True)
            sys.exit(EXIT_TOOL_FAILED)

    return wrapper  # type: ignore[return-value]


def progress_printer(lines: bool):
    """A bar on a terminal; with --json or elsewhere (logs, the daemon) a line on stderr per
    failure and one every 10 s."""
    if lines or not sys.stderr.isatty():
        last = [time.monotonic()]

        def log(event) -> None:
            failed = event.result is not None and event.result.failed
            if failed or time.monotonic() - last[0] >= 10:
                last[0] = time.monotonic()
                click.echo(str(event), err=True)
        return log, None
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task("smoke: starting", total=None)

    def update(event) -> None:
        bar.update(task, completed=event.done, total=event.total,
                   description=f"smoke {event.phase}" + (f" {event.result.case}" if event.result else ""))
    return update, bar
