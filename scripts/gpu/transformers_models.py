"""On a GPU node: tiny transformers models with attn_implementation="fa4doctor" in bf16 on CUDA.

For a Llama, a Qwen2 (GQA, sliding layers), a Gemma-2 (softcap, alternating windows) and a GPT-OSS
(sinks, alternating windows) built from configs (no download): the dispatch counters per backend
(FA4 for the layers it serves, fallbacks with their reason), any refused layer by name, logits
against "eager" in float32 on the same weights and batch (left and right padding), and one
training step's time beside attn_implementation="sdpa" measured in the same run. Not yet run; keep
its output under docs/validation/ (docs/transformers.md).

    python scripts/gpu/transformers_models.py | tee docs/validation/<node>/transformers-models.txt
"""

from __future__ import annotations

import time

import torch

TINY = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
            intermediate_size=512, max_position_embeddings=4096)
MODELS = {
    "llama": {},
    "qwen2": dict(use_sliding_window=True, sliding_window=256, max_window_layers=1),
    "gemma2": dict(head_dim=64, sliding_window=256, query_pre_attn_scalar=64, attn_logit_softcapping=50.0),
    "gpt_oss": dict(head_dim=64, sliding_window=128, num_local_experts=4, num_experts_per_tok=2),
}
BATCH, SEQ, STEPS = 4, 1024, 10


def _model(model_type: str, implementation: str, dtype: torch.dtype, like=None):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **MODELS[model_type])
    model = AutoModelForCausalLM.from_config(config, attn_implementation=implementation, dtype=dtype).cuda()
    if like is not None:
        model.load_state_dict({k: v.to(dtype) for k, v in like.state_dict().items()})
    return model.train()


def _batch():
    ids = torch.randint(0, TINY["vocab_size"], (BATCH, SEQ), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(1))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long, device="cuda")
    mask[0, : SEQ // 4] = 0  # left padding
    mask[1, -SEQ // 8:] = 0  # right padding
    return ids, mask


def _counts() -> dict[str, float]:
    from prometheus_client import REGISTRY

    found = {}
    for metric in REGISTRY.collect():
        if metric.name.startswith("fa4doctor_"):
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    found[f"{sample.name}{sample.labels}"] = sample.value
    return found


def _step_seconds(model) -> float:
    ids, mask = _batch()
    for _ in range(2):  # warm-up: FA4 compiles its kernels on the first call of a shape
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(STEPS):
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / STEPS


def run(model_type: str) -> None:
    from fa4doctor.integrations.transformers import AttentionRefused

    before = _counts()
    reference = _model(model_type, "eager", torch.float32)
    ours = _model(model_type, "fa4doctor", torch.bfloat16, like=reference)
    ids, mask = _batch()
    try:
        with torch.no_grad():
            got = ours(input_ids=ids, attention_mask=mask).logits.float()
    except AttentionRefused as refused:
        print(f"{model_type}: refused: {refused}")
        return
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    error = ((got - want)[keep].norm() / want[keep].norm()).item()
    after = _counts()
    counted = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    print(f"{model_type}: relative L2 error of the logits vs eager float32: {error:.2e} (bf16 tolerance 2e-2)")
    for name, value in sorted(counted.items()):
        print(f"  {name} += {value:g}")
    fa4doctor_s = _step_seconds(ours)
    try:
        sdpa = f"{_step_seconds(_model(model_type, 'sdpa', torch.bfloat16, like=reference)) * 1e3:.2f} ms"
    except ValueError as exc:  # transformers' sdpa refuses softcap (integrations/sdpa_attention.py:108-111)
        sdpa = f"not run ({exc})"
    print(f"  training step (batch {BATCH} x {SEQ}): fa4doctor {fa4doctor_s * 1e3:.2f} ms, sdpa {sdpa}")


def main() -> None:
    import transformers

    import fa4doctor.integrations.transformers as fa4doctor_hf

    fa4doctor_hf.register()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    for model_type in MODELS:
        run(model_type)


if __name__ == "__main__":
    main()
