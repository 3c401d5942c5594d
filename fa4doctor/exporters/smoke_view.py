"""The terminal view of a smoke report: what failed and how, a count per backend and GPU, and
the wall time of each phase. Renders the JSON form, so a saved report renders the same."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fa4doctor.smoke.report import failed

_STYLE = {"pass": "green", "skipped": "dim", "wrong_result": "bold red", "crash": "bold red",
          "timeout": "red", "oom": "yellow", "refused": "yellow", "compile_failed": "red"}
MAX_ROWS = 40  # above this, only the cases that did not pass are listed


def _seconds(value) -> str:
    return "" if value is None else f"{value:.2f}"


def case_table(cases: list[dict]) -> Table:
    table = Table(title_justify="left")
    table.add_column("case", overflow="fold")
    for column in ("gpu", "dir", "outcome", "compile s", "run s"):
        table.add_column(column, no_wrap=True)
    for case in cases:
        style = _STYLE.get(case["outcome"], "")
        table.add_row(escape(case["case"]), "" if case.get("gpu") is None else str(case["gpu"]),
                      case["direction"], f"[{style}]{case['outcome']}[/]",
                      _seconds(case.get("compile_seconds")), _seconds(case.get("run_seconds")))
    return table


def _failures(console: Console, cases: list[dict]) -> None:
    for case in cases:
        if failed(case["outcome"]):
            style = _STYLE.get(case["outcome"], "")
            gpu = "" if case.get("gpu") is None else f" on GPU {case['gpu']}"
            console.print(f"[{style}]{case['outcome']}[/] {escape(case['case'])} {case['direction']}{gpu}: "
                          f"{escape(case.get('detail') or '')}")


def summary_table(smoke: dict) -> Table:
    table = Table(title="Smoke summary", title_justify="left")
    for column in ("backend", "gpu", "cases", "pass", "failed", "skipped"):
        table.add_column(column)
    groups: dict[tuple, list[dict]] = {}
    for case in smoke.get("cases", []):
        groups.setdefault((case["backend"], case.get("gpu")), []).append(case)
    for (backend, gpu), group in groups.items():
        passed = sum(c["outcome"] == "pass" for c in group)
        skipped = sum(c["outcome"] == "skipped" for c in group)
        bad = sum(failed(c["outcome"]) for c in group)
        table.add_row(backend, "" if gpu is None else str(gpu), str(len(group)), str(passed),
                      f"[{'bold red' if bad else 'green'}]{bad}[/]", str(skipped))
    return table


def render_smoke(smoke: dict, console: Console | None = None) -> None:
    """Print a smoke report (`SmokeReport.to_plain()`) as tables."""
    console = console or Console(highlight=False)
    cases = smoke.get("cases", [])
    if not cases:
        console.print("[yellow]no smoke case ran[/] (no GPU visible, or no installed backend accepts "
                      "the level's cases here)")
        return
    shown = cases if len(cases) <= MAX_ROWS else [c for c in cases if c["outcome"] != "pass"]
    if shown:
        table = case_table(shown)
        table.title = f"Smoke cases ({smoke.get('level')})" + ("" if shown is cases else ", not passed")
        console.print(table)
    _failures(console, cases)
    console.print(summary_table(smoke))
    phases = smoke.get("phases", {})
    console.print("phases: " + ", ".join(f"{name} {_seconds(phases.get(f'{name}_seconds'))} s"
                                         for name in ("import", "compile", "run", "total")))
    if smoke.get("bytecode_cache"):
        console.print(f"the children keep their bytecode in {escape(smoke['bytecode_cache'])} "
                      "(only the first run compiles it)")
    if smoke.get("ledger"):
        console.print(f"recorded in the vetting ledger {escape(smoke['ledger'])}")
    if smoke.get("ledger_problem"):
        console.print(f"[yellow]{escape(smoke['ledger_problem'])}[/]")
