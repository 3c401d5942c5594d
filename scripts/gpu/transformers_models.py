"""On a GPU node: tiny transformers models with attn_implementation="fa4doctor" in bf16 on CUDA.

For a Llama, a Qwen2 (GQA, sliding layers), a Gemma-2 (softcap, alternating windows) and a GPT-OSS
(sinks, alternating windows) built from configs (no download): the dispatch counters per backend
(FA4 for the layers it serves, fallbacks with their reason), any refused layer by name, logits
against "eager" in float32 on the same weights and batch (left and right padding), and one
training step's time beside attn_implementation="sdpa" measured in the same run. A Llama at head
dim 72 shows a refused FA4 backward falling back with its reason. Keep its output under
docs/validation/ (docs/transformers.md).

    python scripts/gpu/transformers_models.py | tee docs/validation/<node>/transformers-models.txt
    PARTS=models MODELS=llama,qwen2 python scripts/gpu/transformers_models.py   (some parts, some models)
"""

from __future__ import annotations

import time

import torch

TINY = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
            intermediate_size=512, max_position_embeddings=4096)
# name -> (transformers model_type, config overrides). llama-d72: head dim 72, where FA4's SM90
# backward is refused (known bug fa4-sm90-dq-head-dim): its training calls must fall back, named.
MODELS = {
    "llama": ("llama", {}),
    "llama-d72": ("llama", dict(hidden_size=288)),
    "qwen2": ("qwen2", dict(use_sliding_window=True, sliding_window=256, max_window_layers=1)),
    "gemma2": ("gemma2", dict(head_dim=64, sliding_window=256, query_pre_attn_scalar=64, attn_logit_softcapping=50.0)),
    "gpt_oss": ("gpt_oss", dict(head_dim=64, sliding_window=128, num_local_experts=4, num_experts_per_tok=2)),
}
BATCH, SEQ, STEPS = 4, 1024, 10
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only to try the script out


def _model(name: str, implementation: str, dtype: torch.dtype, like=None):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model_type, overrides = MODELS[name]
    config = AutoConfig.for_model(model_type, **{**TINY, **overrides})
    model = AutoModelForCausalLM.from_config(config, attn_implementation=implementation, dtype=dtype).to(DEVICE)
    if like is not None:
        model.load_state_dict({k: v.to(dtype) for k, v in like.state_dict().items()})
    return model.train()


def _batch():
    ids = torch.randint(0, TINY["vocab_size"], (BATCH, SEQ), device=DEVICE,
                        generator=torch.Generator(DEVICE).manual_seed(1))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long, device=DEVICE)
    mask[0, : SEQ // 4] = 0  # left padding
    mask[1, -SEQ // 8:] = 0  # right padding
    return ids, mask


def _labels(ids, mask):
    """No loss where the token or the one predicting it (labels shift by one) is padding: a padded
    query attends to nothing, and what fills its row is each implementation's own (eager: uniform)."""
    pad = mask == 0
    pad[:, 1:] |= pad[:, :-1].clone()
    return ids.masked_fill(pad, -100)


def _counts() -> dict[str, float]:
    from prometheus_client import REGISTRY

    found = {}
    for metric in REGISTRY.collect():
        if metric.name.startswith("fa4doctor_"):
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    found[f"{sample.name}{sample.labels}"] = sample.value
    return found


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _step_seconds(model, padded: bool = True) -> float:
    ids, mask = _batch()
    mask = mask if padded else torch.ones_like(mask)
    for _ in range(2):  # warm-up: FA4 compiles its kernels on the first call of a shape
        model(input_ids=ids, attention_mask=mask, labels=_labels(ids, mask)).loss.backward()
    _sync()
    started = time.perf_counter()
    for _ in range(STEPS):
        model(input_ids=ids, attention_mask=mask, labels=_labels(ids, mask)).loss.backward()
    _sync()
    return (time.perf_counter() - started) / STEPS


def _grads(model, ids, mask) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, attention_mask=mask, labels=_labels(ids, mask)).loss.backward()
    return torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])


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
    error = lambda got, want: ((got - want).norm() / want.norm()).item()  # noqa: E731
    want_g = _grads(reference, ids, mask)
    ours_g = _grads(ours, ids, mask)
    after = _counts()
    counted = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    # bf16 itself (eager, same weights) against float32: the floor no bf16 attention can beat
    floor = _model(model_type, "eager", torch.bfloat16, like=reference)
    with torch.no_grad():
        floor_logits = floor(input_ids=ids, attention_mask=mask).logits.float()
    print(f"{model_type}: relative L2 error against eager float32 on the same weights and batch (bf16 eager's own "
          f"in brackets): logits {error(got[keep], want[keep]):.2e} [{error(floor_logits[keep], want[keep]):.2e}], "
          f"every parameter's gradient {error(ours_g, want_g):.2e} [{error(_grads(floor, ids, mask), want_g):.2e}]")
    for name, value in sorted(counted.items()):
        print(f"  {name} += {value:g}")
    times = {"fa4doctor": _step_seconds(ours), "eager": _step_seconds(floor)}
    try:
        times["sdpa"] = _step_seconds(_model(model_type, "sdpa", torch.bfloat16, like=reference))
    except ValueError as exc:  # transformers refuses sdpa for some architectures (gemma2, gpt_oss in 5.23)
        print(f"  sdpa not run: {str(exc).split('.')[0]}")
    print(f"  training step, bf16 (batch {BATCH} x {SEQ}): " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in times.items()))
    unpadded = {"fa4doctor": _step_seconds(ours, padded=False), "eager": _step_seconds(floor, padded=False)}
    print("  the same without padding: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in unpadded.items()))


def run_compiled(model_type: str) -> None:
    """The same model under torch.compile (inductor): each attention layer one custom op, so no graph
    break per layer; its backward recomputes the forward through the same plan."""
    import torch._dynamo

    reference = _model(model_type, "eager", torch.float32)
    ours = _model(model_type, "fa4doctor", torch.bfloat16, like=reference)
    ids, mask = _batch()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(ours)(input_ids=ids, attention_mask=mask)
    compiled = torch.compile(ours)
    started = time.perf_counter()
    want_g, got_g = _grads(reference, ids, mask), _grads(compiled, ids, mask)
    first = time.perf_counter() - started
    error = ((got_g - want_g).norm() / want_g.norm()).item()
    print(f"{model_type} under torch.compile: {explained.graph_break_count} graph breaks, {explained.graph_count} "
          f"graphs; every parameter's gradient against eager float32 {error:.2e}; first step {first:.1f} s "
          f"(compiles); training step {_step_seconds(compiled) * 1e3:.2f} ms")
    for reason in explained.break_reasons:
        frame = reason.user_stack[-1] if reason.user_stack else None
        where = f" at {frame.filename.rsplit('/', 2)[-2:]}:{frame.lineno}" if frame else ""
        print(f"  break: {reason.reason.splitlines()[0][:160]}{where}")


def profile_padded(model_type: str) -> None:
    """Where a padded training step's host time goes (the dispatcher's varlen path against sdpa)."""
    from torch.profiler import ProfilerActivity, profile

    reference = _model(model_type, "eager", torch.float32)
    for implementation in ("fa4doctor", "sdpa"):
        model = _model(model_type, implementation, torch.bfloat16, like=reference)
        _step_seconds(model)
        ids, mask = _batch()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(input_ids=ids, attention_mask=mask, labels=_labels(ids, mask)).loss.backward()
            _sync()
        print(f"{model_type} {implementation}, one padded training step, by self CPU time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


def main() -> None:
    import transformers

    import fa4doctor.integrations.transformers as fa4doctor_hf

    fa4doctor_hf.register()
    from importlib.metadata import PackageNotFoundError, version

    try:
        fa4 = version("flash-attn-4")
    except PackageNotFoundError:
        fa4 = "not installed"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, flash-attn-4 {fa4}, "
          f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU'}; batch {BATCH} x {SEQ} tokens, row 0 left-padded by {SEQ // 4}, "
          f"row 1 right-padded by {SEQ // 8}")
    import os

    parts = os.environ.get("PARTS", "models,compiled,profile").split(",")
    only = [m for m in os.environ.get("MODELS", "").split(",") if m]  # say, MODELS=llama,qwen2
    for model_type in (only or MODELS) if "models" in parts else ():
        run(model_type)
    if "compiled" in parts:
        run_compiled("llama")
    if "profile" in parts and DEVICE == "cuda":
        profile_padded("llama")


if __name__ == "__main__":
    main()
