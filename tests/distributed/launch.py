"""Start ``world`` CPU processes on the gloo backend and collect each rank's results.

``spawn(checks, world, outdir)`` runs ``checks(rank, world) -> dict`` (a module-level
function) in every rank once, under a bound of ``timeout_s`` seconds (default
``TIMEOUT_S``; it is also the process group's timeout, so a rank blocked in a collective
raises instead of hanging), saves each rank's
dict to ``outdir`` and returns them in rank order; a rank's exception fails the test with
its traceback.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 60.0


def _worker(
    rank: int, world: int, port: int, outdir: str, checks: Callable, timeout_s: float
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    try:
        result = checks(rank, world)
    except Exception:
        result = {"error": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(
    checks: Callable[[int, int], dict], world: int, outdir: str, timeout_s: float = TIMEOUT_S
) -> list[dict]:
    # forkserver: torch and the checks' module are imported once, in a fresh server process
    # that has run no OpenMP region, and each rank is forked from it (spawn re-imports)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, checks.__module__])
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, outdir, checks, timeout_s))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 2 * timeout_s  # start-up, then at most one timeout
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.0))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    assert not hung, f"ranks {hung} of {world} did not finish within {2 * timeout_s} s"
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, f"worker exit codes {codes}"
    results = [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(world)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r} failed:\n{res['error']}"
    return results
