"""On a GPU node: the smoke levels for real (skipped without CUDA). The lead runs, on an H100 with
flash-attn-4 4.0.0b36 on PYTHONPATH:

    python -m pytest tests/smoke/test_gpu_smoke.py -m gpu -q -rs
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def node_env():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from fa4doctor.probe.gather import gather_environment

    return gather_environment(check_imports=False)


def _failures(report):
    return [f"{c.case} {c.direction}: {c.outcome} {c.detail}" for c in report.failures]


def test_quick_passes_for_every_installed_backend(node_env, tmp_path):
    from fa4doctor.smoke.runner import run_smoke

    report = run_smoke(node_env, level="quick", ledger_path=tmp_path / "ledger.json")
    assert report.cases, "no case ran"
    assert report.healthy, _failures(report)
    assert len(report.ledger_entries) == len([c for c in report.cases if c.outcome != "skipped"])


def test_standard_fa4_and_sdpa_agree_with_float64(node_env, tmp_path):
    from fa4doctor.names import BackendName
    from fa4doctor.smoke.runner import run_smoke

    if node_env.backend(BackendName.FA4) is None:
        pytest.skip("flash-attn-4 is not installed")
    report = run_smoke(node_env, level="standard", backends=[BackendName.FA4, BackendName.SDPA],
                       ledger_path=tmp_path / "ledger.json")
    assert report.healthy, _failures(report)
