"""`fa4doctor check`: probe this node and say whether FA4 runs here, for which calls, and if not, why.

Without `--smoke` this never imports torch or any attention library in its own process: imports
run in child processes (and are cached), GPUs are read through NVML.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click

from fa4doctor.cli._common import BACKENDS, SMOKE_LEVELS, handle_errors, load_ledger_option, progress_printer


def _prom_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None:
        return None
    if value.suffix != ".prom":
        raise click.BadParameter(f"{value} must end in .prom (node_exporter's textfile collector reads only *.prom)")
    if not value.parent.is_dir():
        raise click.BadParameter(f"directory {value.parent} does not exist")
    try:  # now, not after the whole probe: the file is written last (a temporary file, then a rename)
        with tempfile.TemporaryFile(dir=value.parent):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot write in {value.parent}: {exc.strerror or exc}") from None
    return value


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON (loads into `explain --env`).")
@click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path), callback=_prom_path,
              help="Also write the facts as Prometheus metrics to this .prom file, atomically.")
@click.option("--spec", "spec_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file of named attention specs to judge besides the defaults (repeatable).")
@click.option("--model", "model_paths", multiple=True, type=click.Path(path_type=Path),
              help="A transformers config.json or model folder: also judge every attention call it makes "
                   "(repeatable; see `explain --model`).")
@click.option("--expect", type=click.Choice(BACKENDS, case_sensitive=False), default="fa4", show_default=True,
              help="The backend that must be chosen for every spec on every GPU for exit status 0.")
@click.option("--gpu", "gpus", multiple=True, type=click.IntRange(min=0),
              help="Judge only this CUDA ordinal (repeatable).")
@click.option("--no-imports", is_flag=True, help="Skip the child-process imports (facts from metadata only).")
@click.option("--refresh", is_flag=True, help="Import again even if the cached import results still match.")
@click.option("--import-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds each backend's import may take.")
@click.option("--smoke", "smoke_level", type=click.Choice(SMOKE_LEVELS),
              help="Also run smoke kernels at this level and judge with their results.")
@click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path),
              help="Vetting ledger to read (default: $FA4DOCTOR_LEDGER or the state directory).")
# Replays an NVML fixture (tests/fixtures/nvml/*.json) instead of the driver: reproduces a
# reported node anywhere. Hidden because it is for reproducing, not for checking.
@click.option("--nvml-replay", type=click.Path(exists=True, dir_okay=False, path_type=Path), hidden=True)
@handle_errors
def check(as_json: bool, textfile: Path | None, spec_files: tuple[Path, ...], model_paths: tuple[Path, ...],
          expect: str, gpus: tuple[int, ...],
          no_imports: bool, refresh: bool, import_timeout: float, smoke_level: str | None,
          ledger: Path | None, nvml_replay: Path | None) -> None:
    """Probe packages, imports, GPUs and driver, and judge each backend for the default specs.

    Exit status: 0 when EXPECT is chosen for every spec on every GPU and nothing is broken,
    3 when problems were found, 1 when fa4doctor failed, 2 for usage errors.
    """
    started = time.perf_counter()
    if ledger is not None:
        load_ledger_option(ledger)  # a named ledger that cannot be read is exit 2, before probing
    gpu_probe = _start_gpu_probe(nvml_replay)  # first: NVML's driver time overlaps everything below
    from fa4doctor.dispatch.policy import Policy
    from fa4doctor.names import BackendName
    from fa4doctor.dispatch.spec import load_specs
    from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
    from fa4doctor.probe.gather import gather
    from fa4doctor.dispatch.report import build_report

    specs = list(DEFAULT_SPECS) + [named for path in spec_files for named in load_specs(path)]
    if model_paths:
        from fa4doctor.models import load_model, model_specs

        specs += [named for path in model_paths for named in model_specs(load_model(path))]
    policy = Policy.from_env()
    setup = time.perf_counter() - started
    gathered = gather(gpu_probe=gpu_probe, check_imports=not no_imports, refresh=refresh, ledger_path=ledger,
                      import_timeout=import_timeout)
    env, smoke = gathered.env, None
    if smoke_level:
        env, smoke = _run_smoke(env, smoke_level, ledger, quiet=as_json)
    timings = {"total_seconds": round(time.perf_counter() - started, 4), "setup_seconds": round(setup, 4),
               **dict(gathered.timings)}
    report = build_report(env, specs, expect=BackendName.parse(expect, "--expect"), policy=policy, only=gpus,
                          timings=timings, smoke=smoke)
    if textfile is not None:
        from fa4doctor.exporters.textfile import write_check_textfile

        write_check_textfile(report, textfile)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        from fa4doctor.exporters.check_view import render_check

        render_check(report, imports_cached=gathered.imports_cached)
    raise SystemExit(report["exit_code"])


def _start_gpu_probe(nvml_replay: Path | None):
    from fa4doctor.probe.gpus import GpuProbe
    from fa4doctor.probe.nvml import FakeNvml, PynvmlSource

    return GpuProbe(PynvmlSource() if nvml_replay is None else FakeNvml.from_file(nvml_replay))


def _run_smoke(env, level: str, ledger: Path | None, quiet: bool):
    from fa4doctor.smoke import run_smoke  # its children import torch; this process never does

    progress = progress_printer(lines=True)[0] if not quiet else None  # a line per failure, and every 10 s
    result = run_smoke(env, level=level, progress=progress, ledger_path=ledger)
    return env.with_ledger(env.ledger + tuple(result.ledger_entries)), result.to_plain()
