"""The terminal view of a bench report: per shape, each backend's (and SDPA kernel's) time and
TFLOP/s forward and forward+backward, the fastest marked. Renders the JSON form, so a saved
report renders the same. With several GPUs a cell is the median over them.

>>> plain = {"shapes": [{"name": "gpt-2 s1024", "batch": 16}], "gpus": [{"gpu": 0, "name": "H100"}],
...          "results": [{"shape": "gpt-2 s1024", "backend": "fa4", "kernel": None, "direction": "fwd",
...                       "outcome": "pass", "median_ms": 0.5, "tflops": 200.0}], "flops": "..."}
>>> rows(plain, "gpt-2 s1024")
[('fa4', {'fwd': (0.5, 200.0, 1)})]
"""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fa4doctor.dispatch.reasons import kernel_label

DIRECTIONS = (("fwd", "forward"), ("fwd_bwd", "forward+backward"))


def _label(result: dict) -> str:
    return kernel_label(result["backend"], result.get("kernel"))


def rows(plain: dict, shape: str) -> list[tuple[str, dict]]:
    """(label, {direction: (median ms, median TFLOP/s, GPUs)}) of one shape's passing results."""
    found: dict[str, dict[str, list[dict]]] = {}
    for r in plain.get("results", []):
        if r["shape"] == shape and r["outcome"] == "pass":
            found.setdefault(_label(r), {}).setdefault(r["direction"], []).append(r)
    out = []
    for label, by_direction in found.items():
        cells = {}
        for direction, results in by_direction.items():
            rates = [r["tflops"] for r in results if r.get("tflops") is not None]
            cells[direction] = (statistics.median(r["median_ms"] for r in results),
                                statistics.median(rates) if rates else None, len(results))
        out.append((label, cells))
    return out


def _rate(tflops: float) -> str:
    return f"{tflops:.0f}" if tflops >= 10 else f"{tflops:.3g}"


def shape_table(plain: dict, shape: dict) -> Table | None:
    found = rows(plain, shape["name"])
    if not found:
        return None
    best = {d: min((c[d][0] for _, c in found if d in c), default=None) for d, _ in DIRECTIONS}
    table = Table(title=f"{escape(shape['name'])} (batch {shape['batch']})", title_justify="left")
    table.add_column("backend")
    for _, title in DIRECTIONS:
        table.add_column(f"{title} ms", justify="right")
        table.add_column("TFLOP/s", justify="right")
    for label, cells in found:
        row = [escape(label)]
        for direction, _ in DIRECTIONS:
            if direction not in cells:
                row += ["-", "-"]
                continue
            ms, rate, _ = cells[direction]
            style = "bold green" if ms == best[direction] else ""
            row += [f"[{style}]{ms:.3f}[/]" if style else f"{ms:.3f}", "-" if rate is None else _rate(rate)]
        table.add_row(*row)
    return table


def render_bench(plain: dict, console: Console | None = None) -> None:
    """Print a bench report (`BenchReport.to_plain()`)."""
    console = console or Console(highlight=False)
    gpus = plain.get("gpus", [])
    if len(gpus) > 1:
        console.print(f"{len(gpus)} GPUs; each cell is the median over them")
    tables = [t for t in (shape_table(plain, s) for s in plain.get("shapes", [])) if t is not None]
    for table in tables:
        console.print(table)
    if not tables:
        console.print("[yellow]nothing was timed[/]")
    for r in plain.get("results", []):
        if r["outcome"] not in ("pass", "skipped"):
            gpu = "" if r.get("gpu") is None else f" on GPU {r['gpu']}"
            console.print(f"[yellow]{r['outcome']}[/] {escape(r['shape'])} {escape(_label(r))} {r['direction']}"
                          f"{gpu}: {escape(r.get('detail') or '')}")
    console.print(f"fastest in bold green (vetted or not: `FA4DOCTOR_POLICY=fastest fa4doctor explain` shows "
                  f"what runs). {escape(plain.get('flops', ''))}.")
    if plain.get("ledger"):
        console.print(f"recorded in the vetting ledger {escape(plain['ledger'])}")
    if plain.get("ledger_problem"):
        console.print(f"[yellow]{escape(plain['ledger_problem'])}[/]")
