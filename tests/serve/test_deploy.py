"""The deployment files agree with the code: ports, metric names, security settings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fa4doctor.serve.collector import Collector
from fa4doctor.serve.gpu_load import GpuLoad
from fa4doctor.serve.state import DaemonState
from fa4doctor.serve.server import DEFAULT_PORT

yaml = pytest.importorskip("yaml")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SMOKE = {"schema": "fa4doctor.smoke", "cases": [{"backend": "fa4", "outcome": "pass"}]}


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory) -> set[str]:
    """Every sample name a full scrape has, with a real `fa4doctor check --json` report."""
    out = subprocess.run([sys.executable, "-m", "fa4doctor", "check", "--json"], capture_output=True,
                         text=True, timeout=120)
    check = json.loads(out.stdout)
    state = DaemonState(ready=True, check=check, smoke=SMOKE, probe_up=True, probe_last_success=1.0,
                        smoke_last_success=1.0, probe_last_seconds=1.0, gpus=(GpuLoad(0, "GPU-1", 0),),
                        probe_failures=(("timeout", 1),), smoke_skips=(("gpus_busy", 1),))
    names = set()
    metrics_dir = str(tmp_path_factory.mktemp("metrics"))
    for family in Collector(lambda: state, metrics_dir=metrics_dir).collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names | {"fa4doctor_dispatch_calls_total", "fa4doctor_dispatch_fallbacks_total",
                    "fa4doctor_unvetted_calls_total"}  # no samples yet


def referenced(text: str) -> set[str]:
    return set(re.findall(r"(?<![:\w])fa4doctor_[a-z0-9_]+(?![:\w])", text))


def recorded() -> set[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "fa4doctor-rules.yaml").read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def test_daemonset_is_locked_down_and_uses_the_default_port():
    ds = manifests()["DaemonSet"]["spec"]["template"]["spec"]
    [container] = ds["containers"]
    assert ds["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(container["resources"])
    assert container["ports"][0]["containerPort"] == DEFAULT_PORT
    assert str(DEFAULT_PORT) in container["args"]
    host = [v for v in ds["volumes"] if "hostPath" in v]
    assert host and any(m["name"] == host[0]["name"] for m in container["volumeMounts"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FA4DOCTOR_METRICS_DIR"].startswith("/var/lib/fa4doctor")
    assert ds["automountServiceAccountToken"] is False  # it never talks to the API server (issue 14)
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])  # never takes a GPU from jobs
    assert manifests()["Service"]["spec"]["ports"][0]["port"] == DEFAULT_PORT


def test_the_import_cache_survives_a_pod_restart():
    """XDG_CACHE_HOME (where `check` keeps its import results, probe/cache.py) is a hostPath made the
    daemon's own by the init container: a restarted pod's first probe is warm (issue 14)."""
    ds = manifests()["DaemonSet"]["spec"]["template"]["spec"]
    [container], [init] = ds["containers"], ds["initContainers"]
    cache = {e["name"]: e.get("value") for e in container["env"]}["XDG_CACHE_HOME"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
    volume = {v["name"]: v for v in ds["volumes"]}[mount["name"]]
    assert "hostPath" in volume and "emptyDir" not in volume
    [prepared] = [m["mountPath"] for m in init["volumeMounts"] if m["name"] == mount["name"]]
    uid, gid = ds["securityContext"]["runAsUser"], ds["securityContext"]["runAsGroup"]
    assert f"chown {uid}:{gid} {prepared}" in init["command"][-1] and f"chmod 0700 {prepared}" in init["command"][-1]


def test_prometheusrule_carries_exactly_the_tested_rule_file():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "fa4doctor-rules.yaml").read_text())
    assert manifests()["PrometheusRule"]["spec"] == rules


def test_rules_and_dashboard_only_use_metrics_the_daemon_exports(exported_names):
    known = exported_names | recorded()
    rules_text = (DEPLOY / "prometheus" / "fa4doctor-rules.yaml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "fa4doctor-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert referenced(rules_text) - known == set()
    assert referenced(exprs) - known == set()
    assert {"fa4doctor_backend_available", "fa4doctor_dispatch_fallbacks_total",
            "fa4doctor_smoke_cases", "fa4doctor_smoke_success", "fa4doctor_vetting_current",
            "fa4doctor_serve_revet_pending", "fa4doctor_unvetted_calls_total"} <= referenced(exprs)


def test_systemd_unit_runs_serve_on_the_default_port():
    unit = (DEPLOY / "systemd" / "fa4doctor.service").read_text()
    assert re.search(rf"ExecStart=\S+ serve .*--port {DEFAULT_PORT}", unit)
    assert "FA4DOCTOR_METRICS_DIR=" in unit and "User=" in unit
