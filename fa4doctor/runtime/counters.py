"""Dispatch counters: `fa4doctor_dispatch_calls_total{backend}`,
`fa4doctor_dispatch_fallbacks_total{preferred, selected, reason}` and
`fa4doctor_unvetted_calls_total{backend}` (calls on a GPU whose backend has no passing smoke
evidence for their class under the current fingerprint; decided once per plan).

The hot path only adds 1 to a plain integer on a `Tally` (one per label set); the sums reach
prometheus-client when anything collects the registry (the counters flush themselves first) and,
when `FA4DOCTOR_METRICS_DIR` (else `PROMETHEUS_MULTIPROC_DIR`) is set, reach this process's own
`counter_<pid>-<hex>.db` file at most once a second and at exit. The file is written in
prometheus-client's multiprocess format by `counter_file.CounterFile` (the format is owned there,
not taken from the library's private `mmap_dict`), never through its global multiprocess mode, so the user's own
metrics keep whatever mode they had; the process holds a shared `flock` on its file for its
lifetime, so the node daemon can tell a dead writer's file (an exclusive lock succeeds).
Nothing here runs at import: no metric, no file, no thread.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, values

from fa4doctor.runtime.counter_file import CounterFile, counter_key

ENV_METRICS_DIR = "FA4DOCTOR_METRICS_DIR"
ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
CALLS = "fa4doctor_dispatch_calls"
FALLBACKS = "fa4doctor_dispatch_fallbacks"
UNVETTED = "fa4doctor_unvetted_calls"
CALLS_HELP = "Attention calls run by the fa4doctor dispatcher, by the backend that ran them."
FALLBACKS_HELP = ("Dispatcher calls the preferred backend did not run, by preferred and selected backend "
                  "and the first reason code of the preferred backend.")
UNVETTED_HELP = ("Attention calls on a GPU run by a backend with no passing smoke evidence for their class "
                 "under the current fingerprint (fa4doctor.dispatch.vetting), by that backend.")
FALLBACK_LABELS = ("preferred", "selected", "reason")
FLUSH_SECONDS = 1.0
log = logging.getLogger("fa4doctor.dispatch")


class _InProcessCounter(Counter):
    """A Counter that always keeps its value in memory and flushes pending tallies when collected.

    prometheus-client picks `values.ValueClass` at import from PROMETHEUS_MULTIPROC_DIR; if the user
    set it, a plain Counter would also write its own counter_<pid>.db and the daemon would count
    every call twice. MutexValue is the in-memory value class (prometheus_client/values.py).
    """

    def __init__(self, *args, owner: DispatchCounters, **kwargs):
        self._owner = owner
        super().__init__(*args, **kwargs)
        self._kwargs["owner"] = owner  # labelled children are built with these keyword arguments

    def _metric_init(self) -> None:
        self._value = values.MutexValue(self._type, self._name, self._name + "_total", self._labelnames,
                                        self._labelvalues, self._documentation)
        self._created = time.time()

    def collect(self):
        self._owner.flush()
        return super().collect()


class Tally:
    """Calls counted for one label set; the hot path does `tally.n += 1` and nothing else.
    `unvetted` is part of the identity, so counting unvetted calls costs a call nothing more."""

    # The compiled hit path finds `n` by name (runtime/native/hit.cpp slot_offset), not by position.
    __slots__ = ("backend", "fallback", "n", "flushed", "unvetted")

    def __init__(self, backend: str, fallback: tuple[str, str, str] | None, unvetted: bool = False):
        self.backend, self.fallback, self.n, self.flushed = backend, fallback, 0, 0
        self.unvetted = unvetted


class _FileSink:
    """This process's multiprocess file, in prometheus-client's format."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.path = directory / f"counter_{self.pid}-{secrets.token_hex(4)}.db"
        self.dict = CounterFile(self.path)
        self.lock_fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self.lock_fd, fcntl.LOCK_SH)  # released by the kernel when the process dies
        self.totals: dict[str, float] = {}

    def add(self, key: str, amount: int) -> None:
        total = self.totals.get(key, 0.0) + amount
        self.totals[key] = total
        self.dict.write_value(key, total, time.time())

    def close(self) -> None:
        self.dict.close()
        os.close(self.lock_fd)


def calls_key(backend: str) -> str:
    return counter_key(CALLS, CALLS + "_total", ["backend"], [backend], CALLS_HELP)


def fallbacks_key(labels: tuple[str, str, str]) -> str:
    return counter_key(FALLBACKS, FALLBACKS + "_total", list(FALLBACK_LABELS), list(labels), FALLBACKS_HELP)


def unvetted_key(backend: str) -> str:
    return counter_key(UNVETTED, UNVETTED + "_total", ["backend"], [backend], UNVETTED_HELP)


def metrics_dir() -> Path | None:
    text = os.environ.get(ENV_METRICS_DIR) or os.environ.get(ENV_MULTIPROC_DIR)
    return Path(text) if text else None


class DispatchCounters:
    """The three counters, the tallies behind them, and the optional multiprocess file."""

    # Slots: the compiled hit path reads `deadline` in place (runtime/native/hit.cpp slot_offset).
    __slots__ = ("_lock", "_tallies", "calls", "fallbacks", "unvetted", "registry", "directory", "_sink",
                 "deadline", "__weakref__")

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, directory: Path | None = None):
        self._lock = threading.RLock()
        self._tallies: dict[tuple, Tally] = {}
        self.calls = _InProcessCounter(CALLS, CALLS_HELP, ["backend"], registry=registry, owner=self)
        self.fallbacks = _InProcessCounter(FALLBACKS, FALLBACKS_HELP, list(FALLBACK_LABELS),
                                           registry=registry, owner=self)
        self.unvetted = _InProcessCounter(UNVETTED, UNVETTED_HELP, ["backend"], registry=registry, owner=self)
        self.registry = registry
        self.directory = directory
        self._sink: _FileSink | None = None
        # The hot path compares the clock with this; infinity when there is no file to refresh.
        self.deadline = time.monotonic() + FLUSH_SECONDS if directory else float("inf")

    def tally(self, backend: str, fallback: tuple[str, str, str] | None, unvetted: bool = False) -> Tally:
        key = (backend, fallback, unvetted)
        with self._lock:
            if key not in self._tallies:
                self._tallies[key] = Tally(backend, fallback, unvetted)
                self.calls.labels(backend)  # the series exists (at 0) from the first decision
                if fallback:
                    self.fallbacks.labels(*fallback)
                if unvetted:
                    self.unvetted.labels(backend)
            return self._tallies[key]

    def flush(self) -> None:
        with self._lock:
            sink = self._file_sink()
            for tally in list(self._tallies.values()):
                delta = tally.n - tally.flushed
                if delta <= 0:
                    continue
                tally.flushed += delta
                self.calls.labels(tally.backend).inc(delta)
                if tally.fallback:
                    self.fallbacks.labels(*tally.fallback).inc(delta)
                if tally.unvetted:
                    self.unvetted.labels(tally.backend).inc(delta)
                if sink is not None:
                    sink.add(calls_key(tally.backend), delta)
                    if tally.fallback:
                        sink.add(fallbacks_key(tally.fallback), delta)
                    if tally.unvetted:
                        sink.add(unvetted_key(tally.backend), delta)
            if self.directory:
                self.deadline = time.monotonic() + FLUSH_SECONDS

    def _file_sink(self) -> _FileSink | None:
        if self.directory is None:
            return None
        if self._sink is None:
            try:
                self._sink = _FileSink(self.directory)
            except OSError as exc:  # never fail a training step over metrics
                log.warning("fa4doctor: not writing dispatch counters to %s: %s", self.directory, exc)
                self.directory, self.deadline = None, float("inf")
        return self._sink

    def after_fork_in_child(self) -> None:
        """A forked child starts its own file; what the parent counted stays the parent's."""
        self._lock = threading.RLock()
        for tally in self._tallies.values():
            tally.flushed = tally.n
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def unregister(self) -> None:
        if self.registry is not None:
            for counter in (self.calls, self.fallbacks, self.unvetted):
                try:
                    self.registry.unregister(counter)
                except KeyError:
                    pass


_counters: DispatchCounters | None = None
_hooks_installed = False


def counters() -> DispatchCounters:
    """The process-wide counters, created (and registered in the default registry) on first use."""
    global _counters, _hooks_installed
    if _counters is None:
        _counters = DispatchCounters(REGISTRY, metrics_dir())
        if not _hooks_installed:
            _hooks_installed = True
            atexit.register(_flush_at_exit)
            os.register_at_fork(after_in_child=_after_fork)
    return _counters


def install(instance: DispatchCounters | None) -> None:
    """Replace the process-wide counters (tests pass a fresh registry; None: recreate on next use)."""
    global _counters
    if _counters is not None and _counters is not instance:
        _counters.flush()
        _counters.unregister()
    _counters = instance


def _flush_at_exit() -> None:
    if _counters is not None:
        _counters.flush()


def _after_fork() -> None:
    if _counters is not None:
        _counters.after_fork_in_child()
