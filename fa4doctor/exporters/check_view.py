"""The terminal view of a `fa4doctor check` report: software, GPUs, backends, problems.

It renders the report dict only (what `check --json` prints), so a saved report renders the same.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fa4doctor.environment import cuda_version_text

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
IMPORT_STYLE = {"ok": "green", "not_installed": "dim", "not_checked": "dim"}


def render_check(report: dict, console: Console | None = None, imports_cached: bool | None = None) -> None:
    """Print `report` (a `check --json` object) as tables."""
    console = console or Console(highlight=False)
    env = report["environment"]
    console.print(_software(env, imports_cached))
    console.print(_gpus(env))
    console.print(_backends(env))
    console.print(_eligibility(report))
    if report.get("smoke"):
        console.print(_smoke(report["smoke"]))
    console.print(_problems(report["problems"]))
    verdict = "[bold green]healthy[/]" if report["healthy"] else "[bold red]problems found[/]"
    console.print(f"{verdict}: expecting {report.get('expect', 'fa4')}, exit status {report['exit_code']} "
                  f"({report['timings'].get('total_seconds', 0):.2f} s)")


def _software(env: dict, imports_cached: bool | None) -> Table:
    torch, driver = env["torch"], env["driver"]
    table = Table(title="Software", show_header=False, title_justify="left")
    cuda = driver.get("cuda_driver_version")
    rows = [("host", env.get("hostname") or "?"), ("python", env.get("python") or "?"),
            ("torch", f"{torch.get('version') or 'not installed'} (CUDA {torch.get('cuda') or 'none'}, "
                      f"C++11 ABI {_text(torch.get('cxx11_abi'))})"),
            ("SDPA flash kernel", flash_text(torch)),
            ("driver", f"{driver.get('driver_version') or '-'} (CUDA {cuda_version_text(cuda)})"
                       if cuda else driver.get("driver_version") or "-"),
            ("NVML", driver["nvml_status"] + (f": {driver['nvml_error']}" if driver.get("nvml_error") else "")),
            ("CUDA_VISIBLE_DEVICES", _text(env.get("cuda_visible_devices"))),
            ("CUDA_DEVICE_ORDER", _text(env.get("cuda_device_order"))),
            ("FA4 JIT cache", _jit(env["jit_cache"]))]
    if imports_cached is not None:
        rows.append(("imports", "from cache" if imports_cached else "checked now in child processes"))
    for package in env["packages"]:
        rows.append((package["name"], package["version"]))
    for key, value in rows:
        table.add_row(key, escape(value))
    return table


def flash_text(torch: dict) -> str:
    """Which impl runs SDPA's flash kernel, as the snapshot says (torch >= 2.12's registry).

    >>> flash_text({"flash_registry": True, "flash_impls": ["FA3", "FA4"], "flash_impl": "FA4"})
    'FA4 (activated; registered: FA3, FA4; per process: the runtime reads its own)'
    """
    registry = torch.get("flash_registry")
    if registry is None:
        return "not checked (torch was not imported)"
    if not registry:
        return "FA2, torch's own (this torch has no flash registry)"
    impl = torch.get("flash_impl")
    state = f"{impl} (activated" if impl else "FA2, torch's own (nothing activated"
    registered = ", ".join(torch.get("flash_impls") or ()) or "none"
    return f"{state}; registered: {registered}; per process: the runtime reads its own)"


def _jit(cache: dict) -> str:
    state = "enabled" if cache.get("enabled") else "disabled"
    size = f", {cache['size_bytes'] / 2**20:.1f} MiB in {cache['entries']} files" if cache.get("size_bytes") is not None else ""
    return f"{state}, {cache.get('directory')} ({'writable' if cache.get('writable') else 'not writable'}{size})"


def _text(value: Any) -> str:
    return "unset" if value is None else str(value)


def _gpus(env: dict) -> Table:
    table = Table(title="GPUs", title_justify="left")
    for column in ("cuda", "nvml", "UUID", "name", "cc", "memory", "MIG", "ECC unc.", "clocks", "PCIe", "fabric"):
        table.add_column(column)
    for gpu in env["gpus"]:
        if gpu.get("lost"):
            table.add_row(_text(gpu.get("cuda_index")), str(gpu.get("nvml_index")), "-", "[red]lost[/]", *["-"] * 7)
            continue
        memory = f"{gpu['memory_total_bytes'] / 2**30:.0f} GiB" if gpu.get("memory_total_bytes") else "-"
        mig = _onoff(gpu.get("mig_mode_current"))
        if gpu.get("mig_mode_pending") is not None and gpu.get("mig_mode_pending") != gpu.get("mig_mode_current"):
            mig += f" → {_onoff(gpu['mig_mode_pending'])}"
        pcie = (f"Gen{gpu.get('pcie_gen_current')} x{gpu.get('pcie_width_current')} / "
                f"Gen{gpu.get('pcie_gen_max')} x{gpu.get('pcie_width_max')}") if gpu.get("pcie_gen_max") else "-"
        reasons = gpu.get("clock_event_reasons")
        table.add_row("-" if gpu.get("cuda_index") is None else str(gpu["cuda_index"]), str(gpu.get("nvml_index")),
                      (gpu.get("uuid") or "-")[:12], escape(gpu["name"]), "{}.{}".format(*gpu["compute_capability"]), memory,
                      mig, _text(gpu.get("ecc_uncorrected_volatile")),
                      "-" if reasons is None else f"0x{reasons:x}", pcie, gpu.get("fabric_state") or "-")
    if not env["gpus"]:
        table.add_row("-", "-", "-", "no GPU found", *["-"] * 7)
    return table


def _onoff(value: bool | None) -> str:
    return "-" if value is None else ("on" if value else "off")


def _backends(env: dict) -> Table:
    table = Table(title="Backends", title_justify="left")
    for column in ("backend", "distribution", "version", "import", "detail"):
        table.add_column(column)
    for install in env["backends"]:
        status = install["import_status"]
        table.add_row(install["backend"], install.get("distribution") or "-", install.get("version") or "-",
                      f"[{IMPORT_STYLE.get(status, 'red')}]{status}[/]", escape((install.get("import_error") or "")[:100]))
    return table


def _eligibility(report: dict) -> Table:
    table = Table(title=f"Eligibility (expecting {report.get('expect', 'fa4')})", title_justify="left")
    for column in ("cuda", "spec", "chosen", "why not the preferred backend"):
        table.add_column(column)
    for verdict in report["verdicts"]:
        preferred = next(b for b in verdict["backends"] if b["backend"] == verdict["preferred"])
        why = "; ".join(f"{r['code']}: {r['detail']}" for r in preferred["reasons"][:2])
        chosen = verdict["chosen"] or "none"
        style = "green" if chosen == report.get("expect", "fa4") else "yellow"
        table.add_row(str(verdict["gpu"]), verdict["spec_name"], f"[{style}]{chosen}[/]", escape(why or "-"))
    return table


def _smoke(smoke: dict) -> Table:
    table = Table(title=f"Smoke ({smoke.get('level')})", title_justify="left")
    for column in ("backend", "gpu", "case", "direction", "outcome", "detail"):
        table.add_column(column)
    for case in smoke.get("cases", []):
        style = "green" if case["outcome"] == "pass" else "red"
        table.add_row(case["backend"], str(case["gpu"]), case["case"], case["direction"],
                      f"[{style}]{case['outcome']}[/]", escape((case.get("detail") or "")[:80]))
    return table


def _problems(problems: list[dict]) -> Table:
    table = Table(title="Problems", title_justify="left")
    for column in ("severity", "problem", "what to do"):
        table.add_column(column)
    for problem in sorted(problems, key=lambda p: list(STYLE).index(p["severity"])):
        table.add_row(f"[{STYLE[problem['severity']]}]{problem['severity']}[/]",
                      escape(f"{problem['code']}: {problem['message']}"), escape(problem.get("fix") or "-"))
    if not problems:
        table.add_row("-", "none", "-")
    return table
