"""`fa4doctor cluster`: one verdict for a whole job, run on every rank under torchrun.

    torchrun --nnodes 4 --nproc-per-node 8 ... -m fa4doctor cluster --timeout 120

Rank 0 prints the verdict; every rank exits with its status (0: every rank answered, with identical
stacks, and runs the preferred backend for every spec; 3 otherwise; 2 usage; 1 fa4doctor failed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from fa4doctor.cli._common import handle_errors


@click.command()
@click.option("--dist-backend", type=click.Choice(("gloo", "nccl")), default="gloo", show_default=True,
              help="torch.distributed backend of the job's process group (gloo needs no CUDA context; nccl "
                   "also proves NCCL between the ranks).")
@click.option("--spec", "spec_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file of named attention specs to judge instead of the defaults (repeatable).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Seconds rank 0 waits for every rank's facts once the process group has formed (forming "
                   "it may take as long); a rank that has not answered by then is named.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON (schema fa4doctor.cluster).")
@click.option("--env", "env_file", metavar="FILE",
              help="Judge this snapshot (fa4doctor check --json) instead of probing; {rank} and {local_rank} in "
                   "the path become this rank's numbers, so each rank can read its own.")
@handle_errors
def cluster(dist_backend: str, spec_files: tuple[Path, ...], timeout: float, as_json: bool,
            env_file: str | None) -> None:
    """Gather every rank's facts and decisions; rank 0 prints one verdict for the job.

    One process per node (local rank 0) probes; the node's other ranks reuse its facts.
    """
    from fa4doctor.cluster.job import LaunchError, Launch, run_rank
    from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
    from fa4doctor.dispatch.policy import Policy
    from fa4doctor.dispatch.spec import load_specs

    try:
        launch = Launch.from_environ(os.environ)
    except LaunchError as exc:
        raise click.UsageError(str(exc)) from None
    specs = [named for path in spec_files for named in load_specs(path)] or list(DEFAULT_SPECS)
    result = run_rank(launch, specs, probe=_probe, dist_backend=dist_backend, timeout=timeout,
                      env_file=env_file, policy=Policy.from_env())
    if isinstance(result, int):
        raise SystemExit(result)
    if as_json:
        click.echo(json.dumps(result.to_plain(), indent=2))
    else:
        from fa4doctor.exporters.cluster_view import render_cluster

        click.echo(render_cluster(result.to_plain()))
    raise SystemExit(result.exit_code)


def _probe():
    """This node's facts, as `fa4doctor check` gathers them (imports cached, the default ledger)."""
    from fa4doctor.probe.gather import gather

    return gather().env
