"""The one collector: report families, health, dispatch counters; robust to renderer faults."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily

from fa4doctor.serve.collector import Collector
from fa4doctor.serve.state import DaemonState
from tests.serve.helpers import check_report, write_counters


def registry_for(state, **kwargs) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(Collector(lambda: state, **kwargs))
    return registry


def gauge(name, value):
    return [GaugeMetricFamily(name, "doc", value=value)]


def test_the_daemons_health_wins_a_name_clash_and_no_name_appears_twice():
    calls = []

    def render_check(check):
        calls.append(check)
        return gauge("fa4doctor_backend_available", 1) + gauge("fa4doctor_probe_up", 42)

    state = DaemonState(check=check_report(), probe_up=False)
    registry = registry_for(state, renderers={"check": render_check})
    # the daemon's own fa4doctor_probe_up (0: probe_up=False) hides the renderer's stray 42
    assert registry.get_sample_value("fa4doctor_probe_up") == 0
    assert registry.get_sample_value("fa4doctor_backend_available") == 1
    names = [m.name for m in registry.collect()]
    assert len(names) == len(set(names))
    assert registry.get_sample_value("fa4doctor_probe_up") == 0
    assert len(calls) == 1, "a report renders once, not on every scrape"


def test_a_failing_renderer_is_reported_not_raised():
    def boom(report):
        raise KeyError("environment")

    registry = registry_for(DaemonState(check=check_report()), renderers={"check": boom, "smoke": lambda smoke: []})
    assert registry.get_sample_value("fa4doctor_serve_report_rendered", {"report": "check"}) == 0
    assert registry.get_sample_value("fa4doctor_serve_report_rendered", {"report": "smoke"}) == 0
    assert registry.get_sample_value("fa4doctor_probe_up") == 0


def test_a_new_report_renders_again():
    seen = []
    holder = {"state": DaemonState(check=check_report(healthy=True))}
    registry = CollectorRegistry()
    registry.register(Collector(lambda: holder["state"],
                                renderers={"check": lambda c: seen.append(c["healthy"]) or []}))
    list(registry.collect())
    holder["state"] = DaemonState(check=check_report(healthy=False))
    list(registry.collect())
    assert seen == [True, False]


def test_dispatch_counters_and_directory_health(tmp_path):
    write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"fa2": 4})
    (tmp_path / "counter_2-bad00000.db").write_bytes(b"\x07" * 9)
    registry = registry_for(DaemonState(), metrics_dir=str(tmp_path), renderers={})
    assert registry.get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "fa2"}) == 4
    assert registry.get_sample_value("fa4doctor_metrics_dir_files", {"state": "corrupt"}) == 1
    assert registry.get_sample_value("fa4doctor_metrics_dir_files", {"state": "writer"}) == 1


def test_without_a_metrics_dir_the_counter_families_still_exist():
    names = {m.name for m in registry_for(DaemonState(), renderers={}).collect()}
    assert {"fa4doctor_dispatch_calls", "fa4doctor_dispatch_fallbacks"} <= names


def test_production_renderers_are_used_by_default():
    from fa4doctor.exporters.metrics_env import environment_families
    from fa4doctor.exporters.metrics_smoke import smoke_families

    assert Collector(DaemonState)._renderers == {"check": environment_families, "smoke": smoke_families}


def both_formats():
    from prometheus_client import exposition
    from prometheus_client.openmetrics import exposition as openmetrics

    return [(exposition.generate_latest, exposition.CONTENT_TYPE_PLAIN_0_0_4),
            (openmetrics.generate_latest, openmetrics.CONTENT_TYPE_LATEST)]


def test_exposition_is_byte_for_byte_what_the_registry_encodes(tmp_path):
    path = write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"fa2": 4})
    renders = []

    def render_check(check):  # a stray duplicate of a dispatch family: the first one wins
        renders.append(check)
        return gauge("fa4doctor_backend_available", 1) + gauge("fa4doctor_metrics_dir_files", 7)

    holder = {"state": DaemonState(check=check_report(), probe_up=True)}
    collector = Collector(lambda: holder["state"], metrics_dir=str(tmp_path),
                          renderers={"check": render_check})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    for step in range(3):
        for encoder, media_type in both_formats():
            assert collector.exposition(encoder, media_type) == encoder(registry)
        write_counters(path, {"fa2": 5 + step})  # counters move between scrapes
        holder["state"] = DaemonState(check=holder["state"].check, probe_up=step % 2 == 0)
    assert len(renders) == 1, "one report renders once, whatever else changes"


def test_exposition_encodes_the_static_part_once_per_state(tmp_path):
    holder = {"state": DaemonState(probe_up=True)}
    collector = Collector(lambda: holder["state"], metrics_dir=str(tmp_path), renderers={})
    encoded = []

    def encoder(registry):
        from prometheus_client import generate_latest

        encoded.append([m.name for m in registry.collect()])
        return generate_latest(registry)

    for _ in range(3):
        assert b"fa4doctor_probe_up 1.0" in collector.exposition(encoder, "text/plain")
    holder["state"] = DaemonState(probe_up=False)
    assert b"fa4doctor_probe_up 0.0" in collector.exposition(encoder, "text/plain")
    static = [names for names in encoded if "fa4doctor_probe_up" in names]
    assert len(static) == 2 and len(encoded) == 2 + 4  # per call, only the dispatch families
