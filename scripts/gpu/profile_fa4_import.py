"""Where the time of a fresh FA4 smoke child goes on this machine (issue 6's `quick` targets).

Prints, each in fresh processes (two runs each, the page cache warm after the first):
interpreter start, `import torch`, CUDA context creation, `import cutlass.cute`, `import quack`,
`import flash_attn.cute`; whether importing FA4 initialises CUDA (it decides whether a process
that imported FA4 may fork children that then pick their GPU); whether CUDA context creation in
a thread overlaps the FA4 import; and a profile of the FA4 import (cProfile, top functions by
cumulative and by own time; `-X importtime`, the slowest modules).

    python scripts/gpu/profile_fa4_import.py [OUTDIR]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

PROBES = {
    "interpreter": "pass",
    "torch": "import torch",
    "torch + CUDA context": "import torch; torch.empty(1, device='cuda')",
    "torch + cutlass.cute": "import torch, cutlass, cutlass.cute",
    "torch + quack": "import torch, quack.compile_utils",
    "torch + flash_attn.cute": "import torch, flash_attn.cute",
    "torch + flash_attn.cute + CUDA context":
        "import torch, flash_attn.cute; torch.empty(1, device='cuda')",
    "torch, then CUDA context in a thread while flash_attn.cute imports": """
import threading, torch
t = threading.Thread(target=lambda: torch.empty(1, device='cuda')); t.start()
import flash_attn.cute
t.join()""",
}

CUDA_STATE = """
import torch, flash_attn.cute
maps = open('/proc/self/maps').read()
print('torch.cuda.is_initialized():', torch.cuda.is_initialized(),
      '| libcuda.so mapped:', 'libcuda.so' in maps)
"""

FORK_AFTER_IMPORT = """
import os, time, torch, flash_attn.cute
from flash_attn.cute import flash_attn_func
pid = os.fork()
if pid == 0:
    start = time.perf_counter()
    q = torch.randn(1, 128, 4, 128, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    out = flash_attn_func(q=q, k=q, v=q, causal=True)[0]
    out.sum().backward()
    torch.cuda.synchronize()
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2), is_causal=True).transpose(1, 2)
    print('forked child: FA4 fwd+bwd ran, max |out - sdpa| = %.4f, %.2f s after fork (JIT included)'
          % ((out - ref).abs().max().item(), time.perf_counter() - start))
    os._exit(0)
_, status = os.waitpid(pid, 0)
print('forked child exit status:', status)
"""

PROFILE = """
import cProfile, pstats, io, torch
prof = cProfile.Profile()
prof.enable()
import flash_attn.cute
prof.disable()
for key in ('cumulative', 'tottime'):
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats(key).print_stats(30)
    print(s.getvalue())
"""


def timed(code: str, env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    out = (done.stdout + done.stderr).strip()
    return took, out if done.returncode else done.stdout.strip()


def importtime(outdir: str) -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch, flash_attn.cute"],
                          capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        rows.append((int(own), int(cumulative), name))
    with open(os.path.join(outdir, "importtime.txt"), "w") as fh:
        fh.write(done.stderr)
    print("\n-X importtime, slowest modules by own time (us):")
    for own, cumulative, name in sorted(rows, reverse=True)[:25]:
        print(f"  {own:>9} own {cumulative:>10} cumulative  {name.strip()}")
    print("-X importtime, top-level packages by cumulative time (us):")
    tops = [r for r in rows if not r[2].startswith(" ")]
    for own, cumulative, name in sorted(tops, key=lambda r: -r[1])[:15]:
        print(f"  {cumulative:>10} cumulative  {name}")


def main() -> None:
    outdir = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(outdir, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
          f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')}")
    for name, code in PROBES.items():
        runs = [timed(code) for _ in range(2)]
        problem = next((out for _, out in runs if out), "")
        print(f"{name:<70} {runs[0][0]:6.2f} s  {runs[1][0]:6.2f} s  {problem[-300:]}")
    print(timed(CUDA_STATE)[1])
    print(timed(FORK_AFTER_IMPORT)[1])
    print(timed(PROFILE)[1])
    importtime(outdir)


if __name__ == "__main__":
    main()
