"""`fa4doctor native`: build and inspect the compiled hit path of `attention()`."""

from __future__ import annotations

import json

import click

from fa4doctor.cli._common import EXIT_PROBLEMS, EXIT_TOOL_FAILED, handle_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def native() -> None:
    """The compiled hit path of fa4doctor.dispatch.attention().

    Built once per installed torch with the system C++ compiler, it serves every repeated call
    without a Python frame (0.3 us instead of ~2 us on a 2-core VM; docs/runtime.md). Without it
    attention() is the Python function: the same results, slower. FA4DOCTOR_NATIVE=0 disables it.

    \b
    Example:
      fa4doctor native build && fa4doctor native status
    """


@native.command()
@click.option("--force", is_flag=True, help="Compile again even if this torch's build exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def build(force: bool, as_json: bool) -> None:
    """Compile the hit path for the installed torch (CXX picks the compiler; default c++).

    Exit status: 0 built (or already there), 1 the compiler failed (its output is printed).
    """
    from fa4doctor.runtime import native as hit_path

    if not as_json:
        click.echo("compiling fa4doctor/runtime/native/hit.cpp against the installed torch ...", err=True)
    result = hit_path.build(force=force)
    if as_json:
        click.echo(json.dumps({"ok": result.ok, "path": str(result.path), "seconds": round(result.seconds, 2),
                               "command": list(result.command), "error": result.error}, indent=2))
    elif result.ok:
        how = f"in {result.seconds:.1f} s" if result.command else "(already built for this torch)"
        click.echo(f"built {result.path} {how}")
    else:
        click.echo(f"could not build the hit path; the compiler said:\n{result.error}\n"
                   f"command: {' '.join(result.command)}\n"
                   "It needs a C++20 compiler (CXX, default c++) and Python's headers (python3-dev).", err=True)
    if not result.ok:
        raise SystemExit(EXIT_TOOL_FAILED)


@native.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@handle_errors
def status(as_json: bool) -> None:
    """Say whether a training process started now gets the compiled hit path, and if not, why.

    Exit status: 0 it does, 3 it does not (not built, disabled, or the build does not load).
    """
    from fa4doctor.runtime import native as hit_path

    found = hit_path.status()
    if as_json:
        click.echo(json.dumps({"active": found.active, "built": found.built, "disabled": found.disabled,
                               "torch": found.torch, "path": str(found.path), "error": found.error}, indent=2))
    elif found.active:
        click.echo(f"compiled hit path: active (torch {found.torch}, {found.path})")
    elif found.error:
        click.echo(f"compiled hit path: built but does not load: {found.error} ({found.path}); "
                   "`fa4doctor native build --force` rebuilds it")
    elif not found.built:
        click.echo(f"compiled hit path: not built for torch {found.torch}; `fa4doctor native build` builds it")
    else:
        click.echo(f"compiled hit path: built, but disabled by {hit_path.ENV_NATIVE}=0 ({found.path})")
    if not found.active:
        raise SystemExit(EXIT_PROBLEMS)
