"""How fast and small is `fa4doctor check --json` next to `torch.utils.collect_env`, and where does its time go?

Runs each command in fresh processes on this machine, in one run: `check` first once to fill its
import cache (the state a node is in after its first check), then `--runs` times; `collect_env`
`--baseline-runs` times. Prints the median wall time and the peak resident memory of each, and the
ratio. Targets (issue 4): check <= 0.3 s and <= 60 MiB, at least 10x faster than collect_env.

Then a breakdown of check's wall time, each part measured in its own fresh processes (medians of
`--breakdown-runs`): interpreter start-up alone (`python -c pass`), loading the CLI (`check
--help`), the phases check times itself (its JSON `timings`: its own imports, packages, NVML,
child imports), the heaviest imports (`-X importtime`), and one NVML probe with every call timed
(so a GPU node shows which NVML call costs what). `--skip-baseline` leaves out collect_env;
`--against OTHER_CHECKOUT` also times another checkout's check, alternating with this one's.
fa4doctor's bytecode is compiled first, as `pip install` does (`--no-compile` leaves it as found).

    python bench/check_speed.py --runs 15
    python bench/check_speed.py --runs 15 --against /tmp/fa4doctor-before
    python bench/check_speed.py --cold 7        (issue 14: cold and warm against collect_env)

`--cold ROUNDS` times only issue 14's row: check with an empty import cache (a node's first check)
and a filled one, collect_env, and the bare imports a cold check must prove (`import torch`, and
`import flash_attn.cute` where FA4 is installed), each once per round in turn.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_SECONDS, TARGET_MIB, TARGET_SPEEDUP = 0.3, 60.0, 10.0
TARGET_COLD = 5.0  # issue 14: a cold check (empty import cache) against collect_env
CHECK = [sys.executable, "-m", "fa4doctor", "check", "--json"]


def _stop(signum, frame) -> None:
    """A timeout's SIGTERM ends the command being timed too (its process group), so it does not keep
    loading the machine after the bench (a GPU run's next step timed beside it once: docs/validation/
    h100-b40/transformers/README.md, run 3). A cold check's import child, in a session of its own,
    ends with its import."""
    if _running is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_running.pid, signal.SIGKILL)
    sys.exit(128 + signum)


_running: subprocess.Popen | None = None


def measure(command: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MiB (this process alone, from wait4) and exit status of one run."""
    global _running
    started = time.perf_counter()
    child = _running = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
                                        env=env, start_new_session=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    return seconds, usage.ru_maxrss / 1024, child.returncode  # ru_maxrss is KiB on Linux


def series(command: list[str], runs: int) -> tuple[float, float, set[int]]:
    results = [measure(command) for _ in range(runs)]
    return (statistics.median(r[0] for r in results), max(r[1] for r in results), {r[2] for r in results})


def import_times(stderr: str) -> list[tuple[int, float, float, str]]:
    """`-X importtime` lines as (depth, self s, cumulative s, module), in import order.

    >>> import_times("import time: self [us] | cumulative | imported package\\nimport time:  5 |  9 |   json")
    [(1, 5e-06, 9e-06, 'json')]
    """
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((depth, int(self_us) / 1e6, int(cumulative_us) / 1e6, name.strip()))
    return rows


def heaviest_imports(runs: int) -> list[tuple[str, float]]:
    """The top-level imports of `check --json` beyond a bare interpreter's, by median cumulative
    `-X importtime` seconds. Indicative only: NVML's thread imports at the same time, and time a
    module waits for the GIL counts as its own."""
    startup = {row[3] for row in import_times(_stderr([sys.executable, "-X", "importtime", "-c", "pass"]))}
    heavy: dict[str, list[float]] = {}
    for _ in range(runs):
        for depth, _self, cumulative, name in import_times(_stderr([sys.executable, "-X", "importtime", *CHECK[1:]])):
            if depth == 0 and name not in startup:
                heavy.setdefault(name, []).append(cumulative)
    return sorted(((name, statistics.median(v)) for name, v in heavy.items()), key=lambda kv: -kv[1])


def _stderr(command: list[str]) -> str:
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr


def phase_breakdown(runs: int) -> dict[str, float]:
    """Median of each entry of `check --json`'s own `timings` (seconds spent inside the command)."""
    seen: dict[str, list[float]] = {}
    for _ in range(runs):
        out = subprocess.run(CHECK, capture_output=True, text=True).stdout
        for key, value in json.loads(out).get("timings", {}).items():
            seen.setdefault(key, []).append(float(value))
    return {key: statistics.median(values) for key, values in seen.items()}


class TimedNvml:
    """Wraps an NVML source and adds up the seconds spent in each call (and in init/shutdown)."""

    def __init__(self, source):
        self.source, self.seconds, self.counts = source, {}, {}

    def _timed(self, name, function, *args):
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.counts[name] = self.counts.get(name, 0) + 1

    def init(self):
        return self._timed("init (import pynvml, load the library, nvmlInit)", self.source.init)

    def shutdown(self):
        return self._timed("nvmlShutdown", self.source.shutdown)

    def call(self, name, *args):
        return self._timed(name, self.source.call, name, *args)


def nvml_profile() -> None:
    """Runs in a fresh child: one `probe_gpus` over the real NVML, every call timed; prints JSON."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's fa4doctor
    from fa4doctor.probe.gpus import probe_gpus
    from fa4doctor.probe.nvml import PynvmlSource

    timed = TimedNvml(PynvmlSource())
    started = time.perf_counter()
    driver, gpus = probe_gpus(timed)
    total = time.perf_counter() - started
    print(json.dumps({"total": total, "status": driver.nvml_status, "gpus": len(gpus),
                      "calls": {name: [timed.seconds[name], timed.counts[name]] for name in timed.seconds}}))


def print_nvml_profile() -> None:
    done = subprocess.run([sys.executable, __file__, "--nvml-profile"], capture_output=True, text=True)
    try:
        profile = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"  NVML profile failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        return
    print(f"  NVML, one probe in a fresh process: {profile['total']:.3f} s, status {profile['status']}, "
          f"{profile['gpus']} GPUs; slowest calls:")
    calls = sorted(profile["calls"].items(), key=lambda kv: -kv[1][0])
    for name, (seconds, count) in calls[:8]:
        print(f"    {seconds * 1000:8.2f} ms  {count:3d}x  {name}")
    rest = calls[8:]
    if rest:
        print(f"    {sum(s for _, (s, _c) in rest) * 1000:8.2f} ms  {sum(c for _, (_s, c) in rest):3d}x  "
              f"{len(rest)} other calls")


def print_breakdown(runs: int, wall: float) -> None:
    bare = statistics.median(measure([sys.executable, "-c", "pass"])[0] for _ in range(runs))
    cli = statistics.median(measure([*CHECK[:-1], "--help"])[0] for _ in range(runs))
    phases = phase_breakdown(runs)
    inside = phases.get("total_seconds", 0.0)
    print(f"where the time goes (medians of {runs} fresh processes for each line; measured apart, so the "
          f"lines add up only roughly to the {wall:.3f} s median wall time):")
    print(f"  interpreter start-up and exit (python -c pass)   {bare:.3f} s")
    print(f"  loading the CLI: click, fa4doctor.cli, check     {cli - bare:.3f} s   (check --help less the line above)")
    print(f"  inside check (timings.total_seconds)             {inside:.3f} s   "
          + ", ".join(f"{k.removesuffix('_seconds')} {v:.3f}" for k, v in phases.items() if k != "total_seconds"))
    print(f"  left: report output, exit, unmeasured            {wall - cli - inside:.3f} s")
    print("  (setup: the command's own imports, specs, policy; nvml runs in a thread beside setup and packages,")
    print("   nvml_wait is what it added after them)")
    heaviest = heaviest_imports(runs)
    print("  heaviest imports (-X importtime, cumulative): "
          + ", ".join(f"{name} {seconds:.3f}" for name, seconds in heaviest[:6]))
    print_nvml_profile()


def compile_package(root: str | None = None) -> bool:
    """Write fa4doctor's bytecode, as `pip install` does: with PYTHONDONTWRITEBYTECODE set (or a
    read-only checkout) every run would compile every module again, which no installed node does."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(root, "fa4doctor")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


def compare(other: str, runs: int, compiled: bool) -> None:
    """This checkout's check against another's (`python -m` finds fa4doctor in the working
    directory), run alternately so that both see the same load."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if compiled:
        compile_package(other)
    measure(CHECK, cwd=other)  # its warm-up
    pairs = [(measure(CHECK, cwd=here)[0], measure(CHECK, cwd=other)[0]) for _ in range(runs)]
    mine, theirs = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"alternating runs ({runs} each): this checkout median {mine:.3f} s, {other} median {theirs:.3f} s, "
          f"difference {theirs - mine:+.3f} s")


def _floors() -> dict[str, list[str]]:
    """What a check that proves its imports cannot beat: importing them. `import flash_attn.cute`
    (which imports torch) where FA4 is installed."""
    floors = {"import torch": [sys.executable, "-c", "import torch"]}
    try:
        importlib.metadata.distribution("flash-attn-4")
        floors["import flash_attn.cute"] = [sys.executable, "-c", "import flash_attn.cute"]
    except importlib.metadata.PackageNotFoundError:
        pass
    return floors


def cold_and_warm(rounds: int) -> None:
    """Issue 14's row: `check` with its import cache empty (a node's first check: a fresh
    XDG_CACHE_HOME each run) and filled, against collect_env and against the bare imports a cold
    check must prove, all in turn in every round (so all see the same load); medians, and the
    ratios as medians of each round's."""
    floors = _floors()
    commands = {"check, cold": CHECK, "check, warm": CHECK, "collect_env": [sys.executable, "-m", "torch.utils.collect_env"],
                **floors}
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as scratch:
        envs = {name: dict(os.environ) for name in commands}
        envs["check, warm"]["XDG_CACHE_HOME"] = warm
        measure(CHECK, env=envs["check, warm"])  # fills the warm cache
        seen: dict[str, list[float]] = {name: [] for name in commands}
        print(f"cold and warm check ({rounds} rounds, every command once per round, in this order; wall s):")
        print("  round  " + "  ".join(commands), flush=True)
        for round_ in range(rounds):
            envs["check, cold"]["XDG_CACHE_HOME"] = os.path.join(scratch, str(round_))
            for name, command in commands.items():
                seen[name].append(measure(command, env=envs[name])[0])
            print(f"  {round_ + 1:>5}  " + "  ".join(f"{seen[name][-1]:>{len(name)}.3f}" for name in commands), flush=True)
    for name, walls in seen.items():
        print(f"  {name:<24} median {statistics.median(walls):.3f} s  (min {min(walls):.3f}, max {max(walls):.3f})")
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(seen[a], seen[b]))  # noqa: E731
    for which, target in (("cold", TARGET_COLD), ("warm", TARGET_SPEEDUP)):
        speedup = ratio("collect_env", f"check, {which}")
        print(f"  collect_env / check {which}: {speedup:.2f}x (issue 14: >= {target:.0f}x, "
              f"{'met' if speedup >= target else 'MISSED'})")
    for floor in floors:
        print(f"  check cold / {floor}: {ratio('check, cold', floor):.2f}x "
              "(what proving the imports costs beyond the imports themselves)")
        print(f"  collect_env / {floor}: {ratio('collect_env', floor):.2f}x "
              "(the most any cold check that proves this import can be faster than collect_env)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of fa4doctor check --json")
    parser.add_argument("--baseline-runs", type=int, default=3, help="timed runs of collect_env")
    parser.add_argument("--breakdown-runs", type=int, default=7, help="runs for each part of the breakdown")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run collect_env")
    parser.add_argument("--no-compile", action="store_true", help="time fa4doctor without compiling its bytecode")
    parser.add_argument("--against", metavar="CHECKOUT", help="also time another checkout's check, alternately")
    parser.add_argument("--cold", type=int, metavar="ROUNDS", default=0,
                        help="only time check cold and warm against collect_env and the bare imports, ROUNDS rounds")
    parser.add_argument("--nvml-profile", action="store_true", help=argparse.SUPPRESS)  # the child's entry
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    if args.nvml_profile:
        return nvml_profile()
    if args.cold:
        compile_package()
        return cold_and_warm(args.cold)
    baseline = [sys.executable, "-m", "torch.utils.collect_env"]
    compiled = not args.no_compile and compile_package()
    measure(CHECK)  # warm-up: fills the import cache, as any earlier check on the node would have
    check_s, check_mib, check_rc = series(CHECK, args.runs)
    dists = sum(1 for _ in importlib.metadata.distributions())
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, {dists} distributions on sys.path, "
          f"PYTHONDONTWRITEBYTECODE {'set' if sys.dont_write_bytecode else 'unset'}, fa4doctor bytecode "
          f"{'compiled before timing' if compiled else 'as found'}")
    print(f"fa4doctor check --json      median {check_s:.3f} s  peak {check_mib:.1f} MiB  "
          f"({args.runs} runs, exit {sorted(check_rc)})")
    verdicts = [("time", check_s <= TARGET_SECONDS, f"<= {TARGET_SECONDS} s"),
                ("memory", check_mib <= TARGET_MIB, f"<= {TARGET_MIB:.0f} MiB")]
    if not args.skip_baseline:
        base_s, base_mib, base_rc = series(baseline, args.baseline_runs)
        speedup = base_s / check_s
        print(f"torch.utils.collect_env     median {base_s:.3f} s  peak {base_mib:.1f} MiB  "
              f"({args.baseline_runs} runs, exit {sorted(base_rc)})")
        print(f"speed-up {speedup:.1f}x")
        verdicts.append(("speed-up", speedup >= TARGET_SPEEDUP, f">= {TARGET_SPEEDUP:.0f}x"))
    print("targets: " + ", ".join(f"{name} {'met' if ok else 'MISSED'} ({goal})" for name, ok, goal in verdicts))
    if args.against:
        compare(args.against, args.runs, compiled)
    print_breakdown(args.breakdown_runs, check_s)


if __name__ == "__main__":
    main()
