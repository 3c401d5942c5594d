"""The bench child's timing: kernels measured the way GPU benchmarks must be.

`child.py` hands a "bench" job here: cases grouped by shape (one case per backend or SDPA kernel,
all on the same inputs). For each shape and direction (forward, then forward+backward):

1. warm-up: every case runs `warmup` times (the first call compiles, or loads FA4's kernels from
   its disk cache, and is reported as `first_call_seconds`); the last warm-up call sets how many
   calls one timed block holds (`inner`, enough for `MIN_BLOCK_MS` of GPU time, so that event and
   launch overheads stay small beside the kernel);
2. `rounds` timed rounds, the cases interleaved (each round visits every case once, starting one
   case later than the round before), so that clock and temperature drift reach every backend
   alike; each block is timed with CUDA events (on the CPU, the seam the tests use: a wall clock);
3. a case's time per call is the median over its rounds (min and max are reported too).

An SDPA case kept to one kernel runs each block inside `sdpa_kernel([that kernel])`: with no
other kernel and no math fallback allowed, a kernel torch will not run for the shape is refused,
never silently replaced. A case that raises is settled with the outcome `smoke` gives it
(`child.classify`) and leaves the rounds; the others go on.

>>> clock = FakeClock()
>>> cases = [Timed(1, "fwd", clock.costing(2.0)), Timed(2, "fwd", clock.costing(0.5))]
>>> interleave(cases, rounds=3, timer=WallTimer(clock)) and [c.summary()["median_ms"] for c in cases]
[2.0, 0.5]
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

WARMUP = 3
ROUNDS = 10
MIN_BLOCK_MS = 1.0
MAX_INNER = 100


class CudaTimer:
    """Blocks timed with CUDA events on the current stream; read after one synchronize per round."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def start(self) -> Any:
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, started: Any) -> Any:
        end = self.torch.cuda.Event(enable_timing=True)
        end.record()
        return started, end

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def elapsed_ms(self, mark: Any) -> float:
        return mark[0].elapsed_time(mark[1])


class WallTimer:
    """Blocks timed by a clock in seconds (`time.perf_counter`): CPU tensors, and the tests."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock

    def start(self) -> float:
        return self.clock()

    def stop(self, started: float) -> tuple[float, float]:
        return started, self.clock()

    def sync(self) -> None:
        pass

    def elapsed_ms(self, mark: tuple[float, float]) -> float:
        return (mark[1] - mark[0]) * 1000.0


class FakeClock:
    """A clock that moves only when a fake kernel says it took time: exact medians in tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costing(self, ms: float) -> Callable[[], None]:
        def kernel() -> None:
            self.now += ms / 1000.0
        return kernel


@dataclass
class Timed:
    """One case in one direction: what to call, the context each block runs in, and its samples."""

    id: int
    direction: str
    fn: Callable[[], Any]
    context: Callable[[], Any] = contextlib.nullcontext
    inner: int = 1
    samples: list[float] = field(default_factory=list)
    first_call_seconds: float | None = None
    failure: tuple[str, str, bool] | None = None  # (outcome, detail, fatal), once it raised

    def block(self, timer) -> Any:
        with self.context():
            started = timer.start()
            for _ in range(self.inner):
                self.fn()
            return timer.stop(started)

    def summary(self) -> dict:
        """The result fields of a case that ran every round."""
        return dict(outcome="pass", median_ms=statistics.median(self.samples), min_ms=min(self.samples),
                    max_ms=max(self.samples), samples_ms=[round(s, 6) for s in self.samples],
                    rounds=len(self.samples), inner=self.inner, first_call_seconds=self.first_call_seconds)


def warm(case: Timed, warmup: int, timer, classify: Callable[[BaseException], tuple[str, str, bool]]) -> bool:
    """Run `case` `warmup` times (at least once) and size its blocks; False when it raised."""
    try:
        for n in range(max(1, warmup)):
            clock = time.perf_counter()
            mark = case.block(timer)
            timer.sync()
            if n == 0:
                case.first_call_seconds = time.perf_counter() - clock
        last = max(timer.elapsed_ms(mark), 1e-6)
        case.inner = max(1, min(MAX_INNER, math.ceil(MIN_BLOCK_MS / last)))
        return True
    except Exception as exc:  # the backend's own error is the finding
        case.failure = classify(exc)
        return False


def interleave(cases: list[Timed], rounds: int, timer, classify=None, tick: Callable[[], None] | None = None,
               before: Callable[[Timed], None] | None = None) -> bool:
    """Time `rounds` rounds of `cases`, interleaved; False when a fatal failure ended them. `before`
    hears of each block before it starts (the child names the case, so a crash is blamed on it),
    `tick` of each round's end."""
    live = [c for c in cases if c.failure is None]
    for r in range(rounds):
        if not live:
            break
        shift = r % len(live)
        marks = []
        for case in live[shift:] + live[:shift]:
            if before:
                before(case)
            try:
                marks.append((case, case.block(timer)))
            except Exception as exc:
                if classify is None:
                    raise
                case.failure = classify(exc)
                if case.failure[2]:
                    return False
        timer.sync()
        for case, mark in marks:
            case.samples.append(timer.elapsed_ms(mark) / case.inner)
        live = [c for c in live if c.failure is None]
        if tick:
            tick()
    return True
