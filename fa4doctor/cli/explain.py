"""`fa4doctor explain`: which backend runs one attention call, and why every other one does not."""

from __future__ import annotations

import json
import sys

import click

from fa4doctor.cli._common import EXIT_OK, EXIT_PROBLEMS, handle_errors, load_env_option, load_ledger_file
from fa4doctor.dispatch.spec import AttentionSpec, Dtype, MaskType, QkvFormat, SpecError

# AttentionSpec field -> the flag that sets it, so a SpecError names what the user typed.
_FLAG_OF = {"dtype": "--dtype", "head_dim_qk": "--head-dim/--head-dim-qk", "head_dim_v": "--head-dim-v",
            "num_heads_q": "--heads", "num_heads_kv": "--heads", "seqlen_q": "--seqlen-q",
            "seqlen_kv": "--seqlen-kv", "attn_mask_type": "--mask", "window_size": "--window",
            "dropout_p": "--dropout", "softcap": "--softcap", "qkv_format": "--format",
            "num_splits": "--num-splits", "device": "--device"}
_SHAPE_FLAGS = ("dtype", "head_dim", "head_dim_qk", "head_dim_v", "heads", "seqlen_q", "seqlen_kv", "mask",
                "window", "dropout", "softcap", "alibi", "deterministic", "training", "qkv_format",
                "learnable_sink", "num_splits", "varlen", "device")

EPILOG = """\b
Examples:
  fa4doctor explain --head-dim 128 --heads 32/8 --mask causal
  fa4doctor explain --env examples/h100-fa4-b36.json --head-dim-qk 192 --head-dim-v 128 --heads 16/4
  fa4doctor explain --env examples/a100-fa2-2.8.3.json --mask causal --seqlen-q 128 --seqlen-kv 512
  FA4DOCTOR_DISABLE=fa4 fa4doctor explain --env examples/h100-fa3-fa4.json --json
  fa4doctor explain --spec examples/specs/llama-3-8b.json --env examples/h100-fa4-b36.json
  fa4doctor explain --model examples/models/gemma-2-9b --env examples/h100-fa4-b36.json

\b
Exit status: 0 the preferred backend runs every spec; 3 some spec falls back (or the forced
backend cannot run it); 2 bad input; 1 fa4doctor failed.
Policy variables: FA4DOCTOR_BACKEND (force one), FA4DOCTOR_DISABLE (comma-separated),
FA4DOCTOR_STRICT=1 (no fallback), FA4DOCTOR_POLICY=priority|fastest (fastest: the vetted
backend `fa4doctor bench` measured fastest here; explain then shows the figures).
"""


def _heads(text: str) -> tuple[int, int | None]:
    parts = text.split("/")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise click.BadParameter(f"expected N or Q/KV (e.g. 16 or 32/8), got {text!r}", param_hint="--heads")
    return numbers[0], (numbers[1] if len(numbers) == 2 else None)


def _window(text: str | None) -> tuple[int, int]:
    if text is None:
        return (-1, -1)
    try:
        left, right = (int(p) for p in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected L,R with -1 for an unbounded side (e.g. 128,0), got {text!r}",
                                 param_hint="--window") from None
    return (left, right)


def _spec_from_flags(o: dict) -> AttentionSpec:
    if o["head_dim"] is not None and (o["head_dim_qk"] is not None or o["head_dim_v"] is not None):
        raise click.UsageError("--head-dim cannot be combined with --head-dim-qk/--head-dim-v")
    head_dim_qk = o["head_dim"] if o["head_dim"] is not None else o["head_dim_qk"]
    heads_q, heads_kv = _heads(o["heads"])
    try:
        return AttentionSpec(
            dtype=o["dtype"], head_dim_qk=128 if head_dim_qk is None else head_dim_qk,
            head_dim_v=o["head_dim_v"], num_heads_q=heads_q, num_heads_kv=heads_kv, seqlen_q=o["seqlen_q"],
            seqlen_kv=o["seqlen_kv"], attn_mask_type=o["mask"], window_size=_window(o["window"]),
            dropout_p=o["dropout"], softcap=o["softcap"], alibi=o["alibi"], deterministic=o["deterministic"],
            training=o["training"], qkv_format=o["qkv_format"], learnable_sink=o["learnable_sink"],
            num_splits=o["num_splits"], varlen=o["varlen"], device=o["device"])
    except SpecError as exc:
        flag = _FLAG_OF.get(exc.field, exc.field)
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint=flag) from None


def _specs(ctx: click.Context, options: dict) -> list[tuple[str, AttentionSpec]]:
    if options["spec_file"] is None:
        return [("flags", _spec_from_flags(options))]
    given = [name for name in _SHAPE_FLAGS
             if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--spec cannot be combined with --{given[0].replace('_', '-')}; "
                               "put the field in the spec file")
    from fa4doctor.dispatch.spec import load_specs

    specs = load_specs(options["spec_file"])
    if not specs:
        raise SpecError("spec", f"{options['spec_file']} holds no specs")
    return specs


# Flags that still mean something beside --model: the call's dtype, sequence length and device.
_MODEL_FLAGS = ("dtype", "seqlen_q", "device")


def _model_calls(ctx: click.Context, options: dict):
    """(ModelAttention, its calls) for --model, or None; a shape flag beside it is a usage error."""
    if options["model"] is None:
        return None
    given = [name for name in (*_SHAPE_FLAGS, "spec_file") if name not in _MODEL_FLAGS
             and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--model cannot be combined with --{given[0].replace('_file', '').replace('_', '-')}; "
                               "the model config says the call (only --dtype, --seqlen-q and --device apply)")
    from fa4doctor.models import load_model, model_calls

    def flag(name):
        return options[name] if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE else None

    model = load_model(options["model"])
    return model, model_calls(model, seqlen=flag("seqlen_q"), dtype=flag("dtype"), device=options["device"])


def _environment(env_file: str | None, ledger_file: str | None):
    if env_file is not None:
        env, source = load_env_option(env_file), env_file
    else:
        from fa4doctor.probe.gather import gather_environment  # the probe: this machine's facts

        env, source = gather_environment(), "this machine"
    if ledger_file is not None:
        read = load_ledger_file(ledger_file)
        if read.speed_problem:  # its smoke evidence still counts; FA4DOCTOR_POLICY=fastest decides without figures
            click.echo(f"fa4doctor explain: {read.speed_problem}", err=True)
        env = env.with_ledger(read.entries, read.speed)
    return env, source


def _check_gpu(env, gpu: int) -> None:
    known = sorted(g.cuda_index for g in env.gpus if g.cuda_index is not None)
    if known and gpu not in known:
        raise click.BadParameter(f"no CUDA device {gpu} in this environment (valid: "
                                 f"{', '.join(map(str, known))})", param_hint="--gpu")


def _explain_one(name: str, spec: AttentionSpec, env, policy, gpu: int):
    from fa4doctor.dispatch.backends.sdpa import kernels
    from fa4doctor.dispatch.selection import decide
    from fa4doctor.exporters.explain_view import Explanation

    decision = decide(spec, env, policy, gpu)
    code, message = (EXIT_OK if decision.summary is None else EXIT_PROBLEMS), decision.summary
    return Explanation(name, spec, decision, kernels(spec, env, gpu, policy.disabled), code, message)


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dtype", type=click.Choice([d.value for d in Dtype]), default="bf16", show_default=True)
@click.option("--head-dim", type=int, help="Head dim of q, k and v (default 128).")
@click.option("--head-dim-qk", type=int, help="Head dim of q and k, when v differs (MLA).")
@click.option("--head-dim-v", type=int, help="Head dim of v (default: the q/k head dim).")
@click.option("--heads", default="16", show_default=True, help="Query heads N, or Q/KV for GQA/MQA.")
@click.option("--seqlen-q", type=int, default=1024, show_default=True)
@click.option("--seqlen-kv", type=int, help="Key/value length (default: --seqlen-q).")
@click.option("--mask", type=click.Choice([m.value for m in MaskType]), default="no_mask", show_default=True,
              help="TransformerEngine attn_mask_type; 'causal' is top-left aligned.")
@click.option("--window", metavar="L,R", help="Sliding window, -1 for an unbounded side (FA2/TE convention).")
@click.option("--dropout", type=float, default=0.0, show_default=True)
@click.option("--softcap", type=float, default=0.0, show_default=True)
@click.option("--alibi", is_flag=True, help="ALiBi slopes.")
@click.option("--learnable-sink", is_flag=True, help="A learnable attention sink.")
@click.option("--deterministic", is_flag=True, help="A deterministic backward pass.")
@click.option("--training/--inference", default=True, show_default=True, help="Gradients needed or not.")
@click.option("--format", "qkv_format", type=click.Choice([f.value for f in QkvFormat]), default="bshd",
              show_default=True)
@click.option("--varlen", is_flag=True, help="Variable-length (packed) sequences.")
@click.option("--num-splits", type=int, default=1, show_default=True)
# Off CUDA only SDPA runs, alike on every device type (AttentionSpec.on_cuda), so cpu stands for
# them all; a free string let `--device tpu` through as if it meant something.
@click.option("--device", type=click.Choice(("cuda", "cpu")), default="cuda", show_default=True,
              help="Where the tensors live: cuda, or cpu for any other device (only SDPA runs off CUDA).")
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
              help="JSON file of AttentionSpec fields: one object, a list, or {\"specs\": [...]}.")
@click.option("--model", type=click.Path(), help="A transformers config.json, or a model folder holding one: "
              "judge every distinct attention call the model makes (train, prefill, decode).")
@click.option("--env", "env_file", type=click.Path(dir_okay=False),
              help="Environment snapshot (check --json output); default: probe this machine.")
@click.option("--ledger", "ledger_file", type=click.Path(dir_okay=False),
              help="Vetting ledger whose entries (and speed records) replace the environment's.")
@click.option("--gpu", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA ordinal.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
@handle_errors
def explain(ctx: click.Context, **options) -> None:
    """Which backend runs one attention call, and why every other one does not.

    Describe the call with flags or --spec FILE; decide on this machine or on --env FILE.
    """
    from fa4doctor.dispatch.policy import Policy
    from fa4doctor.exporters.explain_view import environment_text, render_report, report_to_plain

    policy = Policy.from_env()
    model = _model_calls(ctx, options)
    specs = [(call.name, call.spec) for call in model[1]] if model else _specs(ctx, options)
    env, source = _environment(options["env_file"], options["ledger_file"])
    _check_gpu(env, options["gpu"])
    items = [_explain_one(name, spec, env, policy, options["gpu"]) for name, spec in specs]
    exit_code = max(item.exit_code for item in items)
    env_text = environment_text(env, options["gpu"], source)
    if options["as_json"]:
        plain = report_to_plain(items, policy, env_text, exit_code)
        if model:
            from fa4doctor.exporters.model_view import model_to_plain

            plain["model"] = model_to_plain(*model)
        click.echo(json.dumps(plain, indent=2))
    else:
        if model:
            from fa4doctor.exporters.model_view import render_model_calls

            render_model_calls(*model, sys.stdout)
        render_report(items, policy, env_text, sys.stdout)
    for item in items:  # errors of the policy, not ordinary fallbacks, also go to stderr
        if item.decision.outcome in ("forced_not_eligible", "no_backend"):
            click.echo(f"{item.name}: {item.message}", err=True)
    ctx.exit(exit_code)
