"""What `attention()` adds per call when the sequence length keeps changing (issue 14), before and after.

Dynamic padding, a curriculum or evaluation at many lengths call `attention()` with one shape after
another. Causal self-attention on q = k = v of shape (1, s, 2, 16), with 300, 1,000 and 10,000
distinct lengths s (drawn without repeats from 2..20,000, after two warm-up passes that make every
plan and entry), in two patterns (`--layers`): every call a length drawn at random, the worst case
for any table, and each drawn length called 32 times in a row, as a 32-layer model's forward pass
calls it in one training step. Timed on each path (the compiled hit path and the Python function)
of each tree: `--before` (say, `git worktree add /tmp/head HEAD`) and `--after` (this checkout).
Each (tree, path, pattern, count) runs in a child process of its own that imports that tree
(PYTHONPATH), with its compiled path built for it; the children run in a shuffled order.

`added` is attention() minus the same calls made by hand exactly as SDPA's adapter makes them: the
median over rounds of the per-round difference, with a 95% bootstrap interval. SDPA itself is a
stub that returns its input (on both rows), so 10,000 lengths of up to 20,000 tokens cost nothing
but the dispatcher: what is timed is what attention() adds. Every child also times one shape (the
first of its lengths, alone), its four rows (by hand and attention(), one shape and many) in blocks
interleaved round by round in a fresh random order, so `x1`, the many-length figure over the
one-shape figure, compares two things measured under the same load: issue 14 asks for at most 1.2
at 10,000 distinct shapes. `after/before` compares the many-length figures of two children.

    git worktree add /tmp/head HEAD && python bench/dynamic_shapes.py --before /tmp/head
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SHAPE = (2, 16)  # heads, head_dim
LONGEST = 20_000


def _stub(q, k, v, **kwargs):
    return q


def _by_hand(t):  # runtime/adapters/sdpa.py _bind's fast call for a causal self-attention
    return _stub(t.transpose(1, 2), t.transpose(1, 2), t.transpose(1, 2), is_causal=True).transpose(1, 2)


def _timed(fn, block) -> float:
    start = time.perf_counter()
    for t in block:
        fn(t)
    return (time.perf_counter() - start) / len(block) * 1e6


def _median_diff(times: dict, picks: list[int], row: str, base: str) -> float:
    return statistics.median(times[row][i] - times[base][i] for i in picks)


def _figures(times: dict, draws: int = 2000) -> dict:
    """Paired medians of both added figures and their ratio, with 95% bootstrap intervals (the same
    resampled rounds for all three, so the ratio's interval carries the load both shared)."""
    rounds = range(len(times["attention_one"]))
    pick = random.Random(1).choices
    found: dict[str, list[float]] = {"one": [], "many": [], "x1": []}
    for picks in [list(rounds)] + [pick(rounds, k=len(rounds)) for _ in range(draws)]:
        one, many = (_median_diff(times, picks, f"attention_{n}", f"direct_{n}") for n in ("one", "many"))
        for name, value in (("one", one), ("many", many), ("x1", many / one)):
            found[name].append(value)
    def interval(values: list[float]) -> tuple[float, float, float]:  # the estimate, then the bounds
        ranked = sorted(values[1:])
        return values[0], ranked[int(0.025 * draws)], ranked[int(0.975 * draws) - 1]

    return {name: interval(values) for name, values in found.items()}


def child(args) -> None:
    """One tree, one path, one pattern, one count of lengths: prints one JSON line."""
    import torch
    import torch.nn.functional as F

    F.scaled_dot_product_attention = _stub  # read by SDPA's adapter when it binds, so before any call
    from fa4doctor.dispatch import attention
    from fa4doctor.runtime import dispatcher as runtime

    native = attention is not runtime.python_attention
    assert native == (args.path == "compiled"), f"asked for the {args.path} path, got the other"
    base = torch.randn(1, LONGEST, *SHAPE)
    views = [base[:, :s] for s in random.Random(args.count).sample(range(2, LONGEST + 1), args.count)]
    layers = int(args.layers)
    drawn = random.Random(1).choices(views, k=-(-args.block * args.rounds // layers))
    many, one = [t for t in drawn for _ in range(layers)], [views[0]] * args.block
    call = lambda t: attention(t, t, t, attn_mask_type="causal")  # noqa: E731
    rows = {"direct_one": (_by_hand, one), "attention_one": (call, one), "direct_many": (_by_hand, many),
            "attention_many": (call, many)}
    with torch.inference_mode():
        for t in views + views:  # plans, then the compiled path's entries
            call(t)
        times = {name: [] for name in rows}
        order, shuffle = list(rows), random.Random(0).shuffle
        for r in range(args.rounds):
            shuffle(order)
            for name in order:
                fn, calls = rows[name]
                times[name].append(_timed(fn, calls[r * args.block:(r + 1) * args.block] if calls is many else calls))
    stats = runtime._native.stats() if native else {}
    print(json.dumps({**_figures(times), "keys": len(runtime._plans), "classes": len(getattr(runtime, "_classes", ())),
                      "entries": stats.get("entries"), "source": str(Path(runtime.__file__).parents[2])}))


def build(tree: Path, cache: str) -> bool:
    env = {**os.environ, "PYTHONPATH": str(tree), "XDG_CACHE_HOME": cache}
    done = subprocess.run([sys.executable, "-m", "fa4doctor", "native", "build"], env=env, capture_output=True,
                          text=True, cwd=tree)
    if done.returncode:
        print(f"# no compiled path for {tree}: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.returncode == 0


def run_child(tree: Path, path: str, layers: int, count: int, cache: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FA4DOCTOR_")}
    env.update(PYTHONPATH=str(tree), XDG_CACHE_HOME=cache, FA4DOCTOR_BACKEND="sdpa")
    if path == "python":
        env["FA4DOCTOR_NATIVE"] = "0"
    command = [sys.executable, str(HERE), "--child", "--path", path, "--count", str(count), "--layers", str(layers),
               "--rounds", str(args.rounds), "--block", str(args.block)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["source"]) == tree.resolve(), f"{tree}: imported {found['source']}"
    return found


def measure(trees: dict, counts: list[int], patterns: list[int], cache: str, args) -> dict:
    """Every (tree, path, pattern, count) figure: the child with the median `x1` of `args.repeats`."""
    paths = {name: ["python"] + (["compiled"] if build(tree, cache) else []) for name, tree in trees.items()}
    jobs = [(name, path, layers, count) for _ in range(args.repeats) for name in trees for path in paths[name]
            for layers in patterns for count in counts]
    random.Random(2).shuffle(jobs)
    runs: dict = {}
    for name, path, layers, count in jobs:
        runs.setdefault((name, path, layers, count), []).append(run_child(trees[name], path, layers, count, cache, args))
    return {job: sorted(found, key=lambda f: f["x1"][0])[len(found) // 2] for job, found in runs.items()}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _revision(tree: Path) -> str:
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return head.stdout.strip() + (" + working-tree changes" if dirty.stdout.strip() else "")


def _cell(figure: tuple[float, float, float]) -> str:
    return f"{figure[0]:.2f} [{figure[1]:.2f}, {figure[2]:.2f}]"


def report(results: dict, trees: dict, patterns: list[int], counts: list[int]) -> list[str]:
    names = list(trees)
    width = 58
    head = f"{'':27}" + "".join(f"  {name + ': added us/call [95%]':<{width}}" for name in names)
    lines = [head, f"{'path':9} {'calls/len':>9} {'lengths':>7}" + "".join(
        f"  {'one shape':>17} {'many lengths':>19} {'x1':>18}  " for _ in names)
        + ("  after/before" if len(names) == 2 else "")]
    for path in ("compiled", "python"):
        for layers in patterns:
            for count in counts:
                line, many = f"{path:9} {layers:>9} {count:>7}", []
                for name in names:
                    found = results.get((name, path, layers, count))
                    line += f"  {_cell(found['one']):>17} {_cell(found['many']):>19} {_cell(found['x1']):>18}  " \
                        if found else f"  {'-':>17} {'-':>19} {'-':>18}  "
                    many.append(found["many"][0] if found else None)
                if len(names) == 2 and None not in many:
                    line += f"  {many[1] / many[0]:12.2f}"
                lines.append(line)
    lines.append("tables after the run (kept keys / plan classes / compiled entries):")
    for (name, path, layers, count), found in sorted(results.items()):
        if count == counts[-1] and layers == patterns[0]:
            lines.append(f"  {name:6} {path:8} {count:>6} lengths: {found['keys']} / {found['classes'] or '-'} / "
                         f"{found['entries'] if found['entries'] is not None else '-'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare against (HEAD)")
    parser.add_argument("--after", type=Path, default=HERE.parents[1])
    parser.add_argument("--counts", default="300,1000,10000")
    parser.add_argument("--layers", default="1,32", help="calls per drawn length, in a row (the patterns)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=2000, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=1, help="children per figure; the median is printed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=["compiled", "python"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    counts, patterns = ([int(c) for c in text.split(",")] for text in (args.counts, args.layers))
    trees = {name: tree for name, tree in (("before", args.before), ("after", args.after)) if tree}
    with tempfile.TemporaryDirectory(prefix="fa4doctor-bench-") as cache:  # both trees' builds
        results = measure(trees, counts, patterns, cache, args)
    import torch

    print(f"cpu={_cpu()} cores={os.cpu_count()} python={platform.python_version()} torch={torch.__version__} "
          f"shape=(1,s,{SHAPE[0]},{SHAPE[1]}) mask=causal sdpa=stub rounds={args.rounds} block={args.block} "
          f"repeats={args.repeats}")
    for name, tree in trees.items():
        print(f"{name}: {tree} ({_revision(tree)})")
    print("\n".join(report(results, trees, patterns, counts)))


if __name__ == "__main__":
    main()
