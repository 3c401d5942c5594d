"""Driving smoke children: start one, feed it cases, and turn whatever happens into outcomes.

The parent never imports torch. It reads the child's `start`/`result` lines with a deadline per
case: a case that outlives `timeout` is a timeout (the child's process group is killed), a child
that dies is a crash of the case it had started (with the signal's name), and a fresh child
takes the cases that are left. Every pass of the loop settles at least one case, so it ends.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

Key = tuple[int, str]  # (case id, direction)
ENV_FAKE = "FA4DOCTOR_SMOKE_FAKE"  # read by child.py: a stand-in for call_backend
EXIT_FATAL = 3  # child.py's status when its CUDA context is unusable: a fresh child takes the rest


def directions(case: dict) -> tuple[str, ...]:
    """The directions a case runs: forward, and backward when its spec trains."""
    return ("fwd", "bwd") if case["spec"]["training"] else ("fwd",)


class Fleet:
    """Every child one smoke run started, so that an interrupted run can stop them all (they
    live in their own sessions, out of reach of the terminal's Ctrl-C)."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.cancelled = False
        self.lock = threading.Lock()

    def add(self, child: Child) -> bool:
        with self.lock:
            self.children.append(child)
            return not self.cancelled

    def stop(self) -> None:
        with self.lock:
            self.cancelled = True
            children = list(self.children)
        for child in children:
            kill(child)


@dataclass
class ChildSpec:
    """How to start a child: its environment and arguments."""

    env: dict[str, str]
    device: str = "cuda"
    preload: tuple[str, ...] = ()
    timeout: float = 60.0
    import_timeout: float = 180.0
    fleet: Fleet = field(default_factory=Fleet)  # shared by the children of one smoke run


@dataclass
class Child:
    proc: subprocess.Popen
    events: queue.Queue
    stderr: object
    ready: dict | None = None
    born: float = field(default_factory=time.monotonic)


def spawn(spec: ChildSpec) -> Child:
    stderr = tempfile.TemporaryFile()
    args = [sys.executable, "-m", "fa4doctor.smoke.child", "--device", spec.device,
            "--preload", ",".join(spec.preload)]
    # A new session: a timeout kills the whole group (compiler subprocesses included).
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                            env=spec.env, start_new_session=True, text=True)
    events: queue.Queue = queue.Queue()
    child = Child(proc, events, stderr)
    if not spec.fleet.add(child):
        kill(child)  # the run was stopped while this one started

    def read() -> None:
        for line in proc.stdout:
            try:
                events.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        events.put(None)

    threading.Thread(target=read, daemon=True).start()
    return child


def _next(child: Child, deadline: float) -> dict | None | bool:
    """The next event, None at end of output, False when the deadline passed."""
    try:
        return child.events.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return False


def kill(child: Child) -> None:
    try:
        os.killpg(child.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.proc.wait()


def _stderr_tail(child: Child) -> str:
    child.stderr.seek(0)
    lines = [line.strip() for line in child.stderr.read().decode(errors="replace").splitlines()
             if line.strip()]
    return lines[-1][:300] if lines else ""


def _death(child: Child) -> str:
    code = child.proc.wait()
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    tail = _stderr_tail(child)
    return f"exited with status {code}" + (f": {tail}" if tail else "")


def wait_ready(child: Child, spec: ChildSpec) -> str | None:
    """None once the child has imported its backends, else why it never got there."""
    if child.ready is not None:
        return None
    event = _next(child, child.born + spec.import_timeout)
    if event is False:
        kill(child)
        return f"timeout: importing the backends took over {spec.import_timeout:.0f} s"
    if not event or event.get("event") != "ready":
        return f"crash: the smoke child {_death(child)} before running any case"
    child.ready = event
    return None


def drive(child: Child, spec: ChildSpec, cases: list[dict], mode: str,
          record: Callable[[Key, dict], None], done: set[Key]) -> None:
    """Run `cases` in `child` until it finishes or dies, adding what it settles to `done`."""
    before = len(done)

    def settle(key: Key, result: dict) -> None:
        done.add(key)
        record(key, result)

    try:
        child.proc.stdin.write(json.dumps({"mode": mode, "cases": cases}) + "\n")
        child.proc.stdin.close()
    except BrokenPipeError:
        pass  # it died after `ready`: the end of its output below says how
    # Every event restarts the clock, so a hang between kernel calls is caught as well.
    current, deadline = None, time.monotonic() + spec.timeout
    while True:
        event = _next(child, deadline)
        if event is False:
            kill(child)
            key = current or _first_unsettled(cases, done)
            if key is not None:
                settle(key, {"outcome": "timeout", "detail": f"no result after {spec.timeout:g} s"})
            return
        if event is None or event.get("event") == "done":
            break
        deadline = time.monotonic() + spec.timeout
        if event["event"] == "start":
            current = (event["id"], event["direction"])
        elif event["event"] == "result":
            fields = {k: v for k, v in event.items() if k not in ("event", "id", "direction")}
            settle((event["id"], event["direction"]), fields)
            current = None
    death = _death(child)
    if current is not None:
        settle(current, {"outcome": "crash", "detail": death})
    elif (len(done) == before or child.proc.returncode not in (0, EXIT_FATAL)) and _first_unsettled(cases, done):
        # It failed outside any kernel call; blame the next case so the loop always moves on.
        settle(_first_unsettled(cases, done), {"outcome": "crash", "detail": f"smoke child {death}"})


def _first_unsettled(cases: list[dict], settled: set[Key]) -> Key | None:
    return next(((c["id"], d) for c in cases for d in directions(c) if (c["id"], d) not in settled), None)


def run_cases(spec: ChildSpec, cases: list[dict], mode: str, record: Callable[[Key, dict], None],
              child: Child | None = None) -> list[dict]:
    """Run every case to an outcome, restarting children after crashes and timeouts.

    Returns the `ready` events of the children it used (import times). In "compile" mode a child
    that never gets ready settles nothing: the run phase then compiles those cases itself.
    """
    readies, done = [], set()
    pending = list(cases)
    while pending and not spec.fleet.cancelled:
        child = child or spawn(spec)
        failure = wait_ready(child, spec)
        if failure and mode == "compile":
            return readies
        if failure:
            outcome, _, detail = failure.partition(": ")
            for case in pending:
                for direction in directions(case):
                    record((case["id"], direction), {"outcome": outcome, "detail": detail})
            return readies
        readies.append(child.ready)
        drive(child, spec, pending, mode, _with_skips(record, pending, done), done)
        child = None
        pending = [c for c in pending if any((c["id"], d) not in done for d in directions(c))]
    return readies


def _with_skips(record: Callable[[Key, dict], None], cases: list[dict], done: set[Key]):
    training = {c["id"] for c in cases if c["spec"]["training"]}

    def recorder(key: Key, result: dict) -> None:
        record(key, result)
        case_id, direction = key
        # the one place a failed forward settles its backward: a child stops the case there, or died
        if direction == "fwd" and result["outcome"] != "pass" and case_id in training:
            done.add((case_id, "bwd"))
            record((case_id, "bwd"), {"outcome": "skipped", "detail": f"forward failed ({result['outcome']})"})

    return recorder
