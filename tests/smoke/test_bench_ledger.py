"""Speed records in the vetting ledger: they round-trip beside smoke's entries, schema 1 and 2
ledgers still read, a reader from before them still reads the entries, and a speed block from a
newer fa4doctor costs nothing but itself."""

from __future__ import annotations

import json

import pytest

from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.speed import FWD, FWD_BWD, shape_class
from fa4doctor.environment import Environment, LedgerEntry, SpeedEntry, upgrade_ledger_entry
from fa4doctor.names import BackendName
from fa4doctor.probe.ledger import SPEED_VERSION, LedgerError, read_ledger, record
from fa4doctor.records import from_plain
from ledger_helpers import flat_entry

from .conftest import H100, fa4_env

SPEC = AttentionSpec(head_dim_qk=64, num_heads_q=12, seqlen_q=4096, attn_mask_type="causal")
ENTRY = flat_entry(backend=BackendName.FA4, fingerprint="f" * 16, case="fa4:x", dtype="bf16", head_dim_qk=64,
                   attn_mask_type="causal", window=False, direction="bwd", outcome="pass", gpu_uuid=H100.uuid)


def _speed(backend=BackendName.SDPA, kernel="cudnn", direction=FWD_BWD, ms=1.25) -> SpeedEntry:
    return SpeedEntry(backend=backend, fingerprint="s" * 16, case="gpt-2 s4096", shape_class=shape_class(SPEC),
                      direction=direction, median_ms=ms, tflops=244.0, kernel=kernel, rounds=10, gpu_uuid=H100.uuid)


def _old_reader(text: str) -> tuple[LedgerEntry, ...]:
    """What fa4doctor read before speed records (probe/ledger.py `_parse` at 7ccd527): the entries only."""
    data = json.loads(text)
    assert data["schema"] == "fa4doctor.ledger" and data["schema_version"] in (1, 2)
    return from_plain(tuple[LedgerEntry, ...], [upgrade_ledger_entry(e) for e in data["entries"]], "entries")


def test_speed_records_round_trip_beside_the_entries_in_a_schema_2_file(tmp_path):
    path = tmp_path / "ledger.json"
    record([ENTRY], path)  # smoke
    record((), path, speed=[_speed(), _speed(kernel=None, ms=1.5), _speed(direction=FWD, ms=0.4)])  # bench
    record([ENTRY], path)  # smoke again keeps them
    read = read_ledger(path)
    assert read.problem is read.speed_problem is None and read.entries == (ENTRY,)
    assert read.speed == (_speed(), _speed(kernel=None, ms=1.5), _speed(direction=FWD, ms=0.4))
    data = json.loads(path.read_text())
    assert (data["schema_version"], data["speed_version"]) == (2, SPEED_VERSION)
    assert _old_reader(path.read_text()) == (ENTRY,)  # a training pod on an older fa4doctor keeps its evidence


def test_a_new_figure_replaces_the_one_of_the_same_backend_kernel_class_direction_and_gpu(tmp_path):
    path = tmp_path / "ledger.json"
    record((), path, speed=[_speed(ms=2.0), _speed(kernel="flash", ms=3.0)])
    record((), path, speed=[_speed(ms=1.0)])
    assert sorted((s.kernel, s.median_ms) for s in read_ledger(path).speed) == [("cudnn", 1.0), ("flash", 3.0)]


@pytest.mark.parametrize("version,entry", [
    (1, {"backend": "fa4", "fingerprint": "f" * 16, "case": "fa4:x", "dtype": "bf16", "head_dim_qk": 64,
         "head_dim_v": 64, "attn_mask_type": "causal", "window": False, "direction": "bwd", "outcome": "pass"}),
    (2, {"backend": "fa4", "fingerprint": "f" * 16, "case": "fa4:x", "direction": "bwd", "outcome": "pass",
         "case_class": {"dtype": "bf16", "head_dim_qk": 64, "head_dim_v": 64, "attn_mask_type": "causal",
                        "window": False}}),
])
def test_schema_1_and_2_ledgers_without_speed_records_still_read(tmp_path, version, entry):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"schema": "fa4doctor.ledger", "schema_version": version, "entries": [entry]}))
    read = read_ledger(path)
    assert read.problem is None and read.speed == () and read.entries[0].case_class.head_dims == (64, 64)
    record((), path, speed=[_speed()])  # bench adds to it, as schema 2
    assert read_ledger(path).entries == read.entries and len(read_ledger(path).speed) == 1


@pytest.mark.parametrize("block", ["newer", "broken"])
def test_speed_records_this_fa4doctor_cannot_read_cost_only_themselves(tmp_path, block):
    path = tmp_path / "ledger.json"
    record([ENTRY], path)
    data = json.loads(path.read_text())
    data["speed_version"], data["speed"] = (2, [{"future": True}]) if block == "newer" else (1, [{"backend": "fa9"}])
    path.write_text(json.dumps(data))
    read = read_ledger(path)
    assert read.problem is None and read.entries == (ENTRY,) and read.speed == ()
    assert "ignoring the speed records" in read.speed_problem
    record([ENTRY], path)  # smoke writes the block back as it found it
    kept = json.loads(path.read_text())
    assert (kept["speed_version"], kept["speed"]) == (data["speed_version"], data["speed"])
    with pytest.raises(LedgerError, match="refusing to write speed records"):
        record((), path, speed=[_speed()])


def test_a_snapshot_carries_speed_records_only_when_it_has_some():
    env = fa4_env()
    assert "speed" not in env.to_plain()  # an older fa4doctor reads it as before
    measured = env.with_ledger((ENTRY,), (_speed(),))
    assert Environment.from_json(measured.to_json()) == measured
    assert measured.with_ledger(()).speed == (_speed(),)  # replacing the entries alone keeps the figures
