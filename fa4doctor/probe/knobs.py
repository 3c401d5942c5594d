"""FA4's environment variables ("knobs") that change what a run of it is, as one table.

Each is read by FA4's own sources, cited by file and line of 4.0.0b40. A set one is a fact of the
node (`Environment.knobs`), a `fa4_knob_set` finding of `check` (a warning where it overrides the
arch, the kernel choice or how kernels are built; info where it only moves the compile cache),
and, unless it only moves the cache, part of FA4's vetting fingerprint: a smoke result proven
under one setting says nothing about another.

>>> [(k.name, k.value) for k in read_knobs({"FA_DISABLE_2CTA": "1", "HOME": "/root"})]
[('FA_DISABLE_2CTA', '1')]
>>> BY_NAME["FLASH_ATTENTION_ARCH"].severity, BY_NAME["FLASH_ATTENTION_ARCH"].source
('warning', 'flash_attn/cute/interface.py 4.0.0b40 line 126')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fa4doctor.environment import Knob
from fa4doctor.probe.system import CACHE_DIR, CACHE_ENABLED

SOURCE_VERSION = "4.0.0b40"


@dataclass(frozen=True, slots=True)
class KnobSpec:
    """One variable: what it changes, the severity of `check`'s finding when it is set, and where
    FA4 reads it (`flash_attn/cute/<file>`, line `line` of `SOURCE_VERSION`)."""

    name: str
    changes: str
    severity: str  # "warning": arch, kernel choice or code generation; "info": the compile cache only
    file: str
    line: int
    changes_kernels: bool = True  # False: kept out of the vetting fingerprint

    @property
    def source(self) -> str:
        return f"flash_attn/cute/{self.file} {SOURCE_VERSION} line {self.line}"


# Read by b40 but not listed: FA_LOG_LEVEL (fa_logging.py L48) and the CuTe DSL's dump switches
# (cute_dsl_ptxas.py L19-143) change only what is logged or kept. b36's FA_CLC and
# FLASH_ATTENTION_HD256_GENERIC_BWD (utils.py L64, L109) are gone by b40.
NOT_LISTED = ("FA_LOG_LEVEL", "CUTE_DSL_PTXAS_VERBOSE", "CUTE_DSL_DUMP_DIR", "CUTE_DSL_KEEP_PTX", "CUTE_DSL_KEEP_CUBIN")
KNOBS = (
    KnobSpec("FLASH_ATTENTION_ARCH", "picks the kernel path (SM80/SM90/SM100/SM120) instead of the GPU's "
             "compute capability", "warning", "interface.py", 126),
    KnobSpec("CUTE_DSL_ARCH", "sets the CuTe DSL's compilation target instead of the GPU's own (read by "
             "nvidia-cutlass-dsl; FA4 documents it beside FLASH_ATTENTION_ARCH)", "warning", "interface.py", 119),
    KnobSpec("FLASH_ATTENTION_SM100_BACKEND", "swapab / standard forces the SM100 forward onto the SwapAB decode "
             "kernel / the standard one (auto: the selector decides)", "warning", "utils.py", 104),
    KnobSpec("FLASH_ATTENTION_MLA_1CTA", "1 runs the MLA forward with one CTA wherever supported, any other "
             "value never", "warning", "interface.py", 248),
    KnobSpec("FA_DISABLE_2CTA", "1 turns off the 2-CTA kernels of the forward and the backward", "warning",
             "utils.py", 64),
    KnobSpec("FA_DISABLE_S_PING_PONG", "1 turns off the forward's S ping-pong schedule", "warning", "utils.py", 65),
    KnobSpec("FLASH_ATTENTION_BWD_PACK_GQA", "0 / 1 / 2 / 4 forces the SM100 backward's query-head packing off / "
             "on / to that many heads per tile", "warning", "utils.py", 131),
    KnobSpec("FLASH_ATTENTION_BWD_HEAD_LOOP", "0 / 1 forces the SM100 head-dim-256 backward's head loop off / on",
             "warning", "utils.py", 138),
    KnobSpec("FLASH_ATTENTION_BWD_TILE_N", "64 selects the 64-row KV tile of the SM100 2-CTA backward (a test "
             "knob)", "warning", "utils.py", 146),
    KnobSpec("FLASH_ATTENTION_NUM_SMS", "the SM count the kernel selector and the split sizes assume, instead of "
             "the GPU's", "warning", "cute_dsl_utils.py", 54),
    KnobSpec("CUTE_DSL_PTXAS_PATH", "compiles the kernels with this ptxas instead of the CuTe DSL's own",
             "warning", "interface.py", 45),
    KnobSpec(CACHE_ENABLED, "1 keeps compiled kernels on disk for later processes", "info", "cache_utils.py", 35,
             changes_kernels=False),
    KnobSpec(CACHE_DIR, "where the compile cache is kept (default: a folder under /tmp per user)", "info",
             "cache_utils.py", 40, changes_kernels=False),
)
BY_NAME = {k.name: k for k in KNOBS}


def read_knobs(environ: Mapping[str, str]) -> tuple[Knob, ...]:
    """The table's variables that `environ` sets, in table order. An empty value counts: FA4 reads
    it as set (FLASH_ATTENTION_ARCH="" fails to parse), so the node says so."""
    return tuple(Knob(k.name, environ[k.name], k.changes_kernels) for k in KNOBS if k.name in environ)
