"""The node daemon's loop: probe and smoke cycles in child processes (`children.py`), NVML polled
in-process (`gpu_load.py`), each cycle's outcome into one `DaemonState` (`state.py`).

Smoke kernels run only on GPUs where NVML lists no compute process, and see only those GPUs (their
UUIDs in `CUDA_VISIBLE_DEVICES`, so NVML and CUDA numbering never have to agree;
docs/sources.md#nvml-index-and-cuda-ordinal).

After each probe the daemon compares the fingerprints of the new environment (per backend and GPU,
`dispatch.vetting.fingerprint`) with those it last vetted under; where one changed and the ledger
lacks evidence under it (at start too), a re-vetting run (`serve/revet.py`) goes before anything
else the moment a GPU is idle. One child at a time: the loop runs them in turn.

>>> config = ServeConfig(smoke_level="off")
>>> Daemon(config, nvml_factory=lambda: None).state.ready
False
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from fa4doctor.environment import Environment
from fa4doctor.runtime.counters import ENV_METRICS_DIR, ENV_MULTIPROC_DIR
from fa4doctor.serve import compaction, multiproc, revet
from fa4doctor.serve.children import ChildResult, kill_group, run_child
from fa4doctor.serve.gpu_load import GpuLoad, default_nvml, idle_uuids, poll_gpus
from fa4doctor.serve.state import UNREADY_AFTER_FAILURES, DaemonState
from fa4doctor.serve.writer_files import DEFAULT_GRACE_SECONDS
from fa4doctor.probe.ledger import ENV_LEDGER, default_ledger_path, read_ledger

# "off" plus the levels of `fa4doctor smoke` (fa4doctor/smoke/cases.py LEVELS; a test keeps them equal)
SMOKE_LEVELS = ("off", "quick", "standard", "thorough")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """How the daemon runs. Commands are argv lists (a seam: tests run small Python scripts)."""

    interval: float = 60.0
    smoke_interval: float = 6 * 3600.0
    smoke_level: str = "quick"
    probe_timeout: float = 120.0
    smoke_timeout: float = 1800.0
    metrics_dir: str | None = None
    ledger: str | None = None
    compact_interval: float = 60.0
    compact_grace: float = DEFAULT_GRACE_SECONDS
    # How often the scrape reader looks for files whose writer has gone (a stat and a lock test
    # each), so scrapes stop reading them (multiproc.CounterReader.settle).
    settle_interval: float = 10.0
    probe_command: tuple[str, ...] = (sys.executable, "-m", "fa4doctor", "check", "--json")
    smoke_command: tuple[str, ...] = (sys.executable, "-m", "fa4doctor", "smoke", "--json")
    revet_level: str = "standard"  # "off": never re-vet (smoke_level "off" runs no kernel at all)
    smoke_spec: str | None = None  # the re-vet run's shapes (None: revet.default_specs())
    revet_poll: float = 10.0  # seconds between NVML looks while a re-vet waits for an idle GPU

    def __post_init__(self) -> None:
        for name in ("smoke_level", "revet_level"):
            if getattr(self, name) not in SMOKE_LEVELS:
                raise ValueError(f"{name}: {getattr(self, name)!r} (valid: {', '.join(SMOKE_LEVELS)})")
        for name in ("interval", "smoke_interval", "probe_timeout", "smoke_timeout", "revet_poll", "settle_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def _bump(pairs: tuple[tuple[str, int], ...], key: str) -> tuple[tuple[str, int], ...]:
    counts = dict(pairs)
    counts[key] = counts.get(key, 0) + 1
    return tuple(sorted(counts.items()))


class Daemon:
    """Runs cycles until `stop()`; `state` is always the latest complete snapshot."""

    def __init__(self, config: ServeConfig, *, nvml_factory: Callable[[], Any] = default_nvml,
                 environ: dict[str, str] | None = None, clock: Callable[[], float] = time.time):
        self.config = config
        self.state = DaemonState(started=clock())
        self.metrics_lock = threading.Lock()  # held by scrapes, and by compaction only to swap the archive
        # The scrape reader (the collector's, `cli/serve.py`): the maintenance thread settles its files.
        self.reader = multiproc.CounterReader(config.metrics_dir) if config.metrics_dir else None
        self._nvml_factory = nvml_factory
        self._nvml: Any = None
        self._environ = dict(os.environ if environ is None else environ)
        self._clock = clock
        self._stop = threading.Event()
        self._children: set[subprocess.Popen] = set()
        self._update_lock = threading.Lock()
        # Re-vetting, touched by the loop's thread only. A bad --smoke-spec fails here, at start-up.
        self._plan = revet.load_plan(config.revet_level, config.smoke_spec)
        self._targets: tuple[revet.Target, ...] = ()
        self._vetted: dict[tuple, str] = {}  # target key -> the fingerprint it was last vetted under
        self._revet_not_before = 0.0  # monotonic; after a failed run, the next try waits a smoke interval

    # -- state ---------------------------------------------------------------------------------
    def _update(self, **changes: Any) -> None:
        with self._update_lock:
            self.state = replace(self.state, **changes)

    def child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(self._environ)
        if self.config.ledger:
            env[ENV_LEDGER] = self.config.ledger
        # a probe child that runs the dispatcher must not count into the node's totals
        env.pop(ENV_METRICS_DIR, None)
        env.pop(ENV_MULTIPROC_DIR, None)
        return env | (extra or {})

    def _run(self, argv: Sequence[str], timeout: float, schema: str, env: dict[str, str]) -> ChildResult:
        def track(proc: subprocess.Popen) -> None:
            self._children.add(proc)
            if self._stop.is_set():
                kill_group(proc)

        try:
            result = run_child(argv, timeout=timeout, schema=schema, env=env, started=track)
        finally:
            self._children = {p for p in self._children if p.poll() is None}
        if result.outcome != "ok":  # the counters say how often; the log says what happened
            code = "" if result.exit_code is None else f" (exit status {result.exit_code})"
            print(f"fa4doctor serve: {schema.split('.')[-1]} cycle {result.outcome}{code}: {result.detail}",
                  file=sys.stderr, flush=True)
        return result

    # -- cycles --------------------------------------------------------------------------------
    def probe_once(self) -> ChildResult:
        result = self._run(self.config.probe_command, self.config.probe_timeout,
                           "fa4doctor.check", self.child_env())
        s = self.state
        if result.outcome == "ok":
            self._update(check=result.payload, probe_up=True, probe_last_success=self._clock(),
                         probe_last_seconds=result.seconds, probe_cycles=s.probe_cycles + 1, ready=True,
                         probe_failures_in_a_row=0)
            self._plan_revet(result.payload)
        else:
            in_a_row = s.probe_failures_in_a_row + 1
            self._update(probe_up=False, probe_last_seconds=result.seconds,
                         ready=in_a_row < UNREADY_AFTER_FAILURES, probe_failures_in_a_row=in_a_row,
                         probe_cycles=s.probe_cycles + 1,
                         probe_failures=_bump(s.probe_failures, result.outcome))
        self._read_ledger()  # its health is looked at every cycle, re-vet plan or not
        return result

    def poll_nvml(self) -> tuple[GpuLoad, ...] | None:
        try:
            if self._nvml is None:
                nvml = self._nvml_factory()
                if nvml is None:
                    raise RuntimeError("no NVML source")
                nvml.init()
                self._nvml = nvml
            gpus = poll_gpus(self._nvml)
        except Exception:  # noqa: BLE001  missing or broken NVML is a state to report, not a crash
            self._nvml = None  # re-initialise on the next poll: the driver may come back
            self._update(nvml_up=False, gpus=(), nvml_poll_failures=self.state.nvml_poll_failures + 1)
            return None
        self._update(nvml_up=True, gpus=gpus)
        return gpus

    def smoke_once(self) -> ChildResult | None:
        """Smoke kernels on the idle GPUs only; returns None when skipped (and counts why)."""
        if self.config.smoke_level == "off":
            return None
        gpus = self.poll_nvml()  # fresh, not the probe cycle's: a job may have started since (milliseconds)
        idle = idle_uuids(gpus)
        if not idle:
            reason = "nvml_unavailable" if gpus is None else "gpus_busy" if gpus else "no_gpu"
            self._update(smoke_skips=_bump(self.state.smoke_skips, reason))
            return None
        env = self.child_env({"CUDA_VISIBLE_DEVICES": ",".join(idle)})
        argv = (*self.config.smoke_command, "--level", self.config.smoke_level)
        result = self._run(argv, self.config.smoke_timeout, "fa4doctor.smoke", env)
        s = self.state
        if result.outcome == "ok":
            self._update(smoke=result.payload, smoke_runs=s.smoke_runs + 1,
                         smoke_last_success=self._clock())
        else:
            self._update(smoke_runs=s.smoke_runs + 1,
                         smoke_failures=_bump(s.smoke_failures, result.outcome))
        self._refresh_vetting()  # its cases are in the ledger now
        return result

    # -- re-vetting ----------------------------------------------------------------------------
    def _plan_revet(self, check: dict) -> None:
        """The re-vet plan's targets under the probe's new environment, and their vetting."""
        try:
            self._targets = revet.targets(Environment.from_plain(check), self._plan)
        except Exception as exc:  # noqa: BLE001  an unplannable report is counted, never fatal
            self._revet_failed("plan_failed", f"{type(exc).__name__}: {exc}")
            return
        self._refresh_vetting()

    def _refresh_vetting(self) -> None:
        """Read the ledger: a target whose fingerprint is new to the daemon is adopted where the
        ledger already covers it (a rollback, a manual smoke run), and otherwise waits for a re-vet."""
        if not self._targets:
            self._update(vetting=(), revet_pending=False)
            return
        vetting = revet.status(self._targets, self._read_ledger())
        for target, found in zip(self._targets, vetting):
            if found.current:
                self._vetted[target.key] = target.fingerprint
        pending = any(self._vetted.get(t.key) != t.fingerprint for t in self._targets)
        enabled = self.config.smoke_level != "off" and self.config.revet_level != "off"
        self._update(vetting=vetting, revet_pending=pending and enabled)

    def _ledger_path(self) -> str | os.PathLike:
        return self.config.ledger or default_ledger_path(self._environ)  # where the children write

    def _read_ledger(self) -> tuple:
        """The ledger's entries; whether it could be read goes into the state (a metric), and a
        new problem into the log, once."""
        read = read_ledger(self._ledger_path())
        if read.problem and read.problem != self.state.ledger_problem:
            print(f"fa4doctor serve: {read.problem}; smoke evidence is ignored and no run can record",
                  file=sys.stderr, flush=True)
        self._update(ledger_problem=read.problem)
        return read.entries

    def revet_due(self) -> bool:
        return self.state.revet_pending and time.monotonic() >= self._revet_not_before

    def revet_once(self) -> ChildResult | None:
        """The pending re-vetting run, on the idle GPUs only; None when none is due or no GPU is
        idle (the loop looks again every `revet_poll` seconds)."""
        if not self.revet_due():
            return None
        idle = idle_uuids(self.poll_nvml())
        # Evidence holds per fingerprint, not per GPU: a run on the idle GPUs vets every GPU of
        # the same model, busy or not; a GPU unlike every idle one waits until it is idle itself.
        runs = {(t.backend, t.fingerprint) for t in self._targets if t.gpu.uuid in idle}
        vets = [t for t in self._targets
                if (t.backend, t.fingerprint) in runs and self._vetted.get(t.key) != t.fingerprint]
        if not vets:
            return None
        try:
            with tempfile.TemporaryDirectory(prefix="fa4doctor-revet-") as tmp:
                argv = (*self.config.smoke_command, *revet.child_args(self._plan, tmp))
                env = self.child_env({"CUDA_VISIBLE_DEVICES": ",".join(idle)})
                result = self._run(argv, self.config.smoke_timeout, "fa4doctor.smoke", env)
        except OSError as exc:  # the spec file could not be written
            result = ChildResult("plan_failed", detail=f"{type(exc).__name__}: {exc}")
        if result.outcome == "ok":
            # a re-vet report is a smoke report too: its failures reach fa4doctor_smoke_cases
            self._vetted.update((t.key, t.fingerprint) for t in vets)
            now = self._clock()
            self._update(smoke=result.payload, smoke_last_success=now, revet_last_success=now,
                         revet_runs=self.state.revet_runs + 1)
        else:
            self._revet_not_before = time.monotonic() + self.config.smoke_interval  # bounded retries
            self._update(revet_runs=self.state.revet_runs + 1)
            self._revet_failed(result.outcome, result.detail, log=result.outcome == "plan_failed")
        self._refresh_vetting()
        return result

    def _revet_failed(self, outcome: str, detail: str, log: bool = True) -> None:
        self._update(revet_failures=_bump(self.state.revet_failures, outcome))
        if log:
            print(f"fa4doctor serve: re-vetting {outcome}: {detail}", file=sys.stderr, flush=True)

    def compact_once(self) -> None:
        """Dead writers' files into the archive; scrapes wait only while the archive is swapped."""
        if not self.config.metrics_dir:
            return
        try:
            done = compaction.compact(self.config.metrics_dir, grace_seconds=self.config.compact_grace,
                                      lock=self.metrics_lock)
        except Exception as exc:  # noqa: BLE001  a directory we cannot tidy must not stop the daemon
            done = compaction.Compaction(error=f"{type(exc).__name__}: {exc}")
        s = self.state
        self._update(compacted_files=s.compacted_files + done.absorbed,
                     compaction_failures=s.compaction_failures + (done.error is not None))

    def settle_once(self) -> None:
        """Let the scrape reader stop reading files whose writer is gone (never raises)."""
        if self.reader is None:
            return
        try:
            self.reader.settle(grace_seconds=self.config.compact_grace)
        except Exception:  # noqa: BLE001  unsettled files are only read again, at the scrape's cost
            pass

    def _maintain(self) -> None:
        """Compaction and settling on their own thread, so a probe or smoke child (up to
        `smoke_timeout`) never delays them: compact every `compact_interval`, settle every
        `settle_interval`, both from the start."""
        due = {"compact": 0.0, "settle": 0.0}
        while not self._stop.is_set():
            if time.monotonic() >= due["compact"]:
                self.compact_once()
                due["compact"] = time.monotonic() + self.config.compact_interval
            if time.monotonic() >= due["settle"]:
                self.settle_once()
                due["settle"] = time.monotonic() + self.config.settle_interval
            self._stop.wait(max(0.0, min(due.values()) - time.monotonic()))

    def run(self) -> None:
        """Loop until `stop()`: probe every `interval`, smoke every `smoke_interval` after the
        first probe; a pending re-vet goes before the smoke cycle, looking for an idle GPU every
        `revet_poll` seconds. The metrics directory is maintained on a thread of its own (`_maintain`)."""
        maintenance = threading.Thread(target=self._maintain, name="fa4doctor-maintenance", daemon=True)
        maintenance.start()
        try:
            self._loop()
        finally:
            self._stop.set()
            maintenance.join(timeout=30)
        self._shutdown_nvml()

    def _loop(self) -> None:
        due = {"probe": 0.0, "smoke": None}
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= due["probe"]:
                self.poll_nvml()
                self.probe_once()
                due["probe"] = time.monotonic() + self.config.interval
                if due["smoke"] is None:
                    due["smoke"] = time.monotonic()
            if not self._stop.is_set() and self.revet_due():
                ran = self.revet_once()
                if ran is not None and ran.outcome == "ok" and self._revet_covers_smoke():
                    due["smoke"] = time.monotonic() + self.config.smoke_interval
            if not self._stop.is_set() and due["smoke"] is not None and time.monotonic() >= due["smoke"]:
                self.smoke_once()
                due["smoke"] = time.monotonic() + self.config.smoke_interval
            wake = min(v for v in due.values() if v is not None)
            if self.state.revet_pending:
                wake = min(wake, max(self._revet_not_before, time.monotonic() + self.config.revet_poll))
            self._stop.wait(max(0.0, wake - time.monotonic()))

    def _revet_covers_smoke(self) -> bool:
        """A re-vet that ran every spec of the smoke level stands in for the smoke cycle."""
        return revet.covers(self.config.revet_level, self.config.smoke_level)

    def stop(self) -> None:
        """Ask the loop to end and kill any running child's process group (signal-handler safe)."""
        self._stop.set()
        for proc in list(self._children):
            kill_group(proc)

    def _shutdown_nvml(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.shutdown()
            except Exception:  # noqa: BLE001
                pass
