"""`fa4doctor bench`: time every eligible backend and SDPA kernel on this node's GPUs, for the
default specs, a model zoo and your own specs, and record the figures in the vetting ledger that
`FA4DOCTOR_POLICY=fastest` reads."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from fa4doctor.cli._common import (BACKENDS, EXIT_PROBLEMS, finish_report, handle_errors, load_env_option,
                                   load_ledger_file, progress_printer)

# The zoo's names (fa4doctor/smoke/zoo.py ZOO_NAMES), repeated so `--help` imports nothing heavy
# (tests/cli/test_bench_cli.py holds them equal).
ZOO_NAMES = ("llama-3-8b", "gpt-2", "gemma-d256", "deepseek-v3-mla", "mistral-7b-swa", "llama-3-8b-decode")

EPILOG = f"""\b
Examples:
  fa4doctor bench                                   # zoo x 1k-16k, the default specs, every GPU
  fa4doctor bench --zoo llama-3-8b,gpt-2 --seqlens 2048,8192 --no-default-specs
  fa4doctor bench --spec examples/specs/llama-3-8b.json --zoo none --json > bench.json
  FA4DOCTOR_POLICY=fastest fa4doctor explain --head-dim 64 --heads 12 --seqlen-q 4096 --mask causal

\b
Zoo: {', '.join(ZOO_NAMES)}.
Each shape runs on every backend the dispatcher could send it to, and SDPA also kept to each of
its kernels (cudnn, flash, efficient): CUDA events, warm-up, medians of interleaved rounds,
TFLOP/s over the pairs the mask allows (causal: about half). A full run is expected to take about
2 min on an H100 with FA4's compile cache cold, 1 min warm (docs/bench.md).

\b
Exit status: 0 every case was timed (or a kernel declined a shape or ran out of memory on it);
3 a case failed (crash, timeout, compile failure), nothing could be timed, or no CUDA GPU is
visible; 2 bad input; 1 fa4doctor failed.
"""


def _environment(env_file: Path | None, ledger: Path | None):
    if env_file is not None:
        return load_env_option(env_file)
    from fa4doctor.probe.gather import gather_environment
    # Imports are not checked here: timing the kernels imports them.
    return gather_environment(check_imports=False, ledger_path=ledger)


def _shapes(zoo: str, seqlens: str, default_specs: bool, spec_file: Path | None, model_path: Path | None = None):
    from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
    from fa4doctor.dispatch.spec import SpecError, load_specs
    from fa4doctor.smoke.zoo import named_shapes, parse_seqlens, parse_zoo, zoo_shapes

    shapes = zoo_shapes(parse_zoo(zoo), parse_seqlens(seqlens))
    if default_specs:
        shapes += named_shapes(DEFAULT_SPECS)
    if spec_file is not None:
        shapes += named_shapes(load_specs(spec_file))
    if model_path is not None:
        from fa4doctor.models import load_model, model_specs

        shapes += named_shapes(model_specs(load_model(model_path)))
    if not shapes:
        raise SpecError("zoo", "nothing to time: --zoo none, --no-default-specs and no --spec or --model")
    return shapes


def _progress(as_json: bool):
    """A bar on a terminal; elsewhere (logs, --json) one stderr line per figure: each is worth keeping."""
    if as_json or not sys.stderr.isatty():
        return (lambda event: click.echo(str(event), err=True)), None
    return progress_printer(False)


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--zoo", default="all", show_default=True, metavar="all|none|NAME,...",
              help="Zoo models to time, at every --seqlens length.")
@click.option("--seqlens", default="1024,2048,4096,8192,16384", show_default=True, metavar="N,N,...",
              help="Lengths the zoo is timed at (a decode model: its KV length).")
@click.option("--default-specs/--no-default-specs", default=True, show_default=True,
              help="Also time the specs `fa4doctor check` judges, at their own lengths.")
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also time these shapes (JSON AttentionSpec objects), at their own lengths.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="Also time every attention call this transformers config.json (or model folder) makes.")
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKENDS, case_sensitive=False),
              help="Only these backends (repeatable; default: every eligible one).")
@click.option("--gpu", "gpus", multiple=True, metavar="UUID|INDEX", help="Only these GPUs (repeatable).")
@click.option("--warmup", type=click.IntRange(min=1, max=100), default=3, show_default=True,
              help="Untimed calls per case and direction before the rounds (the first compiles).")
@click.option("--rounds", type=click.IntRange(min=1, max=1000), default=10, show_default=True,
              help="Timed rounds per case and direction; the figure is their median.")
@click.option("--timeout", type=click.FloatRange(min=1), default=180.0, show_default=True,
              help="Seconds a child may go without reporting (a compile included).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema fa4doctor.bench).")
@click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path), help="Vetting ledger to write.")
@click.option("--no-record", is_flag=True, help="Do not write the speed records into the ledger.")
@click.option("--env", "env_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Decide eligibility from this snapshot (fa4doctor check --json) instead of probing.")
@handle_errors
def bench(zoo, seqlens, default_specs, spec_file, model_path, backends, gpus, warmup, rounds, timeout, as_json, ledger,
          no_record, env_file) -> None:
    """Time every eligible backend and SDPA kernel on this node's GPUs; record the speed ledger."""
    from fa4doctor.names import BackendName
    from fa4doctor.smoke.bench import BenchRefused, run_bench
    from fa4doctor.smoke.process import ENV_FAKE

    shapes = _shapes(zoo, seqlens, default_specs, spec_file, model_path)
    if ledger is not None and not no_record:
        load_ledger_file(ledger, speed=True)  # before the kernels run: never written over if unreadable
    env = _environment(env_file, ledger)
    progress, bar = _progress(as_json)
    try:
        with bar or contextlib.nullcontext():
            report = run_bench(env, shapes, backends=[BackendName(b.lower()) for b in backends] or None,
                               gpus=list(gpus) or None, warmup=warmup, rounds=rounds, timeout=timeout,
                               progress=progress, ledger_path=ledger, record=not no_record,
                               fake=os.environ.get(ENV_FAKE) or None)
    except BenchRefused as exc:
        click.echo(f"fa4doctor bench: {exc}", err=True)
        raise SystemExit(EXIT_PROBLEMS) from None
    finish_report(report, as_json, "fa4doctor.exporters.bench_view:render_bench")
