"""`fa4doctor.models`: the shipped example configs read into the calls their published architectures
make, the same with and without transformers, and refusals that name what is missing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fa4doctor.dispatch.spec import SpecError
from fa4doctor.models import UNDERSTOOD, layers_text, load_model, model_calls, read_model

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"
EXAMPLES = sorted(p.name for p in MODELS.iterdir() if (p / "config.json").is_file())

# Published facts (examples/models/README.md cites each config): per layer kind, q/kv heads,
# q·k and v head dims, the layers of that kind, transformers' sliding window, softcap, sink, scale.
YARN_40 = (0.1 * math.log(40) + 1) ** 2  # DeepSeek-V3 rope_scaling: factor 40, mscale_all_dim 1
EXPECTED = {
    "llama-3-8b": {"full": (32, 8, 128, 128, range(0, 32), None, 0.0, False, 128 ** -0.5)},
    "qwen2.5-7b": {"full": (28, 4, 128, 128, range(0, 28), None, 0.0, False, 128 ** -0.5)},
    "mistral-7b-v0.1": {"sliding": (32, 8, 128, 128, range(0, 32), 4096, 0.0, False, 128 ** -0.5)},
    "gemma-2-9b": {"sliding": (16, 8, 256, 256, range(0, 42, 2), 4096, 50.0, False, 256 ** -0.5),
                   "full": (16, 8, 256, 256, range(1, 42, 2), None, 50.0, False, 256 ** -0.5)},
    "deepseek-v3": {"full": (128, 128, 192, 128, range(0, 61), None, 0.0, False, 192 ** -0.5 * YARN_40)},
    "gpt-oss-20b": {"sliding": (64, 8, 64, 64, range(0, 24, 2), 128, 0.0, True, 64 ** -0.5),
                    "full": (64, 8, 64, 64, range(1, 24, 2), None, 0.0, True, 64 ** -0.5)},
}


def _facts(call):
    s = call.spec
    window = s.window_size[0] + 1 if s.window_size[0] >= 0 else None
    return (s.num_heads_q, s.num_heads_kv, s.head_dim_qk, s.head_dim_v, call.layers, window, s.softcap,
            s.learnable_sink, call.scale)


@pytest.mark.parametrize("use_transformers", [False, None], ids=["json", "autoconfig"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_derive_their_published_attention(name, use_transformers):
    calls = model_calls(load_model(MODELS / name, use_transformers=use_transformers), seqlen=8192)
    assert [c.phase for c in calls] == sorted((c.phase for c in calls), key=("train", "prefill", "decode").index)
    for call in calls:
        heads_q, heads_kv, qk, v, layers, window, softcap, sink, scale = EXPECTED[name][call.kind]
        found = _facts(call)
        assert found[:4] == (heads_q, heads_kv, qk, v) and found[4] == tuple(layers)
        assert found[5:8] == (window, softcap, sink) and found[8] == pytest.approx(scale)
        decode = call.phase == "decode"
        assert call.spec.training is (call.phase == "train")
        assert call.spec.attn_mask_type.value == ("causal_bottom_right" if decode else "causal")
        assert (call.spec.seqlen_q, call.spec.seqlen_kv) == ((1, min(8192, window or 8192)) if decode else (8192, 8192))
    assert len(calls) == 3 * len(EXPECTED[name])


def test_transformers_reads_the_examples_as_the_json_reader_does():
    pytest.importorskip("transformers")
    for name in EXAMPLES:
        with_it, without = (model_calls(load_model(MODELS / name, use_transformers=u)) for u in (None, False))
        assert with_it == without, name
        assert load_model(MODELS / name).reader.startswith("transformers ")


def test_a_config_file_or_its_folder():
    assert load_model(MODELS / "llama-3-8b" / "config.json", use_transformers=False).layers == \
        load_model(MODELS / "llama-3-8b", use_transformers=False).layers


def _base(**fields):
    return {"model_type": "qwen2", "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
            "hidden_size": 256, **fields}


def test_qwen2_slides_from_max_window_layers_on_only_when_asked():
    on = read_model(_base(use_sliding_window=True, sliding_window=64, max_window_layers=2), use_transformers=False)
    assert [(l.kind, l.window) for l in on.layers] == [("full", None)] * 2 + [("sliding", 64)] * 2
    off = read_model(_base(sliding_window=64, max_window_layers=2), use_transformers=False)
    assert {l.window for l in off.layers} == {None}


def test_an_explicit_head_dim_wins_over_hidden_over_heads():
    model = read_model(_base(model_type="llama", head_dim=128), use_transformers=False)
    assert model.layers[0].head_dim_qk == 128 and model.layers[0].scale == 128 ** -0.5


@pytest.mark.parametrize("cfg, words", [
    ({"model_type": "mamba2", "hidden_size": 768, "num_hidden_layers": 24},
     ["'mamba2'", "not understood", "num_attention_heads, num_key_value_heads", "gemma2", "gpt_oss"]),
    ({"hidden_size": 768}, ["model_type", "names no model_type"]),
    (_base(model_type="gemma2", head_dim=64), ["gemma2", "query_pre_attn_scalar", "attn_logit_softcapping",
                                               "sliding_window"]),
    (_base(model_type="deepseek_v3"), ["qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"]),
    (_base(model_type="mistral"), ["sliding_window"]),
    (_base(num_key_value_heads=3), ["num_key_value_heads", "does not divide"]),
    (_base(layer_types=["full_attention"] * 3 + ["chunked_attention"]), ["layer 3", "chunked_attention"]),
])
def test_what_cannot_be_read_is_refused_by_name(cfg, words):
    with pytest.raises(SpecError) as caught:
        read_model(cfg, "config.json", use_transformers=False)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_understood_types_are_listed():
    assert UNDERSTOOD == ("deepseek_v3", "gemma2", "gpt_oss", "llama", "mistral", "qwen2")


def test_layer_lists_read_short():
    assert layers_text(tuple(range(1, 42, 2))) == "1-41/2 (21)"


def test_the_modules_transformers_builds_agree(tmp_path):
    """The per-layer facts against the attention modules transformers itself builds from the same
    tiny configs (on the meta device: no weights)."""
    transformers = pytest.importorskip("transformers")
    import torch

    tiny = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                intermediate_size=96)
    configs = {"llama": {}, "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
               "gemma2": dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=24, attn_logit_softcapping=5.0),
               "gpt_oss": dict(head_dim=16, sliding_window=4, num_local_experts=4, num_experts_per_tok=2),
               "mistral": dict(sliding_window=4),
               "deepseek_v3": dict(qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, kv_lora_rank=16,
                                   q_lora_rank=24, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
                                   topk_group=1, rope_scaling={"type": "yarn", "factor": 40, "mscale_all_dim": 1.0,
                                                               "original_max_position_embeddings": 16})}
    for model_type, extra in configs.items():
        cfg = {"model_type": model_type, **tiny, **extra}
        with torch.device("meta"):
            built = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
        for layer, module in zip(read_model(json.loads(json.dumps(cfg))).layers, built.model.layers):
            attn = module.self_attn
            assert layer.scale == pytest.approx(attn.scaling), model_type
            assert layer.window == getattr(attn, "sliding_window", getattr(attn.config, "sliding_window", None)), \
                model_type
            assert layer.softcap == float(getattr(attn, "attn_logit_softcapping", None) or 0.0)
            assert layer.sink == hasattr(attn, "sinks")
