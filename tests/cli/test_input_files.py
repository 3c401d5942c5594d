"""Every input file and flag under faults (issue 13): binary, special and huge `--env`, `--spec` and
`--ledger` files, an unwritable `--textfile`, absurd sizes, unknown devices and report versions
are exit 2 naming what was wrong, before any probing; and the shipped example specs load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fa4doctor.cli import cli
from fa4doctor.dispatch import report
from fa4doctor.dispatch.spec import load_specs
from fa4doctor.environment import REPORT_SCHEMA, REPORT_VERSIONS
from fa4doctor.records import MAX_INPUT_BYTES

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
H100 = str(EXAMPLES / "h100-fa4-b36.json")
NVML = str(REPO / "tests" / "fixtures" / "nvml" / "healthy_h100.json")
BINARY = b"\xff\xfe\x00\x01{}\x80"


def explain(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, ["explain", *args], env={"COLUMNS": "200", **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def check(tmp_path, monkeypatch, *args: str):
    """`check` that fails the test if it gets as far as probing."""
    from fa4doctor.probe import gather

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(gather, "gather", lambda **_: pytest.fail("probed before refusing its input"))
    return CliRunner().invoke(cli, ["check", "--no-imports", "--nvml-replay", NVML, *args])


@pytest.fixture
def binary(tmp_path) -> Path:
    path = tmp_path / "binary.json"
    path.write_bytes(BINARY)
    return path


@pytest.mark.parametrize("option", ["--env", "--spec", "--ledger"])
def test_a_binary_file_is_exit_2_naming_it(binary, option):
    """These were exit 1, "internal error: UnicodeDecodeError"."""
    args = ["--env", H100, option, str(binary)] if option != "--env" else [option, str(binary)]
    result = explain(*args)
    assert result.exit_code == 2, result.output
    assert str(binary) in result.output and "not UTF-8" in result.output and "internal error" not in result.output


@pytest.mark.parametrize("option", ["--spec", "--ledger"])
def test_check_refuses_a_binary_file_before_probing(tmp_path, monkeypatch, binary, option):
    result = check(tmp_path, monkeypatch, option, str(binary))
    assert result.exit_code == 2 and str(binary) in result.output and "not UTF-8" in result.output


@pytest.mark.parametrize("option", ["--env", "--spec", "--ledger"])
def test_a_device_or_fifo_is_refused_without_reading_it(tmp_path, option):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path in ("/dev/null", str(fifo)):  # /dev/zero only under a memory limit (below)
        args = ["--env", H100, option, path] if option != "--env" else [option, path]
        result = explain(*args)
        assert result.exit_code == 2 and f"{path} is not a regular file" in result.output, result.output


@pytest.mark.parametrize("option", ["--env", "--spec", "--ledger"])
def test_a_file_over_the_cap_is_refused_without_reading_it(tmp_path, option):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)  # sparse: costs no disk
    args = ["--env", H100, option, str(big)] if option != "--env" else [option, str(big)]
    result = explain(*args)
    assert result.exit_code == 2 and f"{big} is larger than {MAX_INPUT_BYTES} bytes" in result.output


def test_env_dev_zero_never_grows_memory():
    """It grew to 6.1 GB in 6 s; under a 1 GiB address-space limit it must still exit 2 at once."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
            "from fa4doctor.cli import cli; sys.argv = ['fa4doctor', 'explain', '--env', '/dev/zero']; cli()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "/dev/zero is not a regular file" in done.stderr, done.stderr


def test_a_corrupt_ledger_named_on_the_command_line_is_exit_2(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{")
    result = explain("--env", H100, "--ledger", str(path))
    assert result.exit_code == 2 and "--ledger" in result.output and str(path) in result.output


def test_a_textfile_that_cannot_be_written_is_exit_2_before_probing(tmp_path, monkeypatch):
    """It was exit 1 after the whole probe. /sys takes no new files, root or not."""
    result = check(tmp_path, monkeypatch, "--textfile", "/sys/fa4doctor.prom")
    assert result.exit_code == 2 and "cannot write in /sys" in result.output, result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 directory")
def test_a_textfile_in_a_read_only_directory_is_exit_2_before_probing(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = check(tmp_path, monkeypatch, "--textfile", str(locked / "fa4doctor.prom"))
    assert result.exit_code == 2 and f"cannot write in {locked}" in result.output


@pytest.mark.parametrize("args, needle", [
    (("--head-dim", str(10**30)), "--head-dim"),
    (("--head-dim-qk", "192", "--head-dim-v", str(2**16 + 1)), "--head-dim-v"),
    (("--seqlen-q", str(10**20)), "--seqlen-q"),
    (("--seqlen-kv", str(2**31)), "--seqlen-kv"),
    (("--device", "tpu"), "'tpu' is not one of 'cuda', 'cpu'"),
])
def test_absurd_flags_are_exit_2_naming_the_flag(args, needle):
    result = explain("--env", H100, *args)
    assert result.exit_code == 2 and needle in result.output, result.output


@pytest.mark.parametrize("value", [",,,", " , ", ","])
def test_an_empty_name_in_fa4doctor_disable_is_exit_2(value):
    """`,,,` disabled nothing, silently."""
    result = explain("--env", H100, env={"FA4DOCTOR_DISABLE": value})
    assert result.exit_code == 2 and "FA4DOCTOR_DISABLE: empty backend name" in result.output


def test_a_report_of_an_unknown_version_is_refused(tmp_path):
    wrapper = json.loads(Path(H100).read_text())  # a `check --json` report: the snapshot is inside
    assert (wrapper["schema"], wrapper["schema_version"]) == ("fa4doctor.check", 1)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(wrapper | {"schema_version": 99}))
    result = explain("--env", str(path))
    assert result.exit_code == 2 and "schema_version 99" in result.output and str(path) in result.output


def test_the_report_schema_the_environment_accepts_is_the_reports_own():
    assert (REPORT_SCHEMA, REPORT_VERSIONS[-1]) == (report.SCHEMA, report.SCHEMA_VERSION)


SPECS = EXAMPLES / "specs"


@pytest.mark.parametrize("name, dims, heads", [
    ("llama-3-8b.json", (128, 128), (32, 8)),
    ("gpt2.json", (64, 64), (12, 12)),
    ("deepseek-v3-mla.json", (192, 128), (128, 128)),
])
def test_the_example_specs_are_real_models_load_specs_reads(name, dims, heads):
    specs = load_specs(SPECS / name)
    first = specs[0][1]
    assert (first.head_dim_qk, first.head_dim_v) == dims and (first.num_heads_q, first.num_heads_kv) == heads
    assert all(n.replace("_", "").isalnum() and n == n.lower() for n, _ in specs)  # Prometheus label values
    result = explain("--env", H100, "--spec", str(SPECS / name), "--json")
    assert result.exit_code in (0, 3), result.output


def test_no_doc_or_help_names_a_spec_file_that_is_not_shipped():
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "fa4doctor" / "cli").glob("*.py"))]
    for path in texts:
        for word in path.read_text().split():
            if word.endswith(".json") and "specs" in word and not word.startswith(("$", "/")):
                assert (REPO / word).exists() or not word.startswith("examples/"), f"{path}: {word}"
        assert "my-model-specs.json" not in path.read_text(), path


def test_check_reports_a_binary_default_ledger_as_a_finding(tmp_path, monkeypatch, binary):
    """Item 1: `check` exited 1 (UnicodeDecodeError) when $FA4DOCTOR_LEDGER was not UTF-8."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FA4DOCTOR_LEDGER", str(binary))
    result = CliRunner().invoke(cli, ["check", "--json", "--no-imports", "--nvml-replay", NVML])
    assert result.exit_code in (0, 3), result.output
    [problem] = [p for p in json.loads(result.stdout)["problems"] if p["code"] == "ledger_unreadable"]
    assert str(binary) in problem["message"] and "not UTF-8" in problem["message"]


def test_smoke_refuses_a_ledger_it_could_not_record_before_running(monkeypatch, binary):
    from fa4doctor.smoke import runner

    monkeypatch.setattr(runner, "run_smoke", lambda *a, **k: pytest.fail("ran kernels before refusing the ledger"))
    result = CliRunner().invoke(cli, ["smoke", "--env", H100, "--device", "cpu", "--ledger", str(binary)])
    assert result.exit_code == 2 and "--ledger" in result.output and str(binary) in result.output
