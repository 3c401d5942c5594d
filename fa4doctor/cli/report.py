"""`fa4doctor report`: the node's correctness and speed matrices as one self-contained HTML page."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from fa4doctor.cli._common import handle_errors, load_ledger_file

EPILOG = """\b
Examples:
  fa4doctor report --html node.html                      # probe this node, read its ledger
  fa4doctor report --html node.html --bench bench.json   # speed from a `fa4doctor bench --json` report
  fa4doctor report --html h100.html --snapshot docs/validation/h100-b40/check-after.json \\
      --ledger docs/validation/h100-b40/ledger.json

\b
The page loads nothing from anywhere (inline CSS, no script): open it, mail it, keep it.
docs/report.md says what each cell means. Exit status: 0 the page was written; 2 bad input;
1 fa4doctor failed.
"""


def _html_path(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    if not value.parent.is_dir():
        raise click.BadParameter(f"directory {value.parent} does not exist")
    try:  # now, before probing: the page is written last (a temporary file, then a rename)
        with tempfile.TemporaryFile(dir=value.parent):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot write in {value.parent}: {exc.strerror or exc}") from None
    return value


def _bench(path: Path | None):
    if path is None:
        return None
    from fa4doctor.smoke.speed_matrix import BenchFileError, load_bench

    try:
        return load_bench(path)
    except BenchFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--bench") from None


def _environment(snapshot: Path | None, ledger: Path | None):
    """(environment, where its facts came from, problems to show about the ledger)."""
    from fa4doctor.environment import Finding

    read = load_ledger_file(ledger) if ledger is not None else None  # exit 2 before probing
    if snapshot is not None:
        env, source = _snapshot(snapshot), f"snapshot {snapshot}"
    else:
        from fa4doctor.probe.gather import gather_environment  # an unreadable default ledger: a finding

        env, source = gather_environment(ledger_path=ledger), "probed on this node"
    if read is not None:
        env = env.with_ledger(read.entries, read.speed)
    problems = ()
    if read is not None and read.speed_problem:  # the entries still count
        problems = (Finding("ledger_speed_unreadable", "warning", read.speed_problem,
                            "fa4doctor bench --ledger FILE measures them again"),)
    return env, source + (f", ledger {ledger}" if ledger is not None else ""), problems


def _snapshot(path: Path):
    from fa4doctor.environment import SnapshotError, load_environment

    try:
        return load_environment(path)
    except SnapshotError as exc:
        raise click.BadParameter(str(exc), param_hint="--snapshot") from None


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--html", "html_path", required=True, callback=_html_path,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Write the page here (atomically: an old file stays whole if anything fails).")
@click.option("--ledger", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Vetting ledger to show (default: the snapshot's own with --snapshot, else this node's: "
                   "$FA4DOCTOR_LEDGER or the state directory).")
@click.option("--snapshot", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A `fa4doctor check --json` output to report on instead of probing this node.")
@click.option("--bench", "bench_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A `fa4doctor bench --json` report for the speed matrix (default: the ledger's speed records).")
@handle_errors
def report(html_path: Path, ledger: Path | None, snapshot: Path | None, bench_file: Path | None) -> None:
    """Write one HTML page of this node's evidence: which backend is right, refused or untested for each
    head dim, mask and direction, and how fast each backend and SDPA kernel ran per bench shape."""
    from fa4doctor.dispatch.policy import Policy
    from fa4doctor.exporters.report_html import render_html
    from fa4doctor.records import write_text_file
    from fa4doctor.smoke.page import build

    policy = Policy.from_env()
    bench = _bench(bench_file)
    env, source, problems = _environment(snapshot, ledger)
    page = build(env, source, bench=bench, policy=policy, problems=problems)
    write_text_file(html_path, render_html(page))
    cells = [cell.outcome for matrix in page.correctness for row in matrix.rows for cell in row.cells]
    click.echo(f"fa4doctor report: wrote {html_path}: {len(cells)} correctness cells "
               f"({cells.count('pass')} pass, {cells.count('wrong_result')} wrong), "
               f"{len(page.speed.rows)} speed rows", err=True)
