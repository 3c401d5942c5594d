"""One attention call described without tensors: the input of every decision.

The vocabulary is TransformerEngine's (`attn_mask_type`, FA2-style `window_size` with -1 for an
unbounded side), so a spec reads the same as the TE call it came from. `causal` is **top-left**
aligned, as in TE and PyTorch SDPA; FlashAttention 2.1+, FA3 and FA4 align causal masks to the
bottom-right (docs/sources.md#causal-alignment), which is why alignment is a property of the spec.

>>> spec = AttentionSpec(dtype="bf16", head_dim_qk=128, num_heads_q=16, num_heads_kv=4,
...                      seqlen_q=128, seqlen_kv=512, attn_mask_type="causal")
>>> spec.head_dim_v, spec.gqa, spec.top_left_misaligned
(128, True, True)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable

from fa4doctor.records import InputFileError, read_text_file, to_plain


class SpecError(ValueError):
    """An invalid attention description: names the field and, where they are few, the valid values."""

    def __init__(self, field: str, message: str, choices: Iterable[str] = ()):
        self.field = field
        self.choices = tuple(choices)
        text = f"{field}: {message}"
        if self.choices:
            text += f" (valid: {', '.join(self.choices)})"
        super().__init__(text)


class Dtype(StrEnum):
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"
    FP64 = "fp64"  # SDPA only (docs/sources.md#pytorch-sdpa)
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"

    @property
    def is_fp8(self) -> bool:
        return self in (Dtype.FP8_E4M3, Dtype.FP8_E5M2)

    @property
    def itemsize(self) -> int:
        return {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}.get(self.value, 1)


class MaskType(StrEnum):
    """TransformerEngine's `attn_mask_type` values, with TE's meaning."""

    NO_MASK = "no_mask"
    CAUSAL = "causal"
    CAUSAL_BOTTOM_RIGHT = "causal_bottom_right"
    PADDING = "padding"
    PADDING_CAUSAL = "padding_causal"
    PADDING_CAUSAL_BOTTOM_RIGHT = "padding_causal_bottom_right"
    ARBITRARY = "arbitrary"

    @property
    def is_causal(self) -> bool:
        return "causal" in self.value

    @property
    def is_top_left(self) -> bool:
        """Causal and aligned to the top-left corner (TE's `causal`, `padding_causal`)."""
        return self.is_causal and not self.value.endswith("bottom_right")

    @property
    def is_padding(self) -> bool:
        return self.value.startswith("padding")


class QkvFormat(StrEnum):
    BSHD = "bshd"
    SBHD = "sbhd"
    THD = "thd"


# TE's `check_set_window_size` accepts a window with every mask type but `arbitrary`
# (TE utils.py:2642-2684): an arbitrary mask already says which keys each query sees.
_WINDOWLESS_MASKS = frozenset({MaskType.ARBITRARY})
UNBOUNDED = (-1, -1)
_FLAGS = ("varlen", "alibi", "bias", "learnable_sink", "deterministic", "training", "kv_cache",
          "paged_kv", "context_parallel")
# Bounds that only catch typos (`--head-dim 10^30`), never a real call: FA kernels take token
# offsets as int32 (`cu_seqlens`, runtime/inputs.py), so no longer sequence reaches one; the
# largest head dim any FA kernel takes is 512 (docs/sources.md#fa4-head-dims), and SDPA's math
# path, which takes any, is still reachable up to 128 times that.
MAX_SEQLEN = 2**31 - 1
MAX_HEAD_DIM = 2**16


def _enum(cls: type[StrEnum], field: str, value: Any) -> Any:
    try:
        return cls(value.value if isinstance(value, StrEnum) else value)
    except ValueError:
        raise SpecError(field, f"unknown value {value!r}", [m.value for m in cls]) from None


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    """A frozen, hashable description of one attention call.

    Head dims and head counts are per head; `seqlen_*` are the (maximum) lengths; `varlen`
    marks packed or padded variable-length batches, where `same_seqlens` says whether every
    sequence has as many queries as keys (what decides top-left vs bottom-right causal there).
    `window_size` is (left, right) with -1 for an unbounded side; causal masks clip the right side
    to 0. The window (and ALiBi) diagonal follows the mask, as TE's `bottom_right_diagonal`
    default does: top-left for `causal` and `padding_causal`, bottom-right for every other mask.
    `device` is where the tensors live ("cuda" or anything else, which only SDPA serves).
    """

    dtype: Dtype = Dtype.BF16
    head_dim_qk: int = 128
    head_dim_v: int | None = None
    num_heads_q: int = 16
    num_heads_kv: int | None = None
    seqlen_q: int = 1024
    seqlen_kv: int | None = None
    qkv_format: QkvFormat = QkvFormat.BSHD
    varlen: bool = False
    same_seqlens: bool | None = None
    attn_mask_type: MaskType = MaskType.NO_MASK
    window_size: tuple[int, int] = UNBOUNDED
    dropout_p: float = 0.0
    softcap: float = 0.0
    alibi: bool = False
    bias: bool = False
    learnable_sink: bool = False
    deterministic: bool = False
    training: bool = True
    kv_cache: bool = False
    paged_kv: bool = False
    context_parallel: bool = False
    num_splits: int = 1
    device: str = "cuda"

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        put("dtype", _enum(Dtype, "dtype", self.dtype))
        put("qkv_format", _enum(QkvFormat, "qkv_format", self.qkv_format))
        put("attn_mask_type", _enum(MaskType, "attn_mask_type", self.attn_mask_type))
        for name, default in (("head_dim_v", "head_dim_qk"), ("num_heads_kv", "num_heads_q"),
                              ("seqlen_kv", "seqlen_q")):
            if getattr(self, name) is None:
                put(name, getattr(self, default))
        if self.qkv_format is QkvFormat.THD or self.attn_mask_type.is_padding:
            put("varlen", True)
        if self.same_seqlens is not None and not isinstance(self.same_seqlens, bool):
            raise SpecError("same_seqlens", f"must be true, false or null, got {self.same_seqlens!r}")
        if not self.varlen:
            if self.same_seqlens is not None and self.same_seqlens != (self.seqlen_q == self.seqlen_kv):
                raise SpecError("same_seqlens", f"{self.same_seqlens} contradicts seqlen_q={self.seqlen_q}, "
                                f"seqlen_kv={self.seqlen_kv} of a fixed-length batch")
            put("same_seqlens", self.seqlen_q == self.seqlen_kv)
        put("window_size", self._checked_window())
        self._check_numbers()

    def _checked_window(self) -> tuple[int, int]:
        window = self.window_size if self.window_size is not None else UNBOUNDED
        if (not isinstance(window, (tuple, list)) or len(window) != 2
                or not all(isinstance(side, int) and not isinstance(side, bool) for side in window)):
            raise SpecError("window_size", f"expected two integers (left, right), got {window!r}")
        left, right = window
        if left < -1 or right < -1:
            raise SpecError("window_size", f"sides must be >= -1 (-1 = unbounded), got {(left, right)}")
        if (left, right) != UNBOUNDED and self.attn_mask_type in _WINDOWLESS_MASKS:
            allowed = [m.value for m in MaskType if m not in _WINDOWLESS_MASKS]
            raise SpecError("window_size", f"a window cannot be combined with attn_mask_type="
                            f"{self.attn_mask_type.value!r}; use one of these masks", allowed)
        if self.attn_mask_type.is_causal:
            right = 0  # causal already hides every key right of the diagonal (TE check_set_window_size)
        return (left, right)

    def _check_numbers(self) -> None:
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise SpecError(name, f"must be true or false, got {getattr(self, name)!r}")
        for name in ("dropout_p", "softcap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise SpecError(name, f"must be a number, got {value!r}")
        if not isinstance(self.device, str) or not self.device:
            raise SpecError("device", f"must be a device name such as 'cuda' or 'cpu', got {self.device!r}")
        for name in ("head_dim_qk", "head_dim_v", "num_heads_q", "num_heads_kv"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SpecError(name, f"must be a positive integer, got {value!r}")
        for name in ("head_dim_qk", "head_dim_v"):
            if getattr(self, name) > MAX_HEAD_DIM:
                raise SpecError(name, f"must be at most {MAX_HEAD_DIM}, got {getattr(self, name)}")
        for name in ("seqlen_q", "seqlen_kv"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SpecError(name, f"must be a non-negative integer, got {value!r}")
            if value > MAX_SEQLEN:
                raise SpecError(name, f"must be at most {MAX_SEQLEN} (FA kernels index tokens with int32), "
                                f"got {value}")
        if self.num_heads_q % self.num_heads_kv:
            raise SpecError("num_heads_kv", f"num_heads_q ({self.num_heads_q}) must be a multiple of "
                            f"num_heads_kv ({self.num_heads_kv})")
        if not 0.0 <= self.dropout_p < 1.0:
            raise SpecError("dropout_p", f"must be in [0, 1), got {self.dropout_p!r}")
        if self.softcap < 0:
            raise SpecError("softcap", f"must be >= 0 (0 = off), got {self.softcap!r}")
        if not isinstance(self.num_splits, int) or isinstance(self.num_splits, bool) or self.num_splits < 0:
            raise SpecError("num_splits", f"must be an integer >= 0 (0 = heuristic), got {self.num_splits!r}")

    # Derived facts the rules read; properties so they can never disagree with the fields.
    @property
    def gqa(self) -> bool:
        return self.num_heads_q != self.num_heads_kv

    @property
    def mla(self) -> bool:
        """Head dims differ between q·k and v (DeepSeek-style multi-head latent attention)."""
        return self.head_dim_qk != self.head_dim_v

    @property
    def has_window(self) -> bool:
        """A sliding window beyond what the mask itself implies."""
        left, right = self.window_size
        return left >= 0 or (right >= 0 and not self.attn_mask_type.is_causal)

    @property
    def top_left_misaligned(self) -> bool:
        """A top-left causal mask whose meaning differs from the bottom-right one FA kernels use."""
        return self.attn_mask_type.is_top_left and not self.same_seqlens

    @property
    def fp8(self) -> bool:
        return self.dtype.is_fp8

    @property
    def on_cuda(self) -> bool:
        return self.device.split(":")[0] == "cuda"

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise SpecError(unknown[0], "unknown spec field", sorted(fields))
        return cls(**data)  # __post_init__ turns enum values and a window list into their types

    def short(self) -> str:
        """A one-line label for tables and logs."""
        heads = f"{self.num_heads_q}/{self.num_heads_kv}" if self.gqa else f"{self.num_heads_q}"
        dims = f"{self.head_dim_qk},{self.head_dim_v}" if self.mla else f"{self.head_dim_qk}"
        text = f"{self.dtype.value} d{dims} h{heads} s{self.seqlen_q}"
        if self.seqlen_kv != self.seqlen_q:
            text += f"/{self.seqlen_kv}"
        text += f" {self.attn_mask_type.value}"
        if self.has_window:
            text += f" w{self.window_size[0]},{self.window_size[1]}"
        return text + (" train" if self.training else " infer")


def load_specs(path: str | Path) -> list[tuple[str, AttentionSpec]]:
    """Read named specs from a JSON file: one spec object, a list of them, or `{"specs": [...]}`.

    Each object holds `AttentionSpec` fields and an optional `name`.
    """
    try:
        data = json.loads(read_text_file(path))
    except OSError as exc:
        raise SpecError("spec", f"cannot read {path}: {exc.strerror or exc}") from None
    except InputFileError as exc:
        raise SpecError("spec", str(exc)) from None
    except json.JSONDecodeError as exc:
        raise SpecError("spec", f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "specs" in data:
        data = data["specs"]
    entries = data if isinstance(data, list) else [data]
    specs = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise SpecError("spec", f"entry {number} in {path} is not a JSON object")
        entry = dict(entry)
        name = str(entry.pop("name", f"spec{number}"))
        specs.append((name, AttentionSpec.from_dict(entry)))
    return specs
