"""node_exporter textfile output: the check's metric families plus `fa4doctor_probe_up 1`, written
atomically through `prometheus_client.write_to_textfile` (temp file + rename;
docs/sources.md#textfile-output), so the collector never reads half a file.

>>> import os, tempfile
>>> from fa4doctor.environment import Environment
>>> from fa4doctor.dispatch.report import build_report
>>> path = os.path.join(tempfile.mkdtemp(), "fa4doctor.prom")
>>> _ = write_check_textfile(build_report(Environment()), path)
>>> "fa4doctor_probe_up 1.0" in open(path).read()
True
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric

from fa4doctor.exporters.metrics_env import environment_families


# write_to_textfile reads any object with `collect()`: a registry would add nothing here.
class Families:
    """A registry stand-in: what prometheus-client's writers and encoders need (`collect()`)."""

    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def write_families(families: Iterable[Metric], path: str | Path) -> Path:
    """Write `families` to `path` in the text format, replacing the file atomically."""
    path = Path(path)
    if path.suffix != ".prom":
        # node_exporter reads only *.prom (node_exporter README, textfile collector).
        raise ValueError(f"--textfile: {path} must end in .prom for node_exporter's textfile collector")
    write_to_textfile(str(path), Families(families))
    return path


def write_check_textfile(check: dict, path: str | Path) -> Path:
    """The probe's families and `fa4doctor_probe_up 1` (the probe ran, whatever it found)."""
    up = GaugeMetricFamily("fa4doctor_probe_up", "1 if the last probe ran to completion.", value=1.0)
    return write_families([*environment_families(check), up], path)
