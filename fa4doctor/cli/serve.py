"""`fa4doctor serve`: the node daemon Prometheus scrapes."""

from __future__ import annotations

import gc
import os
import shlex
import signal
import sys
import threading

import click

from fa4doctor.cli._common import handle_errors
from fa4doctor.serve.daemon import SMOKE_LEVELS, ServeConfig
from fa4doctor.serve.server import DEFAULT_PORT

DEFAULTS = ServeConfig()  # one set of defaults for the flags and the daemon


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True,
              help="Address to listen on. The default, every interface, is what node exporters do; anyone "
                   "who reaches the port reads /report.json (hostname, versions, paths): pass 127.0.0.1 or "
                   "the node's internal address to listen on one interface only.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port (9847: from the exporter range of Prometheus's default port allocations).")
@click.option("--interval", type=click.FloatRange(min=1.0), default=DEFAULTS.interval, show_default=True,
              help="Seconds between probe cycles (`fa4doctor check --json` in a child process).")
@click.option("--smoke-interval", type=click.FloatRange(min=1.0), default=DEFAULTS.smoke_interval,
              show_default=True,
              help="Seconds between smoke cycles; they run only on GPUs with no compute process.")
@click.option("--smoke-level", type=click.Choice(SMOKE_LEVELS), default=DEFAULTS.smoke_level,
              show_default=True, help="Smoke kernel level; `off` never runs a kernel on this node.")
@click.option("--revet-level", type=click.Choice(SMOKE_LEVELS), default=DEFAULTS.revet_level, show_default=True,
              help="Smoke level of the re-vetting run, which goes first on an idle GPU once the fingerprint "
                   "changes (a backend, torch, driver or FA4 knob); `off` never re-vets.")
@click.option("--smoke-spec", type=click.Path(exists=True, dir_okay=False),
              help="Shapes the re-vetting run covers too (JSON, as `fa4doctor smoke --spec` reads); default: "
                   "check's default specs plus a training spec at every head dim a known bug touched.")
@click.option("--metrics-dir", type=click.Path(file_okay=False), envvar="FA4DOCTOR_METRICS_DIR",
              help="Directory the training processes' dispatch counters are written to "
                   "[env FA4DOCTOR_METRICS_DIR]. Read on every scrape, compacted between.")
@click.option("--ledger", type=click.Path(dir_okay=False), envvar="FA4DOCTOR_LEDGER",
              help="Vetting ledger the probe and smoke children use [env FA4DOCTOR_LEDGER].")
@click.option("--probe-timeout", type=click.FloatRange(min=1.0), default=DEFAULTS.probe_timeout,
              show_default=True,
              help="Seconds before a probe child is killed (its whole process group).")
@click.option("--smoke-timeout", type=click.FloatRange(min=1.0), default=DEFAULTS.smoke_timeout,
              show_default=True, help="Seconds before a smoke child is killed.")
# Hidden seams for tests and unusual installs: the argv of the children, shell-quoted.
@click.option("--probe-command", hidden=True, help="argv of the probe child.")
@click.option("--smoke-command", hidden=True, help="argv of the smoke child.")
@click.option("--compact-interval", type=click.FloatRange(min=0.1), default=DEFAULTS.compact_interval, hidden=True,
              help="Seconds between compactions of the metrics directory (bench/scrape.py).")
@click.option("--settle-interval", type=click.FloatRange(min=0.1), default=DEFAULTS.settle_interval, hidden=True,
              help="Seconds between looks for metrics files whose writer is gone.")
@handle_errors
def serve(host: str, port: int, interval: float, smoke_interval: float, smoke_level: str, revet_level: str,
          smoke_spec: str | None, metrics_dir: str | None, ledger: str | None, probe_timeout: float,
          smoke_timeout: float, probe_command: str | None, smoke_command: str | None,
          compact_interval: float, settle_interval: float) -> None:
    """Run the node daemon: HTTP /metrics, /healthz, /readyz, /report.json and / on HOST:PORT.

    Probe cycles run every --interval, smoke cycles every --smoke-interval, both in child
    processes; the daemon itself never imports torch and never creates a CUDA context.
    When a backend, torch, the driver or an FA4 knob changes, a --revet-level run goes first
    on the next idle GPU. SIGTERM or SIGINT stops it cleanly (exit 0). See docs/serve.md.

    \b
    Example:
      FA4DOCTOR_METRICS_DIR=/var/lib/fa4doctor/metrics fa4doctor serve --port 9847
    """
    from fa4doctor.serve.collector import Collector
    from fa4doctor.serve.daemon import Daemon
    from fa4doctor.serve.server import make_server

    if metrics_dir:
        try:
            os.makedirs(metrics_dir, exist_ok=True)
        except OSError as exc:
            raise click.BadParameter(f"cannot create {metrics_dir!r}: {exc.strerror or exc}",
                                     param_hint="--metrics-dir") from None
    commands = {"probe_command": probe_command, "smoke_command": smoke_command}
    config = ServeConfig(interval=interval, smoke_interval=smoke_interval, smoke_level=smoke_level,
                         revet_level=revet_level, smoke_spec=smoke_spec,
                         probe_timeout=probe_timeout, smoke_timeout=smoke_timeout,
                         metrics_dir=metrics_dir, ledger=ledger, compact_interval=compact_interval,
                         settle_interval=settle_interval,
                         **{k: tuple(shlex.split(v)) for k, v in commands.items() if v})
    daemon = Daemon(config)
    collector = Collector(lambda: daemon.state, metrics_lock=daemon.metrics_lock, reader=daemon.reader)
    try:
        server = make_server(host, port, state=lambda: daemon.state, collector=collector)
    except OSError as exc:
        raise click.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                 param_hint="--host/--port") from None
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: daemon.stop())
    # What start-up built lives as long as the daemon: a full collection would walk it all, for
    # milliseconds, inside some scrape (https://docs.python.org/3/library/gc.html#gc.freeze).
    gc.collect()
    gc.freeze()
    # A thread back from a system call waits for the GIL until the running thread's time slice
    # ends (https://docs.python.org/3/library/sys.html#sys.setswitchinterval, 5 ms by default):
    # with compaction's many small reads on one thread and a scrape on another, each waited on
    # the other slice by slice. With 1 ms slices the reads of ~80 scrapes during a compaction of
    # 10,000 files spent 0.13 s instead of 0.27 s (profiled in-process, 2-core VM; one sample);
    # the daemon's threads are few and mostly idle, so shorter slices cost it nothing measurable.
    sys.setswitchinterval(0.001)
    thread = threading.Thread(target=server.serve_forever, name="fa4doctor-http", daemon=True)
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"fa4doctor serve: listening on http://{bound_host}:{bound_port}/", err=True)
    try:
        daemon.run()
    finally:
        server.shutdown()
        server.server_close()
    click.echo("fa4doctor serve: stopped", err=True)
