"""Test helpers: dispatch-counter files in the writer's format, and tiny stand-in children."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from fa4doctor.runtime.counter_file import CounterFile, counter_key
from fa4doctor.runtime.counters import calls_key, fallbacks_key


def write_counters(path: Path, calls: dict[str, float] = {}, fallbacks: dict[tuple, float] = {},
                   extra: list[tuple] = ()) -> Path:
    """Write one writer's file as the dispatcher does (its keys, CounterFile), then close it."""
    out = CounterFile(path)
    for backend, value in calls.items():
        out.write_value(calls_key(backend), value, 0.0)
    for labels, value in fallbacks.items():
        out.write_value(fallbacks_key(labels), value, 0.0)
    for family, name, labels, value in extra:
        out.write_value(counter_key(family, name, list(labels), list(labels.values()), "x"), value, 0.0)
    out.close()
    return path


def age(path: Path, seconds: float = 3600.0) -> Path:
    """Pretend the file was last written long ago (compaction waits out a grace period)."""
    then = os.stat(path).st_mtime - seconds
    os.utime(path, (then, then))
    return path


LIVE_WRITER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    print("locked", flush=True)
    sys.stdin.read()
""")


class LiveWriter:
    """A separate process holding LOCK_SH on a file, as a running training process does."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def check_report(**overrides) -> dict:
    """A minimal `fa4doctor check --json` object (the parts the daemon itself reads)."""
    report = {"schema": "fa4doctor.check", "schema_version": 1, "environment": {},
              "verdicts": [], "problems": [], "healthy": True, "exit_code": 0,
              "timings": {"total_seconds": 0.1}, "smoke": None}
    return report | overrides


def script(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    """argv of a child that runs `body` (Python)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return (sys.executable, str(path))


def printing(tmp_path: Path, name: str, payload: dict, exit_code: int = 0) -> tuple[str, ...]:
    """argv of a child that prints `payload` as JSON and exits with `exit_code`."""
    data = tmp_path / f"{name}.json"
    data.write_text(json.dumps(payload))
    return script(tmp_path, name, f"""
        import sys
        sys.stdout.write(open({str(data)!r}).read())
        sys.exit({exit_code})
    """)
