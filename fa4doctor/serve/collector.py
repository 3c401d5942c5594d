"""One Prometheus collector over the daemon's latest snapshot.

It yields, in this order: the daemon's own health, the probe's families
(`metrics_env.environment_families(check)`), the smoke families (`metrics_smoke.smoke_families(smoke)`),
and the dispatch counters summed from the metrics directory. The report families are built once per new report,
and all but the dispatch counters once per daemon state (it is replaced whole when a cycle ends);
`exposition()` keeps their encoded text too, so a scrape reads the metrics directory and encodes
only its families. A family name that appears twice is kept once (the first), so one faulty
renderer can never make the scrape invalid, nor hide the daemon's health.

>>> from prometheus_client import CollectorRegistry
>>> from fa4doctor.serve.state import DaemonState
>>> registry = CollectorRegistry()
>>> registry.register(Collector(lambda: DaemonState(probe_up=True)))
>>> registry.get_sample_value("fa4doctor_probe_up")
1.0
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any, Callable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from fa4doctor.serve.families import empty_dispatch_families
from fa4doctor.serve.multiproc import CounterReader
from fa4doctor.serve.state import (FAILURE_OUTCOMES, REVET_FAILURE_OUTCOMES, SKIP_REASONS, UNREADY_AFTER_FAILURES,
                                   DaemonState)
from fa4doctor.exporters.metrics_env import GPU_LABELS, environment_families, gpu_labels
from fa4doctor.exporters.metrics_smoke import smoke_families
from fa4doctor.exporters.textfile import Families

# state attribute -> the renderer of that report (the probe's and the smoke run's metrics)
RENDERERS = {"check": environment_families, "smoke": smoke_families}


OPENMETRICS_EOF = b"# EOF\n"  # ends every OpenMetrics exposition: only the last part keeps it
MAX_MEDIA_TYPES = 8


class Collector:
    """`collect()` renders `state()`; `metrics_dir` (optional, or `reader` over it) is summed on every scrape;
    `exposition()` is what `/metrics` serves (the same bytes, most of them cached per state).

    Seams: `renderers` maps a state attribute to a function `dict -> list[Metric]`
    (production default: `RENDERERS`, the probe's and smoke's metric modules).
    """

    def __init__(self, state: Callable[[], DaemonState], *, metrics_dir: str | None = None,
                 metrics_lock: threading.Lock | None = None,
                 renderers: dict[str, Callable[[dict], list[Metric]]] | None = None,
                 reader: CounterReader | None = None):
        self._state = state
        # `reader`: the daemon's (`Daemon.reader`), whose files its maintenance thread settles
        self._reader = reader or (CounterReader(metrics_dir) if metrics_dir else None)
        self._metrics_lock = metrics_lock
        self._renderers = RENDERERS if renderers is None else renderers
        self._cache: dict[str, tuple[dict, list[Metric], bool]] = {}
        self._cache_lock = threading.Lock()
        self._families_state: DaemonState | None = None
        self._families_cached: tuple[list[Metric], frozenset[str]] = ([], frozenset())
        self._texts_state: DaemonState | None = None
        self._texts: dict[str, bytes] = {}

    def collect(self) -> Iterator[Metric]:
        families, names = self._families(self._state())
        yield from families
        yield from (family for family in self._dispatch_families() if family.name not in names)

    def exposition(self, encoder: Callable[[Any], bytes], media_type: str) -> bytes:
        """What `encoder(registry)` returns for a registry holding only this collector, faster:
        the report, smoke and health families change only when the daemon's state is replaced
        (a cycle ended), so their text is encoded once per state and media type; each call
        encodes only the dispatch counters. `media_type` names the encoder's output format.
        """
        state = self._state()
        families, names = self._families(state)
        with self._cache_lock:
            texts = self._texts if self._texts_state is state else {}
            static = texts.get(media_type)
        if static is None:
            static = encoder(Families(families))
            if media_type.startswith("application/openmetrics-text"):
                static = static.removesuffix(OPENMETRICS_EOF)
            with self._cache_lock:
                if self._texts_state is not state:
                    self._texts_state, self._texts = state, {}
                if len(self._texts) < MAX_MEDIA_TYPES:  # clients choose versions in Accept
                    self._texts[media_type] = static
        dispatch = [family for family in self._dispatch_families() if family.name not in names]
        return static + encoder(Families(dispatch))

    def _families(self, state: DaemonState) -> tuple[list[Metric], frozenset[str]]:
        """The health, report and smoke families of one state, each name once: the daemon's own
        health first, so a renderer's stray family never hides it."""
        with self._cache_lock:
            if self._families_state is state:
                return self._families_cached
        rendered: dict[str, bool] = {}
        reports: list[Metric] = []
        for attr, render in self._renderers.items():
            report_families, rendered[attr] = self._render(attr, render, getattr(state, attr))
            reports.extend(report_families)
        families = health_families(state, rendered) + reports
        names: set[str] = set()
        unique: list[Metric] = []
        for family in families:
            if family.name not in names:
                names.add(family.name)
                unique.append(family)
        result = unique, frozenset(names)
        with self._cache_lock:
            self._families_state, self._families_cached = state, result
        return result

    def _render(self, attr: str, render: Any, report: dict | None) -> tuple[list[Metric], bool]:
        if report is None:
            return [], False
        with self._cache_lock:
            cached = self._cache.get(attr)
            if cached and cached[0] is report:  # a new report is a new dict object
                return cached[1], cached[2]
            try:
                families, ok = list(render(report)), True
            except Exception:  # noqa: BLE001  a renderer bug must not take /metrics down
                families, ok = [], False
            self._cache[attr] = (report, families, ok)
            return families, ok

    def _dispatch_families(self) -> list[Metric]:
        if self._reader is None:
            return empty_dispatch_families()  # "avoid missing metrics" (writing_exporters.md)
        with self._metrics_lock or nullcontext():
            snapshot = self._reader.read()
        files = GaugeMetricFamily("fa4doctor_metrics_dir_files",
                                  "Files in the dispatch metrics directory, by state (writer: "
                                  "one process's counters, archive, ignored foreign file, "
                                  "corrupt, not_regular: a FIFO, symlink, device or directory, "
                                  "never opened).", labels=["state"])
        for name, count in sorted(snapshot.files.items()):
            files.add_metric([name], count)
        dropped = GaugeMetricFamily("fa4doctor_metrics_dir_foreign_samples",
                                    "Samples in the metrics directory that are not fa4doctor "
                                    "dispatch counters (skipped).", value=snapshot.samples_dropped)
        held = GaugeMetricFamily("fa4doctor_metrics_dir_held_files",
                                 "Corrupt counter files (and, as one, those since removed) still counted "
                                 "at their last good values, so the dispatch counters never go down "
                                 "because of them.", value=snapshot.held)
        return [*snapshot.families, files, dropped, held]


def health_families(state: DaemonState, rendered: dict[str, bool] | None = None) -> list[Metric]:
    """The daemon's own health: probe, smoke scheduling, NVML poll, metrics-dir compaction."""
    out: list[Metric] = [
        _gauge("fa4doctor_probe_up", "1 if the last probe cycle produced a valid report.", state.probe_up),
        _gauge("fa4doctor_serve_ready", "1 once the first probe cycle has finished, 0 while the last "
               f"{UNREADY_AFTER_FAILURES} or more cycles in a row failed (what /readyz answers).", state.ready),
        _gauge("fa4doctor_ledger_readable", "1 if the vetting ledger could be read (or does not exist yet) at "
               "the last look; 0 if not: its evidence is ignored and no smoke run can record.",
               state.ledger_problem is None),
        _gauge("fa4doctor_serve_start_time_seconds", "When the daemon started (Unix time).", state.started),
        _counter("fa4doctor_probe_cycles", "Probe cycles run.", state.probe_cycles),
        _by_label("fa4doctor_probe_failures",
                  "Probe cycles without a valid report, by outcome.", "outcome", state.probe_failures,
                  FAILURE_OUTCOMES),
        _gauge("fa4doctor_nvml_poll_up", "1 if the daemon's last in-process NVML poll succeeded.",
               state.nvml_up),
        _counter("fa4doctor_nvml_poll_failures", "In-process NVML polls that failed.",
                 state.nvml_poll_failures),
        _counter("fa4doctor_serve_smoke_runs", "Smoke child processes started.", state.smoke_runs),
        _by_label("fa4doctor_serve_smoke_failures",
                  "Smoke children without a valid report, by outcome.", "outcome", state.smoke_failures,
                  FAILURE_OUTCOMES),
        _by_label("fa4doctor_serve_smoke_skips",
                  "Smoke cycles skipped, by why (gpus_busy, nvml_unavailable, no_gpu).", "reason",
                  state.smoke_skips, SKIP_REASONS),
        _counter("fa4doctor_metrics_dir_compacted_files", "Dead writers' files merged into the archive.",
                 state.compacted_files),
        _counter("fa4doctor_metrics_dir_compaction_failures", "Compactions that could not write.",
                 state.compaction_failures),
        _gauge("fa4doctor_serve_revet_pending", "1 while a re-vetting run after a fingerprint change waits "
               "for an idle GPU (or for its retry after a failed run).", state.revet_pending),
        _counter("fa4doctor_serve_revet_runs", "Re-vetting runs tried (a smoke child each).", state.revet_runs),
        _by_label("fa4doctor_serve_revet_failures",
                  "Re-vetting runs without a valid report, or that could not be planned, by outcome.",
                  "outcome", state.revet_failures, REVET_FAILURE_OUTCOMES),
    ]
    optional = (
        ("fa4doctor_probe_last_success_timestamp_seconds", "When the last valid probe report arrived.",
         state.probe_last_success),
        ("fa4doctor_serve_probe_child_seconds", "How long the last probe child process ran.",
         state.probe_last_seconds),
        ("fa4doctor_serve_smoke_last_success_timestamp_seconds",
         "When the last valid smoke report arrived.", state.smoke_last_success),
        ("fa4doctor_serve_revet_last_success_timestamp_seconds",
         "When the last valid re-vetting report arrived.", state.revet_last_success),
    )
    out += [_gauge(name, doc, value) for name, doc, value in optional if value is not None]
    vetting = GaugeMetricFamily("fa4doctor_vetting_current",
                                "1 if the ledger holds evidence (pass or fail) under the current fingerprint "
                                "for every case the re-vet plan runs for the backend on the GPU.",
                                labels=GPU_LABELS + ["backend"])
    for found in state.vetting:
        vetting.add_metric(gpu_labels(found.nvml_index, found.uuid) + [found.backend], found.current)
    out.append(vetting)
    processes = GaugeMetricFamily("fa4doctor_gpu_compute_processes",
                                  "Compute processes NVML lists on the GPU (smoke kernels run only at 0).",
                                  labels=GPU_LABELS)
    for gpu in state.gpus:
        if gpu.compute_processes is not None:
            processes.add_metric(gpu_labels(gpu.nvml_index, gpu.uuid), gpu.compute_processes)
    out.append(processes)
    if rendered is not None:
        ok = GaugeMetricFamily("fa4doctor_serve_report_rendered",
                               "1 if the latest report of this kind rendered into metrics.",
                               labels=["report"])
        for name, value in sorted(rendered.items()):
            ok.add_metric([name], value)
        out.append(ok)
    return out


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def _by_label(name: str, doc: str, label: str, pairs: tuple, known: tuple[str, ...]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted((dict.fromkeys(known, 0) | dict(pairs)).items()):
        family.add_metric([key], float(value))
    return family
