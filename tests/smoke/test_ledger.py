"""The vetting ledger: many writers at once, corrupt and foreign files, and the dispatcher
refusing a failed class until the fingerprint changes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from click.testing import CliRunner

from fa4doctor.cli import cli
from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import LedgerEntry
from fa4doctor.probe.ledger import LedgerError, LedgerRead, default_ledger_path, read_ledger, record
from ledger_helpers import flat_entry

from .conftest import H100, fa4_env

FA4 = BackendName.FA4


def _entry(case: str, outcome: str = "pass", fp: str = "f" * 16, **changes) -> LedgerEntry:
    fields = dict(backend=FA4, fingerprint=fp, case=case, dtype="bf16", head_dim_qk=128, head_dim_v=128,
                  attn_mask_type="causal", window=False, direction="bwd", outcome=outcome,
                  gpu_uuid=H100.uuid)
    return flat_entry(**{**fields, **changes})


def _writer(path: str, rank: int, rounds: int) -> None:
    for n in range(rounds):
        record([_entry(f"rank{rank}-case{n}-{i}") for i in range(3)], path)


def _reader(path: str, reads: int, problems) -> None:
    for _ in range(reads):
        problem = read_ledger(path).problem
        if problem:
            problems.put(problem)


@pytest.mark.slow
def test_concurrent_writers_lose_nothing_and_readers_never_see_a_torn_file(tmp_path):
    path = str(tmp_path / "ledger.json")
    ctx = multiprocessing.get_context("fork")
    problems = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(path, rank, 8)) for rank in range(8)]
    readers = [ctx.Process(target=_reader, args=(path, 300, problems)) for _ in range(2)]
    for p in writers + readers:
        p.start()
    for p in writers + readers:
        p.join(120)
        assert p.exitcode == 0
    assert problems.empty()
    read = read_ledger(path)
    assert read.problem is None and len(read.entries) == 8 * 8 * 3
    assert len({e.case for e in read.entries}) == 8 * 8 * 3


def test_a_newer_result_replaces_the_same_case(tmp_path):
    path = tmp_path / "ledger.json"
    record([_entry("a", "crash"), _entry("b")], path)
    record([_entry("a", "pass")], path)
    assert sorted((e.case, e.outcome) for e in read_ledger(path).entries) == [("a", "pass"), ("b", "pass")]


@pytest.mark.parametrize("content,why", [
    ("{not json", "ignoring ledger"),
    ('{"schema": "someone.else", "entries": []}', "not a fa4doctor ledger"),
    ('{"schema": "fa4doctor.ledger", "schema_version": 99, "entries": []}', "schema_version 99"),
    ('{"schema": "fa4doctor.ledger", "schema_version": 1, "entries": [{"backend": "fa9"}]}', "fa9"),
])
def test_corrupt_or_foreign_files_are_reported_ignored_and_never_replaced(tmp_path, content, why):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    read = read_ledger(path)
    assert read.entries == () and why in read.problem
    with pytest.raises(LedgerError, match="refusing to write"):  # it could hold what a person can repair
        record([_entry("a")], path)
    assert path.read_text() == content


def test_an_empty_file_is_an_empty_ledger(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("")  # created ahead of time with the node's mode and group
    assert read_ledger(path) == LedgerRead(())
    record([_entry("a")], path)
    assert [e.case for e in read_ledger(path).entries] == ["a"]


def test_an_unreadable_path_is_a_problem_not_an_exception(tmp_path):
    assert "cannot read ledger" in read_ledger(tmp_path).problem  # a directory


def test_default_location_is_overridable():
    assert default_ledger_path({"FA4DOCTOR_LEDGER": "/x/l.json"}) == Path("/x/l.json")
    assert default_ledger_path({"XDG_STATE_HOME": "/s"}) == Path("/s/fa4doctor/ledger.json")
    assert default_ledger_path({"HOME": "/h"}).name == "ledger.json"


SPEC = AttentionSpec(dtype="bf16", head_dim_qk=96, num_heads_q=16, seqlen_q=2048, attn_mask_type="causal")


def _failure(env, **changes) -> LedgerEntry:
    return _entry("fa4:bf16-d96-h2-s128-causal", "wrong_result", fingerprint(FA4, env, H100), head_dim_qk=96,
                  head_dim_v=96, detail="dq max error 1.3 > tolerance 0.05", **changes)


def test_the_dispatcher_refuses_a_failed_class_and_accepts_it_under_a_new_fingerprint():
    env = fa4_env()
    assert decide(SPEC, env).chosen is FA4
    failed = env.with_ledger((_failure(env),))
    decision = decide(SPEC, failed)
    assert decision.chosen is BackendName.SDPA
    (reason,) = decision.reasons_for(FA4)
    assert reason.code is ReasonCode.SMOKE_FAILED and "d96" in reason.detail and "dq max error" in reason.detail
    # Inference only needs the forward, which passed: the backward failure does not apply.
    assert decide(AttentionSpec(**{**SPEC.to_dict(), "training": False, "window_size": (-1, -1)}),
                  failed).chosen is FA4
    # Another class (head dim 128) is not affected.
    assert decide(AttentionSpec(head_dim_qk=128, attn_mask_type="causal"), failed).chosen is FA4
    # Upgrading FA4 (or the driver) changes the fingerprint: the old result falls silent.
    upgraded = fa4_env("4.0.0b37").with_ledger(failed.ledger)
    assert decide(SPEC, upgraded).chosen is FA4


def _explain(*args):
    return CliRunner().invoke(cli, ["explain", "--head-dim", "96", "--heads", "16", "--mask", "causal",
                                    "--json", *args])


def test_explain_shows_the_ledger_anywhere(tmp_path):
    env = fa4_env()
    snapshot, ledger = tmp_path / "env.json", tmp_path / "ledger.json"
    snapshot.write_text(env.to_json())
    record([_failure(env)], ledger)
    before = _explain("--env", str(snapshot))
    after = _explain("--env", str(snapshot), "--ledger", str(ledger))
    assert before.exit_code == 0 and json.loads(before.stdout)["chosen"] == "fa4", before.output
    assert after.exit_code == 3 and json.loads(after.stdout)["chosen"] == "sdpa"
    assert "smoke_failed" in after.stdout and "dq max error" in after.stdout
    newer = tmp_path / "env-b37.json"
    newer.write_text(fa4_env("4.0.0b37").to_json())
    assert _explain("--env", str(newer), "--ledger", str(ledger)).exit_code == 0
    corrupt = tmp_path / "bad.json"
    corrupt.write_text("{")
    result = _explain("--env", str(snapshot), "--ledger", str(corrupt))  # named, so exit 2 (issue 13)
    assert result.exit_code == 2 and "ignoring ledger" in result.output and str(corrupt) in result.output
