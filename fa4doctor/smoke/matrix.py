"""The correctness matrix of `fa4doctor report` (the speed matrix: `speed_matrix.py`). Pure: it
reads an `Environment` and its ledger; verdicts come from the dispatcher's own code, never from here.

A row per configuration class (`CaseClass`: head dims, mask, dtype, window, GQA, decode) that the
ledger holds evidence for under the current fingerprint, or that the default specs and the bench
zoo use; a column per backend and direction. A cell is what the ledger proves
(`dispatch.vetting.evidence`: a failure of the class, else a pass of it), else the first reason the
rules refuse it for (`dispatch.selection.decide`: a failure at the same head dims reaches the class
as `smoke_failed`), else `not_run`: allowed, and nothing proved it. Cells are judged without the
operator's policy (what the node can run); the `train` and `infer` picks under it (what runs).
FA3 and FA2 get columns only where installed.

>>> from fa4doctor.environment import Environment
>>> [matrix] = correctness(Environment())
>>> [b.value for b in matrix.backends], matrix.hidden
(['fa4', 'sdpa'], (<BackendName.FA3: 'fa3'>, <BackendName.FA2: 'fa2'>))
>>> row = matrix.rows[0]
>>> row.case_class.head_dims, row.cells[0].outcome, row.cells[0].code, row.train.label
((64, 64), 'refused', 'not_installed', 'sdpa')
"""

from __future__ import annotations

from dataclasses import dataclass

from fa4doctor.dispatch.backends import PRIORITY
from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.report import judged_gpus
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec, MaskType
from fa4doctor.dispatch.vetting import case_class, evidence, fingerprint
from fa4doctor.environment import CaseClass, Environment, GpuFacts
from fa4doctor.names import BackendName
from fa4doctor.smoke.zoo import ZOO

DIRECTIONS = ("fwd", "bwd")
ALWAYS_SHOWN = (BackendName.FA4, BackendName.SDPA)
_MASKS = {mask.value: i for i, mask in enumerate(MaskType)}
_RULES = Policy()  # cells: what the node can run, whatever the operator disabled


@dataclass(frozen=True, slots=True)
class Cell:
    """One backend, class and direction. `outcome`: a ledger outcome (pass, wrong_result,
    compile_failed, crash, timeout, oom, or refused by the kernel itself), `refused` by the rules
    (`code` the first reason's), or `not_run`; `detail` the error or every reason; `case` the smoke
    case behind a ledger outcome."""

    outcome: str
    detail: str = ""
    case: str = ""
    code: str = ""


@dataclass(frozen=True, slots=True)
class Pick:
    """What the dispatcher runs for a call (`label` None: nothing can) and whether that is a
    fallback from the preferred backend, with the decision's summary."""

    label: str | None
    fell_back: bool = False
    note: str = ""


@dataclass(frozen=True, slots=True)
class CorrectnessRow:
    case_class: CaseClass
    cells: tuple[Cell, ...]  # in `CorrectnessMatrix.columns` order
    train: Pick
    infer: Pick


@dataclass(frozen=True, slots=True)
class CorrectnessMatrix:
    gpu: GpuFacts | None  # one GPU of each model judges them all (the fingerprint holds the model)
    backends: tuple[BackendName, ...]
    rows: tuple[CorrectnessRow, ...]
    hidden: tuple[BackendName, ...] = ()  # not installed: no column
    stale: int = 0  # ledger entries under another software stack or GPU model, not counted

    @property
    def columns(self) -> tuple[tuple[BackendName, str], ...]:
        return tuple((backend, way) for backend in self.backends for way in DIRECTIONS)


def class_spec(klass: CaseClass, training: bool, seqlen_q: int = 1024, seqlen_kv: int = 1024) -> AttentionSpec:
    """A call of the class, as smoke's neighbour cases build one (smoke/cases.py): windows (64, 0)
    causal and (32, 32) otherwise, GQA 8/2, padding masks with equal lengths, a decode's one query.

    >>> case_class(class_spec(CaseClass("fp16", 72, 72, "padding_causal", True, gqa=True), True)).window
    True
    """
    mask = MaskType(klass.attn_mask_type)
    window = ((64, 0) if mask.is_causal else (32, 32)) if klass.window else (-1, -1)
    return AttentionSpec(dtype=klass.dtype, head_dim_qk=klass.head_dim_qk, head_dim_v=klass.head_dim_v,
                         num_heads_q=8, num_heads_kv=2 if klass.gqa else 8, attn_mask_type=mask,
                         seqlen_q=1 if klass.decode else seqlen_q, seqlen_kv=seqlen_kv, window_size=window,
                         same_seqlens=not klass.decode if mask.is_padding else None, training=training)


def correctness(env: Environment, policy: Policy = Policy()) -> tuple[CorrectnessMatrix, ...]:
    """One matrix per GPU model a process sees (one, without a GPU: the rules alone)."""
    return tuple(_matrix(env, gpu, policy) for gpu in _models(env))


def _models(env: Environment) -> list[GpuFacts | None]:
    found: dict[object, GpuFacts | None] = {}
    for gpu in judged_gpus(env):
        found.setdefault(None if gpu is None else (gpu.name, gpu.compute_capability), gpu)
    return list(found.values())


def _matrix(env: Environment, gpu: GpuFacts | None, policy: Policy) -> CorrectnessMatrix:
    names = [backend.NAME for backend in PRIORITY]
    shown = tuple(n for n in names if n in ALWAYS_SHOWN or (env.backend(n) and env.backend(n).installed))
    index = gpu.cuda_index if gpu is not None else 0
    current = _current(env, gpu)
    rows = tuple(CorrectnessRow(k, tuple(_cell(b, k, way, env, gpu, index) for b in shown for way in DIRECTIONS),
                                _pick(k, True, env, index, policy), _pick(k, False, env, index, policy))
                 for k in _classes(current))
    return CorrectnessMatrix(gpu, shown, rows, tuple(n for n in names if n not in shown),
                             len(env.ledger) - len(current))


def _current(env: Environment, gpu: GpuFacts | None) -> list:
    """The ledger entries valid now on this GPU model (the dispatcher ignores the rest)."""
    if gpu is None:
        return []
    prints = {backend: fingerprint(backend, env, gpu) for backend in {e.backend for e in env.ledger}}
    return [e for e in env.ledger if e.fingerprint == prints[e.backend]]


def _classes(current: list) -> list[CaseClass]:
    found = {case_class(spec) for _, spec in DEFAULT_SPECS} | {case_class(model.spec) for model in ZOO}
    found |= {entry.case_class for entry in current}
    return sorted(found, key=lambda k: (k.head_dims, _MASKS.get(k.attn_mask_type, len(_MASKS)), k.dtype,
                                        k.window, k.gqa, k.decode))


def _cell(backend: BackendName, klass: CaseClass, way: str, env: Environment, gpu: GpuFacts | None,
          index: int) -> Cell:
    spec = class_spec(klass, training=way == "bwd")
    if gpu is not None:
        found = next(e for e in evidence(backend, spec, env, gpu) if e.direction == way)
        entry = found.failed or found.passed
        if entry is not None:
            return Cell(entry.outcome, entry.detail, entry.case)
    reasons = decide(spec, env, _RULES, index).reasons_for(backend)
    if reasons:
        return Cell("refused", "; ".join(map(str, reasons)), code=reasons[0].code.value)
    return Cell("not_run", "the rules allow it; no smoke case of this class ran under the current software stack")


def _pick(klass: CaseClass, training: bool, env: Environment, index: int, policy: Policy) -> Pick:
    decision = decide(class_spec(klass, training), env, policy, index)
    label = decision.chosen.value if decision.chosen else None
    return Pick(label, decision.fell_back, decision.summary or f"{label} is the preferred backend")
