"""The dispatch counters the daemon re-exports, and the snapshot one read of the directory gives.

The set is closed: the families the dispatcher writes (fa4doctor/runtime/counters.py), each with
its label names and the values each label may take (backend names, reason codes). A sample
outside it (a foreign metric name, an unknown label value) is never re-exported, so a process
that writes the directory cannot add labels to the node's series; readers count such samples
as dropped.

>>> wanted("fa4doctor_dispatch_calls", "fa4doctor_dispatch_calls_total", {"backend": "sdpa"})
True
>>> wanted("fa4doctor_dispatch_calls", "fa4doctor_dispatch_calls_total", {"backend": "fa5"})
False
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from fa4doctor.runtime.counters import CALLS, FALLBACK_LABELS, FALLBACKS, UNVETTED
from fa4doctor.dispatch.reasons import BackendName, ReasonCode

# A key the archive carries for each file it absorbed, so a crash between writing the archive and
# unlinking the files never counts them twice (readers skip listed files, compaction unlinks them).
ABSORBED = "fa4doctor_archive_absorbed"
_BACKENDS = frozenset(b.value for b in BackendName)
_REASONS = frozenset(r.value for r in ReasonCode)
# family -> (help, label names, allowed values per label): the closed set this daemon re-exports,
# named as the dispatcher writes it (fa4doctor/runtime/counters.py).
FAMILIES = {
    CALLS: (
        "Attention calls run, by the backend that ran them, summed over the node's processes.",
        ("backend",), (_BACKENDS,)),
    FALLBACKS: (
        "Attention calls that did not run on the preferred backend, by why not.",
        FALLBACK_LABELS, (_BACKENDS, _BACKENDS, _REASONS)),
    UNVETTED: (
        "Attention calls on a GPU run by a backend with no passing smoke evidence for their class under "
        "the current fingerprint, summed over the node's processes.",
        ("backend",), (_BACKENDS,)),
}
FILE_STATES = ("writer", "archive", "ignored", "corrupt", "not_regular")


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    """Summed counters plus what the directory held: `files[state]` counts writer (or live and
    dead) / archive / ignored / corrupt / not_regular files; `samples_dropped` counts foreign
    samples; `held` counts the corrupt files (and removed ones) still counted at their last good
    values."""

    families: tuple[Metric, ...] = ()
    files: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILE_STATES, 0))
    samples_dropped: int = 0
    held: int = 0


def wanted(family: str, name: str, labels: dict) -> bool:
    """Whether one sample belongs to the closed set (`FAMILIES`); a family may be named with or
    without `_total`."""
    spec = FAMILIES.get(family.removesuffix("_total"))
    if spec is None or name != family.removesuffix("_total") + "_total":
        return False
    names, allowed = spec[1], spec[2]
    return (tuple(sorted(labels)) == tuple(sorted(names))
            and all(labels[n] in values for n, values in zip(names, allowed)))


def snapshot(totals: dict[tuple, float], tally: Tally, dropped: int, held: int = 0) -> CounterSnapshot:
    """`totals` ((family, sorted label pairs) -> value) as families, with the directory's tally."""
    families = empty_dispatch_families()
    for family in families:
        for (name, labels), value in sorted(totals.items()):
            if name == family.name:
                family.add_sample(name + "_total", dict(labels), value)
    files = dict.fromkeys(FILE_STATES, 0) | dict(tally)
    return CounterSnapshot(families=tuple(families), files=files, samples_dropped=dropped, held=held)


def empty_dispatch_families() -> list[Metric]:
    return [CounterMetricFamily(name, spec[0], labels=spec[1]) for name, spec in FAMILIES.items()]
