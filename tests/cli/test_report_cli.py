"""`fa4doctor report`: the page from a snapshot, a ledger and a bench report; every bad input file
is exit 2 naming its option, before any probing; the page is written atomically and never
clobbered; an unreadable default ledger is a problem on the page, not a failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from fa4doctor.cli import cli
from fa4doctor.environment import load_environment
from fa4doctor.probe.ledger import read_ledger
from report_helpers import FIXTURES, h100_bench  # tests/ is on sys.path (tests/conftest.py)

SNAPSHOT = str(FIXTURES / "h100-fa4-b40-check.json")
LEDGER = str(FIXTURES / "h100-fa4-b40-ledger.json")
NVML = str(Path(__file__).resolve().parents[1] / "fixtures" / "nvml" / "healthy_h100.json")


def report(*args: str, env: dict | None = None):
    result = CliRunner().invoke(cli, ["report", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def no_probe(monkeypatch):
    """Fail the test if the command probes this node."""
    from fa4doctor.probe import gather

    monkeypatch.setattr(gather, "gather_environment", lambda **_: pytest.fail("probed the node"))


@pytest.fixture
def bench_json(tmp_path) -> Path:
    env = load_environment(SNAPSHOT)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(h100_bench(env).to_plain()))
    return path


def test_help_explains_and_the_command_is_listed():
    result = report("--help")
    assert result.exit_code == 0
    for word in ("--html", "--ledger", "--snapshot", "--bench", "check --json", "bench --json", "docs/report.md"):
        assert word in result.output
    assert "report" in CliRunner().invoke(cli, ["--help"]).output


def test_html_is_required():
    result = report("--snapshot", SNAPSHOT)
    assert result.exit_code == 2 and "--html" in result.output


def test_writes_the_page_from_a_snapshot_ledger_and_bench(tmp_path, no_probe, bench_json):
    page = tmp_path / "h100.html"
    result = report("--html", str(page), "--snapshot", SNAPSHOT, "--ledger", LEDGER, "--bench", str(bench_json))
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and 'id="speed-matrix"' in text and "d128 gqa s8192" in text
    assert f"ledger {LEDGER}" in text and "bench report" in text
    assert "472 correctness cells (202 pass, 54 wrong), 8 speed rows" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "h100.html"]  # no temporary file left


def test_the_snapshots_own_ledger_by_default(tmp_path, no_probe):
    page = tmp_path / "h100.html"
    assert report("--html", str(page), "--snapshot", SNAPSHOT).exit_code == 0
    assert page.read_text(encoding="utf-8").count('data-outcome="wrong_result"') == 54


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"binary.json": b"\xff\xfe\x00{}", "notjson.json": b"{not json", "list.json": b"[]",
             "ledger.json": Path(LEDGER).read_bytes(), "snapshot.json": Path(SNAPSHOT).read_bytes(),
             "bench-bad-result.json": json.dumps({"schema": "fa4doctor.bench", "schema_version": 1,
                                                  "results": [{"shape": 1}]}).encode(),
             "bench-v9.json": json.dumps({"schema": "fa4doctor.bench", "schema_version": 9}).encode()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files} | {"missing": tmp_path / "missing.json", "dir": tmp_path}


@pytest.mark.parametrize("option,file,message", [
    ("--snapshot", "missing", "does not exist"),
    ("--snapshot", "dir", "is a directory"),
    ("--snapshot", "binary.json", "not UTF-8"),
    ("--snapshot", "notjson.json", "not valid JSON"),
    ("--snapshot", "ledger.json", "not an environment snapshot"),
    ("--bench", "missing", "does not exist"),
    ("--bench", "binary.json", "not UTF-8"),
    ("--bench", "notjson.json", "not valid JSON"),
    ("--bench", "snapshot.json", "not a bench report"),
    ("--bench", "list.json", "not a bench report"),
    ("--bench", "bench-v9.json", "schema_version 9 is not 1"),
    ("--bench", "bench-bad-result.json", "results[0].shape: expected str"),
    ("--ledger", "missing", "does not exist"),
    ("--ledger", "dir", "is a directory"),
    ("--ledger", "binary.json", "not UTF-8"),
    ("--ledger", "snapshot.json", "not a fa4doctor ledger"),
])
def test_a_bad_input_file_is_exit_2_naming_its_option(tmp_path, no_probe, option, file, message):
    bad = _bad_files(tmp_path)[file]
    page = tmp_path / "out.html"
    page.write_text("the old page")
    args = ["--html", str(page), option, str(bad)] + (["--snapshot", SNAPSHOT] if option != "--snapshot" else [])
    result = report(*args)
    assert result.exit_code == 2, result.output
    assert re.search(f"Invalid value for '?{option}'?: ", result.output) and message in result.output, result.output
    assert page.read_text() == "the old page"  # never clobbered


@pytest.mark.parametrize("where,message", [("nowhere/page.html", "does not exist"), ("", "is a directory")])
def test_an_html_path_that_cannot_be_written_is_exit_2(tmp_path, no_probe, where, message):
    result = report("--html", str(tmp_path / where), "--snapshot", SNAPSHOT)
    assert result.exit_code == 2 and "Invalid value for '--html'" in result.output and message in result.output


def test_a_failure_while_rendering_leaves_the_old_page_whole(tmp_path, monkeypatch, no_probe):
    from fa4doctor.exporters import report_html

    page = tmp_path / "out.html"
    page.write_text("the old page")
    monkeypatch.setattr(report_html, "render_html", lambda _: "half a page" + "\udc80")  # not encodable
    result = report("--html", str(page), "--snapshot", SNAPSHOT)
    assert result.exit_code == 1 and "internal error" in result.output
    assert page.read_text() == "the old page" and [p.name for p in tmp_path.iterdir()] == ["out.html"]


def test_an_unreadable_default_ledger_is_a_problem_on_the_page(tmp_path, monkeypatch):
    """Probing this node (NVML replayed, imports not run), the ledger it reads is not a ledger."""
    from fa4doctor.probe import gather
    from fa4doctor.probe.nvml import FakeNvml

    real = gather.gather_environment
    monkeypatch.setattr(gather, "gather_environment", lambda **kw: real(
        **kw, nvml=FakeNvml.from_file(NVML), check_imports=False))
    broken = tmp_path / "ledger.json"
    broken.write_text('{"schema": "something else"}')
    page = tmp_path / "node.html"
    result = report("--html", str(page), env={"FA4DOCTOR_LEDGER": str(broken), "XDG_CACHE_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert "probed on this node" in text and f"ignoring ledger {broken}: not a fa4doctor ledger" in text


def test_unreadable_speed_records_are_a_problem_on_the_page(tmp_path, no_probe):
    ledger = json.loads(Path(LEDGER).read_text())
    ledger |= {"speed_version": 99, "speed": [{"from": "a newer fa4doctor"}]}
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(ledger))
    assert read_ledger(path).speed_problem
    page = tmp_path / "out.html"
    result = report("--html", str(page), "--snapshot", SNAPSHOT, "--ledger", str(path))
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert "speed_version 99 is not 1" in text and 'data-outcome="wrong_result"' in text  # the entries count
