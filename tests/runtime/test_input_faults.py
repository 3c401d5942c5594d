"""`attention()` under bad input (issue 13): each mistake is a `SpecError` or `PolicyError` naming
what was wrong, never an arithmetic error from inside the dispatcher."""

from __future__ import annotations

import pytest
import torch

from fa4doctor.dispatch import attention
from fa4doctor.dispatch.spec import AttentionSpec, SpecError
from fa4doctor.names import PolicyError


@pytest.mark.parametrize("shape", [(1, 8, 2, 0), (0, 8, 2, 0)])
def test_head_dim_0_is_a_spec_error_not_zero_division(shape):
    q = torch.randn(*shape)
    with pytest.raises(SpecError, match="q: head_dim must be positive"):
        attention(q, q, q)


@pytest.mark.parametrize("value", [",,,", " , ", ","])
def test_a_disable_list_of_empty_names_is_refused(monkeypatch, value):
    monkeypatch.setenv("FA4DOCTOR_DISABLE", value)
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(PolicyError, match="FA4DOCTOR_DISABLE: empty backend name"):
        attention(q, q, q)


@pytest.mark.parametrize("field, value", [("head_dim_qk", 10**30), ("head_dim_v", 2**16 + 1),
                                          ("seqlen_q", 10**20), ("seqlen_kv", 2**31)])
def test_absurd_sizes_are_refused_by_the_spec(field, value):
    with pytest.raises(SpecError, match=f"{field}: must be at most"):
        AttentionSpec(**{field: value})
    AttentionSpec(head_dim_qk=512, head_dim_v=512, seqlen_q=2**31 - 1)  # the largest real ones pass
