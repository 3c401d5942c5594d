"""The compiled hit path (`runtime/native/hit.cpp`) against the Python `attention()` it stands in for.

The Python path is the truth: every call the compiled path serves must be one Python would have
served from the same plan, and every other call must reach Python untouched. Built once per
session with this machine's compiler; skipped, with the reason, where there is none.
"""

from __future__ import annotations

import contextlib

import inspect
import os
import re
from types import SimpleNamespace

import pytest
import torch
from prometheus_client import CollectorRegistry

from fa4doctor.runtime import counters as metrics, dispatcher as runtime, inputs, native, plan_class
from fa4doctor.runtime.adapters import fa4 as fa4_adapter
from fa4doctor.dispatch.reasons import DispatchError
from fa4doctor.dispatch.spec import SpecError
from fa4doctor.probe.system import find_torch_dir


@pytest.fixture(scope="session")
def native_module(native_build):
    assert native.build(native_build).seconds == 0.0  # the second build finds the first
    module = native.load(native_build)
    assert module is not None
    return module


@pytest.fixture
def hit(native_module):
    before = runtime._native  # the native pass of scripts/test.sh runs every other test through it
    yield runtime.use_native(native_module)
    runtime.use_native(before)


def _stats(hit) -> dict:
    return hit.__self__.stats()  # the built module's counts: entries, hits, misses


def _qkv(shape=(2, 6, 4, 16), kv_heads=4, dv=16, dtype=torch.float32, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, s, h, d = shape
    return (torch.randn(b, s, h, d, generator=g, dtype=dtype).requires_grad_(grad),
            torch.randn(b, s + 2, kv_heads, d, generator=g, dtype=dtype).requires_grad_(grad),
            torch.randn(b, s + 2, kv_heads, dv, generator=g, dtype=dtype).requires_grad_(grad))


@pytest.mark.skipif(not os.environ.get("FA4DOCTOR_NATIVE_SUITE"), reason="only in scripts/test.sh's native pass")
def test_the_native_pass_runs_the_compiled_path():
    assert runtime.attention is not runtime.python_attention and runtime._native is not None


def test_signature_is_the_python_one(hit):
    assert inspect.signature(hit) == inspect.signature(runtime.python_attention)


CALLS = [  # keywords of calls the compiled path serves
    {}, {"attn_mask_type": "causal"}, {"attn_mask_type": "causal_bottom_right", "window_size": (3, -1)},
    {"window_size": (2, 1)}, {"softmax_scale": 0.3}, {"softcap": 5.0}, {"deterministic": True},
    {"attn_mask_type": "causal", "window_size": (2, 0), "softmax_scale": 0.2, "dropout_p": 0.0},
    {"qkv_format": "bshd", "alibi_slopes": None, "max_seqlen_q": None},
]


@pytest.mark.parametrize("kwargs", CALLS, ids=str)
@pytest.mark.parametrize("shape,kv_heads,dv,dtype", [((2, 6, 4, 16), 4, 16, torch.float32),
                                                     ((1, 5, 4, 8), 2, 12, torch.bfloat16)])
def test_served_calls_equal_the_python_path_forward_and_backward(hit, kwargs, shape, kv_heads, dv, dtype):
    tensors = _qkv(shape, kv_heads, dv, dtype, grad=True)
    want = runtime.python_attention(*tensors, **kwargs)
    want_grads = torch.autograd.grad(want.sum(), tensors)
    before = _stats(hit)["hits"]
    got = hit(*tensors, **kwargs)
    assert _stats(hit)["hits"] == before + 1  # served by the compiled path, from the plan Python made
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(got.sum(), tensors), want_grads))


def _tag_runs(served: list) -> None:
    """Make every kept plan's run say when it runs; the compiled path forgets its entries, which
    hold the runs they were given, so the next call of each key teaches it the tagged one."""
    for plan in runtime._plans.values():
        plan.run = lambda *a, _plan=plan, _run=plan.run: (served.append(_plan), _run(*a))[1]
    runtime._forget_native()


def _which(call, served: list) -> runtime.Plan:
    """The plan that ran `call`: a kept one (by its tagged run), or the one the call made."""
    before = list(runtime._plans.values())
    served.clear()
    call()
    new = [plan for plan in runtime._plans.values() if not any(plan is old for old in before)]
    assert len(served) + len(new) == 1, (served, new)
    return served[0] if served else new[0]


VARIATIONS = {  # one field of the key changed at a time: each must reach Python and get its own plan
    "q shape": lambda q, k, v: ((q[:, :5], k, v), {}),
    "k shape": lambda q, k, v: ((q, k[:, :7], v[:, :7]), {}),
    "v head dim": lambda q, k, v: ((q, k, torch.cat([v, v[..., :4]], -1)), {}),
    "batch": lambda q, k, v: ((q[:1], k[:1], v[:1]), {}),
    "dtype": lambda q, k, v: ((q.half(), k.half(), v.half()), {}),
    "requires_grad": lambda q, k, v: ((q.detach().requires_grad_(), k, v), {}),
    "mask": lambda q, k, v: ((q, k, v), {"attn_mask_type": "causal"}),
    "window": lambda q, k, v: ((q, k, v), {"window_size": (1, 1)}),
    "scale": lambda q, k, v: ((q, k, v), {"softmax_scale": 0.5}),
    "softcap": lambda q, k, v: ((q, k, v), {"softcap": 2.0}),
    "deterministic": lambda q, k, v: ((q, k, v), {"deterministic": True}),
    "dropout": lambda q, k, v: ((q, k, v), {"dropout_p": 0.1}),
}


# Lengths both calls compare alike (seqlen_q < seqlen_kv, no decode) and the batch size: the call
# runs on its class's plan (runtime/plan_class.py). Another batch size is validated as its own key;
# other lengths of a class whose plan holds no length are served by the same entry, never reaching
# Python (hit.cpp `lengths_free`).
SAME_CLASS = {"q shape", "k shape", "batch"}
LENGTHS_ALIKE = {"q shape", "k shape"}


@pytest.mark.parametrize("name", VARIATIONS)
def test_every_field_of_the_key_is_checked(hit, name):
    q, k, v = _qkv()
    served: list = []
    with torch.no_grad():
        hit(q, k, v)
        _tag_runs(served)
        hit(q, k, v)  # teaches the compiled path the tagged run
        hits = _stats(hit)["hits"]
        (plan,) = runtime._plans.values()
        assert _which(lambda: hit(q, k, v), served) is plan and _stats(hit)["hits"] == hits + 1
        tensors, kwargs = VARIATIONS[name](q, k, v)
    grad = torch.enable_grad() if name == "requires_grad" else torch.no_grad()
    with grad:
        misses, hits = _stats(hit)["misses"], _stats(hit)["hits"]
        other = _which(lambda: hit(*tensors, **kwargs), served)  # must not run on `plan` unless one class
        if name in LENGTHS_ALIKE:  # served from the entry the first call made
            assert _stats(hit)["hits"] == hits + 1 and _stats(hit)["misses"] == misses and len(runtime._plans) == 1
        else:  # validated as its own key
            assert _stats(hit)["misses"] == misses + 1 and len(runtime._plans) == 2
        assert (other is plan) == (name in SAME_CLASS)
        hits = _stats(hit)["hits"]
        hit(*tensors, **kwargs)  # and then the compiled path serves it
        assert _stats(hit)["hits"] == hits + 1
    spec = inputs.prepare(*tensors, **kwargs).spec
    if name in SAME_CLASS:
        assert plan_class.lengths(other.spec) == plan_class.lengths(spec)
    else:
        assert other.spec == spec


def test_grad_mode_is_in_the_key(hit):
    q, k, v = _qkv(grad=True)
    served: list = []
    trained = _which(lambda: hit(q, k, v), served)
    with torch.no_grad():
        inferred = _which(lambda: hit(q, k, v), served)
    assert trained.spec.training and not inferred.spec.training
    _tag_runs(served)
    hit(q, k, v)
    with torch.no_grad():
        hit(q, k, v)
    hits = _stats(hit)["hits"]
    with torch.inference_mode():
        assert _which(lambda: hit(q, k, v), served) is inferred
    assert _which(lambda: hit(q, k, v), served) is trained
    assert _stats(hit)["hits"] == hits + 2


def _tokens(s: int, kv: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, s, 2, 8, generator=g)
    return q, torch.randn(1, kv or s, 2, 8, generator=g), torch.randn(1, kv or s, 2, 8, generator=g)


def test_one_entry_serves_every_length_of_a_class_whose_plan_binds_none(hit):
    """Issue 14: a job cycling through thousands of lengths hits one entry (one set of cache lines),
    not one per length. Each length's output is the Python path's, which validates and decides it afresh."""
    hit(*_tokens(2), attn_mask_type="causal")
    misses, hits = _stats(hit)["misses"], _stats(hit)["hits"]
    (plan,) = runtime._plans.values()
    calls = plan.tally.n
    for s in range(3, 70):
        q, k, v = _tokens(s, seed=s)
        assert torch.equal(hit(q, k, v, attn_mask_type="causal"), runtime.python_attention(q, k, v, attn_mask_type="causal"))
    assert _stats(hit)["entries"] == 1 and _stats(hit)["misses"] == misses and _stats(hit)["hits"] == hits + 67
    assert plan.tally.n == calls + 2 * 67  # counted once by each path


def test_lengths_a_plan_binds_get_entries_of_their_own(hit):
    """A top-left causal mask with seqlen_q != seqlen_kv binds both lengths (runtime/plan_class.py
    `_baked`): every pair is its own entry and its own plan, never another pair's."""
    outputs = {}
    for kv in range(5, 10):
        q, k, v = _tokens(4, kv, seed=kv)
        misses = _stats(hit)["misses"]
        outputs[kv] = hit(q, k, v, attn_mask_type="causal")
        assert _stats(hit)["misses"] == misses + 1
        assert torch.equal(hit(q, k, v, attn_mask_type="causal"), outputs[kv])
        assert torch.equal(outputs[kv], runtime.python_attention(q, k, v, attn_mask_type="causal"))
    assert _stats(hit)["entries"] == 5 and len(runtime._classes) == 5


@pytest.mark.parametrize("lengths", [(1, 6, 6), (7, 6, 6), (6, 6, 0), (0, 6, 6)],
                         ids=["decode", "q longer", "v shorter than k", "q empty"])
def test_a_length_the_rules_read_otherwise_is_not_served_by_the_entry(hit, lengths):
    s_q, s_k, s_v = lengths
    hit(*_tokens(6))  # the class of q == kv, neither empty
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, n, 2, 8, generator=g) for n in lengths)
    misses = _stats(hit)["misses"]
    try:
        got = hit(q, k, v)
    except SpecError as exc:  # k and v of other lengths: Python's own error, naming the argument
        assert _stats(hit)["misses"] == misses + 1 and exc.field == "v"
    else:
        assert _stats(hit)["misses"] == misses + 1
        assert torch.equal(got, runtime.python_attention(q, k, v))


def test_a_length_kept_apart_under_fastest_is_its_own_entry(hit, monkeypatch):
    """`FA4DOCTOR_POLICY=fastest` reads each length's speed bucket, so its plans hold exact lengths."""
    monkeypatch.setenv("FA4DOCTOR_POLICY", "fastest")
    for s in (4, 5, 6):
        misses = _stats(hit)["misses"]
        hit(*_tokens(s))
        assert _stats(hit)["misses"] == misses + 1
    assert _stats(hit)["entries"] == 3


@pytest.mark.parametrize("variable,value", [("FA4DOCTOR_DISABLE", "sdpa"), ("FA4DOCTOR_BACKEND", "fa4"),
                                            ("FA4DOCTOR_STRICT", "1"), ("FA4DOCTOR_POLICY", "fastest")])
def test_a_policy_variable_set_between_calls_is_read(hit, monkeypatch, variable, value):
    q, k, v = _qkv()
    hit(q, k, v)
    hit(q, k, v)
    monkeypatch.setenv(variable, value)
    hits = _stats(hit)["hits"]
    with contextlib.suppress(DispatchError):
        hit(q, k, v)
    assert _stats(hit)["hits"] == hits  # a miss: the key holds the variable
    try:
        want = runtime.python_attention(q, k, v)
    except DispatchError as exc:
        with pytest.raises(type(exc), match=re.escape(str(exc))):
            hit(q, k, v)
    else:
        assert torch.equal(hit(q, k, v), want)
    monkeypatch.delenv(variable)
    assert torch.equal(hit(q, k, v), runtime.python_attention(q, k, v))
    hits = _stats(hit)["hits"]
    hit(q, k, v)
    assert _stats(hit)["hits"] == hits + 1


def test_calls_it_does_not_serve_reach_python_unchanged(hit):
    q, k, v = _qkv()
    slopes, sink = torch.rand(4), torch.zeros(4)
    cu = torch.tensor([0, 6, 12], dtype=torch.int32)
    packed = (q.reshape(12, 4, 16), k[:, :6].reshape(12, 4, 16), v[:, :6].reshape(12, 4, 16))
    calls = [
        ((), {"q": q, "k": k, "v": v}),  # tensors by keyword
        ((q.as_subclass(_Sub), k, v), {}),  # a subclass may answer .shape its own way
        ((q, k, v), {"alibi_slopes": slopes}),
        ((q, k, v), {"learnable_sink": sink}),
        (packed, {"qkv_format": "thd", "cu_seqlens_q": cu, "cu_seqlens_kv": cu, "max_seqlen_q": 6,
                  "max_seqlen_kv": 6}),
        ((q, k, v), {"window_size": [2, 1]}),  # unhashable: Python's own error path
    ]
    for args, kwargs in calls * 2:
        misses = _stats(hit)["misses"]
        assert torch.equal(hit(*args, **kwargs), runtime.python_attention(*args, **kwargs))
        assert _stats(hit)["misses"] == misses + 1, kwargs


class _Sub(torch.Tensor):
    pass


@pytest.mark.parametrize("args,kwargs", [
    ((torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8).double(), torch.randn(1, 4, 2, 8)), {}),
    (([1.0], torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)), {}),
    ((torch.randn(1, 4, 2, 8),) * 3, {"attn_mask_type": "diagonal"}),
    ((torch.randn(1, 4, 2, 8),) * 3, {"windw_size": (1, 1)}),
    ((torch.randn(1, 4, 2, 8),) * 4, {}),
])
def test_bad_calls_get_the_python_error(hit, args, kwargs):
    with pytest.raises(Exception) as python:
        runtime.python_attention(*args, **kwargs)
    with pytest.raises(type(python.value)) as compiled:
        hit(*args, **kwargs)
    assert str(compiled.value) == str(python.value)


def test_counts_every_call_and_refreshes_the_metrics_file_when_due(hit, tmp_path):
    counters = metrics.DispatchCounters(registry=CollectorRegistry(), directory=tmp_path)
    metrics.install(counters)
    try:
        q, k, v = _qkv()
        for _ in range(5):
            hit(q, k, v)
        (plan,) = runtime._plans.values()
        assert plan.tally.n == 5 and not list(tmp_path.glob("counter_*.db"))
        counters.deadline = 0.0
        hit(q, k, v)
        assert counters._sink.totals[metrics.calls_key("sdpa")] == 6 and counters.deadline > 0.0
    finally:
        metrics.install(None)


@pytest.mark.parametrize("tally", [metrics.Tally("sdpa", None), SimpleNamespace(n=0)], ids=["slots", "attribute"])
def test_a_hit_adds_one_to_the_tally_wherever_n_lives(hit, tally):
    q, k, v = _qkv()
    hit(q, k, v)
    (plan,) = runtime._plans.values()
    plan.tally, tally.n = tally, 41
    runtime.reset()
    assert hit.__self__.remember(plan, q, k, v, *(runtime.python_attention.__kwdefaults__[n] for n in native.KEYED))
    hit(q, k, v)
    assert tally.n == 42


class _DictCounters:  # the hit path reads `deadline` by name
    def __init__(self):
        self.directory, self.deadline, self.flushed = "somewhere", float("inf"), 0

    def flush(self):
        self.flushed += 1


class _SlotCounters(_DictCounters):  # ... or in its slot, as on metrics.DispatchCounters
    __slots__ = ("directory", "deadline", "flushed")


@pytest.mark.parametrize("counters", [_SlotCounters, _DictCounters])
def test_a_hit_flushes_once_the_deadline_passed_wherever_it_lives(hit, counters):
    q, k, v = _qkv()
    hit(q, k, v)
    (plan,) = runtime._plans.values()
    plan.counters = counters = counters()
    runtime.reset()
    assert hit.__self__.remember(plan, q, k, v, *(runtime.python_attention.__kwdefaults__[n] for n in native.KEYED))
    hit(q, k, v)
    counters.deadline = 0.0
    hit(q, k, v)
    assert counters.flushed == 1


def test_a_comparison_that_calls_back_in_is_safe(hit):
    q, k, v = _qkv()

    calls = []

    class Scale(float):  # a keyword whose == runs Python: calls attention() and resets the plans
        __hash__ = float.__hash__

        def __eq__(self, other):
            if not calls:  # once: the Python path's own dict lookup calls == too
                calls.append(hit(q, k, v, softmax_scale=0.3))
                runtime.reset()
            return float(self) == other

    want = runtime.python_attention(q, k, v, softmax_scale=0.3)
    assert torch.equal(hit(q, k, v, softmax_scale=Scale(0.3)), want)  # decided, remembered
    assert torch.equal(hit(q, k, v, softmax_scale=Scale(0.3)), want)  # another Scale: == runs, calls back
    assert len(calls) == 1 and torch.equal(calls[0], want)
    assert torch.equal(hit(q, k, v, softmax_scale=0.3), want)


def test_reset_forgets_the_compiled_entries(hit):
    q, k, v = _qkv()
    hit(q, k, v)
    assert _stats(hit)["entries"] == 1
    runtime.reset()
    assert _stats(hit)["entries"] == 0
    hit(q, k, v)
    assert _stats(hit)["entries"] == 1


def _stub_plan():
    """What `remember` reads of a plan; its run returns a marker instead of running a kernel."""
    counters = SimpleNamespace(directory=None, deadline=float("inf"))
    return SimpleNamespace(run=lambda *a: "served", direct=None, tally=metrics.Tally("sdpa", None), counters=counters)


def test_a_full_table_evicts_one_entry_at_a_time_and_keeps_what_is_used(hit):
    """Issue 14: the table used to be forgotten whole when full. Now a full table evicts one entry
    (CLOCK: one not hit since the hand last passed), and every entry left is still found, wherever
    the evictions moved it in the index."""
    module, plan = hit.__self__, _stub_plan()
    capacity, extra = _stats(hit)["capacity"], 100
    base = torch.zeros(1, capacity + extra + 1, 1, 8)
    views = [base[:, :n] for n in range(1, capacity + extra + 1)]  # one distinct shape each
    defaults = [runtime.python_attention.__kwdefaults__[n] for n in native.KEYED]
    for view in views[:capacity]:
        assert module.remember(plan, view, view, view, *defaults)
    assert hit(views[0], views[0], views[0]) == "served"  # a hit: spared by the first sweep
    for count, view in enumerate(views[capacity:], 1):
        assert module.remember(plan, view, view, view, *defaults)
        assert _stats(hit)["entries"] == capacity and _stats(hit)["evictions"] == count
    kept = [views[0], *views[extra + 1:]]  # views[1:extra + 1] went, in the hand's order
    hits = _stats(hit)["hits"]
    assert all(hit(view, view, view) == "served" for view in kept)
    assert _stats(hit)["hits"] == hits + capacity
    misses = _stats(hit)["misses"]
    hit(views[1], views[1], views[1])  # evicted: Python serves it
    assert _stats(hit)["misses"] == misses + 1


def test_entries_of_one_shape_share_a_hash_and_are_told_apart_in_full(hit):
    module, q = hit.__self__, torch.zeros(1, 4, 1, 8)
    plans = [_stub_plan() for _ in range(40)]
    for scale, plan in enumerate(plans, 1):
        plan.run = lambda *a, _scale=scale: _scale
        assert module.remember(plan, q, q, q, "no_mask", None, float(scale), 0.0, 0.0, False)
    assert [hit(q, q, q, softmax_scale=float(scale)) for scale in range(1, 41)] == list(range(1, 41))

def test_fa4_direct_call_is_the_adapters_call(hit, fakes):
    q, k, v = (t.bfloat16() for t in _qkv())
    for kwargs in ({"attn_mask_type": "causal"}, {"window_size": (3, 1), "softcap": 4.0}):
        prepared = inputs.prepare(q, k, v, **kwargs)
        run = fa4_adapter.bind(prepared.spec, prepared.scale)
        counters = metrics.counters()
        plan = runtime.Plan(prepared.spec, prepared.scale, None, run, counters.tally("fa4", None), counters,
                            fa4_adapter.direct(prepared.spec, prepared.scale))
        defaults = runtime.python_attention.__kwdefaults__
        assert hit.__self__.remember(plan, q, k, v, *(kwargs.get(n, defaults[n]) for n in native.KEYED))
        via_run, counted = run(q, k, v), plan.tally.n
        via_direct = hit(q, k, v, **kwargs)
        by_run, by_direct = fakes[-2:]
        assert by_direct["function"] == by_run["function"] == "flash_attn_func"
        assert by_direct["args"] == by_run["args"] == ()
        assert list(by_direct["kwargs"]) == list(by_run["kwargs"])
        assert all(by_direct["kwargs"][n] == by_run["kwargs"][n] for n in by_run["kwargs"] if n not in ("q", "k", "v"))
        assert torch.equal(via_direct, via_run) and plan.tally.n == counted + 1
        runtime.reset()


def test_not_loaded_when_disabled_missing_or_broken(tmp_path, caplog):
    environ = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}
    assert native.load({**environ, native.ENV_NATIVE: "0"}) is None
    assert native.load(environ) is None  # not built
    path = native.artifact_path(environ, find_torch_dir())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a library")
    assert native.load(environ) is None
    assert "not using the compiled hit path" in caplog.text


def test_a_failed_build_says_why_and_leaves_nothing(tmp_path):
    environ = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path), "CXX": "/nonexistent/c++"}
    result = native.build(environ)
    assert not result.ok and "/nonexistent/c++" in result.error
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
