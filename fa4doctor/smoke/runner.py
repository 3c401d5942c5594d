"""`run_smoke`: plan the cases, compile FA4's in parallel, run them per GPU, record the outcomes.

The parent never imports torch and never touches a GPU: every kernel runs in a child pinned to
one GPU by UUID (`process.py`), one child per GPU and backend, so that a backend that only needs
torch (SDPA) does not wait for FA4's import and the backends of one GPU run side by side. FA4
compiles each new configuration with a JIT that takes seconds and imports in about 10 s
(docs/sources.md#fa4-start-up-cost), so when there are enough FA4 cases a compile phase first runs them
once in `jobs` parallel children that share FA4's disk cache (`FLASH_ATTENTION_CUTE_DSL_CACHE_*`,
docs/sources.md#fa4-compile-cache); meanwhile the run children import, and then run every case from the warm
cache and check it against float64. Where the installation has no bytecode, the children keep
theirs in fa4doctor's cache (`probe/bytecode.py`).

>>> from fa4doctor.environment import Environment
>>> run_smoke(Environment(), record=False).cases  # no GPU visible: nothing to run on CUDA
()
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from fa4doctor.names import BackendName
from fa4doctor.dispatch.spec import AttentionSpec, SpecError
from fa4doctor.environment import Environment, GpuFacts
from fa4doctor.probe import bytecode, cache
from fa4doctor.smoke import process
from fa4doctor.smoke.cases import case_slug, neighbours, plan_cases
from fa4doctor.smoke.evidence import ledger_entries, record_report
from fa4doctor.smoke.report import CaseResult, GpuTarget, Phases, SmokeReport, failed
from fa4doctor.probe.system import CACHE_DIR, CACHE_ENABLED

DEFAULT_TIMEOUT = 120.0
JIT_BACKENDS = frozenset({BackendName.FA4})


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """What a progress callback gets: `str(event)` is a line for a log; the fields drive a bar
    (`total` is None in the compile phase, whose results are not final)."""

    phase: str
    done: int
    total: int | None
    result: CaseResult | None = None

    def __str__(self) -> str:
        if self.result is None:
            return f"smoke {self.phase}: {self.done} compiled"
        r = self.result
        return f"smoke {self.done}/{self.total}: {r.case} {r.direction} {r.outcome}"


Progress = Callable[[ProgressEvent], None]


@dataclass
class _Target:
    """One run child's work: the cases of one backend on one GPU (or on the CPU)."""

    gpu: GpuFacts | None
    plain: list[dict]


def _label(g: GpuFacts | None) -> GpuTarget:
    return GpuTarget(g.cuda_index, g.nvml_index, g.uuid, g.name) if g else GpuTarget(None, None, None, None)


def _gpu_key(gpu: GpuFacts | None) -> str | int | None:
    """Which GPU a result belongs to: its UUID, else (no NVML) its CUDA index."""
    return (gpu.uuid or gpu.cuda_index) if gpu else None


def default_cache_dir(environ: Mapping[str, str]) -> str:
    """FA4's cache directory: the user's `FLASH_ATTENTION_CUTE_DSL_CACHE_DIR`, else ours (kept
    between runs, so a second smoke run starts warm)."""
    return environ.get(CACHE_DIR) or str(cache.default_cache_dir(environ) / "cute-dsl-cache")


def select_gpus(env: Environment, wanted: Sequence[str | int] | None) -> list[GpuFacts]:
    """The GPUs to vet: all that CUDA can see, or those named by UUID or CUDA index."""
    visible = [g for g in env.gpus if g.cuda_index is not None and not g.lost]
    if not wanted:
        return visible
    chosen = []
    for item in wanted:
        text = str(item).strip()
        match = next((g for g in visible if g.uuid == text or str(g.cuda_index) == text), None)
        if match is None:
            choices = [f"{g.cuda_index} ({g.uuid})" for g in visible] or ["none: no GPU is visible"]
            raise SpecError("gpu", f"no visible GPU {text!r}", choices)
        if match not in chosen:  # named twice (by index and by UUID): vetted once
            chosen.append(match)
    return chosen


def _plan(env: Environment, level: str, gpus: list[GpuFacts | None], **kwargs) -> list[_Target]:
    """One target per GPU and backend, in the plan's order; case ids are unique across all."""
    targets, next_id = [], 0
    for gpu in gpus:
        lanes: dict[str, _Target] = {}
        for case in plan_cases(env, level, gpu=gpu, device="cuda" if gpu else "cpu", **kwargs):
            lane = lanes.setdefault(case.backend.value, _Target(gpu, []))
            lane.plain.append({"id": next_id, "backend": case.backend.value, "name": case.name,
                               "spec": case.spec.to_dict()})
            next_id += 1
        targets.extend(lanes.values())
    return targets


def _child_spec(base: dict[str, str], gpu: GpuFacts | None, device: str, preload, timeout,
                fleet: process.Fleet | None = None) -> process.ChildSpec:
    env = dict(base)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu.uuid or _visible_entry(base, gpu.cuda_index)
    return process.ChildSpec(env=env, device=device, preload=tuple(sorted(preload)), timeout=timeout,
                             import_timeout=max(180.0, 2 * timeout), fleet=fleet or process.Fleet())


def _visible_entry(environ: Mapping[str, str], cuda_index: int) -> str:
    # Without a UUID, CUDA index i means the i-th entry of the parent's CUDA_VISIBLE_DEVICES.
    visible = [v.strip() for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[cuda_index] if cuda_index < len(visible) else str(cuda_index)


def _model(gpu: GpuFacts | None) -> str | None:
    return gpu.name if gpu else None


def _compile_work(targets: list[_Target], gpus: list[GpuFacts | None],
                  jobs: int) -> list[tuple[GpuFacts | None, list[dict]]]:
    """FA4 cases, once per GPU model, split over `jobs` children (pinned round-robin to that
    model's GPUs); empty when a compile phase would not pay for its own imports (it saves
    len - ceil(len / jobs) compiles of ~5 s against one more import of ~10 s)."""
    by_model: dict[str | None, list[dict]] = {}
    for target in targets:
        names = {c["name"] for c in by_model.get(_model(target.gpu), [])}
        by_model.setdefault(_model(target.gpu), []).extend(
            c for c in target.plain if BackendName(c["backend"]) in JIT_BACKENDS and c["name"] not in names)
    work = []
    for model, items in by_model.items():
        if jobs < 2 or len(items) - math.ceil(len(items) / jobs) <= 2:
            continue
        pinned = [g for g in gpus if _model(g) == model]
        for i in range(min(jobs, len(items))):
            work.append((pinned[i % len(pinned)], items[i::jobs]))
    return work


class _Collector:
    """Thread-safe store of results as children report them, with progress."""

    def __init__(self, total: int, progress: Progress | None):
        self.lock = threading.Lock()
        self.compiled: dict[tuple, dict] = {}  # (model, case name, direction) -> result fields
        self.results: list[CaseResult] = []
        self.total, self.progress = total, progress

    def compile_recorder(self, gpu: GpuFacts | None, cases: list[dict]):
        names = {c["id"]: c["name"] for c in cases}

        def record(key: process.Key, fields: dict) -> None:
            with self.lock:
                self.compiled[(_model(gpu), names[key[0]], key[1])] = {**fields, "gpu": _gpu_key(gpu)}
                if self.progress:
                    self.progress(ProgressEvent("compile", len(self.compiled), None))
        return record

    def run_recorder(self, target: _Target):
        by_id = {c["id"]: c for c in target.plain}

        def record(key: process.Key, fields: dict) -> None:
            self.add(target, by_id[key[0]], key[1], fields)
        return record

    def add(self, target: _Target, case: dict, direction: str, fields: dict) -> None:
        compiled = self.compiled.get((_model(target.gpu), case["name"], direction), {})
        fields = dict(fields)
        if compiled.get("compile_seconds") is not None:
            fields["compile_seconds"] = compiled["compile_seconds"]  # the JIT ran there, not here
        gpu = target.gpu
        result = CaseResult(backend=case["backend"], case=case["name"], spec=case["spec"],
                            direction=direction, gpu=gpu.cuda_index if gpu else None,
                            gpu_uuid=gpu.uuid if gpu else None, gpu_name=gpu.name if gpu else None,
                            **{k: v for k, v in fields.items() if k in _RESULT_FIELDS})
        with self.lock:
            self.results.append(result)
            if self.progress:
                self.progress(ProgressEvent("run", len(self.results), self.total, result))


_RESULT_FIELDS = ("outcome", "detail", "errors", "tolerances", "compile_seconds", "run_seconds")


def _parallel(function, items, workers: int) -> list:
    # No `with`: on Ctrl-C the caller must reach its cleanup without waiting for the threads.
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _compile_phase(work, base_env, device, timeout, collector, jobs, fleet) -> None:
    def compile_chunk(item):
        gpu, cases = item
        spec = _child_spec(base_env, gpu, device, {c["backend"] for c in cases}, timeout, fleet)
        process.run_cases(spec, cases, "compile", collector.compile_recorder(gpu, cases))

    _parallel(compile_chunk, work, jobs)


def _run_phase(targets, children, specs, collector) -> list[dict]:
    def run_target(index: int) -> list[dict]:
        target, child = targets[index], children[index]
        todo = []
        for case in target.plain:
            directions = process.directions(case)
            found = [collector.compiled.get((_model(target.gpu), case["name"], d)) for d in directions]
            here = all(f and f["gpu"] == _gpu_key(target.gpu) for f in found)
            # A failure is final on the GPU it happened on; another GPU of the model runs it again.
            if here and any(failed(f["outcome"]) for f in found):
                for direction, fields in zip(directions, found):  # settled by the compile phase
                    collector.add(target, case, direction, fields)
            else:
                todo.append(case)
        if not todo:
            process.kill(child)  # never waited for: no import time to report
            return []
        return process.run_cases(specs[index], todo, "run", collector.run_recorder(target), child)

    return [r for readies in _parallel(run_target, range(len(targets)), len(targets)) for r in readies]


def run_smoke(env: Environment, *, level: str = "quick", backends: Sequence[BackendName] | None = None,
              gpus: Sequence[str | int] | None = None, extra_specs: Sequence[AttentionSpec] = (),
              head_dims: Sequence[tuple[int, int]] = (), timeout: float = DEFAULT_TIMEOUT,
              jobs: int | None = None, progress: Progress | None = None,
              ledger_path: str | Path | None = None, record: bool = True, device: str = "cuda",
              fake: str | None = None, environ: Mapping[str, str] | None = None,
              map_failures: bool = True) -> SmokeReport:
    """Run the smoke cases of `level` for each backend on each GPU of `env`; see the module doc.

    `device="cpu"` runs tensors on the CPU (tests; only SDPA's rules accept CPU tensors, unless
    `env` lists GPUs, whose rules are then applied to CPU tensors). `fake="file.py:function"`
    stands in for `call_backend` in the children. Results go to the vetting ledger unless
    `record=False`. With `map_failures`, each failure's neighbours (`cases.neighbours`: the other
    dtype, masks, windows and GQA at its head dims) run next, so the ledger holds its extent.
    """
    started, clock = time.time(), time.monotonic()
    chosen: list[GpuFacts | None] = select_gpus(env, gpus)
    if not chosen and device == "cpu":
        chosen = [None]
    targets = _plan(env, level, chosen, backends=backends, extra_specs=extra_specs,
                    head_dims=head_dims)
    base_env = _child_environ(environ, fake, {c["backend"] for t in targets for c in t.plain})
    jobs = jobs or min(os.cpu_count() or 1, 16)
    collector = _Collector(sum(len(process.directions(c)) for t in targets for c in t.plain), progress)
    fleet = process.Fleet()
    specs = [_child_spec(base_env, t.gpu, device, {c["backend"] for c in t.plain}, timeout, fleet)
             for t in targets]
    work = _compile_work(targets, chosen, jobs)
    try:
        children = [process.spawn(spec) for spec in specs]  # they import while the compile phase runs
        compile_start = time.monotonic()
        _compile_phase(work, base_env, device, timeout, collector, jobs, fleet)
        run_start = time.monotonic()
        readies = _run_phase(targets, children, specs, collector)
    except BaseException:  # Ctrl-C included: children live in their own sessions, so stop them
        fleet.stop()
        raise
    end = time.monotonic()
    phases = Phases(import_seconds=max((r.get("import_seconds", 0.0) for r in readies), default=0.0),
                    compile_seconds=(run_start - compile_start) if work else 0.0,
                    run_seconds=end - run_start, total_seconds=end - clock)
    # ids number the cases GPU by GPU in the plan's order
    rank = {(t.gpu.cuda_index if t.gpu else None, c["name"]): c["id"] for t in targets for c in t.plain}
    results = tuple(sorted(collector.results, key=lambda r: (rank[(r.gpu, r.case)], r.direction != "fwd")))
    used = [g for g in chosen if any(t.gpu is g for t in targets)]
    extent = _failure_neighbours(results) if map_failures else []
    if extent:
        more = run_smoke(env, level=None, backends=sorted({r.backend for r in results if failed(r.outcome)}),
                         gpus=gpus, extra_specs=extent, timeout=timeout, jobs=jobs, progress=progress,
                         record=False, device=device, fake=fake, environ=environ, map_failures=False)
        seen = {(r.gpu, r.case, r.direction) for r in results}
        results += tuple(r for r in more.cases if (r.gpu, r.case, r.direction) not in seen)
        phases = replace(phases, run_seconds=phases.run_seconds + more.phases.total_seconds,
                         total_seconds=time.monotonic() - clock)
    report = SmokeReport(level=level, cases=results, phases=phases, gpus=tuple(_label(g) for g in used),
                         ledger_entries=ledger_entries(env, [g for g in used if g], results),
                         started_at=started, finished_at=time.time(),
                         bytecode_cache=base_env.get(bytecode.PREFIX))
    return record_report(report, ledger_path) if record else report


def _failure_neighbours(results: Sequence[CaseResult]) -> list[AttentionSpec]:
    """The neighbours of every failed case that the run did not already hold."""
    ran = {r.case.split(":", 1)[1] for r in results}
    found: dict[str, AttentionSpec] = {}
    for r in results:
        if failed(r.outcome):
            for spec in neighbours(AttentionSpec.from_dict(r.spec)):
                if case_slug(spec) not in ran:
                    found.setdefault(case_slug(spec), spec)
    return list(found.values())


def _child_environ(environ: Mapping[str, str] | None, fake: str | None,
                   backends: set[str] = frozenset()) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    env[CACHE_ENABLED] = "1"
    env[CACHE_DIR] = default_cache_dir(env)
    if fake:
        env[process.ENV_FAKE] = fake
    plan = bytecode.child_bytecode(env, cache.default_cache_dir(env), bytecode.probe_sources(backends))
    return plan.apply(env)
