"""How fast and small is `fa4doctor check --json`, next to `python -m torch.utils.collect_env`?

Runs each command in fresh processes on this machine, in one run: `check` first once to fill its
import cache (the state a node is in after its first check), then `--runs` times; `collect_env`
`--baseline-runs` times. Prints the median wall time and the peak resident memory of each, and the
ratio. Targets (issue 4): check <= 0.3 s and <= 60 MiB, at least 10x faster than collect_env.

    python bench/check_speed.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET_SECONDS, TARGET_MIB, TARGET_SPEEDUP = 0.3, 60.0, 10.0


def measure(command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MiB (this process alone, from wait4) and exit status of one run."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    return seconds, usage.ru_maxrss / 1024, child.returncode  # ru_maxrss is KiB on Linux


def series(command: list[str], runs: int) -> tuple[float, float, set[int]]:
    results = [measure(command) for _ in range(runs)]
    return (statistics.median(r[0] for r in results), max(r[1] for r in results), {r[2] for r in results})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of fa4doctor check --json")
    parser.add_argument("--baseline-runs", type=int, default=3, help="timed runs of collect_env")
    args = parser.parse_args()
    check = [sys.executable, "-m", "fa4doctor", "check", "--json"]
    baseline = [sys.executable, "-m", "torch.utils.collect_env"]
    measure(check)  # warm-up: fills the import cache, as any earlier check on the node would have
    check_s, check_mib, check_rc = series(check, args.runs)
    base_s, base_mib, base_rc = series(baseline, args.baseline_runs)
    speedup = base_s / check_s
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print(f"fa4doctor check --json      median {check_s:.3f} s  peak {check_mib:.1f} MiB  "
          f"({args.runs} runs, exit {sorted(check_rc)})")
    print(f"torch.utils.collect_env     median {base_s:.3f} s  peak {base_mib:.1f} MiB  "
          f"({args.baseline_runs} runs, exit {sorted(base_rc)})")
    print(f"speed-up {speedup:.1f}x")
    verdicts = [("time", check_s <= TARGET_SECONDS, f"<= {TARGET_SECONDS} s"),
                ("memory", check_mib <= TARGET_MIB, f"<= {TARGET_MIB:.0f} MiB"),
                ("speed-up", speedup >= TARGET_SPEEDUP, f">= {TARGET_SPEEDUP:.0f}x")]
    print("targets: " + ", ".join(f"{name} {'met' if ok else 'MISSED'} ({goal})" for name, ok, goal in verdicts))


if __name__ == "__main__":
    main()
