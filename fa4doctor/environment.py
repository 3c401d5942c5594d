"""The `Environment` snapshot: every fact a decision needs, frozen, with a versioned JSON form.

The probe fills it from a real machine (`fa4doctor check --json` writes it); the dispatcher decides
from it; `fa4doctor explain --env FILE` decides from a saved one anywhere. Facts only: verdicts are
never stored here, they are recomputed by `select()`.

>>> env = Environment(gpus=(GpuFacts(cuda_index=0, name="NVIDIA H100 80GB HBM3",
...                                  compute_capability=(9, 0)),))
>>> Environment.from_json(env.to_json()) == env
True
>>> env.gpu(0).compute_capability
(9, 0)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path

from fa4doctor.names import BackendName
from fa4doctor.records import InputFileError, RecordError, from_plain, read_text_file, to_plain

SCHEMA = "fa4doctor.environment"
SCHEMA_VERSION = 2  # 2: ledger entries hold their CaseClass (1 is read and upgraded)
# The `fa4doctor check --json` report a snapshot may come wrapped in (dispatch/report.py's SCHEMA
# and SCHEMA_VERSION, repeated because this layer sits below dispatch; tests/cli/test_input_files.py
# holds them equal). A report of another version may carry its snapshot differently: refused.
REPORT_SCHEMA, REPORT_VERSIONS = "fa4doctor.check", (1,)


class SnapshotError(ValueError):
    """A snapshot file that cannot be read or does not match the schema."""


class ImportStatus(StrEnum):
    """How importing a backend in a child process went (classified by the probe)."""

    OK = "ok"
    NOT_INSTALLED = "not_installed"
    NOT_CHECKED = "not_checked"  # nobody tried: no verdict, and no reason to refuse
    MISSING_DEPENDENCY = "missing_dependency"
    ABI_MISMATCH = "abi_mismatch"
    DRIVER_TOO_OLD = "driver_too_old"
    BLOCKED = "blocked_by_other_package"
    CRASH = "crash"
    TIMEOUT = "timeout"
    ERROR = "error"


# An import that worked, or that nobody tried: no reason to refuse the backend.
USABLE_IMPORTS = frozenset({ImportStatus.OK, ImportStatus.NOT_CHECKED})


@dataclass(frozen=True, slots=True)
class MigDevice:
    uuid: str | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    memory_total_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class GpuFacts:
    """One GPU. `cuda_index` is the ordinal a process sees (None if CUDA_VISIBLE_DEVICES hides it);
    `nvml_index` is NVML's, which is not the same thing: join on `uuid`. NVML fields are None when
    the query is unsupported or failed; `nvml_errors` says which failed and how."""

    name: str
    compute_capability: tuple[int, int]
    cuda_index: int | None = None
    nvml_index: int | None = None
    uuid: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    mig_mode_current: bool | None = None
    mig_mode_pending: bool | None = None
    mig_devices: tuple[MigDevice, ...] = ()
    ecc_mode_current: bool | None = None
    ecc_mode_pending: bool | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failed: bool | None = None
    clock_event_reasons: int | None = None
    persistence_mode: bool | None = None
    compute_mode: str | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    fabric_state: str | None = None
    fabric_status: int | None = None
    compute_processes: int | None = None
    lost: bool = False
    nvml_errors: tuple[tuple[str, str], ...] = ()

    @property
    def arch(self) -> int:
        """`major * 10 + minor`, as FA4's `_get_device_arch` computes it (90 for an H100)."""
        return self.compute_capability[0] * 10 + self.compute_capability[1]


def cuda_version_text(version: int) -> str:
    """NVML's integer CUDA version as text: 13000 -> "13.0", 12080 -> "12.8".

    >>> cuda_version_text(12080)
    '12.8'
    """
    return f"{version // 1000}.{version % 1000 // 10}"


@dataclass(frozen=True, slots=True)
class DriverInfo:
    nvml_status: str = "not_checked"  # ok, library_not_found, lib_rm_mismatch, driver_not_loaded, ...
    nvml_error: str | None = None
    driver_version: str | None = None
    cuda_driver_version: int | None = None  # NVML's integer form: 13000 is CUDA 13.0
    nvml_version: str | None = None


@dataclass(frozen=True, slots=True)
class TorchInfo:
    version: str | None = None
    cuda: str | None = None  # the CUDA torch was built with ("13.0"); None for CPU builds
    cxx11_abi: bool | None = None
    # torch >= 2.12 can swap what SDPA's flash kernel runs (torch/nn/attention/_registry.py, 2.13):
    # `flash_registry` False where torch has no registry, None where nobody looked; `flash_impls`
    # the registered names ("FA3", "FA4"); `flash_impl` the activated one, None for torch's own FA2.
    flash_registry: bool | None = None
    flash_impls: tuple[str, ...] = ()
    flash_impl: str | None = None

    @property
    def flash_kernel(self) -> str:
        """What SDPA's flash kernel runs: the activated impl, else torch's built-in "FA2"
        (`restore_flash_attention_impl`: "Restore the default FA2 implementation", _registry.py 2.13).

        >>> TorchInfo().flash_kernel, TorchInfo(flash_registry=True, flash_impl="FA4").flash_kernel
        ('FA2', 'FA4')
        """
        return self.flash_impl or "FA2"


@dataclass(frozen=True, slots=True)
class BackendInstall:
    """One backend as installed: which distribution provides it, and whether it imports."""

    backend: BackendName
    distribution: str | None = None
    version: str | None = None
    import_status: ImportStatus = ImportStatus.NOT_CHECKED
    import_error: str | None = None
    dependencies: tuple[tuple[str, str], ...] = ()  # (distribution, version) it needs at run time

    @property
    def installed(self) -> bool:
        return self.version is not None and self.import_status is not ImportStatus.NOT_INSTALLED


@dataclass(frozen=True, slots=True)
class Package:
    name: str
    version: str
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem or warning the probe found, with what to do about it."""

    code: str
    severity: str  # "error" or "warning" or "info"
    message: str
    fix: str | None = None


@dataclass(frozen=True, slots=True)
class JitCache:
    """FA4's CuTe DSL disk cache (`FLASH_ATTENTION_CUTE_DSL_CACHE_*`, docs/sources.md#fa4-compile-cache)."""

    enabled: bool = False
    directory: str | None = None
    writable: bool | None = None
    size_bytes: int | None = None
    entries: int | None = None


@dataclass(frozen=True, slots=True)
class Knob:
    """An FA4 environment variable that is set, with its value (`fa4doctor.probe.knobs` lists them
    and what each changes). `changes_kernels` is False for the ones that only move the compile cache."""

    name: str
    value: str
    changes_kernels: bool = True


@dataclass(frozen=True, slots=True)
class CaseClass:
    """What one smoke result is evidence about: the parts of a call that choose the kernel and its
    code path (`fa4doctor.dispatch.vetting.case_class` derives it from a spec; the ledger stores it)."""

    dtype: str
    head_dim_qk: int
    head_dim_v: int
    attn_mask_type: str
    window: bool
    gqa: bool = False
    decode: bool = False  # one query token per sequence: FA4 >= b39 may pick its decode kernel

    @property
    def head_dims(self) -> tuple[int, int]:
        return (self.head_dim_qk, self.head_dim_v)


def upgrade_ledger_entry(plain: object) -> object:
    """A ledger entry as schema 1 wrote it (the class's fields flat on the entry) in today's shape."""
    if not isinstance(plain, dict) or "case_class" in plain:
        return plain
    flat = ("dtype", "head_dim_qk", "head_dim_v", "attn_mask_type", "window")
    return {**{k: v for k, v in plain.items() if k not in flat},
            "case_class": {k: plain[k] for k in flat if k in plain}}


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One smoke case's outcome on a node, valid only while `fingerprint` still matches."""

    backend: BackendName
    fingerprint: str
    case: str
    case_class: CaseClass
    direction: str  # "fwd" or "bwd"
    outcome: str  # "pass" or a failure kind: wrong_result, refused, compile_failed, crash, timeout, oom
    detail: str = ""
    gpu_uuid: str | None = None
    recorded_at: str | None = None

    @property
    def failed(self) -> bool:
        return self.outcome != "pass"


@dataclass(frozen=True, slots=True)
class ShapeClass:
    """What one speed record is evidence about: the call's `CaseClass`, its sequence lengths
    bucketed (`fa4doctor.dispatch.speed.seqlen_bucket`: the nearest power of two) and the features
    that change a backend's code path beyond the class (softcap, ALiBi, variable length, ...),
    sorted. `fa4doctor.dispatch.speed.shape_class` derives it from a spec."""

    case_class: CaseClass
    seqlen_q: int
    seqlen_kv: int
    features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SpeedEntry:
    """One measured time (`fa4doctor bench`) of a backend, or of one SDPA kernel, on a node; valid
    only while `fingerprint` (the backend's, as for `LedgerEntry`) still matches.

    `kernel` names SDPA's kernel (cudnn, flash, efficient) the call was kept to, None for the
    backend as it runs by itself (for SDPA: torch's own choice). `direction` is "fwd" or
    "fwd_bwd" (a forward and its backward, what one training call costs). `median_ms` is the
    median over the measured rounds of one call's time; `tflops` counts the FLOPs the mask allows
    (causal: about half) with the backward as 2.5 forwards (docs/bench.md).
    """

    backend: BackendName
    fingerprint: str
    case: str  # the measured shape, e.g. "llama-3-8b s4096"
    shape_class: ShapeClass
    direction: str
    median_ms: float
    tflops: float | None = None
    kernel: str | None = None
    rounds: int = 0
    gpu_uuid: str | None = None
    recorded_at: str | None = None


@dataclass(frozen=True)
class Environment:
    schema_version: int = SCHEMA_VERSION
    created_at: str | None = None
    hostname: str | None = None
    python: str | None = None
    torch: TorchInfo = field(default_factory=TorchInfo)
    driver: DriverInfo = field(default_factory=DriverInfo)
    gpus: tuple[GpuFacts, ...] = ()
    backends: tuple[BackendInstall, ...] = ()
    packages: tuple[Package, ...] = ()
    findings: tuple[Finding, ...] = ()
    ledger: tuple[LedgerEntry, ...] = ()
    jit_cache: JitCache = field(default_factory=JitCache)
    cuda_visible_devices: str | None = None
    cuda_device_order: str | None = None
    knobs: tuple[Knob, ...] = ()  # FA4's environment variables that are set (snapshots before them: none)
    speed: tuple[SpeedEntry, ...] = ()  # the ledger's speed records (`fa4doctor bench`)

    def __hash__(self) -> int:
        # Every decision cache look-up hashes the whole snapshot (dispatch.selection.decide); with a
        # node's ledger and speed records that took ~0.1 ms (294 entries) to ~1.3 ms (plus 2,400
        # speed records), timeit on the CPU VM. A snapshot never changes, so it keeps its hash.
        try:
            return self.__dict__["_hash"]
        except KeyError:
            value = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", value)
            return value

    def __getstate__(self) -> dict:
        # str hashes differ between processes (PYTHONHASHSEED): a pickled copy hashes itself again
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def gpu(self, cuda_index: int | None = 0) -> GpuFacts | None:
        """The GPU a process sees as `cuda:<cuda_index>`, or None."""
        return next((g for g in self.gpus if g.cuda_index == cuda_index), None)

    def backend(self, name: BackendName) -> BackendInstall | None:
        return next((b for b in self.backends if b.backend is name), None)

    def with_ledger(self, entries: tuple[LedgerEntry, ...],
                    speed: tuple[SpeedEntry, ...] | None = None) -> Environment:
        """The snapshot with another ledger: its smoke `entries`, and its `speed` records unless None."""
        return replace(self, ledger=tuple(entries), speed=self.speed if speed is None else tuple(speed))

    def to_plain(self) -> dict:
        """The snapshot as JSON-ready data, with its schema. `speed` is left out when there are no
        speed records: an older fa4doctor refuses fields it does not know, and a snapshot without
        measurements stays readable to it."""
        plain = {"schema": SCHEMA, **to_plain(self)}
        if not self.speed:
            del plain["speed"]
        return plain

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_plain(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Environment:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SnapshotError(f"not valid JSON: {exc}") from None
        return cls.from_plain(data)

    @classmethod
    def from_plain(cls, data: object) -> Environment:
        """Accepts a bare snapshot or `fa4doctor check --json` output (snapshot under `environment`)."""
        if isinstance(data, dict) and isinstance(data.get("environment"), dict):
            if data.get("schema") == REPORT_SCHEMA and data.get("schema_version") not in REPORT_VERSIONS:
                raise SnapshotError(f"{REPORT_SCHEMA} report schema_version {data.get('schema_version')!r} is "
                                    f"not supported (this fa4doctor reads {', '.join(map(str, REPORT_VERSIONS))})")
            data = data["environment"]
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise SnapshotError(f"not an environment snapshot (expected \"schema\": \"{SCHEMA}\")")
        version = data.get("schema_version")
        if version not in (1, SCHEMA_VERSION):
            raise SnapshotError(f"schema_version {version!r} is not supported (this fa4doctor "
                                    f"reads versions 1 and {SCHEMA_VERSION})")
        body = {k: v for k, v in data.items() if k != "schema"} | {"schema_version": SCHEMA_VERSION}
        if isinstance(body.get("ledger"), list):  # schema 1 kept each entry's class flat
            body["ledger"] = [upgrade_ledger_entry(e) for e in body["ledger"]]
        try:
            return from_plain(cls, body)
        except RecordError as exc:
            raise SnapshotError(f"invalid snapshot: {exc}") from None


def load_environment(path: str | Path) -> Environment:
    """Read a snapshot written by `fa4doctor check --json` (or `Environment.to_json`)."""
    try:
        text = read_text_file(path)
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror or exc}") from None
    except InputFileError as exc:
        raise SnapshotError(str(exc)) from None
    try:
        return Environment.from_json(text)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: {exc}") from None
