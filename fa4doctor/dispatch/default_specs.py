"""The attention calls `fa4doctor check` judges by default: the shapes most models use today.

Each is named, and the names are Prometheus label values (`spec` on eligibility metrics), so they
are short, stable and snake_case. `--spec FILE` adds more (`dispatch.spec.load_specs`).

>>> [name for name, _ in DEFAULT_SPECS][:2]
['bf16_d128_causal_train', 'bf16_d64_train']
"""

from __future__ import annotations

from fa4doctor.dispatch.spec import AttentionSpec

DEFAULT_SPECS: tuple[tuple[str, AttentionSpec], ...] = (
    # Llama-style training, MHA: the shape every FA release is tuned for.
    ("bf16_d128_causal_train", AttentionSpec(dtype="bf16", head_dim_qk=128, num_heads_q=32, seqlen_q=4096,
                                             attn_mask_type="causal")),
    # Encoders and ViTs: head dim 64, no mask.
    ("bf16_d64_train", AttentionSpec(dtype="bf16", head_dim_qk=64, num_heads_q=16, seqlen_q=1024)),
    # Grouped-query attention, 32 query heads sharing 8 KV heads (Llama 3 8B).
    ("bf16_gqa32x8_d128_causal_train", AttentionSpec(dtype="bf16", head_dim_qk=128, num_heads_q=32,
                                                     num_heads_kv=8, seqlen_q=4096, attn_mask_type="causal")),
    # DeepSeek-style MLA: q·k head dim 192, v head dim 128.
    ("bf16_mla192x128_causal_train", AttentionSpec(dtype="bf16", head_dim_qk=192, head_dim_v=128,
                                                   num_heads_q=16, seqlen_q=4096, attn_mask_type="causal")),
    # Head dim 256 (Gemma) at inference.
    ("bf16_d256_causal_infer", AttentionSpec(dtype="bf16", head_dim_qk=256, num_heads_q=8, seqlen_q=2048,
                                             attn_mask_type="causal", training=False)),
    ("fp16_d128_causal_train", AttentionSpec(dtype="fp16", head_dim_qk=128, num_heads_q=32, seqlen_q=4096,
                                             attn_mask_type="causal")),
)
