"""Tensors in, `AttentionSpec` out: every check `attention()` makes before any kernel runs.

Each mistake is a `ValueError` (a `SpecError`) that names the argument, so a wrong call fails in
the caller's line, not inside a CUDA kernel. Variable-length batches (`qkv_format="thd"`, or a
padding mask over `bshd` tensors) carry `cu_seqlens_*`: they are read to the host on every call,
because whether a top-left causal mask means the same as FA's bottom-right one depends on each
sequence's lengths (docs/sources.md#causal-alignment-per-sequence), and because a bad offset
would otherwise reach a kernel.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from numbers import Real

import torch

from fa4doctor.dispatch.spec import AttentionSpec, Dtype, MaskType, QkvFormat, SpecError
from fa4doctor.runtime.tensor_memo import TensorMemo

DTYPES = {torch.float16: Dtype.FP16, torch.bfloat16: Dtype.BF16, torch.float32: Dtype.FP32,
          torch.float64: Dtype.FP64}
for _name, _dtype in (("float8_e4m3fn", Dtype.FP8_E4M3), ("float8_e5m2", Dtype.FP8_E5M2)):
    if hasattr(torch, _name):
        DTYPES[getattr(torch, _name)] = _dtype
FORMATS = (QkvFormat.BSHD.value, QkvFormat.THD.value)
_MASKS = frozenset(m.value for m in MaskType)  # read_varlen runs per call


@dataclass(frozen=True, slots=True)
class Varlen:
    """One variable-length batch: offsets as the kernels take them, lengths as the host knows them."""

    cu_seqlens_q: torch.Tensor
    cu_seqlens_kv: torch.Tensor
    lens_q: tuple[int, ...]
    lens_kv: tuple[int, ...]
    max_seqlen_q: int
    max_seqlen_kv: int
    packed: bool  # the caller gave padded bshd tensors; the runtime packs them to thd and back

    @property
    def summary(self) -> tuple:
        """What a decision depends on (part of the runtime's cache key)."""
        same = self.lens_q == self.lens_kv
        return (len(self.lens_q), self.max_seqlen_q, self.max_seqlen_kv, same, self.packed)


def take_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Padded bshd -> packed thd: the tokens at `rows` (batch * seqlen + position, in order). By flat
    index: its gradient is an `index_add_`, where advanced indexing's sorts the indices on CUDA
    (docs/validation/h100-b40/transformers/README.md, run 3)."""
    return t.reshape(-1, *t.shape[2:]).index_select(0, rows)


def put_rows(packed: torch.Tensor, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Packed thd -> padded bshd of `like`'s batch and length: `take_rows` undone, zeros elsewhere."""
    full = packed.new_zeros(like.shape[0] * like.shape[1], *packed.shape[1:]).index_copy(0, rows, packed)
    return full.view(*like.shape[:2], *packed.shape[1:])


@dataclass(frozen=True, slots=True)
class Prepared:
    spec: AttentionSpec
    scale: float
    gpu: int | None
    varlen: Varlen | None


def _tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise SpecError(name, f"expected a torch.Tensor, got {type(value).__name__}")
    return value


def _number(name: str, value: object, low: float, high: float = math.inf, *, open_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or value != value:
        raise SpecError(name, f"expected a number, got {value!r}")
    if value < low or value > high or (open_high and value == high):
        raise SpecError(name, f"must be in [{low}, {high}{')' if open_high else ']'}, got {value!r}")
    return float(value)


def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fmt: QkvFormat) -> None:
    rank = 4 if fmt is QkvFormat.BSHD else 3
    layout = "(batch, seq, heads, head_dim)" if rank == 4 else "(total_tokens, heads, head_dim)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            raise SpecError(name, f"qkv_format={fmt.value!r} needs {rank}-D tensors {layout}, got shape {tuple(t.shape)}")
        if t.dtype is not q.dtype:
            raise SpecError(name, f"dtype {t.dtype} differs from q's {q.dtype}")
        if t.device != q.device:
            raise SpecError(name, f"device {t.device} differs from q's {q.device}")
    if q.dtype not in DTYPES:
        raise SpecError("q", f"dtype {q.dtype} is not supported", [str(d) for d in DTYPES])
    if rank == 4 and not q.shape[0] == k.shape[0] == v.shape[0]:
        raise SpecError("k", f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if v.shape[:-1] != k.shape[:-1]:
        raise SpecError("v", f"shape {tuple(v.shape)} must match k's {tuple(k.shape)} except head_dim_v")
    if k.shape[-1] != q.shape[-1]:
        raise SpecError("k", f"head_dim {k.shape[-1]} must equal q's head_dim {q.shape[-1]}")
    if q.shape[-1] == 0:  # before the default softmax_scale, 1/sqrt(head_dim), divides by it
        raise SpecError("q", f"head_dim must be positive, got shape {tuple(q.shape)}")
    if k.shape[-2] == 0 or q.shape[-2] % k.shape[-2]:
        raise SpecError("k", f"num_heads {k.shape[-2]} must divide q's num_heads {q.shape[-2]}")


def _window(window_size: object) -> tuple[int, int]:
    if window_size is None:
        return (-1, -1)
    if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in window_size)):
        raise SpecError("window_size", f"expected None or two integers (left, right), -1 = unbounded, "
                        f"got {window_size!r}")
    return (int(window_size[0]), int(window_size[1]))


# Reading offsets copies them to the host and waits for the device; a job passes every layer of a
# step the same cu_seqlens tensors (packed sequences, transformers' padding).
_READ_OFFSETS = TensorMemo(limit=16)


def _offsets(name: str, cu: object, q: torch.Tensor) -> list[int]:
    cu = _tensor(name, cu)
    if cu.dtype is not torch.int32:
        raise SpecError(name, f"must be torch.int32 (FA kernels read int32 offsets), got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise SpecError(name, f"must be 1-D with batch + 1 offsets, got shape {tuple(cu.shape)}")
    if cu.device != q.device:
        raise SpecError(name, f"device {cu.device} differs from q's {q.device}")
    offsets = _READ_OFFSETS.get(cu)
    if offsets is not None:
        return offsets
    offsets = cu.tolist()
    if offsets[0] != 0 or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise SpecError(name, f"must start at 0 and never decrease, got {offsets[:8]}{'...' if len(offsets) > 8 else ''}")
    return _READ_OFFSETS.put(cu, offsets)


def _max_seqlen(name: str, value: object, lengths: list[int]) -> int:
    actual = max(lengths, default=0)
    if value is None:
        return actual
    if isinstance(value, torch.Tensor):
        raise SpecError(name, "pass a Python int, not a tensor (a tensor max_seqlen recompiles FA4 "
                        "kernels on every step: FA PRs #2507, #2762)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"expected a Python int, got {type(value).__name__}")
    if value < actual:
        raise SpecError(name, f"{value} is below the longest sequence in the batch ({actual})")
    return value


def _varlen(q, k, fmt: QkvFormat, mask: MaskType, cu_q, cu_kv, max_q, max_kv) -> Varlen | None:
    given = [n for n, x in (("cu_seqlens_q", cu_q), ("cu_seqlens_kv", cu_kv)) if x is not None]
    if fmt is QkvFormat.BSHD and not mask.is_padding:
        if given or max_q is not None or max_kv is not None:
            raise SpecError(given[0] if given else "max_seqlen_q", "variable lengths need qkv_format='thd' or "
                            "a padding attn_mask_type", ["padding", "padding_causal", "padding_causal_bottom_right"])
        return None
    if len(given) != 2:
        why = "qkv_format='thd'" if fmt is QkvFormat.THD else f"attn_mask_type={mask.value!r} over bshd tensors"
        missing = "cu_seqlens_q" if cu_q is None else "cu_seqlens_kv"
        raise SpecError(missing, f"{why} needs both cu_seqlens_q and cu_seqlens_kv")
    off_q, off_kv = _offsets("cu_seqlens_q", cu_q, q), _offsets("cu_seqlens_kv", cu_kv, q)
    if len(off_q) != len(off_kv):
        raise SpecError("cu_seqlens_kv", f"has {len(off_kv)} offsets but cu_seqlens_q has {len(off_q)}")
    lens_q = [b - a for a, b in zip(off_q, off_q[1:])]
    lens_kv = [b - a for a, b in zip(off_kv, off_kv[1:])]
    if fmt is QkvFormat.THD:
        for name, offsets, t in (("cu_seqlens_q", off_q, q), ("cu_seqlens_kv", off_kv, k)):
            if offsets[-1] != t.shape[0]:
                raise SpecError(name, f"ends at {offsets[-1]} but the tensor has {t.shape[0]} tokens")
    else:
        for name, lens, t in (("cu_seqlens_q", lens_q, q), ("cu_seqlens_kv", lens_kv, k)):
            if len(lens) != t.shape[0] or max(lens) > t.shape[1]:
                raise SpecError(name, f"must give one length <= {t.shape[1]} per batch entry ({t.shape[0]}), "
                                f"got lengths {lens[:8]}")
    return Varlen(cu_q, cu_kv, tuple(lens_q), tuple(lens_kv), _max_seqlen("max_seqlen_q", max_q, lens_q),
                  _max_seqlen("max_seqlen_kv", max_kv, lens_kv), packed=fmt is QkvFormat.BSHD)


def _extra(name: str, t: object, q: torch.Tensor, shapes: list[tuple[int, ...]]) -> torch.Tensor:
    t = _tensor(name, t)
    if tuple(t.shape) not in shapes:
        raise SpecError(name, f"shape {tuple(t.shape)} is not one of {shapes}")
    if not t.is_floating_point():
        raise SpecError(name, f"must be a floating-point tensor, got {t.dtype}")
    if t.device != q.device:
        raise SpecError(name, f"device {t.device} differs from q's {q.device}")
    return t


def prepare(q, k, v, *, attn_mask_type="no_mask", window_size=None, softmax_scale=None, dropout_p=0.0,
            softcap=0.0, alibi_slopes=None, learnable_sink=None, deterministic=False, qkv_format="bshd",
            cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None) -> Prepared:
    """Validate one call and describe it; raises `SpecError` (a `ValueError`) naming the argument."""
    q, k, v = _tensor("q", q), _tensor("k", k), _tensor("v", v)
    if qkv_format not in FORMATS:
        raise SpecError("qkv_format", f"unknown value {qkv_format!r}", FORMATS)
    fmt = QkvFormat(qkv_format)
    mask = MaskType(attn_mask_type) if attn_mask_type in tuple(MaskType) else None
    if mask is None or mask is MaskType.ARBITRARY:
        why = "an arbitrary mask needs a mask tensor, which attention() does not take" if mask else \
            f"unknown value {attn_mask_type!r}"
        raise SpecError("attn_mask_type", why, [m.value for m in MaskType if m is not MaskType.ARBITRARY])
    _check_tensors(q, k, v, fmt)
    if not isinstance(deterministic, bool):
        raise SpecError("deterministic", f"must be True or False, got {deterministic!r}")
    heads, batch = q.shape[-2], q.shape[0]
    if alibi_slopes is not None:
        _extra("alibi_slopes", alibi_slopes, q, [(heads,)] + ([(batch, heads)] if fmt is QkvFormat.BSHD else []))
    if learnable_sink is not None:
        _extra("learnable_sink", learnable_sink, q, [(heads,)])
    varlen = _varlen(q, k, fmt, mask, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv)
    if varlen is not None and alibi_slopes is not None and alibi_slopes.dim() == 2 \
            and alibi_slopes.shape[0] != len(varlen.lens_q):
        raise SpecError("alibi_slopes", f"has {alibi_slopes.shape[0]} rows for {len(varlen.lens_q)} sequences")
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else \
        _number("softmax_scale", softmax_scale, 0.0)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, learnable_sink))
    spec = AttentionSpec(
        dtype=DTYPES[q.dtype], head_dim_qk=q.shape[-1], head_dim_v=v.shape[-1], num_heads_q=heads,
        num_heads_kv=k.shape[-2],
        seqlen_q=varlen.max_seqlen_q if varlen else q.shape[1],
        seqlen_kv=varlen.max_seqlen_kv if varlen else k.shape[1],
        qkv_format=fmt, varlen=varlen is not None,
        same_seqlens=(varlen.lens_q == varlen.lens_kv) if varlen else None,
        attn_mask_type=mask, window_size=_window(window_size),
        dropout_p=_number("dropout_p", dropout_p, 0.0, 1.0, open_high=True),
        softcap=_number("softcap", softcap, 0.0), alibi=alibi_slopes is not None,
        learnable_sink=learnable_sink is not None, deterministic=deterministic, training=needs_grad,
        device=q.device.type)
    gpu = None
    if q.device.type == "cuda":
        gpu = q.device.index if q.device.index is not None else torch.cuda.current_device()
    return Prepared(spec, scale, gpu, varlen)


# attention()'s keyword parameters in order, read from `prepare`, whose signature is the contract:
# runtime.dispatcher.attention repeats it for speed and tests/runtime/test_signature.py holds
# attention, the compiled hit path (native/hit.cpp kKwNames) and native.KEYED to it.
KEYWORDS: tuple[str, ...] = tuple(inspect.signature(prepare).parameters)[3:]

def read_varlen(q, k, qkv_format, attn_mask_type, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q,
                max_seqlen_kv) -> Varlen | None:
    """The per-call part of `prepare` for variable-length batches (the runtime's hot path)."""
    if qkv_format not in FORMATS or attn_mask_type not in _MASKS:
        return None  # `prepare` names the bad argument
    fmt, mask = QkvFormat(qkv_format), MaskType(attn_mask_type)
    return _varlen(q, k, fmt, mask, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv)
