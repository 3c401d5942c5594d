"""For the report tests: the H100 fixtures, a parser of the page, and real H100 figures in the shape
`fa4doctor bench --json` writes: the table of docs/sources.md#fa4-and-sdpa-speed-on-an-h100 (bf16,
causal, FA4 4.0.0b40 against SDPA kept to each kernel, TFLOP/s forward / forward+backward; `None`:
the kernel refused the shape)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.speed import FWD, FWD_BWD
from fa4doctor.environment import Environment, GpuFacts
from fa4doctor.smoke.bench import BenchReport, BenchResult
from fa4doctor.smoke.zoo import BenchShape, flops

# (name, batch, seqlen, query heads, kv heads, head dim): {(backend, SDPA kernel): (fwd, fwd_bwd) TFLOP/s}
H100_TFLOPS = {
    ("d64 s4096", 4, 4096, 16, 16, 64): {("fa4", None): (322, 293), ("sdpa", "cudnn"): (317, 330),
                                         ("sdpa", "flash"): (245, 216), ("sdpa", "efficient"): (114, 91)},
    ("d128 gqa s8192", 2, 8192, 32, 8, 128): {("fa4", None): (645, 529), ("sdpa", "cudnn"): (584, 499),
                                              ("sdpa", "flash"): (315, 290), ("sdpa", "efficient"): None},
    ("d128 gqa s2048", 8, 2048, 32, 8, 128): {("fa4", None): (367, 355), ("sdpa", "cudnn"): (468, 361),
                                              ("sdpa", "flash"): (266, 211), ("sdpa", "efficient"): None},
    ("d256 gqa s4096", 2, 4096, 16, 8, 256): {("fa4", None): (440, 275), ("sdpa", "cudnn"): (511, 363),
                                              ("sdpa", "flash"): (268, 207), ("sdpa", "efficient"): None},
}
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "report"  # docs/validation/h100-b40's ledger and check
NOW = "2026-12-07T00:00:00+00:00"
REFUSED = "No available kernel. Aborting execution."  # what torch says when a kept-to kernel declines


def h100_bench(env: Environment) -> BenchReport:
    """The table as a bench report of `env`'s first GPU (each figure one GPU's median of 20)."""
    gpu = env.gpus[0]
    shapes, results = [], []
    for (name, batch, seqlen, heads_q, heads_kv, dim), figures in H100_TFLOPS.items():
        spec = AttentionSpec(dtype="bf16", head_dim_qk=dim, num_heads_q=heads_q, num_heads_kv=heads_kv,
                             seqlen_q=seqlen, attn_mask_type="causal")
        shapes.append(BenchShape(name, spec, batch))
        for (backend, kernel), rates in figures.items():
            for way, rate in zip((FWD, FWD_BWD), rates or (None, None)):
                results.append(_result(BenchShape(name, spec, batch), backend, kernel, way, rate, gpu))
    return BenchReport(shapes=tuple(shapes), results=tuple(results), gpus=(gpu,))


def _result(shape: BenchShape, backend: str, kernel: str | None, way: str, rate: float | None,
            gpu: GpuFacts) -> BenchResult:
    where = dict(gpu=gpu.cuda_index, gpu_uuid=gpu.uuid, gpu_name=gpu.name)
    if rate is None:
        return BenchResult(shape.name, backend, kernel, way, "refused", REFUSED, **where)
    median = flops(shape.spec, shape.batch, way) / (rate * 1e9)  # TFLOP/s -> ms, as bench.py divides
    return BenchResult(shape.name, backend, kernel, way, "pass", median_ms=median, tflops=float(rate), rounds=20,
                       **where)


class _Cells(HTMLParser):
    """Every element's tag, attributes and text, in order."""

    def __init__(self):
        super().__init__()
        self.found, self._open = [], []

    def handle_starttag(self, tag, attrs):
        self.found.append([tag, dict(attrs), ""])
        self._open.append(self.found[-1])

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if self._open:
            self._open[-1][2] += data


def parse(page: str) -> list:
    parser = _Cells()
    parser.feed(page)
    return parser.found
