"""Version gates, each tested on both sides of its boundary (PEP 440 pre-releases, local tags, .post)."""

from __future__ import annotations

import pytest

from fa4doctor.dispatch.backends import FA2, FA3, FA4
from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.versions import at_least, below, parse
from fa4doctor.environment import ImportStatus

from .dispatch_envs import codes, make_env, only, previous

R, B = ReasonCode, BackendName
INFER = AttentionSpec(training=False)
TRAIN = AttentionSpec()
VERSION_CODES = {R.VERSION_TOO_OLD, R.VERSION_TOO_NEW, R.VERSION_WRONG_GENERATION, R.VERSION_INVALID}


def test_the_gates_are_the_documented_ones():
    # docs/sources.md#fa4-minimum-version and issue 2: these constants are the data every test below derives from.
    assert (FA4.MIN_VERSION, FA4.RECOMMENDED_VERSION, FA4.GENERATION) == ("4.0.0b5", "4.0.0b11", 4)
    assert (FA3.MIN_VERSION, FA3.MAX_VERSION, FA3.GENERATION) == (None, None, 3)
    assert (FA2.MIN_VERSION, FA2.MAX_VERSION, FA2.BLACKWELL_MIN_VERSION) == ("2.1.1", "2.9", "2.7.3")


@pytest.mark.parametrize("text, minimum, expected", [
    ("4.0.0b5", "4.0.0b5", True), ("4.0.0b4", "4.0.0b5", False), ("4.0.0b36", "4.0.0b5", True),
    ("4.0.0b10", "4.0.0b9", True),  # numeric, not lexical: b10 > b9
    ("2.8.3+cu12torch2.4cxx11abiFALSE", "2.8.3", True), ("2.8.3.post1", "2.8.3", True),
    ("2.1.1rc1", "2.1.1", False), ("junk", "1.0", False), (None, "1.0", False),
])
def test_at_least(text, minimum, expected):
    assert at_least(text, minimum) is expected


@pytest.mark.parametrize("text, expected", [
    ("2.8.3", True), ("2.8.3.post1", True), ("2.8.3+cu12torch2.4cxx11abiFALSE", True), ("2.8.4", True),
    ("2.9.0", False), ("2.9", False), ("2.9.0rc1", False), ("2.9.0.dev0", False), ("2.9.0.post1", False),
    ("3.0.0b1", False), ("junk", False),
])
def test_below_an_exclusive_bound_counts_its_pre_releases_as_reached(text, expected):
    assert below(text, "2.9") is expected


def test_parse_rejects_non_pep440():
    assert parse("2.8.3-custom build") is None and parse("4.0.0b36").major == 4


@pytest.mark.parametrize("backend, version, blocked", [
    (B.FA4, previous(FA4.MIN_VERSION), {R.VERSION_TOO_OLD}),  # 4.0.0b4
    (B.FA4, FA4.MIN_VERSION, set()),
    (B.FA4, "4.0.0b5.post1", set()),
    (B.FA4, "4.0.0b36+local", set()),
    (B.FA4, "4.0.0", set()),
    (B.FA4, "3.0.0b1", {R.VERSION_WRONG_GENERATION}),  # an FA3 build is never FA4
    (B.FA4, "5.0.0", {R.VERSION_WRONG_GENERATION}),
    (B.FA3, "3.0.0b1", set()),
    (B.FA3, "3.0.0", set()),
    (B.FA3, "3.0.0b1+local", set()),
    # TE PR #2432's range 3.0.0b < v < 4.0.0 took FA4 betas for FA3 (docs/sources.md#te-version-ranges).
    (B.FA3, "4.0.0b8", {R.VERSION_WRONG_GENERATION}),
    (B.FA3, "2.8.3", {R.VERSION_WRONG_GENERATION}),
    (B.FA2, previous(FA2.MIN_VERSION), {R.VERSION_TOO_OLD}),  # 2.1.0
    (B.FA2, FA2.MIN_VERSION, set()),
    (B.FA2, "2.8.3.post1", set()),  # TE #3356: the inclusive max of PR #2432 refused it
    (B.FA2, "2.8.3+cu12torch2.4cxx11abiFALSE", set()),
    (B.FA2, "2.9.0", {R.VERSION_TOO_NEW}),
    (B.FA2, "2.9.0rc1", {R.VERSION_TOO_NEW}),
    (B.FA2, "4.0.0b36", {R.VERSION_WRONG_GENERATION}),
    (B.FA2, "not-a-version", {R.VERSION_INVALID}),
])
def test_version_window(backend, version, blocked):
    found = codes(backend, INFER, only(backend, (9, 0), version))
    assert found & VERSION_CODES == blocked


@pytest.mark.parametrize("version, cc, blocked", [
    ("2.7.2", (10, 0), True), ("2.7.3", (10, 0), False), ("2.7.2", (12, 0), True), ("2.7.3", (12, 0), False),
    ("2.7.2", (9, 0), False), ("2.7.2+cu128torch2.7", (10, 0), True),
])
def test_fa2_needs_2_7_3_on_blackwell(version, cc, blocked):
    assert (R.VERSION_TOO_OLD in codes(B.FA2, INFER, only(B.FA2, cc, version))) is blocked


@pytest.mark.parametrize("version, advised", [
    (previous(FA4.RECOMMENDED_VERSION), True), (FA4.RECOMMENDED_VERSION, False), ("4.0.0b36", False)])
def test_fa4_below_b11_is_an_advisory_not_a_refusal(version, advised):
    decision = decide(INFER, only(B.FA4, (9, 0), version))
    notes = {r.code for r in dict(decision.advisories).get(B.FA4, ())}
    assert decision.chosen is B.FA4
    assert (R.VERSION_BELOW_RECOMMENDED in notes) is advised


def test_not_installed_and_import_failure_are_reasons():
    assert R.NOT_INSTALLED in codes(B.FA4, INFER, make_env((9, 0)))
    env = make_env((9, 0), fa4="4.0.0b36", import_status=ImportStatus.MISSING_DEPENDENCY,
                   import_error="Traceback...\nModuleNotFoundError: No module named 'cutlass'")
    reasons = decide(INFER, env).reasons_for(B.FA4)
    assert [r.code for r in reasons] == [R.IMPORT_FAILED]
    assert "No module named 'cutlass'" in reasons[0].detail
    assert codes(B.FA4, INFER, make_env((9, 0), fa4="4.0.0b36", import_status=ImportStatus.NOT_CHECKED)) == set()


@pytest.mark.parametrize("version, cutlass, blocked", [
    ("4.0.0b24", "4.6.1", True), ("4.0.0b24+local", "4.6.1", True), ("4.0.0b24", "4.6.2", False),
    ("4.0.0b26", "4.6.0.dev0", False)])
def test_fa4_b24_needs_cutlass_4_6_2(version, cutlass, blocked):
    env = make_env((9, 0), fa4=version, deps=(("nvidia-cutlass-dsl", cutlass),))
    assert (R.KNOWN_BUG in codes(B.FA4, INFER, env)) is blocked
