"""The daemon's child processes: one run with a timeout, its JSON report parsed.

The daemon never imports torch or an attention library and never creates a CUDA context: the
probe (`python -m fa4doctor check --json`) and the smoke kernels (`... smoke --json`) run as child
processes in their own session, killed with their whole process group at their timeout. How a
child went is a `ChildResult` whose `outcome` is a label value, never an exception.

>>> run_child(["/nonexistent/fa4doctor"], timeout=60, schema="fa4doctor.check").outcome
'spawn_failed'
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True, slots=True)
class ChildResult:
    """How one child went: `outcome` is ok, failed (bad exit), crash (signal), timeout,
    bad_output (not the expected JSON) or spawn_failed; these are label values."""

    outcome: str
    payload: dict | None = None
    exit_code: int | None = None
    seconds: float = 0.0
    detail: str = ""


def run_child(argv: Sequence[str], *, timeout: float, schema: str, env: dict[str, str] | None = None,
              started: Callable[[subprocess.Popen], None] = lambda proc: None) -> ChildResult:
    """Run one child, kill its process group at `timeout`, and parse its JSON report."""
    begin = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    except OSError as exc:
        return ChildResult("spawn_failed", detail=f"{type(exc).__name__}: {exc}")
    started(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.communicate()
        return ChildResult("timeout", seconds=time.monotonic() - begin,
                           detail=f"killed after {timeout:g} s")
    seconds = time.monotonic() - begin
    tail = err.decode(errors="replace")[-2000:]
    if proc.returncode < 0:
        return ChildResult("crash", exit_code=proc.returncode, seconds=seconds, detail=tail)
    # exit 3 is a report of problems, still a valid report (promtool's convention: docs/sources.md#promtool)
    if proc.returncode not in (0, 3):
        return ChildResult("failed", exit_code=proc.returncode, seconds=seconds, detail=tail)
    try:
        payload = json.loads(out)
    except ValueError as exc:
        return ChildResult("bad_output", exit_code=proc.returncode, seconds=seconds, detail=str(exc))
    if not isinstance(payload, dict) or payload.get("schema") != schema:
        return ChildResult("bad_output", exit_code=proc.returncode, seconds=seconds,
                           detail=f"expected schema {schema!r}")
    return ChildResult("ok", payload=payload, exit_code=proc.returncode, seconds=seconds)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child's whole process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session: this is only ours
    except ProcessLookupError:
        pass
