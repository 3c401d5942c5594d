"""What every backend shares: capability data, and one generic checker that walks it.

A backend is a class that is never instantiated: its capabilities are class attributes, and
`not_supported_reasons(spec, env, gpu)` returns every reason it cannot run a call. Subclasses
append their special cases in `special_reasons`.
"""

from __future__ import annotations

from typing import ClassVar

from fa4doctor.dispatch.known_bugs import known_bugs
from fa4doctor.dispatch.reasons import BackendName, Reason, ReasonCode
from fa4doctor.dispatch.semantics import fa_mask
from fa4doctor.dispatch.spec import AttentionSpec, Dtype, MaskType
from fa4doctor.dispatch.versions import at_least, below, parse
from fa4doctor.dispatch.vetting import evidence, ledger_failures
from fa4doctor.environment import USABLE_IMPORTS, Environment, GpuFacts

R = ReasonCode

# Feature flags a spec can ask for, with the reason code that refuses each one.
FEATURE_FLAGS: tuple[tuple[str, str, ReasonCode], ...] = (
    ("dropout", "dropout", R.DROPOUT_UNSUPPORTED),
    ("alibi", "ALiBi", R.ALIBI_UNSUPPORTED),
    ("bias", "an additive bias", R.BIAS_UNSUPPORTED),
    ("kv_cache", "a KV cache", R.KV_CACHE_UNSUPPORTED),
    ("paged_kv", "a paged KV cache", R.KV_CACHE_UNSUPPORTED),
    ("context_parallel", "context parallelism", R.CONTEXT_PARALLEL_UNSUPPORTED),
    ("softcap", "softcap", R.SOFTCAP_UNSUPPORTED),
    ("learnable_sink", "a learnable sink", R.SINK_UNSUPPORTED),
    ("window", "a sliding window", R.WINDOW_UNSUPPORTED),
    ("deterministic", "a deterministic backward", R.DETERMINISTIC_UNSUPPORTED),
)


def _uses(spec: AttentionSpec, feature: str) -> bool:
    if feature == "dropout":
        return spec.dropout_p > 0
    if feature == "softcap":
        return spec.softcap > 0
    if feature == "window":
        return spec.has_window
    if feature == "deterministic":
        return spec.deterministic and spec.training
    return bool(getattr(spec, feature))


def cc_text(gpu: GpuFacts) -> str:
    return f"{gpu.name} (compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]})"


class Backend:
    NAME: ClassVar[BackendName]
    DISTRIBUTIONS: ClassVar[tuple[str, ...]] = ()
    OBSOLETE_DISTRIBUTIONS: ClassVar[tuple[str, ...]] = ()  # old names that still provide it
    GENERATION: ClassVar[int | None] = None  # the version's major number must be this
    MIN_VERSION: ClassVar[str | None] = None
    MAX_VERSION: ClassVar[str | None] = None  # exclusive
    RECOMMENDED_VERSION: ClassVar[str | None] = None
    NEEDS_CUDA: ClassVar[bool] = True
    FWD_ARCH_MAJORS: ClassVar[frozenset[int]] = frozenset()
    BWD_ARCH_MAJORS: ClassVar[frozenset[int]] = frozenset()
    EXPERIMENTAL_ARCH_MAJORS: ClassVar[frozenset[int]] = frozenset()
    DTYPES: ClassVar[frozenset[Dtype]] = frozenset({Dtype.FP16, Dtype.BF16})
    # Feature name -> minimum version that has it ("" = every supported version); absent = never.
    FEATURES: ClassVar[dict[str, str]] = {}
    ARBITRARY_MASK: ClassVar[bool] = False
    BOTTOM_RIGHT_CAUSAL: ClassVar[bool] = True
    NEGATIVE_WINDOWS_SINCE: ClassVar[str | None] = None  # reads a negative window side literally
    # A smoke failure in the ledger refuses the backend; the last resort only gets an advisory,
    # since refusing it would leave the call with nothing to run on.
    LEDGER_BLOCKS: ClassVar[bool] = True

    @classmethod
    def not_supported_reasons(cls, spec: AttentionSpec, env: Environment, gpu: int = 0) -> list[Reason]:
        """Every reason this backend cannot run `spec` on GPU `gpu` (a CUDA ordinal) of `env`."""
        reasons = cls.install_reasons(env)
        device = cls.device_reasons(spec, env, gpu)
        reasons += device
        facts = env.gpu(gpu) if spec.on_cuda else None
        reasons += cls.dtype_reasons(spec)
        reasons += cls.feature_reasons(spec, env)
        reasons += cls.mask_reasons(spec, env)
        if facts is not None and not device:
            reasons += cls.special_reasons(spec, env, facts)
            reasons += cls.known_bug_reasons(spec, env, facts)[0]
            if cls.LEDGER_BLOCKS:
                reasons += ledger_failures(cls.NAME, spec, env, facts)
        return reasons

    @classmethod
    def advisories(cls, spec: AttentionSpec, env: Environment, gpu: int = 0) -> list[Reason]:
        """Non-blocking notes: an old beta, an experimental architecture."""
        notes = []
        install = env.backend(cls.NAME)
        if install and cls.RECOMMENDED_VERSION and parse(install.version) is not None \
                and not at_least(install.version, cls.RECOMMENDED_VERSION):
            notes.append(Reason(R.VERSION_BELOW_RECOMMENDED, f"{install.distribution} {install.version} is "
                                f"below the recommended {cls.RECOMMENDED_VERSION}"))
        facts = env.gpu(gpu) if spec.on_cuda else None
        if facts and facts.compute_capability[0] in cls.EXPERIMENTAL_ARCH_MAJORS:
            notes.append(Reason(R.EXPERIMENTAL_ARCH, f"{cls.NAME.value} on {cc_text(facts)} is experimental"))
        if facts and not cls.LEDGER_BLOCKS:
            notes += ledger_failures(cls.NAME, spec, env, facts)
        if facts and not cls.device_reasons(spec, env, gpu):
            notes += cls.known_bug_reasons(spec, env, facts)[1]
        return notes

    @classmethod
    def known_bug_reasons(cls, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> tuple[list[Reason], list[Reason]]:
        """(refusals, lifted): each known bug of this call (dispatch/known_bugs.py) is refused
        unless this node's ledger proves the call's exact class in the bug's direction."""
        bugs = known_bugs(cls.NAME, spec, gpu.compute_capability[0], cls.version(env))
        if not bugs:
            return [], []
        proven = {found.direction: found.passed for found in evidence(cls.NAME, spec, env, gpu) if found.proven}
        refused, lifted = [], []
        for bug in bugs:
            entry = proven.get(bug.direction)
            if entry is None:
                refused.append(Reason(bug.code, bug.text()))
            else:
                lifted.append(Reason(R.KNOWN_BUG_LIFTED, f"{bug.id} is lifted on this node: smoke case "
                                     f"{entry.case} ({entry.direction}) passed, recorded {entry.recorded_at}"))
        return refused, lifted

    @classmethod
    def negative_windows(cls, version: str | None) -> bool:
        """Whether this version reads a negative window side literally (the rules and the adapter agree)."""
        return cls.NEGATIVE_WINDOWS_SINCE is not None and at_least(version, cls.NEGATIVE_WINDOWS_SINCE)

    # --- the generic checks, each walking one piece of capability data ---------------------------

    @classmethod
    def version(cls, env: Environment) -> str | None:
        install = env.backend(cls.NAME)
        return install.version if install else None

    @classmethod
    def has_version(cls, env: Environment, minimum: str) -> bool:
        return minimum == "" or at_least(cls.version(env), minimum)

    @classmethod
    def install_reasons(cls, env: Environment) -> list[Reason]:
        install = env.backend(cls.NAME)
        if install is None or not install.installed:
            names = " or ".join(cls.DISTRIBUTIONS)
            return [Reason(R.NOT_INSTALLED, f"no {names} distribution is installed")]
        reasons = cls.version_reasons(install.distribution or cls.DISTRIBUTIONS[0], install.version)
        if install.import_status not in USABLE_IMPORTS:
            message = (install.import_error or "").strip().splitlines()
            reasons.append(Reason(R.IMPORT_FAILED, f"import failed ({install.import_status.value})"
                                  + (f": {message[-1]}" if message else "")))
        return reasons

    @classmethod
    def version_reasons(cls, distribution: str, text: str | None) -> list[Reason]:
        version = parse(text)
        if version is None:
            return [Reason(R.VERSION_INVALID, f"{distribution} version {text!r} is not a PEP 440 version")]
        if cls.GENERATION is not None and version.major != cls.GENERATION:
            return [Reason(R.VERSION_WRONG_GENERATION, f"{distribution} {text} is not a "
                           f"{cls.GENERATION}.x release, so it is not {cls.NAME.value}")]
        if cls.MIN_VERSION and not at_least(text, cls.MIN_VERSION):
            return [Reason(R.VERSION_TOO_OLD, f"{distribution} {text} is older than the minimum {cls.MIN_VERSION}")]
        if cls.MAX_VERSION and not below(text, cls.MAX_VERSION):
            return [Reason(R.VERSION_TOO_NEW, f"{distribution} {text} is not below {cls.MAX_VERSION}, "
                           "the first version these rules have not been checked against")]
        return []

    @classmethod
    def device_reasons(cls, spec: AttentionSpec, env: Environment, gpu: int) -> list[Reason]:
        if not cls.NEEDS_CUDA:
            return []
        if not spec.on_cuda:
            return [Reason(R.NOT_CUDA, f"tensors on {spec.device!r}; {cls.NAME.value} runs on CUDA devices only")]
        facts = env.gpu(gpu)
        if facts is None:
            return [Reason(R.NO_GPU, f"no CUDA device {gpu} in this environment")]
        major = facts.compute_capability[0]
        if major not in cls.FWD_ARCH_MAJORS:
            return [Reason(R.ARCH_UNSUPPORTED, f"{cc_text(facts)} is not supported; "
                           f"{cls.NAME.value} runs on compute capability {_majors(cls.FWD_ARCH_MAJORS)}")]
        if spec.training and major not in cls.BWD_ARCH_MAJORS:
            return [Reason(R.BACKWARD_UNSUPPORTED, f"no backward pass on {cc_text(facts)}; "
                           f"{cls.NAME.value} trains on compute capability {_majors(cls.BWD_ARCH_MAJORS)}")]
        return []

    @classmethod
    def dtype_reasons(cls, spec: AttentionSpec) -> list[Reason]:
        if not cls.NEEDS_CUDA or spec.dtype in cls.DTYPES:
            return []
        code = R.FP8_UNSUPPORTED if spec.fp8 else R.DTYPE_UNSUPPORTED
        allowed = ", ".join(sorted(d.value for d in cls.DTYPES))
        return [Reason(code, f"dtype {spec.dtype.value} is not supported (supported: {allowed})")]

    @classmethod
    def feature_reasons(cls, spec: AttentionSpec, env: Environment) -> list[Reason]:
        reasons = []
        for feature, words, code in FEATURE_FLAGS:
            if not _uses(spec, feature):
                continue
            minimum = cls.FEATURES.get(feature)
            if minimum is None:
                reasons.append(Reason(code, f"{cls.NAME.value} does not support {words}"))
            elif not cls.has_version(env, minimum):
                reasons.append(Reason(code, f"{words} needs {cls.NAME.value} >= {minimum}, "
                                      f"found {cls.version(env)}"))
        return reasons

    @classmethod
    def mask_reasons(cls, spec: AttentionSpec, env: Environment) -> list[Reason]:
        if spec.attn_mask_type is MaskType.ARBITRARY and not cls.ARBITRARY_MASK:
            return [Reason(R.MASK_UNSUPPORTED, f"{cls.NAME.value} cannot take an arbitrary mask")]
        if not cls.BOTTOM_RIGHT_CAUSAL or not spec.top_left_misaligned:
            return []
        # FA aligns causal masks bottom-right; a top-left one is only taken when a window can say
        # exactly the same thing (semantics.fa_mask), and never with ALiBi, whose diagonal cannot move.
        where = "per sequence of a variable-length batch" if spec.varlen else \
            f"seqlen_q={spec.seqlen_q}, seqlen_kv={spec.seqlen_kv}"
        negative = cls.negative_windows(cls.version(env))
        translated = fa_mask(spec, negative_sides=negative)
        if translated is None or spec.alibi:
            return [Reason(R.CAUSAL_ALIGNMENT, f"top-left {spec.attn_mask_type.value} with {where} cannot be "
                           f"expressed in {cls.NAME.value}'s bottom-right causal convention")]
        window_since = cls.FEATURES.get("window")
        if translated.windowed and (window_since is None or not cls.has_version(env, window_since)):
            # The exact translation is a window; a release without windows cannot take it.
            return [Reason(R.CAUSAL_ALIGNMENT, f"top-left {spec.attn_mask_type.value} with {where} needs a "
                           f"window, which {cls.NAME.value} {cls.version(env)} does not have")]
        return []

    @classmethod
    def special_reasons(cls, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> list[Reason]:
        """Rules that do not fit the data; backends override and append."""
        return []


def _majors(majors: frozenset[int]) -> str:
    return ", ".join(f"{m}.x" for m in sorted(majors))
