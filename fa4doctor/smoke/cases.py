"""The smoke levels as data, generated from the backends' own rules.

A case is one small attention problem for one backend; it runs forward and, when the spec trains,
backward. Which cases a level holds is decided by the same `not_supported_reasons` the dispatcher
uses, so a case is only ever run where the dispatcher would send that call (or where only a
known-bug rule of fa4doctor stops it: those keep being tested).

- `quick`: one representative spec per backend (bf16, d128, causal), forward and backward.
- `standard`: every mask type the adapters take, GQA, windows, variable length, MLA head dims,
  softcap, fp16 and bf16.
- `thorough`: every head dim the backend accepts on the GPU's architecture, in steps of 8 from 8 to
  256, causal and not, forward and backward (about 64 configurations for FA4 on an H100).

>>> from fa4doctor.environment import Environment
>>> [c.name for c in plan_cases(Environment(), "quick", device="cpu")]
['sdpa:bf16-d128-h4-s256-causal']
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from fa4doctor.dispatch.backends import BY_NAME, PRIORITY
from fa4doctor.dispatch.reasons import BackendName
from fa4doctor.dispatch.spec import AttentionSpec, SpecError
from fa4doctor.environment import Environment, GpuFacts

LEVELS = ("quick", "standard", "thorough")
THOROUGH_HEAD_DIMS = tuple(range(8, 257, 8))
# Small problems: the point is to run every code path, not to measure speed. 256 rows cover more
# than one FA4 tile (128) in every direction.
_BASE_FIELDS = dict(dtype="bf16", head_dim_qk=128, num_heads_q=4, seqlen_q=256,
                    attn_mask_type="causal", training=True)
BASE = AttentionSpec(**_BASE_FIELDS)
MAX_SEQLEN = 512


@dataclass(frozen=True, slots=True)
class SmokeCase:
    """One backend on one problem; `name` is unique per configuration and backend."""

    backend: BackendName
    spec: AttentionSpec

    @property
    def name(self) -> str:
        return f"{self.backend.value}:{case_slug(self.spec)}"


def case_slug(spec: AttentionSpec) -> str:
    dims = f"d{spec.head_dim_qk}" + (f"x{spec.head_dim_v}" if spec.mla else "")
    heads = f"h{spec.num_heads_q}" + (f"/{spec.num_heads_kv}" if spec.gqa else "")
    seqs = f"s{spec.seqlen_q}" + (f"/{spec.seqlen_kv}" if spec.seqlen_kv != spec.seqlen_q else "")
    parts = [spec.dtype.value, dims, heads, seqs, spec.attn_mask_type.value]
    if spec.has_window:
        parts.append(f"w{spec.window_size[0]},{spec.window_size[1]}")
    if spec.qkv_format.value == "thd":
        parts.append("thd")
    if spec.softcap:
        parts.append(f"softcap{spec.softcap:g}")
    if not spec.training:
        parts.append("infer")
    return "-".join(parts)


def variant(**changes) -> AttentionSpec:
    """BASE with some fields changed; derived fields (head_dim_v, seqlen_kv, ...) follow them."""
    return AttentionSpec(**{**_BASE_FIELDS, **changes})


def _standard_specs() -> list[AttentionSpec]:
    specs = [variant(attn_mask_type=mask) for mask in ("no_mask", "causal", "causal_bottom_right")]
    # Top-left causal where the diagonals differ (sq > sk), and bottom-right with sq < sk: the
    # alignment FA gets wrong if a translation is missing (docs/sources.md#causal-alignment).
    specs.append(variant(seqlen_q=256, seqlen_kv=128))
    specs.append(variant(attn_mask_type="causal_bottom_right", seqlen_q=128, seqlen_kv=384))
    for mask in ("padding", "padding_causal", "padding_causal_bottom_right"):
        specs.append(variant(attn_mask_type=mask, qkv_format="thd", same_seqlens=True))
    specs.append(variant(num_heads_q=8, num_heads_kv=2))  # GQA
    specs.append(variant(window_size=(64, 0)))  # sliding window, causal
    specs.append(variant(attn_mask_type="no_mask", window_size=(32, 32)))
    specs.append(variant(head_dim_qk=192, head_dim_v=128))  # MLA (DeepSeek)
    specs.append(variant(head_dim_qk=64))
    specs.append(variant(head_dim_qk=256))
    specs.append(variant(dtype="fp16"))
    specs.append(variant(softcap=30.0))
    specs += _decode_specs()
    return specs


def _decode_specs() -> list[AttentionSpec]:
    """Inference with one query token per sequence: FA4 >= 4.0.0b39 picks its SwapAB decode kernel for
    these by itself on SM100/SM103 (flash_attn/cute/config.py 4.0.0b40 L1268-1293, L1561-1571), with
    GQA packed up to 32 query heads per KV head; other GPUs and backends run their usual kernel."""
    decode = dict(seqlen_q=1, seqlen_kv=384, training=False, attn_mask_type="causal_bottom_right")
    return [variant(**decode), variant(**decode, num_heads_q=8, num_heads_kv=2),
            variant(**{**decode, "attn_mask_type": "no_mask"}, num_heads_q=8, num_heads_kv=1, head_dim_qk=64)]


def neighbours(spec: AttentionSpec) -> list[AttentionSpec]:
    """The calls a failure at `spec`'s head dims may reach: the other dtype, the mask alignments,
    windows and GQA at the same head dims and direction. Smoke runs them after a failure, so the
    ledger holds the failure's extent and a class that passes on its own is not refused for it."""
    base = dict(dtype=spec.dtype.value, head_dim_qk=spec.head_dim_qk, head_dim_v=spec.head_dim_v,
                num_heads_q=2, seqlen_q=128, attn_mask_type="causal", training=spec.training)
    other = "fp16" if spec.dtype.value == "bf16" else "bf16"
    found = [variant(**{**base, "dtype": other}), variant(**{**base, "attn_mask_type": "no_mask"}),
             variant(**base), variant(**{**base, "attn_mask_type": "causal_bottom_right", "seqlen_kv": 192}),
             variant(**{**base, "seqlen_kv": 96}),  # top-left causal with seqlen_q > seqlen_kv
             variant(**{**base, "window_size": (64, 0)}),
             variant(**{**base, "attn_mask_type": "no_mask", "window_size": (32, 32)}),
             variant(**{**base, "num_heads_q": 8, "num_heads_kv": 2})]
    return [f for f in found if case_slug(f) != case_slug(spec)]


def _thorough_specs(head_dims: Iterable[int] = THOROUGH_HEAD_DIMS) -> list[AttentionSpec]:
    return [variant(num_heads_q=2, seqlen_q=128, head_dim_qk=d, attn_mask_type=mask)
            for d in head_dims for mask in ("no_mask", "causal")]


def level_specs(level: str | None) -> list[AttentionSpec]:
    """The specs a level asks for, before any backend's rules filter them (None: none, only the
    caller's own specs)."""
    if level is None:
        return []
    if level not in LEVELS:
        raise SpecError("level", f"unknown smoke level {level!r}", LEVELS)
    if level == "quick":
        return [BASE]
    return _standard_specs() if level == "standard" else _thorough_specs()


def parse_head_dims(text: str) -> tuple[tuple[int, int], ...]:
    """`"64,128,192x128"` -> ((64, 64), (128, 128), (192, 128))."""
    dims = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        qk, _, v = part.partition("x")
        try:
            pair = (int(qk), int(v or qk))
        except ValueError:
            raise SpecError("head_dims", f"{part!r} is not a head dim (write 128, or 192x128 for "
                            "head_dim_qk x head_dim_v)") from None
        if min(pair) <= 0:
            raise SpecError("head_dims", f"{part!r}: head dims must be positive")
        dims.append(pair)
    return tuple(dims)


def user_specs(extra_specs: Sequence[AttentionSpec] = (),
               head_dims: Sequence[tuple[int, int]] = ()) -> list[AttentionSpec]:
    """The user's own shapes, shrunk to smoke size: sequence lengths capped at MAX_SEQLEN keeping
    which side is longer (that decides causal alignment), everything else as given."""
    specs = [_shrink(s) for s in extra_specs]
    specs += [variant(head_dim_qk=qk, head_dim_v=v) for qk, v in head_dims]
    return specs


def _shrink(spec: AttentionSpec) -> AttentionSpec:
    longest = max(spec.seqlen_q, spec.seqlen_kv)
    if longest <= MAX_SEQLEN or spec.seqlen_q == 1:
        # A decode call is never shrunk: it is cheap at any KV length, and FA4 >= b39 chooses between
        # its SwapAB decode kernel and the standard one by KV length and batch x KV heads
        # (flash_attn/cute/config.py 4.0.0b40 L1313-1319), so only the real shape runs the kernel the
        # real call gets.
        return spec
    scale = lambda n: max(8, n * MAX_SEQLEN // longest // 8 * 8)  # noqa: E731
    fields = {**spec.to_dict(), "seqlen_q": scale(spec.seqlen_q), "seqlen_kv": scale(spec.seqlen_kv)}
    if not spec.varlen:
        fields["same_seqlens"] = None
    return AttentionSpec.from_dict(fields)


def gpu_view(env: Environment, gpu: GpuFacts | None) -> Environment:
    """The environment as a child pinned to `gpu` sees it (`cuda:0`), without ledger entries,
    so that earlier failures never hide a case from being run again."""
    gpus = (replace(gpu, cuda_index=0),) if gpu is not None else ()
    return replace(env, gpus=gpus, ledger=())


def _claimed(backend, spec: AttentionSpec, view: Environment) -> bool:
    """The backend claims `spec`: nothing refuses it but the known-bug table (dispatch/known_bugs.py),
    which smoke keeps testing: a passing case is this node's proof that lifts the refusal."""
    refused = backend.not_supported_reasons(spec, view, 0)
    gpu = view.gpu(0) if spec.on_cuda else None
    bugs = backend.known_bug_reasons(spec, view, gpu)[0] if refused and gpu is not None else []
    return all(r in bugs for r in refused)


def plan_cases(env: Environment, level: str | None = "quick", *, gpu: GpuFacts | None = None,
               backends: Sequence[BackendName] | None = None,
               extra_specs: Sequence[AttentionSpec] = (),
               head_dims: Sequence[tuple[int, int]] = (), device: str = "cuda") -> list[SmokeCase]:
    """Every case of `level` (plus the user's shapes) that a backend's rules accept on `gpu`.

    `device="cpu"` plans for tensors on the CPU, where only SDPA runs.
    """
    view = gpu_view(env, gpu)
    wanted = [b.NAME for b in PRIORITY] if backends is None else [BackendName.parse(b) for b in backends]
    specs = level_specs(level) + user_specs(extra_specs, head_dims)
    cases: dict[str, SmokeCase] = {}
    for name in wanted:
        backend = BY_NAME[name]
        for spec in specs:
            spec = replace(spec, device=device)
            if not _claimed(backend, spec, view) and spec.training:
                spec = replace(spec, training=False)  # forward-only where it has no backward
            if _claimed(backend, spec, view):
                case = SmokeCase(name, spec)
                cases.setdefault(case.name, case)
    return list(cases.values())
