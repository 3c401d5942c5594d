"""A small torchrun for the tests: one process per rank on this machine, the launcher's variables set.

    python tests/cluster/launch.py --world 4 --out DIR [--wait S] [--rank-env R:NAME=VALUE ...] [--hang R] -- MODE ARGS...

MODE `cli` runs `fa4doctor ARGS` on every rank (the real command, in-process); MODE `uniform` runs
tests/cluster/workers.py's `uniform` on every rank. Ranks are forked from this process after it
imported torch once (before any torch op, so no thread pool is forked): four interpreters each
importing torch cost this project's 2-core VM 10-20 s, a fork nothing. Each rank's stdout and
stderr go to DIR/rank<R>.out and .err; DIR/codes.json gets each rank's exit status and seconds,
or "killed" for a rank still running after --wait seconds (it is then killed). `--hang R` makes
rank R join the job's process group as `fa4doctor cluster` does and then never answer (a rank stuck
in its probe); it is killed once every other rank has exited.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, args: argparse.Namespace, port: int) -> None:
    out = Path(args.out)
    os.dup2(os.open(out / f"rank{rank}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
    os.dup2(os.open(out / f"rank{rank}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(args.world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    for item in args.rank_env:
        target, _, assignment = item.partition(":")
        if int(target) == rank:
            name, _, value = assignment.partition("=")
            os.environ[name] = value
    code = 0
    try:
        if rank in args.hang:
            from fa4doctor.cluster.job import Launch, connect

            connect(Launch.from_environ(os.environ), "gloo", 60.0)
            time.sleep(3600)
        elif args.mode == "cli":
            from fa4doctor.cli import cli

            cli.main(args.rest, prog_name="fa4doctor")
        else:
            from tests.cluster import workers

            workers.uniform(out, rank, *args.rest)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--out", required=True)
    parser.add_argument("--wait", type=float, default=60.0)
    parser.add_argument("--rank-env", action="append", default=[])
    parser.add_argument("--hang", action="append", type=int, default=[])
    parser.add_argument("mode", choices=("cli", "uniform"))
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    args.rest = [a for a in args.rest if a != "--"]
    import torch  # noqa: F401 (imported once, before the fork)
    import torch.distributed  # noqa: F401

    import fa4doctor.cli.cluster  # noqa: F401
    import fa4doctor.cluster.job  # noqa: F401
    import fa4doctor.cluster.training  # noqa: F401

    port, started, pids = free_port(), time.monotonic(), {}
    for rank in range(args.world):
        pid = os.fork()
        if pid == 0:
            _child(rank, args, port)
        pids[pid] = rank
    codes: dict[int, object] = {}
    while set(pids.values()) - set(args.hang) and time.monotonic() - started < args.wait:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.05)
            continue
        codes[pids.pop(pid)] = {"code": os.waitstatus_to_exitcode(status),
                                "seconds": round(time.monotonic() - started, 2)}
    for pid, rank in pids.items():  # still running after --wait: the test names it, we end it
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        codes[rank] = "killed"
    Path(args.out, "codes.json").write_text(json.dumps({str(k): v for k, v in sorted(codes.items())}))


if __name__ == "__main__":
    main()
