"""The speed matrix of `fa4doctor report`: a row per bench shape and direction, a column per
backend and SDPA kernel, each the median over the GPUs measured, from a `fa4doctor bench --json`
report (`load_bench`) or from the ledger's speed records under the current fingerprint. `fastest`
is what `FA4DOCTOR_POLICY=fastest` runs (`dispatch/speed.py`, through `decide`), shown where the
ledger has speed records to choose by.

>>> from fa4doctor.environment import Environment
>>> speed_from_ledger(Environment()).rows
()
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from fa4doctor.dispatch.policy import FASTEST, Policy
from fa4doctor.dispatch.reasons import kernel_label
from fa4doctor.dispatch.report import judged_gpus
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec, SpecError
from fa4doctor.dispatch.speed import FWD, FWD_BWD
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import Environment, ShapeClass
from fa4doctor.records import InputFileError, RecordError, from_plain, read_text_file
from fa4doctor.smoke.bench import SCHEMA as BENCH_SCHEMA, SCHEMA_VERSION as BENCH_VERSION, BenchResult
from fa4doctor.smoke.matrix import class_spec
from fa4doctor.smoke.zoo import BenchShape

COLUMNS = ("fa4", "fa3", "fa2", "sdpa (torch's choice)", "sdpa cudnn", "sdpa flash", "sdpa efficient")


@dataclass(frozen=True, slots=True)
class Figure:
    """One column of a speed row: the median over the GPUs that passed (`gpus` of them), or the
    outcome of a case that was not timed (refused, oom, crash, ...) with its detail."""

    label: str
    outcome: str = "pass"
    median_ms: float | None = None
    tflops: float | None = None
    gpus: int = 1
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FastestPick:
    """What `FA4DOCTOR_POLICY=fastest` runs; `measured` False: the fixed order chose (nothing
    eligible is both vetted and measured for the class)."""

    label: str | None
    measured: bool


@dataclass(frozen=True, slots=True)
class SpeedRow:
    shape: str
    direction: str  # "fwd" or "fwd_bwd"
    figures: tuple[Figure | None, ...]  # in `SpeedMatrix.columns` order
    batch: int | None = None
    fastest: FastestPick | None = None

    @property
    def winner(self) -> Figure | None:
        """The fastest timed figure (the first of equal ones)."""
        timed = [f for f in self.figures if f is not None and f.median_ms is not None and f.outcome == "pass"]
        return min(timed, key=lambda f: f.median_ms, default=None)

    def relative(self, figure: Figure) -> float | None:
        """The row's best time over this figure's: 1.0 for the winner."""
        best = self.winner
        if best is None or figure.median_ms is None or figure.outcome != "pass":
            return None
        return best.median_ms / figure.median_ms


@dataclass(frozen=True, slots=True)
class SpeedMatrix:
    source: str
    columns: tuple[str, ...]
    rows: tuple[SpeedRow, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BenchFile:
    """A `fa4doctor bench --json` report, read back: its shapes and results."""

    path: str
    shapes: tuple[BenchShape, ...]
    results: tuple[BenchResult, ...]


class BenchFileError(ValueError):
    """A `--bench` file that cannot be read as a `fa4doctor bench --json` report."""


def load_bench(path: str | Path) -> BenchFile:
    """Read a bench report; anything else raises `BenchFileError` naming the file."""
    try:
        data = json.loads(read_text_file(path))
    except OSError as exc:
        raise BenchFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except InputFileError as exc:
        raise BenchFileError(str(exc)) from None
    except ValueError as exc:
        raise BenchFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != BENCH_SCHEMA:
        raise BenchFileError(f"{path}: not a bench report (expected \"schema\": \"{BENCH_SCHEMA}\", "
                             "as `fa4doctor bench --json` writes)")
    if data.get("schema_version") != BENCH_VERSION:
        raise BenchFileError(f"{path}: schema_version {data.get('schema_version')!r} is not {BENCH_VERSION}")
    try:
        results = from_plain(tuple[BenchResult, ...], data.get("results"), "results")
        shapes = tuple(_bench_shape(s, f"shapes[{i}]") for i, s in enumerate(data.get("shapes") or ()))
    except (RecordError, SpecError) as exc:
        raise BenchFileError(f"{path}: {exc}") from None
    return BenchFile(str(path), shapes, results)


def _bench_shape(plain: object, where: str) -> BenchShape:
    if not (isinstance(plain, dict) and isinstance(plain.get("name"), str) and isinstance(plain.get("batch"), int)
            and isinstance(plain.get("spec"), dict)):
        raise RecordError(where, "expected an object with name, batch and spec")
    return BenchShape(plain["name"], AttentionSpec.from_dict(plain["spec"]), plain["batch"])


@dataclass(frozen=True, slots=True)
class _Measure:
    shape: str
    direction: str
    label: str
    outcome: str
    median_ms: float | None
    tflops: float | None
    detail: str = ""


def speed_from_bench(bench: BenchFile, env: Environment, policy: Policy = Policy()) -> SpeedMatrix:
    """The speed matrix of a bench report (`skipped`, the backward of a failed forward, left out)."""
    measures = [_Measure(r.shape, r.direction, kernel_label(r.backend, r.kernel), r.outcome, r.median_ms, r.tflops,
                         r.detail) for r in bench.results if r.outcome != "skipped"]
    specs = {s.name: s.spec for s in bench.shapes}
    return _speed(f"bench report {bench.path}", measures, specs, {s.name: s.batch for s in bench.shapes},
                  env, policy)


def speed_from_ledger(env: Environment, policy: Policy = Policy()) -> SpeedMatrix:
    """The speed matrix of the ledger's speed records under the current fingerprint."""
    gpus = {g.uuid: g for g in env.gpus if g.uuid}
    prints: dict[tuple, str] = {}
    current = []
    for e in env.speed:
        gpu = gpus.get(e.gpu_uuid)
        if gpu is not None and e.fingerprint == prints.setdefault(
                (e.backend, gpu.uuid), fingerprint(e.backend, env, gpu)):
            current.append(e)
    measures = [_Measure(e.case, e.direction, kernel_label(e.backend.value, e.kernel), "pass", e.median_ms, e.tflops)
                for e in current]
    specs = {e.case: _shape_spec(e.shape_class) for e in current}
    left = len(env.speed) - len(current)
    notes = (f"{left} speed record(s) under another software stack or GPU were left out",) if left else ()
    return _speed("the ledger's speed records", measures, specs, {}, env, policy, notes)


def _shape_spec(shape: ShapeClass) -> AttentionSpec | None:
    """A call of the shape class (None where a feature beyond the class needs its value)."""
    if shape.features:
        return None
    return class_spec(shape.case_class, True, seqlen_q=shape.seqlen_q, seqlen_kv=shape.seqlen_kv)


def _speed(source: str, measures: list[_Measure], specs: dict, batches: dict, env: Environment, policy: Policy,
           notes: tuple[str, ...] = ()) -> SpeedMatrix:
    groups: dict[tuple[str, str], dict[str, list[_Measure]]] = {}
    for m in measures:
        groups.setdefault((m.shape, m.direction), {}).setdefault(m.label, []).append(m)
    labels = {m.label for m in measures}
    columns = tuple(c for c in COLUMNS if c in labels) + tuple(sorted(labels - set(COLUMNS)))
    order = {shape: i for i, shape in enumerate(dict.fromkeys([*specs, *(m.shape for m in measures)]))}
    ways = {FWD: 0, FWD_BWD: 1}
    index = next((g.cuda_index for g in judged_gpus(env) if g is not None), 0)
    rows = tuple(SpeedRow(shape, way, tuple(_figure(groups[(shape, way)].get(c, [])) for c in columns),
                          batches.get(shape), _fastest(specs.get(shape), way, env, policy, index))
                 for shape, way in sorted(groups, key=lambda k: (order[k[0]], ways.get(k[1], 2), k[1])))
    if not env.speed:
        notes += ("FA4DOCTOR_POLICY=fastest chooses by the ledger's speed records; there are none, so it "
                  "runs the fixed order FA4 > FA3 > FA2 > SDPA",)
    return SpeedMatrix(source, columns, rows, notes)


def _figure(found: list[_Measure]) -> Figure | None:
    if not found:
        return None
    timed = [m for m in found if m.outcome == "pass" and m.median_ms is not None]
    if not timed:
        return Figure(found[0].label, found[0].outcome, gpus=len(found), detail=found[0].detail)
    rates = [m.tflops for m in timed if m.tflops is not None]
    return Figure(found[0].label, "pass", statistics.median(m.median_ms for m in timed),
                  statistics.median(rates) if rates else None, len(timed))


def _fastest(spec: AttentionSpec | None, way: str, env: Environment, policy: Policy, index: int) -> FastestPick | None:
    if spec is None or not env.speed:
        return None
    decision = decide(replace(spec, training=way == FWD_BWD), env, replace(policy, order=FASTEST), index)
    chosen = decision.chosen
    if chosen is None:
        return FastestPick(None, False)
    label = kernel_label(chosen.value, decision.sdpa_kernel)
    return FastestPick(label, any(m.backend is chosen and m.vetted for m in decision.measured))
