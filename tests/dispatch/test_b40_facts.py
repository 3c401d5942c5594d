"""Facts re-read from 4.0.0b39/b40's source (each rule cites the file and line it came from)."""

from __future__ import annotations

import pytest

from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec

from .dispatch_envs import codes, make_env


@pytest.mark.parametrize("version, num_splits, refused", [
    ("4.0.0b36", 0, True), ("4.0.0b39", 0, False), ("4.0.0b40", 0, False),
    ("4.0.0b36", 2, True), ("4.0.0b40", 2, True), ("4.0.0b40", 1, False)])
def test_num_splits_auto_stops_raising_on_sm90_from_b39(version, num_splits, refused):
    spec = AttentionSpec(head_dim_qk=128, num_splits=num_splits, training=False)
    found = ReasonCode.NUM_SPLITS_UNSUPPORTED in codes(BackendName.FA4, spec, make_env((9, 0), fa4=version))
    assert found is refused


def test_splits_stay_allowed_on_sm100():
    spec = AttentionSpec(head_dim_qk=128, num_splits=4, training=False)
    assert ReasonCode.NUM_SPLITS_UNSUPPORTED not in codes(BackendName.FA4, spec, make_env((10, 0), fa4="4.0.0b36"))
