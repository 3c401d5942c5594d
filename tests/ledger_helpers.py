"""Ledger entries for tests, written with the class's fields flat (as a smoke case names them)."""

from __future__ import annotations

from fa4doctor.environment import CaseClass, LedgerEntry

CLASS_FIELDS = ("dtype", "head_dim_qk", "head_dim_v", "attn_mask_type", "window", "gqa", "decode")


def flat_entry(**fields) -> LedgerEntry:
    """`LedgerEntry(...)` with `dtype=`, `head_dim_qk=`, ... in place of `case_class=`."""
    klass = {name: fields.pop(name) for name in CLASS_FIELDS if name in fields}
    klass.setdefault("head_dim_v", klass.get("head_dim_qk"))
    return LedgerEntry(case_class=CaseClass(**klass), **fields)
