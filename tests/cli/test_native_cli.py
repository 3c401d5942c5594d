"""`fa4doctor native build|status`: what each says, and its exit status."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fa4doctor.cli import cli


def _run(args, env):
    return CliRunner().invoke(cli, args, env={"FA4DOCTOR_NATIVE": None, **env})


def test_status_when_not_built(tmp_path):
    result = _run(["native", "status"], {"XDG_CACHE_HOME": str(tmp_path)})
    assert result.exit_code == 3 and "not built for torch" in result.output and "fa4doctor native build" in result.output


def test_build_then_status(native_build):
    built = _run(["native", "build"], native_build)
    assert built.exit_code == 0 and "already built for this torch" in built.output, built.output
    status = _run(["native", "status", "--json"], native_build)
    assert status.exit_code == 0 and json.loads(status.output)["active"] is True
    disabled = _run(["native", "status"], {**native_build, "FA4DOCTOR_NATIVE": "0"})
    assert disabled.exit_code == 3 and "disabled by FA4DOCTOR_NATIVE=0" in disabled.output


def test_a_failing_compiler_is_reported(tmp_path):
    result = _run(["native", "build", "--json"], {"XDG_CACHE_HOME": str(tmp_path), "CXX": "false"})
    assert result.exit_code == 1, result.output
    said = json.loads(result.output)
    assert not said["ok"] and "false exited with status 1" in said["error"] and said["command"][0] == "false"
    plain = _run(["native", "build"], {"XDG_CACHE_HOME": str(tmp_path), "CXX": "/nonexistent/c++"})
    assert plain.exit_code == 1 and "could not build the hit path" in plain.output and "python3-dev" in plain.output
