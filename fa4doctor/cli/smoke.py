"""`fa4doctor smoke`: run small attention problems on every backend and GPU, judge them against
float64, and record the outcomes in the vetting ledger the dispatcher reads."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from fa4doctor.cli._common import (BACKENDS, SMOKE_LEVELS, finish_report, handle_errors, load_env_option,
                                   load_ledger_option, progress_printer)

EPILOG = """\b
Examples:
  fa4doctor smoke                                  # quick: one case per backend, fwd+bwd
  fa4doctor smoke --level thorough --backend fa4   # every head dim FA4 takes here, in steps of 8
  fa4doctor smoke --spec examples/specs/llama-3-8b.json --head-dims 64,192x128 --json

\b
Exit status: 0 every case passed; 3 a case failed (or nothing could run); 2 bad input;
1 fa4doctor failed. Results go to the vetting ledger ($FA4DOCTOR_LEDGER, else
$XDG_STATE_HOME/fa4doctor/ledger.json) unless --no-record.
"""


def _environment(env_file: Path | None, ledger: Path | None):
    if env_file is not None:
        return load_env_option(env_file)
    from fa4doctor.probe.gather import gather_environment
    # Imports are not checked here: running the kernels is the stronger check.
    return gather_environment(check_imports=False, ledger_path=ledger)


@click.command(epilog=EPILOG)
@click.option("--level", type=click.Choice(SMOKE_LEVELS), default="quick", show_default=True,
              help="quick: one case per backend; standard: masks, GQA, windows, varlen, MLA, fp16; "
                   "thorough: every head dim in steps of 8, causal and not.")
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKENDS, case_sensitive=False),
              help="Only these backends (repeatable; default: every installed one).")
@click.option("--gpu", "gpus", multiple=True, metavar="UUID|INDEX", help="Only these GPUs (repeatable).")
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also run these shapes (JSON AttentionSpec objects; sequence lengths capped at 512).")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="Also run every attention call this transformers config.json (or model folder) makes.")
@click.option("--head-dims", metavar="64,128,192x128", help="Also run the quick case with these head dims.")
@click.option("--timeout", type=click.FloatRange(min=1, min_open=False), default=120.0, show_default=True,
              help="Seconds one case (one direction) may take, compile included.")
@click.option("--jobs", type=click.IntRange(min=1), help="Parallel FA4 compile processes (default: CPUs, at most 16).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema fa4doctor.smoke).")
@click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path), help="Vetting ledger to write.")
@click.option("--no-record", is_flag=True, help="Do not write the vetting ledger.")
@click.option("--env", "env_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this environment snapshot (fa4doctor check --json) instead of probing.")
@click.option("--device", type=click.Choice(("cuda", "cpu")), default="cuda", show_default=True,
              help="cpu runs the tensors on the CPU (SDPA only, for testing without a GPU).")
@handle_errors
def smoke(level, backends, gpus, spec_file, model_path, head_dims, timeout, jobs, as_json, ledger, no_record,
          env_file, device) -> None:
    """Prove each backend on this node: forward and backward against a float64 reference."""
    from fa4doctor.names import BackendName
    from fa4doctor.dispatch.spec import load_specs
    from fa4doctor.smoke.cases import parse_head_dims
    from fa4doctor.smoke.runner import run_smoke

    extra = [spec for _, spec in load_specs(spec_file)] if spec_file else []
    if model_path is not None:
        from fa4doctor.models import load_model, model_specs

        extra += [spec for _, spec in model_specs(load_model(model_path), device=device)]
    dims = parse_head_dims(head_dims) if head_dims else ()
    if ledger is not None and not no_record:
        load_ledger_option(ledger)  # before the kernels run: it is never written over if unreadable
    env = _environment(env_file, ledger)
    progress, bar = progress_printer(as_json)
    with bar or contextlib.nullcontext():
        report = run_smoke(env, level=level, backends=[BackendName(b.lower()) for b in backends] or None,
                           gpus=list(gpus) or None, extra_specs=extra, head_dims=dims, timeout=timeout,
                           jobs=jobs, progress=progress, ledger_path=ledger, record=not no_record,
                           device=device)
    finish_report(report, as_json, "fa4doctor.exporters.smoke_view:render_smoke")

