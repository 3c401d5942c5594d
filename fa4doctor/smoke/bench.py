"""`run_bench`: time every eligible backend, and each of SDPA's kernels, on this node's GPUs, and
record the figures in the vetting ledger beside smoke's evidence.

As smoke does, the parent never imports torch: each GPU gets one child (`process.py`, pinned by
UUID, FA4's disk cache shared and kept between runs: `runner._child_environ`), which times every
case of a shape on the same inputs, interleaved (`timing.py`, `bench_job.py`). All backends of a
GPU share that child, so their rounds can interleave; a crash or hang still costs one case, and a
fresh child takes the rest. Cases come from the dispatcher's own rules, as smoke's do
(`cases._claimed`): a backend is timed only where the dispatcher could send it the call, forward
only where it has no backward on that GPU. Each passing figure becomes a `SpeedEntry` under the
backend's fingerprint and the call's shape class (dispatch/speed.py), which
`FA4DOCTOR_POLICY=fastest` reads.

>>> from fa4doctor.environment import Environment
>>> run_bench(Environment(), [])
Traceback (most recent call last):
...
fa4doctor.smoke.bench.BenchRefused: no CUDA GPU is visible here (torch ?, CUDA_VISIBLE_DEVICES=unset): bench times kernels on CUDA GPUs with CUDA events; run it on a GPU node
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

from fa4doctor.dispatch.backends import BY_NAME, PRIORITY
from fa4doctor.dispatch.reasons import kernel_label
from fa4doctor.dispatch.speed import FWD, FWD_BWD, shape_class
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import Environment, GpuFacts, SpeedEntry
from fa4doctor.names import BackendName
from fa4doctor.probe import ledger
from fa4doctor.records import to_plain
from fa4doctor.smoke import process, timing
from fa4doctor.smoke.cases import _claimed, gpu_view
from fa4doctor.smoke.runner import _child_environ, _child_spec, _parallel, select_gpus
from fa4doctor.smoke.zoo import DECODE_KV_TOKENS, FLOPS_TEXT, TOKENS, BenchShape, flops

SCHEMA = "fa4doctor.bench"
SCHEMA_VERSION = 1
DEFAULT_TIMEOUT = 180.0
SDPA_KERNELS = (None, "cudnn", "flash", "efficient")  # None: torch's own choice; math is never fastest
# A kernel that declines a shape (SDPA's efficient kernel with GQA) or runs out of memory on it (torch's
# math kernel, which materializes the scores, on a 16k-token window) is a fact about it, not a problem.
BENIGN = ("pass", "refused", "oom", "skipped")


class BenchRefused(RuntimeError):
    """`bench` cannot run here: no CUDA GPU is visible (and no test seam stands in for the kernels)."""


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One case (a backend, or SDPA kept to one kernel) on one shape, GPU and direction."""

    shape: str
    backend: str
    kernel: str | None
    direction: str  # "fwd" or "fwd_bwd"
    outcome: str
    detail: str = ""
    gpu: int | None = None
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    samples_ms: tuple[float, ...] = ()
    rounds: int = 0
    inner: int | None = None
    first_call_seconds: float | None = None
    tflops: float | None = None

    @property
    def label(self) -> str:
        return kernel_label(self.backend, self.kernel)

    @property
    def case(self) -> str:
        return f"{self.shape} {self.label} {self.direction}"

    @property
    def failed(self) -> bool:
        return self.outcome not in BENIGN


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """A progress callback's argument (as smoke's `ProgressEvent`): `str(event)` is a log line."""

    phase: str
    done: int
    total: int | None
    result: BenchResult | None = None

    def __str__(self) -> str:
        r = self.result
        if r is None:
            return f"bench {self.phase}: {self.done}/{self.total}"
        figure = (f"{r.median_ms:.3f} ms" + (f", {r.tflops:.0f} TFLOP/s" if r.tflops else "")
                  if r.outcome == "pass" else f"{r.outcome} {r.detail[:80]}")
        return f"bench {self.done}/{self.total}: {r.case}: {figure}"


@dataclass(frozen=True)
class BenchReport:
    shapes: tuple[BenchShape, ...] = ()
    results: tuple[BenchResult, ...] = ()
    not_timed: tuple[tuple[str, str, str], ...] = ()  # (shape, backend, the rule's first reason)
    gpus: tuple[GpuFacts, ...] = ()
    settings: dict = field(default_factory=dict)
    speed_entries: tuple[SpeedEntry, ...] = ()
    ledger: str | None = None
    ledger_problem: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def healthy(self) -> bool:
        """Something was timed, and nothing failed but a kernel declining a shape or its memory."""
        return any(r.outcome == "pass" for r in self.results) and not any(r.failed for r in self.results)

    def winners(self) -> list[BenchResult]:
        """The fastest passing case per GPU, shape and direction (vetted or not: explain says which
        one the `fastest` policy runs)."""
        best: dict[tuple, BenchResult] = {}
        for r in self.results:
            key = (r.gpu_uuid, r.gpu, r.shape, r.direction)
            if r.outcome == "pass" and (key not in best or r.median_ms < best[key].median_ms):
                best[key] = r
        return list(best.values())

    def to_plain(self) -> dict:
        """The JSON of `fa4doctor bench --json` (docs/bench.md describes every field)."""
        shapes = [{"name": s.name, "batch": s.batch, "spec": s.spec.to_dict(),
                   "shape_class": to_plain(shape_class(s.spec)),
                   "flops": {FWD: flops(s.spec, s.batch, FWD), FWD_BWD: flops(s.spec, s.batch, FWD_BWD)}}
                  for s in self.shapes]
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "healthy": self.healthy,
                "flops": FLOPS_TEXT, "settings": self.settings, "ledger": self.ledger,
                "ledger_problem": self.ledger_problem, "started_at": self.started_at,
                "finished_at": self.finished_at,
                "gpus": [{"gpu": g.cuda_index, "uuid": g.uuid, "name": g.name} for g in self.gpus],
                "shapes": shapes, "results": [to_plain(r) for r in self.results],
                "winners": [{"gpu": w.gpu, "gpu_uuid": w.gpu_uuid, "shape": w.shape, "direction": w.direction,
                             "backend": w.backend, "kernel": w.kernel, "median_ms": w.median_ms,
                             "tflops": w.tflops} for w in self.winners()],
                "not_timed": [{"shape": s, "backend": b, "reason": why} for s, b, why in self.not_timed]}


def settings(warmup: int = timing.WARMUP, rounds: int = timing.ROUNDS) -> dict:
    """How the figures were taken, as the report states it."""
    return {"warmup": warmup, "rounds": rounds, "min_block_ms": timing.MIN_BLOCK_MS,
            "max_inner": timing.MAX_INNER, "tokens": TOKENS, "decode_kv_tokens": DECODE_KV_TOKENS,
            "timer": "CUDA events, one synchronize per round", "statistic": "median of the rounds",
            "interleaved": True}


def plan(env: Environment, shapes: Sequence[BenchShape], gpu: GpuFacts | None,
         backends: Sequence[BackendName] | None, how: dict, first_id: int = 0) -> tuple[list[dict], list]:
    """The cases of one GPU (ids from `first_id`, each carrying the timing settings `how`) and what
    no rule lets run there. The rules see
    CUDA tensors where there is a GPU, as smoke's plan does (the test seam then runs them on the CPU)."""
    view, device = gpu_view(env, gpu), "cuda" if gpu is not None else "cpu"
    wanted = [b.NAME for b in PRIORITY] if backends is None else list(backends)
    cases, refused = [], []
    for group, shape in enumerate(shapes):
        for name in wanted:
            spec = _runnable(BY_NAME[name], replace(shape.spec, device=device), view)
            if spec is None:
                found = BY_NAME[name].not_supported_reasons(replace(shape.spec, device=device), view, 0)
                refused.append((shape.name, name.value, str(found[0]) if found else "not claimed"))
                continue
            for kernel in SDPA_KERNELS if name is BackendName.SDPA else (None,):
                cases.append({"id": first_id + len(cases), "backend": name.value, "kernel": kernel,
                              "name": shape.name, "spec": spec.to_dict(), "group": group,
                              "batch": shape.batch, "timing": how})
    return cases, refused


def _runnable(backend, spec: AttentionSpec, view: Environment) -> AttentionSpec | None:
    """`spec` if the backend claims it, forward-only where it claims only that, else None."""
    if _claimed(backend, spec, view):
        return spec
    if spec.training and _claimed(backend, replace(spec, training=False), view):
        return replace(spec, training=False)
    return None


class _Collector:
    """Results as children report them (thread-safe), with progress."""

    def __init__(self, total: int, progress: Callable[[BenchEvent], None] | None):
        self.lock, self.results, self.total, self.progress = threading.Lock(), [], total, progress

    def recorder(self, gpu: GpuFacts | None, cases: list[dict]):
        by_id = {c["id"]: c for c in cases}

        def record(key: process.Key, fields: dict) -> None:
            result = _result(by_id[key[0]], FWD if key[1] == "fwd" else FWD_BWD, fields, gpu)
            with self.lock:
                self.results.append(result)
                if self.progress:
                    self.progress(BenchEvent("run", len(self.results), self.total, result))
        return record


def _result(case: dict, direction: str, fields: dict, gpu: GpuFacts | None) -> BenchResult:
    spec = AttentionSpec.from_dict(case["spec"])
    median = fields.get("median_ms")
    rate = flops(spec, case["batch"], direction) / (median * 1e9) if median else None  # FLOP per ms -> TFLOP/s
    keep = ("outcome", "detail", "median_ms", "min_ms", "max_ms", "rounds", "inner", "first_call_seconds")
    return BenchResult(shape=case["name"], backend=case["backend"], kernel=case["kernel"], direction=direction,
                       gpu=gpu.cuda_index if gpu else None, gpu_uuid=gpu.uuid if gpu else None,
                       gpu_name=gpu.name if gpu else None, samples_ms=tuple(fields.get("samples_ms", ())),
                       tflops=rate, **{k: fields[k] for k in keep if k in fields})


def run_bench(env: Environment, shapes: Sequence[BenchShape], *, backends: Sequence[BackendName] | None = None,
              gpus: Sequence[str | int] | None = None, warmup: int = timing.WARMUP, rounds: int = timing.ROUNDS,
              timeout: float = DEFAULT_TIMEOUT, progress: Callable[[BenchEvent], None] | None = None,
              ledger_path: str | Path | None = None, record: bool = True, fake: str | None = None,
              environ: Mapping[str, str] | None = None) -> BenchReport:
    """Time `shapes` on every backend and GPU of `env`; see the module doc. Raises `BenchRefused`
    where no CUDA GPU is visible. `fake="file.py:function"` stands in for the kernels (the tests'
    seam, as smoke's): the children then run on the CPU and time with a wall clock."""
    chosen: list[GpuFacts | None] = select_gpus(env, gpus)
    if fake is None and (not chosen or env.torch.cuda is None):
        raise BenchRefused(_no_cuda(env))
    device = "cpu" if fake else "cuda"
    chosen = chosen or [None]
    how, started, targets, not_timed = settings(warmup, rounds), time.time(), [], []
    for gpu in chosen:
        cases, refused = plan(env, shapes, gpu, backends, how, sum(len(c) for _, c in targets))
        targets.append((gpu, cases))
        not_timed += [r for r in refused if r not in not_timed]
    base = _child_environ(environ, fake, {c["backend"] for _, cases in targets for c in cases})
    collector = _Collector(sum(len(process.directions(c)) for _, cases in targets for c in cases), progress)
    fleet = process.Fleet()

    def run_gpu(target) -> None:
        gpu, cases = target
        if cases:
            spec = _child_spec(base, gpu, device, {c["backend"] for c in cases}, timeout, fleet)
            process.run_cases(spec, cases, "bench", collector.recorder(gpu, cases))

    try:
        _parallel(run_gpu, targets, len(targets))
    except BaseException:  # Ctrl-C included: the children live in their own sessions
        fleet.stop()
        raise
    report = BenchReport(shapes=tuple(shapes), results=tuple(_ordered(collector.results, targets)),
                         not_timed=tuple(not_timed), gpus=tuple(g for g in chosen if g), settings=how,
                         started_at=started, finished_at=time.time())
    report = replace(report, speed_entries=speed_entries(env, report))
    return record_speed(report, ledger_path) if record else report


def _ordered(results: list[BenchResult], targets) -> list[BenchResult]:
    """Results in the plan's order (GPU, shape, backend, kernel), forward first."""
    rank = {(gpu.uuid if gpu else None, c["name"], c["backend"], c["kernel"]): c["id"]
            for gpu, cases in targets for c in cases}
    return sorted(results, key=lambda r: (rank.get((r.gpu_uuid, r.shape, r.backend, r.kernel), 0),
                                          r.direction != FWD))


def _no_cuda(env: Environment) -> str:
    torch = f"torch {env.torch.version or '?'}" + (" without CUDA" if env.torch.version and not env.torch.cuda else "")
    visible = env.cuda_visible_devices
    shown = "unset" if visible is None else repr(visible)
    return (f"no CUDA GPU is visible here ({torch}, CUDA_VISIBLE_DEVICES={shown}): bench times kernels on CUDA "
            "GPUs with CUDA events; run it on a GPU node")


def speed_entries(env: Environment, report: BenchReport) -> tuple[SpeedEntry, ...]:
    """Every passing figure on a GPU as a ledger speed record (CPU runs record nothing)."""
    by_uuid = {g.uuid: g for g in report.gpus}
    specs = {s.name: s.spec for s in report.shapes}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    found = []
    for r in report.results:
        gpu = by_uuid.get(r.gpu_uuid)
        if gpu is None or r.outcome != "pass" or r.shape not in specs:
            continue
        backend = BackendName(r.backend)
        found.append(SpeedEntry(backend=backend, fingerprint=fingerprint(backend, env, gpu), case=r.shape,
                                shape_class=shape_class(specs[r.shape]), direction=r.direction,
                                median_ms=r.median_ms, tflops=r.tflops, kernel=r.kernel, rounds=r.rounds,
                                gpu_uuid=gpu.uuid, recorded_at=now))
    return tuple(found)


def record_speed(report: BenchReport, ledger_path: str | Path | None = None) -> BenchReport:
    """Merge the report's speed records into the ledger; a ledger that cannot be written is
    reported in `ledger_problem`, and the figures still stand (as smoke's `record_report`)."""
    if not report.speed_entries:
        return report
    try:
        path = ledger.record((), ledger_path, speed=report.speed_entries)
    except Exception as exc:  # LedgerError, filelock.Timeout, OSError
        return replace(report, ledger_problem=f"could not record the ledger: {type(exc).__name__}: {exc}")
    return replace(report, ledger=str(path))
