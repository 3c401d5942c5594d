"""What every command shares: exit codes, and turning exceptions into them.

A user mistake (a bad flag value, an unreadable file, an unknown backend name) is exit 2 with a
one-line message naming what was wrong; a failure of fa4doctor itself is exit 1. Neither prints a
traceback unless `FA4DOCTOR_DEBUG=1`.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

import click

EXIT_OK, EXIT_TOOL_FAILED, EXIT_USAGE, EXIT_PROBLEMS = 0, 1, 2, 3

F = TypeVar("F", bound=Callable[..., Any])


def usage_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean the user asked for something invalid."""
    from fa4doctor.dispatch.reasons import PolicyError
    from fa4doctor.dispatch.spec import SpecError
    from fa4doctor.environment import SnapshotError
    from fa4doctor.records import RecordError

    return (SpecError, PolicyError, SnapshotError, RecordError)


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
