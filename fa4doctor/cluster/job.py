"""`fa4doctor cluster` on one rank of a launch: facts in, one verdict out, bounded in time.

Every rank joins the job's process group (`torch.distributed.init_process_group` over
`--dist-backend`, on the store the launcher's env:// variables name), then gets its node's facts:
the snapshot `--env` names, or on each node its local rank 0 probes (as `fa4doctor check` does) and
puts the snapshot in the job's store, where that node's other ranks read it. Each rank puts its
`RankReport` in the store; rank 0 waits for them until `--timeout` has passed since it started,
names the ranks that did not answer, publishes the verdict and prints it (forming the group may
take up to `--timeout` too: a rank that never starts stops it, and every rank fails with torch's error). Every answering rank
reads it and exits with its status; when every rank answered they first run one `all_reduce`
over the process group, which proves `--dist-backend` itself (NCCL across the nodes, with nccl).

The store, not a collective, carries the reports because a collective cannot say which rank is
missing (gloo raises one timeout for all), and a rank stuck in its probe must not stop rank 0 from
printing. Keys are prefixed with the launch's run id and restart count, so a restarted job never
reads a previous attempt's answers.

>>> launch = Launch.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
...                               "MASTER_ADDR": "n0", "MASTER_PORT": "29500"})
>>> launch.rank, launch.prefix, env_path("snap/rank{rank}.json", launch)
(3, 'fa4doctor-cluster/n0:29500/0', 'snap/rank3.json')
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from fa4doctor.dispatch.agreement import RankReport, Verdict, build_verdict, rank_report
from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import Environment, SnapshotError, load_environment
from fa4doctor.exit_codes import EXIT_PROBLEMS
from fa4doctor.records import from_plain, to_plain

DIST_BACKENDS = ("gloo", "nccl")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
SHARE_FRACTION = 0.8  # a node's other ranks wait this share of the timeout for its facts, so they can
# still tell rank 0 why they have none before rank 0 stops waiting
ACK_SECONDS = 10.0  # rank 0 keeps the store up this long for the answering ranks to read the verdict


class LaunchError(ValueError):
    """The launcher's variables are missing or invalid (run under torchrun)."""


@dataclass(frozen=True, slots=True)
class Launch:
    """This rank's place in the job, as the launcher's environment variables say."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    run_id: str = "none"
    restart: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Launch:
        missing = [name for name in LAUNCH_VARIABLES if not environ.get(name)]
        if missing:
            raise LaunchError(f"{', '.join(missing)} not set: run fa4doctor cluster under torchrun (or any "
                              f"launcher that sets {', '.join(LAUNCH_VARIABLES)} and LOCAL_RANK)")
        try:
            numbers = {name: int(environ[name]) for name in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
            local = int(environ.get("LOCAL_RANK") or 0)
            restart = int(environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
        except ValueError as exc:
            raise LaunchError(f"launcher variables must be integers: {exc}") from None
        if not 0 <= numbers["RANK"] < numbers["WORLD_SIZE"]:
            raise LaunchError(f"RANK={numbers['RANK']} is not below WORLD_SIZE={numbers['WORLD_SIZE']}")
        run_id = environ.get("TORCHELASTIC_RUN_ID") or f"{environ['MASTER_ADDR']}:{numbers['MASTER_PORT']}"
        return cls(numbers["RANK"], numbers["WORLD_SIZE"], local, environ["MASTER_ADDR"], numbers["MASTER_PORT"],
                   run_id, restart)

    @property
    def prefix(self) -> str:
        return f"fa4doctor-cluster/{self.run_id}/{self.restart}"


def env_path(template: str, launch: Launch) -> str:
    """`--env`'s path for this rank: `{rank}` and `{local_rank}` replaced by its numbers."""
    return template.replace("{rank}", str(launch.rank)).replace("{local_rank}", str(launch.local_rank))


def connect(launch: Launch, dist_backend: str, timeout: float) -> Any:
    """Join the job's process group; returns the launcher's store (the env:// rendezvous's)."""
    import torch.distributed as dist

    if dist_backend not in DIST_BACKENDS:
        raise LaunchError(f"--dist-backend: unknown {dist_backend!r} (valid: {', '.join(DIST_BACKENDS)})")
    if dist_backend == "nccl":
        import torch

        torch.cuda.set_device(launch.local_rank)
    # torch's own env:// rendezvous: rank 0 hosts the store, or torchrun's agent does
    store, rank, world = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout)))
    dist.init_process_group(dist_backend, store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout))
    return store


def _node_facts(store: Any, launch: Launch, probe: Callable[[], Environment], deadline: float
                ) -> tuple[Environment, str]:
    host = os.uname().nodename
    key = f"{launch.prefix}/node/{host}"
    if launch.local_rank == 0:
        env = probe()
        store.set(key, env.to_json(indent=None))
        return env, "probe"
    wait = max((deadline - time.monotonic()) * SHARE_FRACTION, 0.1)
    try:
        store.wait([key], timedelta(seconds=wait))
    except Exception:  # noqa: BLE001 (the store raises a bare RuntimeError or DistStoreError on timeout)
        raise TimeoutError(f"local rank 0 on {host} did not share its facts within {wait:.0f} s") from None
    return Environment.from_json(store.get(key).decode()), "shared"


def my_report(store: Any, launch: Launch, specs: Sequence[tuple[str, AttentionSpec]], policy: Policy, *,
              env_file: str | None, probe: Callable[[], Environment], deadline: float) -> RankReport:
    """This rank's report, or one that says why it has no facts."""
    node = os.uname().nodename
    try:
        if env_file is not None:
            env, source = load_environment(env_path(env_file, launch)), "snapshot"
        else:
            env, source = _node_facts(store, launch, probe, deadline)
    except (SnapshotError, TimeoutError) as exc:
        return RankReport(launch.rank, node, launch.local_rank, error=str(exc))
    except Exception as exc:  # noqa: BLE001 (a failed probe is this rank's answer, not a crash of the job)
        return RankReport(launch.rank, node, launch.local_rank, error=f"probe failed: {type(exc).__name__}: {exc}")
    return rank_report(launch.rank, env, specs, policy, local_rank=launch.local_rank,
                       node=env.hostname if source == "snapshot" and env.hostname else node, source=source)


def collect(store: Any, launch: Launch, deadline: float, poll: float = 0.05) -> list[RankReport]:
    """Rank 0: every report in the store by `deadline` (the missing ranks are the verdict's to name)."""
    keys = {rank: f"{launch.prefix}/rank/{rank}" for rank in range(launch.world_size)}
    found: dict[int, RankReport] = {}
    while True:
        for rank, key in keys.items():
            if rank not in found and store.check([key]):
                found[rank] = from_plain(RankReport, json.loads(store.get(key)))
        if len(found) == len(keys) or time.monotonic() >= deadline:
            return list(found.values())
        time.sleep(poll)


def all_reduce_check(dist_backend: str, launch: Launch) -> tuple[bool, str]:
    """One all_reduce of ones over the job's process group: every rank must take part."""
    import torch
    import torch.distributed as dist

    device = f"cuda:{launch.local_rank}" if dist_backend == "nccl" else "cpu"
    started = time.perf_counter()
    try:
        ones = torch.ones(1, device=device)
        dist.all_reduce(ones)
        total = int(ones.item())
    except Exception as exc:  # noqa: BLE001 (a failed collective is a finding of this check)
        return False, f"all_reduce over {dist_backend} failed: {type(exc).__name__}: {exc}"
    took = (time.perf_counter() - started) * 1000
    ok = total == launch.world_size
    return ok, (f"all_reduce over {dist_backend}: {total} of {launch.world_size} ranks"
                f"{'' if ok else ' (wrong sum)'}, {took:.1f} ms")


def run_rank(launch: Launch, specs: Sequence[tuple[str, AttentionSpec]], *, probe: Callable[[], Environment],
             dist_backend: str = "gloo", timeout: float = 300.0, env_file: str | None = None,
             policy: Policy | None = None) -> Verdict | int:
    """One rank's part: rank 0 returns the verdict; every other rank its exit status."""
    store = connect(launch, dist_backend, timeout)
    deadline = time.monotonic() + timeout  # from when every rank has joined: no rank is late before that
    report = my_report(store, launch, specs, policy or Policy.from_env(), env_file=env_file, probe=probe,
                       deadline=deadline)
    store.set(f"{launch.prefix}/rank/{launch.rank}", json.dumps(to_plain(report)))
    if launch.rank == 0:
        return _lead(store, launch, dist_backend, deadline, timeout)
    return _follow(store, launch, dist_backend, deadline)


def _lead(store: Any, launch: Launch, dist_backend: str, deadline: float, timeout: float) -> Verdict:
    verdict = build_verdict(collect(store, launch, deadline), launch.world_size, timeout_s=timeout)
    store.set(f"{launch.prefix}/verdict", json.dumps({"exit_code": verdict.exit_code,
                                                       "complete": not verdict.missing}))
    if not verdict.missing:
        ok, text = all_reduce_check(dist_backend, launch)
        verdict = replace(verdict, collective=text, collective_ok=ok)
    waited = time.monotonic() + ACK_SECONDS
    while store.add(f"{launch.prefix}/acks", 0) < len(verdict.answered) - 1 and time.monotonic() < waited:
        time.sleep(0.05)
    return verdict


def _follow(store: Any, launch: Launch, dist_backend: str, deadline: float) -> int:
    wait = max(deadline - time.monotonic(), 0.0) + ACK_SECONDS
    try:
        store.wait([f"{launch.prefix}/verdict"], timedelta(seconds=wait))
        published = json.loads(store.get(f"{launch.prefix}/verdict"))
    except Exception as exc:  # noqa: BLE001 (rank 0 gone or stuck: say so, never wait forever)
        print(f"fa4doctor cluster: rank {launch.rank}: rank 0 published no verdict within {wait:.0f} s "
              f"({type(exc).__name__})", file=sys.stderr)
        return EXIT_PROBLEMS
    code = published["exit_code"]
    if published["complete"]:
        ok, _ = all_reduce_check(dist_backend, launch)
        code = code if ok else EXIT_PROBLEMS
    store.add(f"{launch.prefix}/acks", 1)
    return code
