"""What `fa4doctor bench` measures: a zoo of real models' attention calls at realistic lengths,
the default specs, and the user's own, each with the batch that fills the GPU.

The zoo's shapes come from the models' configs (examples/specs/ and examples/models/ hold them
with their sources). Each is measured at every length of `--seqlens`, by default the powers of two
from 1k to 16k that the speed classes centre on (dispatch/speed.py `seqlen_bucket`), so every class
a 1k-16k call falls into is measured.

A call holds `TOKENS` query tokens: batch = TOKENS // seqlen_q (at least 1), the batch sizes of
FlashAttention's own benchmark (benchmarks/benchmark_flash_attention.py: 32 x 512 ... 1 x 16384).
A decode call holds one query per sequence against `DECODE_KV_TOKENS` cached keys in all, so the
batch is DECODE_KV_TOKENS // seqlen_kv (128 sequences at 1k, 8 at 16k).

>>> [s.name for s in zoo_shapes(["gpt-2"], [1024, 4096])]
['gpt-2 s1024', 'gpt-2 s4096']
>>> zoo_shapes(["gpt-2"], [4096])[0].batch, zoo_shapes(["llama-3-8b-decode"], [16384])[0].batch
(4, 8)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from fa4doctor.dispatch.spec import AttentionSpec, SpecError

DEFAULT_SEQLENS = (1024, 2048, 4096, 8192, 16384)
TOKENS = 16384
DECODE_KV_TOKENS = 131072


@dataclass(frozen=True, slots=True)
class ZooModel:
    """One model's attention call; `spec`'s lengths are replaced by each measured length (a decode
    keeps its one query and takes the length as its KV length)."""

    name: str
    about: str
    spec: AttentionSpec

    @property
    def decode(self) -> bool:
        return self.spec.seqlen_q == 1


def _train(**fields) -> AttentionSpec:
    return AttentionSpec(dtype="bf16", attn_mask_type="causal", training=True, **fields)


ZOO: tuple[ZooModel, ...] = (
    ZooModel("llama-3-8b", "Llama-3-8B training: 32 query heads over 8 KV heads, head dim 128, causal",
             _train(head_dim_qk=128, num_heads_q=32, num_heads_kv=8)),
    ZooModel("gpt-2", "GPT-2 training: 12 heads of head dim 64, causal (the d64 model)",
             _train(head_dim_qk=64, num_heads_q=12)),
    ZooModel("gemma-d256", "Gemma-2-9B-style training: 16 query heads over 8 KV heads, head dim 256, "
             "causal (without Gemma-2's softcap, which only FA runs fused)",
             _train(head_dim_qk=256, num_heads_q=16, num_heads_kv=8)),
    ZooModel("deepseek-v3-mla", "DeepSeek-V3 MLA training, one GPU's share under 8-way tensor parallelism: "
             "16 heads, q·k head dim 192, v head dim 128, causal",
             _train(head_dim_qk=192, head_dim_v=128, num_heads_q=16)),
    ZooModel("mistral-7b-swa", "Mistral-7B training: 32 query heads over 8 KV heads, head dim 128, causal "
             "with a 4096-token sliding window", _train(head_dim_qk=128, num_heads_q=32, num_heads_kv=8,
                                                        window_size=(4095, 0))),
    ZooModel("llama-3-8b-decode", "Llama-3-8B decode: one query token per sequence against its KV cache, "
             "32 query heads over 8 KV heads, head dim 128",
             AttentionSpec(dtype="bf16", head_dim_qk=128, num_heads_q=32, num_heads_kv=8, seqlen_q=1,
                           attn_mask_type="causal_bottom_right", training=False)),
)
ZOO_NAMES = tuple(model.name for model in ZOO)


@dataclass(frozen=True, slots=True)
class BenchShape:
    """One call `bench` times on every backend: its name (`<source> s<length>`), spec and batch."""

    name: str
    spec: AttentionSpec
    batch: int


def batch_for(spec: AttentionSpec) -> int:
    """The batch that fills the GPU with `spec` (module docstring)."""
    if spec.seqlen_q == 1:
        return max(1, DECODE_KV_TOKENS // max(1, spec.seqlen_kv))
    return max(1, TOKENS // max(1, spec.seqlen_q))


def _at(model: ZooModel, length: int) -> BenchShape:
    lengths = dict(seqlen_kv=length) if model.decode else dict(seqlen_q=length, seqlen_kv=length)
    spec = replace(model.spec, same_seqlens=None, **lengths)  # same_seqlens follows the new lengths
    return BenchShape(f"{model.name} s{length}", spec, batch_for(spec))


def parse_zoo(text: str) -> tuple[str, ...]:
    """`--zoo`: "all", "none", or comma-separated zoo names."""
    words = tuple(w.strip().lower() for w in text.split(",") if w.strip())
    if words == ("all",):
        return ZOO_NAMES
    if words == ("none",):
        return ()
    unknown = [w for w in words if w not in ZOO_NAMES]
    if unknown or not words:
        raise SpecError("zoo", f"unknown zoo model {unknown[0] if unknown else text!r}", ("all", "none", *ZOO_NAMES))
    return words


def parse_seqlens(text: str) -> tuple[int, ...]:
    """`--seqlens`: comma-separated lengths, each from 1 to 2^20 (a 1M-token call is not a benchmark)."""
    found = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if not part.isdigit() or not 1 <= int(part) <= 2**20:
            raise SpecError("seqlens", f"{part!r} is not a sequence length from 1 to {2**20}")
        found.append(int(part))
    if not found:
        raise SpecError("seqlens", f"no sequence length in {text!r} (write e.g. 1024,4096,16384)")
    return tuple(dict.fromkeys(found))


def zoo_shapes(names: Sequence[str], seqlens: Sequence[int] = DEFAULT_SEQLENS) -> list[BenchShape]:
    """Every named zoo model at every length, model by model."""
    by_name = {model.name: model for model in ZOO}
    return [_at(by_name[name], length) for name in names for length in seqlens]


def named_shapes(specs: Sequence[tuple[str, AttentionSpec]]) -> list[BenchShape]:
    """The default specs or a `--spec FILE`'s, at their own lengths."""
    return [BenchShape(name, spec, batch_for(spec)) for name, spec in specs]


# How `bench` counts FLOPs, in the report beside the figures.
FLOPS_TEXT = ("forward FLOPs = 2 x batch x query heads x (head_dim_qk + head_dim_v) x the (query, key) pairs the "
              "mask and window allow, per sequence: seqlen_q x seqlen_kv without a mask, s(s+1)/2 for a square "
              "causal mask (the usual causal halving), fewer under a window; forward+backward = 3.5 x forward "
              "(the backward as 2.5 forwards, as FlashAttention's benchmarks count it)")
BWD_FACTOR = 2.5


def allowed_pairs(spec: AttentionSpec) -> int:
    """The (query, key) pairs one sequence's mask and window allow: the work a kernel that skips
    masked blocks must do. The diagonal follows the mask (top-left for `causal`, else bottom-right).

    >>> allowed_pairs(AttentionSpec(seqlen_q=4, attn_mask_type="causal")), allowed_pairs(AttentionSpec(seqlen_q=4))
    (10, 16)
    >>> allowed_pairs(AttentionSpec(seqlen_q=4, attn_mask_type="causal", window_size=(1, 0)))
    7
    """
    sq, sk, mask = spec.seqlen_q, spec.seqlen_kv, spec.attn_mask_type
    if not mask.is_causal and not spec.has_window:
        return sq * sk
    shift = 0 if mask.is_top_left else sk - sq
    left, right = spec.window_size
    total = 0
    for i in range(sq):
        low = max(0, i + shift - left) if left >= 0 else 0
        high = i + shift if mask.is_causal else (i + shift + right if right >= 0 else sk - 1)
        total += max(0, min(high, sk - 1) - low + 1)
    return total


def flops(spec: AttentionSpec, batch: int, direction: str) -> float:
    """FLOPs of one call (`FLOPS_TEXT`); `direction` is "fwd" or "fwd_bwd"."""
    forward = 2.0 * batch * spec.num_heads_q * (spec.head_dim_qk + spec.head_dim_v) * allowed_pairs(spec)
    return forward * (1.0 + BWD_FACTOR) if direction == "fwd_bwd" else forward
