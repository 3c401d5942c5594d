"""The `fa4doctor report` page: one self-contained HTML file (inline CSS, no script, nothing
fetched) that shows a node's correctness and speed matrices as a picture. Renders a
`smoke.page.NodeReport`; decides nothing. Every string from the report goes through
`html.escape`, details ride on `title` attributes (shown on hover).

>>> from fa4doctor.environment import Environment
>>> from fa4doctor.smoke.page import build
>>> page = render_html(build(Environment(), "a test", now="2026-01-01T00:00:00+00:00"))
>>> page.startswith("<!doctype html>"), "http://" in page or "https://" in page
(True, False)
"""

from __future__ import annotations

import re
from collections import Counter
from html import escape

from fa4doctor import __version__
from fa4doctor.dispatch.speed import TIE
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import CaseClass, Environment, Finding, cuda_version_text
from fa4doctor.names import BackendName
from fa4doctor.smoke.matrix import Cell, CorrectnessMatrix, CorrectnessRow
from fa4doctor.smoke.page import NodeReport
from fa4doctor.smoke.speed_matrix import SpeedMatrix, SpeedRow

# Ledger outcome -> (CSS class, what the cell says); the classes are the legend's colours.
OUTCOMES = {"pass": ("pass", "pass"), "wrong_result": ("wrong", "wrong"), "compile_failed": ("failed", "compile"),
            "crash": ("failed", "crash"), "timeout": ("failed", "timeout"), "oom": ("failed", "oom"),
            "refused": ("refused", "refused"), "not_run": ("notrun", "\u2013")}
LEGEND = (("pass", "pass: smoke proved it right here"),
          ("wrong", "wrong result: the output or a gradient is off (cell: the tensor and error / tolerance)"),
          ("failed", "did not run: compile failure, crash, timeout or out of memory"),
          ("refused", "refused: by the dispatch rules (cell: the first reason) or by the kernel"),
          ("notrun", "not run: the rules allow it, no smoke case of this class ran"))
# Speed relative to the row's best (its time over this one's): the lowest bound reached names the class.
SCALE = ((0.97, "r5", "within 3% of the best"), (0.85, "r4", "85-97%"), (0.70, "r3", "70-85%"),
         (0.50, "r2", "50-70%"), (0.0, "r1", "under 50%"))
STAR = "\u2605 "  # the row's winner, besides its outline: the mark survives a greyscale print
SEVERITY = {"error": 0, "warning": 1, "info": 2}  # the page lists the worst first
DIRECTION_TEXT = {"fwd": "forward", "fwd_bwd": "forward+backward", "bwd": "backward"}
# fa4doctor/smoke/reference.py words a wrong result "dq max error 0.829 > tolerance 0.028"
_ERROR = re.compile(r"(\w+) max error ([\d.e+-]+) > tolerance ([\d.e+-]+)")

CSS = """
body{font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:28px 0 6px}h3{font-size:14px;margin:16px 0 6px}
p.note{color:#555;max-width:980px;margin:4px 0}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:0}
dl.facts dt{color:#666}dl.facts dd{margin:0;font-weight:600}
ul.problems{list-style:none;padding:0;margin:0;max-width:1100px}
ul.problems li{border-left:4px solid #999;padding:3px 8px;margin:4px 0;background:#fafafa}
li.error{border-color:#c62828}li.warning{border-color:#f0a000}li.info{border-color:#6a8caf}
li .fix{color:#555;display:block}
table{border-collapse:collapse;margin:6px 0 4px}
th,td{padding:2px 7px;border:1px solid #fff;white-space:nowrap}
thead th{background:#eceff3;font-weight:600}
tbody th{text-align:left;font-weight:400;background:#f7f8fa}
tbody th.hd{font-weight:700;vertical-align:top}
tr.group>*{border-top:2px solid #c7ccd4}
td.c{text-align:center;min-width:52px;font-variant-numeric:tabular-nums}
.pass{background:#cdebd5;color:#17552c}.wrong{background:#c9302c;color:#fff;font-weight:700}
.failed{background:#f39c4a;color:#3a1700;font-weight:700}.refused{background:#d6d1ec;color:#372f6b}
.notrun{background:#f3f3f3;color:#9a9a9a}
td.pick{font-weight:600}td.fell{color:#b34700}
td.s{text-align:right;min-width:64px;font-variant-numeric:tabular-nums}
.r5{background:#1b7837;color:#fff}.r4{background:#7fbf7b}.r3{background:#d9f0d3}
.r2{background:#fde0b6}.r1{background:#f1a340}.off{background:#eee;color:#777;text-align:center}
.none{color:#bbb;text-align:center}
td.win{font-weight:800;outline:2px solid #111;outline-offset:-2px}
td.measured{font-weight:700}td.fixed{color:#666}
.legend{display:flex;flex-wrap:wrap;gap:6px 14px;margin:6px 0;max-width:1100px}
.legend span.sw{display:inline-block;min-width:44px;text-align:center;padding:1px 6px;margin-right:5px;border-radius:2px}
footer{margin-top:28px;color:#777;font-size:12px}
"""


def render_html(report: NodeReport) -> str:
    """The whole page for `report`."""
    title = f"fa4doctor report: {report.env.hostname or 'node'}"
    body = "\n".join([_header(report), _problems(report), _correctness(report.correctness),
                      _speed(report.speed), _footer(report)])
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _attr(text: str) -> str:
    return escape(text, quote=True)


# ---- header and problems ----

def _header(report: NodeReport) -> str:
    rows = "".join(f"<dt>{escape(k)}</dt><dd{_title(t)}>{escape(v)}</dd>" for k, v, t in _facts(report))
    host = report.env.hostname or "this node"
    return (f"<header><h1>Does FlashAttention-4 work on {escape(host)}?</h1>"
            f"<dl class=\"facts\">{rows}</dl></header>")


def _title(text: str) -> str:
    return f" title=\"{_attr(text)}\"" if text else ""


def _facts(report: NodeReport) -> list[tuple[str, str, str]]:
    env = report.env
    fa4 = env.backend(BackendName.FA4)
    return [("GPUs", _gpus(env), ""), ("driver", _driver(env), ""),
            ("torch", f"{env.torch.version or 'not installed'} (CUDA {env.torch.cuda or 'none'})", ""),
            ("FA4", f"{fa4.distribution} {fa4.version}" if fa4 and fa4.installed else "not installed", ""),
            *_fingerprint(env), ("facts from", report.source, ""),
            ("facts taken", env.created_at or "unknown", ""), ("page generated", report.generated_at, "")]


def _gpus(env: Environment) -> str:
    models = Counter(f"{g.name} (sm{g.arch})" for g in env.gpus)
    return ", ".join(f"{n} \u00d7 {name}" for name, n in models.items()) or "none visible"


def _driver(env: Environment) -> str:
    driver = env.driver
    if not driver.driver_version:
        return f"unknown (NVML {driver.nvml_status})"
    cuda = f" (CUDA {cuda_version_text(driver.cuda_driver_version)})" if driver.cuda_driver_version else ""
    return driver.driver_version + cuda


def _fingerprint(env: Environment) -> list[tuple[str, str, str]]:
    gpu = env.gpus[0] if env.gpus else None
    if gpu is None:
        return []
    full = fingerprint(BackendName.FA4, env, gpu)
    return [("FA4 fingerprint", full[:8], f"{full}: the software stack and GPU model FA4's ledger evidence "
                                          "counts under (dispatch/vetting.py)")]


def _problems(report: NodeReport) -> str:
    if not report.problems:
        return "<section id=\"problems\"><h2>Problems</h2><p class=\"note\">none found</p></section>"
    worst_first = sorted(report.problems, key=lambda p: SEVERITY.get(p.severity, len(SEVERITY)))
    items = "".join(_problem(p) for p in worst_first)
    return f"<section id=\"problems\"><h2>Problems</h2><ul class=\"problems\">{items}</ul></section>"


def _problem(problem: Finding) -> str:
    fix = f"<span class=\"fix\">fix: {escape(problem.fix)}</span>" if problem.fix else ""
    return (f"<li class=\"{_attr(problem.severity)}\"><b>{escape(problem.severity)}</b> "
            f"{escape(problem.message)}{fix}</li>")


# ---- correctness ----

def _correctness(matrices: tuple[CorrectnessMatrix, ...]) -> str:
    parts = ["<section id=\"correctness\"><h2>Correctness</h2><p class=\"note\">Each cell: one backend, "
             "configuration class and direction, from this node's vetting ledger under the current software "
             "stack, else the dispatch rules. A failure refuses every call at the same head dims whose own "
             "class has no pass. Hover a cell for the error or the reasons; the last two columns are what "
             "the dispatcher runs for a training and an inference call of the class.</p>"]
    parts.append(_legend([c for m in matrices for row in m.rows for c in row.cells]))
    parts += [_matrix_table(m, len(matrices) > 1) for m in matrices]
    return "\n".join(parts) + "</section>"


def _legend(cells: list[Cell]) -> str:
    counts = Counter(OUTCOMES.get(c.outcome, ("failed",))[0] for c in cells)
    items = "".join(f"<span><span class=\"sw {css}\">{counts.get(css, 0)}</span>{escape(text)}</span>"
                    for css, text in LEGEND)
    return f"<div class=\"legend\" id=\"outcome-legend\">{items}</div>"


def _matrix_table(matrix: CorrectnessMatrix, titled: bool) -> str:
    gpu = f"<h3>{escape(matrix.gpu.name)}</h3>" if titled and matrix.gpu else ""
    head = ("<thead><tr><th rowspan=\"2\">head dim</th><th rowspan=\"2\">mask</th><th rowspan=\"2\">variant</th>"
            + "".join(f"<th colspan=\"2\">{escape(b.value)}</th>" for b in matrix.backends)
            + "<th colspan=\"2\">runs</th></tr><tr>"
            + "<th>fwd</th><th>bwd</th>" * len(matrix.backends) + "<th>train</th><th>infer</th></tr></thead>")
    return (f"{gpu}<table class=\"matrix\" id=\"correctness-{_attr(_gpu_key(matrix))}\">{head}<tbody>"
            f"{''.join(_rows(matrix))}</tbody></table>{_matrix_notes(matrix)}")


def _gpu_key(matrix: CorrectnessMatrix) -> str:
    return "nogpu" if matrix.gpu is None else f"sm{matrix.gpu.arch}-{matrix.gpu.cuda_index}"


def _rows(matrix: CorrectnessMatrix) -> list[str]:
    spans = Counter(row.case_class.head_dims for row in matrix.rows)
    out, seen = [], set()
    for row in matrix.rows:
        dims = row.case_class.head_dims
        first = dims not in seen
        seen.add(dims)
        lead = f"<th class=\"hd\" rowspan=\"{spans[dims]}\">{escape(_dims(row.case_class))}</th>" if first else ""
        out.append(_row(matrix, row, lead, first))
    return out


def _dims(klass: CaseClass) -> str:
    qk, v = klass.head_dims
    return str(qk) if qk == v else f"{qk}/{v}"


def _variant(klass: CaseClass) -> str:
    return " \u00b7 ".join([klass.dtype] + [name for name, on in (("window", klass.window), ("GQA", klass.gqa),
                                                                 ("decode", klass.decode)) if on])


def _row(matrix: CorrectnessMatrix, row: CorrectnessRow, lead: str, first: bool) -> str:
    klass = row.case_class
    key = f"d{_dims(klass)} {klass.attn_mask_type} {_variant(klass)}"
    cells = "".join(_cell(backend, way, cell) for (backend, way), cell in zip(matrix.columns, row.cells))
    picks = "".join(f"<td class=\"pick{' fell' if p.fell_back else ''}\"{_title(p.note)}>{escape(p.label or 'none')}"
                    "</td>" for p in (row.train, row.infer))
    group = " class=\"group\"" if first else ""
    return (f"<tr{group} data-key=\"{_attr(key)}\">{lead}<th>{escape(klass.attn_mask_type)}</th>"
            f"<th>{escape(_variant(klass))}</th>{cells}{picks}</tr>")


def _cell(backend: BackendName, way: str, cell: Cell) -> str:
    css, text = OUTCOMES.get(cell.outcome, ("failed", cell.outcome))
    if cell.outcome == "wrong_result":
        text = _error_text(cell.detail) or text
    elif cell.code:
        text = cell.code.removesuffix("_unsupported").replace("_", " ")
    about = f"{backend.value} {DIRECTION_TEXT[way]}: {cell.outcome.replace('_', ' ')}"
    about += (f": {cell.detail}" if cell.detail else "") + (f" (smoke case {cell.case})" if cell.case else "")
    return (f"<td class=\"c {css}\" data-backend=\"{backend.value}\" data-dir=\"{way}\" "
            f"data-outcome=\"{_attr(cell.outcome)}\" title=\"{_attr(about)}\">{escape(text)}</td>")


def _error_text(detail: str) -> str | None:
    """`dq 30x`: the first wrong tensor and how far past its tolerance."""
    found = _ERROR.search(detail)
    if not found:
        return None
    try:
        ratio = float(found.group(2)) / float(found.group(3))
    except (ValueError, ZeroDivisionError):
        return found.group(1)
    return f"{found.group(1)} {ratio:.0f}\u00d7" if ratio >= 10 else f"{found.group(1)} {ratio:.1f}\u00d7"


def _matrix_notes(matrix: CorrectnessMatrix) -> str:
    notes = []
    if matrix.hidden:
        notes.append(f"No column for {', '.join(b.value for b in matrix.hidden)}: not installed.")
    if matrix.stale:
        notes.append(f"{matrix.stale} ledger entries under another software stack or GPU model were left out "
                     "(an upgrade silences old evidence until smoke runs again).")
    if matrix.gpu is None:
        notes.append("No GPU is visible: the rules alone judge, and the ledger's evidence cannot be matched.")
    return "".join(f"<p class=\"note\">{escape(n)}</p>" for n in notes)


# ---- speed ----

def _speed(matrix: SpeedMatrix) -> str:
    intro = ("<section id=\"speed\"><h2>Speed</h2><p class=\"note\">TFLOP/s per backend and SDPA kernel, from "
             f"{escape(matrix.source)}: the median over the GPUs measured; the colour is the time against the "
             "row's best, the outlined cell the fastest. The last column is what FA4DOCTOR_POLICY=fastest runs "
             "(bold: chosen by this node's figures among the vetted backends).</p>")
    if not matrix.rows:
        empty = "<p class=\"note\">Nothing measured: run <code>fa4doctor bench</code> (or pass --bench FILE).</p>"
        return intro + empty + _speed_notes(matrix) + "</section>"
    return intro + _scale() + _speed_table(matrix) + _speed_notes(matrix) + "</section>"


def _scale() -> str:
    items = "".join(f"<span><span class=\"sw {css}\">&nbsp;</span>{escape(text)}</span>" for _, css, text in SCALE)
    return f"<div class=\"legend\" id=\"speed-legend\">{items}<span><span class=\"sw off\">oom</span>not timed</span></div>"


def _speed_table(matrix: SpeedMatrix) -> str:
    head = ("<thead><tr><th>shape</th><th>direction</th>"
            + "".join(f"<th>{escape(c)}</th>" for c in matrix.columns) + "<th>fastest runs</th></tr></thead>")
    spans = Counter(row.shape for row in matrix.rows)
    out, seen = [], set()
    for row in matrix.rows:
        lead = "" if row.shape in seen else _shape_cell(row, spans[row.shape])
        out.append(_speed_row(row, lead, row.shape not in seen))
        seen.add(row.shape)
    return f"<table class=\"speed\" id=\"speed-matrix\">{head}<tbody>{''.join(out)}</tbody></table>"


def _shape_cell(row: SpeedRow, span: int) -> str:
    batch = f" title=\"batch {row.batch}\"" if row.batch is not None else ""
    return f"<th class=\"hd\" rowspan=\"{span}\"{batch}>{escape(row.shape)}</th>"


def _speed_row(row: SpeedRow, lead: str, first: bool) -> str:
    cells = "".join(_figure_cell(row, f) for f in row.figures)
    group = " class=\"group\"" if first else ""
    return (f"<tr{group} data-shape=\"{_attr(row.shape)}\" data-dir=\"{_attr(row.direction)}\">{lead}"
            f"<th>{escape(DIRECTION_TEXT.get(row.direction, row.direction))}</th>{cells}{_fastest_cell(row)}</tr>")


def _figure_cell(row: SpeedRow, figure) -> str:
    if figure is None:
        return "<td class=\"s none\">\u2013</td>"
    relative = row.relative(figure)
    if relative is None:
        about = f"{figure.label}: {figure.outcome}" + (f": {figure.detail}" if figure.detail else "")
        return (f"<td class=\"s off\" data-col=\"{_attr(figure.label)}\" title=\"{_attr(about)}\">"
                f"{escape(figure.outcome)}</td>")
    css = next(name for bound, name, _ in SCALE if relative >= bound)
    win = row.winner is figure
    about = (f"{figure.label}: {figure.median_ms:.3f} ms median, "
             + (f"{figure.tflops:.1f} TFLOP/s, " if figure.tflops is not None else "")
             + f"{relative:.0%} of the row's best, {figure.gpus} GPU(s)" + (" (fastest)" if win else ""))
    return (f"<td class=\"s {css}{' win' if win else ''}\" data-col=\"{_attr(figure.label)}\" "
            f"title=\"{_attr(about)}\">{STAR if win else ''}{escape(_rate(figure))}</td>")


def _rate(figure) -> str:
    if figure.tflops is None:
        return f"{figure.median_ms:.3g} ms"
    return f"{figure.tflops:.0f}" if figure.tflops >= 10 else f"{figure.tflops:.3g}"


def _fastest_cell(row: SpeedRow) -> str:
    pick = row.fastest
    if pick is None:
        return "<td class=\"pick fixed\" title=\"not judged: no speed records in the ledger, or the shape needs a " \
               "feature value to rebuild\">\u2013</td>"
    why = (f"chosen by this node's figures among the backends it vetted for the class (within {TIE:.0%} of the "
           "fastest, the earlier in the fixed order wins)" if pick.measured else
           "the fixed order FA4 > FA3 > FA2 > SDPA: nothing eligible is both vetted and measured for the class")
    css = "measured" if pick.measured else "fixed"
    return f"<td class=\"pick {css}\" title=\"{_attr(why)}\">{escape(pick.label or 'none')}</td>"


def _speed_notes(matrix: SpeedMatrix) -> str:
    return "".join(f"<p class=\"note\">{escape(n)}</p>" for n in matrix.notes)


def _footer(report: NodeReport) -> str:
    return (f"<footer>fa4doctor {escape(__version__)} \u00b7 <code>fa4doctor report</code> \u00b7 "
            f"generated {escape(report.generated_at)} \u00b7 docs/report.md explains the page</footer>")
