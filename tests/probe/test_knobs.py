"""FA4's knobs: the table against FA4's own source, what the probe records, check's findings, the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fa4doctor.environment import Knob
from fa4doctor.probe.knobs import BY_NAME, KNOBS, NOT_LISTED, SOURCE_VERSION, read_knobs
from fa4doctor.probe.problems import knob_findings
from fa4doctor.probe.system import CACHE_DIR, CACHE_ENABLED

ROOT = Path(__file__).resolve().parents[2]
# The cited lines, copied from the wheel: this test runs anywhere, the next one checks the copy.
EXCERPTS = ROOT / "tests" / "fixtures" / "fa4-b40-knob-lines.txt"
UPSTREAM = Path("/tmp/fa4src/b40/flash_attn/cute")  # an unpacked 4.0.0b40 wheel, where there is one
READS = re.compile(r"""(?:environ\.get|getenv|_env_choice)\(\s*["']([A-Z][A-Z0-9_]+)["']""")


def _excerpts() -> dict[tuple[str, int], str]:
    lines = (line.split(":", 2) for line in EXCERPTS.read_text().splitlines() if not line.startswith("#"))
    return {(file, int(number)): text for file, number, text in lines}


def test_each_knob_is_on_the_line_the_table_cites():
    excerpts = _excerpts()
    assert SOURCE_VERSION == "4.0.0b40" and len(BY_NAME) == len(KNOBS)
    for knob in KNOBS:
        assert knob.name in excerpts[(knob.file, knob.line)], knob.source
        assert knob.severity == ("warning" if knob.changes_kernels else "info"), knob.name


def test_the_cache_knobs_are_the_ones_the_cache_probe_reads():
    assert {k.name for k in KNOBS if not k.changes_kernels} == {CACHE_ENABLED, CACHE_DIR}


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="no unpacked flash-attn-4 4.0.0b40 wheel at /tmp/fa4src/b40")
def test_the_excerpts_and_the_table_match_the_b40_source():
    for (file, number), text in _excerpts().items():
        assert (UPSTREAM / file).read_text().splitlines()[number - 1] == text, f"{file}:{number}"
    read = {name for path in UPSTREAM.rglob("*.py") for name in READS.findall(path.read_text())}
    assert read - set(BY_NAME) - set(NOT_LISTED) == set(), "a variable b40 reads is neither listed nor left out"
    assert {k.name for k in KNOBS if k.name != "CUTE_DSL_ARCH"} <= read  # CuTe DSL reads that one itself


def test_read_knobs_keeps_the_set_ones_in_table_order():
    environ = {CACHE_DIR: "/scratch/jit", "FLASH_ATTENTION_ARCH": "sm_100", "FLASH_ATTENTION_BWD_PACK_GQA": "",
               "HOME": "/root", "FA_CLC": "1"}
    assert read_knobs(environ) == (Knob("FLASH_ATTENTION_ARCH", "sm_100"), Knob("FLASH_ATTENTION_BWD_PACK_GQA", ""),
                                   Knob(CACHE_DIR, "/scratch/jit", changes_kernels=False))
    assert read_knobs({}) == ()


def test_each_set_knob_is_a_finding_at_the_tables_severity():
    knobs = read_knobs({"FA_DISABLE_2CTA": "1", CACHE_ENABLED: "1"})
    two_cta, cache = knob_findings(knobs, fa4_installed=True)
    assert (two_cta.code, two_cta.severity, cache.severity) == ("fa4_knob_set", "warning", "info")
    assert two_cta.message == "FA_DISABLE_2CTA='1' is set: " + BY_NAME["FA_DISABLE_2CTA"].changes
    assert "unset FA_DISABLE_2CTA unless intended" in two_cta.fix and "say nothing about another" in two_cta.fix
    assert "not the kernels" in cache.fix
    assert knob_findings(knobs, fa4_installed=False) == []  # nothing reads them


def test_docs_list_every_knob_with_its_severity_and_source():
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| (\w+) \| .* \| `flash_attn/cute/([\w.]+)` L(\d+) \|$",
                      (ROOT / "docs" / "check.md").read_text(), re.M)
    assert {name: (severity, file, int(line)) for name, severity, file, line in rows} == \
        {k.name: (k.severity, k.file, k.line) for k in KNOBS}
