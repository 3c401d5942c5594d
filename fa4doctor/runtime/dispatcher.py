"""`attention()`: the call training and inference code makes instead of calling a backend.

The first call of each distinct shape validates the inputs and builds the `AttentionSpec`; the
first call of each plan class (runtime/plan_class.py: the spec with its sequence lengths reduced to
what the rules and adapters read of them) also asks `select()` (the same rules `fa4doctor check` and
`explain` use), binds the chosen backend's adapter and logs the decision once. Later calls with the
same key only count and run. The key holds everything validated (shapes, dtypes, devices, whether
autograd records the call, every keyword, the policy variables), so a call that differs in anything
is validated again, and finds its class's plan in one dict look-up. Keys and classes are kept in
bounded LRU tables that drop one least recently used entry at a time, never all at once.

`attention` is the Python function below (also `python_attention`), or, where `fa4doctor native
build` has compiled it for this torch, the same call with its hit path in C++
(`runtime/native/hit.cpp`), which hands every call it does not remember to `python_attention`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fa4doctor.runtime import counters, inputs, local_env, native, uniform
from fa4doctor.runtime.plan_class import lengths_free, plan_class
from fa4doctor.runtime.adapters import AdapterImportError, Direct, adapter, direct
from fa4doctor.dispatch.policy import ENV_BACKEND, ENV_DISABLE, ENV_POLICY, ENV_STRICT, Policy
from fa4doctor.dispatch.reasons import BackendName, Decision
from fa4doctor.dispatch.selection import select
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.speed import kept_out
from fa4doctor.dispatch.vetting import evidence
from fa4doctor.environment import Environment

log = logging.getLogger("fa4doctor.dispatch")
# Issue 14: clearing the whole table when full planned every shape again (~190 us each) once a job
# cycled through more lengths than it held. An exact key costs ~0.7 KB (its tuple and what the table
# keeps of it: tracemalloc, 10,000 lengths), so 16,384 of them (~12 MB) hold the 10,000
# distinct shapes with room; a class holds a bound plan.
_MAX_PLANS = 16384
_MAX_CLASSES = 4096
# A hit records its recency only once the keys fill three quarters of the table, from which point a
# key left unused is evicted after 4,096 new ones at the earliest: moving a key to the end costs a hit
# ~0.4 us at 10,000 keys (OrderedDict hashes the stored key again and relinks nodes far apart in
# memory; 0.03 us with one key: timeit on the 2-core EPYC VM), the most of any step at that size.
_RECENT_FROM = _MAX_PLANS * 3 // 4
_POLICY_VARS = (ENV_BACKEND, ENV_DISABLE, ENV_STRICT, ENV_POLICY)
# os.environ.get costs ~0.7 us (it encodes the key); CPython keeps the encoded mapping in
# `os.environ._data` (Lib/os.py `_Environ`), which stays in step with os.environ writes.
if hasattr(os.environ, "_data"):
    _ENV_DATA = os.environ._data
    _ENV_B, _ENV_D, _ENV_S, _ENV_P = (os.environ.encodekey(name) for name in _POLICY_VARS)
else:  # pragma: no cover (other Pythons)
    _ENV_DATA = os.environ
    _ENV_B, _ENV_D, _ENV_S, _ENV_P = _POLICY_VARS
_clock = time.monotonic
_grad_enabled = torch.is_grad_enabled


@dataclass(slots=True)
class Plan:
    """What the first call of a plan class decided: later calls of the class only count and run."""

    spec: AttentionSpec  # the class's first call; the others differ only where plan_class looks away
    scale: float
    decision: Decision
    run: Callable[..., torch.Tensor]
    tally: counters.Tally
    counters: counters.DispatchCounters
    direct: Direct | None = None  # run's dense call without its frame, for the compiled hit path
    lengths_free: bool = False  # the compiled hit path may serve every length of the class from one entry


_plans: OrderedDict[Any, Plan] = OrderedDict()  # exact key -> its class's plan, least recently used first
_classes: OrderedDict[tuple, Plan] = OrderedDict()  # plan_class -> plan, the same order
_touch = _plans.move_to_end  # bound once: the hit path pays no attribute look-up (_RECENT_FROM says when)
_logged: set[Decision] = set()
_native = None  # the compiled hit path's module, once `use_native` has it
_remember: Callable[..., bool] | None = None  # its `remember`, bound once for the Python hit path


def _tensor_key(t: Any) -> Any:
    return (t.shape, t.dtype, t.device)  # its requires_grad is in the key's needs_grad


def _execute(run, q, k, v, varlen, alibi_slopes, learnable_sink) -> torch.Tensor:
    if varlen is None or not varlen.packed:
        return run(q, k, v, varlen, alibi_slopes, learnable_sink)
    # Padded bshd: each row's valid tokens come first (inputs.read_varlen checks the lengths fit).
    def rows(t, lens):
        return torch.cat([torch.arange(b * t.shape[1], b * t.shape[1] + n, device=t.device)
                          for b, n in enumerate(lens)])
    rows_q, rows_kv = rows(q, varlen.lens_q), rows(k, varlen.lens_kv)
    out = run(inputs.take_rows(q, rows_q), inputs.take_rows(k, rows_kv), inputs.take_rows(v, rows_kv), varlen,
              alibi_slopes, learnable_sink)
    return inputs.put_rows(out, rows_q, q)


def _log_once(decision: Decision, spec: AttentionSpec) -> None:
    if decision in _logged:
        return
    _logged.add(decision)
    if decision.fell_back:
        why = "; ".join(str(r) for r in decision.reasons_for(decision.preferred))
        log.info("fa4doctor: %s runs on %s; %s not used: %s", spec.short(), decision.chosen.value,
                 decision.preferred.value, why)
    elif decision.outpaced:
        log.info("fa4doctor: %s runs on %s%s, measured faster here than %s (FA4DOCTOR_POLICY=fastest)", spec.short(),
                 decision.chosen.value, f" ({decision.sdpa_kernel})" if decision.sdpa_kernel else "",
                 decision.preferred.value)
    else:
        log.info("fa4doctor: %s runs on %s", spec.short(), decision.chosen.value)


def _bind(decision: Decision, spec: AttentionSpec, scale: float) -> Callable[..., torch.Tensor]:
    """The chosen adapter's `run`; SDPA's kept off the kernels the decision excluded (its flash
    kernel where that is a refused FA4: dispatch/backends/sdpa.py `excluded_kernels`), and kept to
    the one kernel `FA4DOCTOR_POLICY=fastest` measured fastest where that pays for its `sdpa_kernel`
    context (`Decision.sdpa_kernel`, dispatch/speed.py `sdpa_plan`): fixed here, once per plan."""
    if decision.chosen is BackendName.SDPA and (decision.sdpa_excluded or decision.sdpa_kernel):
        return adapter(decision.chosen).bind(spec, scale, kept_out(decision.sdpa_excluded, decision.sdpa_kernel))
    return adapter(decision.chosen).bind(spec, scale)


def _keep(table: OrderedDict, key: Any, plan: Plan, limit: int) -> None:
    """Keep `plan` under `key` as the most recently used, dropping the least recently used entry
    once `table` holds more than `limit`: one at a time, never all (issue 14)."""
    table[key] = plan
    table.move_to_end(key)
    if len(table) > limit:
        table.popitem(last=False)


def _class_plan(prepared: inputs.Prepared) -> Plan:
    """The plan of the call's class, decided and bound by its first call (runtime/plan_class.py)."""
    policy = Policy.from_env()  # the same variables the key holds
    key = plan_class(prepared.spec, prepared.scale, prepared.gpu, policy)
    plan = _classes.get(key)
    if plan is None:
        plan = _new_plan(prepared, policy)
        _keep(_classes, key, plan, _MAX_CLASSES)
    else:
        _classes.move_to_end(key)
    return plan


def _new_plan(prepared: inputs.Prepared, policy: Policy | None = None) -> Plan:
    spec, policy = prepared.spec, policy or Policy.from_env()  # the same variables the plan's key holds
    env = local_env.environment(need_gpus=spec.on_cuda)
    # FA4DOCTOR_UNIFORM=1 under torch.distributed: the backend every rank can run, agreed here, at
    # plan time only (runtime/uniform.py); the hit path never exchanges.
    decide_now = uniform.select if uniform.active() else select
    for _ in BackendName:  # each round can only rule out one more backend
        decision = decide_now(spec, env, policy, prepared.gpu or 0)
        try:
            run = _bind(decision, spec, prepared.scale)
            break
        except AdapterImportError as exc:
            log.warning("fa4doctor: %s; deciding again without it", exc)
            env = local_env.record_import_failure(exc.backend, exc.message)
            _forget_plans()
    _log_once(decision, spec)
    sink = counters.counters()
    fallback = None
    if decision.fell_back:
        code = decision.fallback_code
        fallback = (decision.preferred.value, decision.chosen.value, code.value if code else "unknown")
    tally = sink.tally(decision.chosen.value, fallback, _unvetted(decision.chosen, spec, env, prepared.gpu))
    return Plan(spec, prepared.scale, decision, run, tally, sink, direct(decision.chosen, spec, prepared.scale),
                lengths_free(spec, policy))


def _unvetted(chosen: BackendName, spec: AttentionSpec, env: Environment, gpu: int | None) -> bool:
    """True when this node's ledger holds no passing evidence for the call's class and every
    direction it runs, under the current fingerprint: decided once per plan, counted per call by
    the plan's tally. Calls off the GPU never count: smoke vets GPUs only (CPU runs vet nothing,
    smoke/evidence.py), so there is nothing they could be vetted by."""
    if not spec.on_cuda:
        return False
    facts = env.gpu(gpu or 0)  # as the rules find it (dispatch/backends/base.py)
    return facts is None or not all(e.proven for e in evidence(chosen, spec, env, facts))


def attention(q, k, v, *, attn_mask_type="no_mask", window_size=None, softmax_scale=None, dropout_p=0.0,
              softcap=0.0, alibi_slopes=None, learnable_sink=None, deterministic=False, qkv_format="bshd",
              cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None):
    """Attention over `bshd` tensors (or `thd` with `cu_seqlens_*`), run by the vetted backend.

    Masks mean what TransformerEngine's do (`causal` is top-left); `window_size=(left, right)`
    uses -1 for an unbounded side. Returns `(batch, seq_q, heads, head_dim_v)`.

    >>> import torch
    >>> q = k = v = torch.randn(1, 4, 2, 8)
    >>> attention(q, k, v, attn_mask_type="causal").shape
    torch.Size([1, 4, 2, 8])
    """
    # One flat tuple, built inline and looked up by subscript: beside FA4's host path every call,
    # attribute read and lookup here runs with cold caches, at several times its warm price
    # (bench/dispatch_overhead.py "beside"). Only whether autograd records the call reaches the
    # spec (inputs.prepare `needs_grad`), so the key holds that, short-circuited.
    data = _ENV_DATA
    try:
        key = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
               _grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or (
                   learnable_sink is not None and learnable_sink.requires_grad)),
               attn_mask_type, window_size, softmax_scale, dropout_p, softcap, deterministic, qkv_format,
               data.get(_ENV_B), data.get(_ENV_D), data.get(_ENV_S), data.get(_ENV_P),
               None if alibi_slopes is None else _tensor_key(alibi_slopes),
               None if learnable_sink is None else _tensor_key(learnable_sink))
        varlen, dense = None, True
        if cu_seqlens_q is not None or cu_seqlens_kv is not None or max_seqlen_q is not None \
                or max_seqlen_kv is not None or qkv_format != "bshd":
            dense = False
            varlen = inputs.read_varlen(q, k, qkv_format, attn_mask_type, cu_seqlens_q, cu_seqlens_kv,
                                        max_seqlen_q, max_seqlen_kv)
            key = (key, varlen.summary if varlen else None, max_seqlen_q, max_seqlen_kv)
    except (AttributeError, TypeError):  # not tensors, or unhashable arguments: prepare() says what is wrong
        key = None
    try:
        plan = _plans[key]  # None is never a key
        if len(_plans) > _RECENT_FROM:  # now the most recently used: the first a full table drops is not
            _touch(key)
    except (KeyError, TypeError) as miss:  # TypeError: an unhashable argument (say, a list window)
        key = key if isinstance(miss, KeyError) else None
        plan, varlen = _first_call(key, q, k, v, attn_mask_type, window_size, softmax_scale, dropout_p,
                                   softcap, alibi_slopes, learnable_sink, deterministic, qkv_format,
                                   cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv)
    if _remember is not None and key is not None and dense and alibi_slopes is None and learnable_sink is None:
        # a call the compiled path serves, which it missed: from now on it does
        _remember(plan, q, k, v, attn_mask_type, window_size, softmax_scale, dropout_p, softcap, deterministic,
                  plan.lengths_free)
    plan.tally.n += 1
    sink = plan.counters
    if sink.directory is not None and _clock() >= sink.deadline:  # no file: nothing to refresh
        sink.flush()
    if varlen is None:
        return plan.run(q, k, v, None, alibi_slopes, learnable_sink)
    return _execute(plan.run, q, k, v, varlen, alibi_slopes, learnable_sink)


python_attention = attention  # `attention` below may become the compiled path, which calls this one


def _first_call(key, q, k, v, *keywords) -> tuple[Plan, inputs.Varlen | None]:
    """Validate, decide and bind; keep the plan under `key` (None: the arguments cannot be a key).
    `keywords` are attention()'s, in its order (`inputs.KEYWORDS`, the one spelling of it)."""
    prepared = inputs.prepare(q, k, v, **dict(zip(inputs.KEYWORDS, keywords, strict=True)))
    plan = _class_plan(prepared)
    if key is not None:
        _keep(_plans, key, plan, _MAX_PLANS)
    return plan, prepared.varlen


def call_backend(backend, q, k, v, **kwargs) -> torch.Tensor:
    """Run exactly `backend` through its adapter: inputs validated, no selection, no ledger, no counting.

    The backend's own exceptions come through (the smoke kernels classify them).

    >>> import torch
    >>> q = k = v = torch.randn(1, 4, 2, 8)
    >>> call_backend("sdpa", q, k, v, attn_mask_type="causal_bottom_right").shape
    torch.Size([1, 4, 2, 8])
    """
    name = BackendName.parse(backend, "backend")
    prepared = inputs.prepare(q, k, v, **kwargs)
    return _run_prepared(adapter(name).bind(prepared.spec, prepared.scale), prepared, q, k, v, kwargs)


def recompute(q, k, v, **kwargs) -> torch.Tensor:
    """`attention()` again for a call it has already counted: validated again, run by its class's
    plan (the same decision, so the same backend and SDPA kernels), and not counted. For a backward
    pass that recomputes its forward to take gradients (`integrations/transformers_ops.py` under
    torch.compile), so a call is counted once, as in eager mode.

    >>> import torch
    >>> q = k = v = torch.randn(1, 4, 2, 8)
    >>> torch.equal(recompute(q, k, v, attn_mask_type="causal"), attention(q, k, v, attn_mask_type="causal"))
    True
    """
    prepared = inputs.prepare(q, k, v, **kwargs)
    return _run_prepared(_class_plan(prepared).run, prepared, q, k, v, kwargs)


def _run_prepared(run, prepared: inputs.Prepared, q, k, v, kwargs: dict) -> torch.Tensor:
    return _execute(run, q, k, v, prepared.varlen, kwargs.get("alibi_slopes"), kwargs.get("learnable_sink"))


def _forget_native() -> None:
    if _native is not None:
        _native.forget()


def _forget_plans() -> None:
    _plans.clear()
    _classes.clear()
    _forget_native()


def reset() -> None:
    """Forget plans, logged decisions and the environment (tests; after installs)."""
    _forget_plans()
    _logged.clear()
    local_env.reset()


def use_native(module) -> Callable[..., torch.Tensor]:
    """Route the hit path through `module` (a loaded `runtime/native` build), or stop (None);
    returns the `attention` callable that goes with it. Plans are kept; entries start empty."""
    global _native, _remember
    _forget_native()
    if module is None or not isinstance(_ENV_DATA, dict):
        _native = _remember = None
        return python_attention
    module.configure(python_attention, _ENV_DATA, (_ENV_B, _ENV_D, _ENV_S, _ENV_P))
    _native, _remember = module, module.remember
    return module.attention


attention = use_native(native.load())
