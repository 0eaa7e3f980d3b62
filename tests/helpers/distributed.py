"""Run a function on several local CPU processes joined in a gloo process group.

    run_distributed(worker, 2, case_list)   # calls worker(rank, world_size, case_list) in 2 processes

Workers start from a fork server: a clean single-threaded process that imported torch and lwm once,
so each worker starts at once without inheriting the test process's threads. Forking the test
process itself is unsafe once it holds threads (earlier tests leave tqdm's monitor running): a lock
one of them holds at the fork stays locked forever in the child, the likely cause of a CI run that
hung in the trainer tests. The worker and its
arguments are pickled, so workers are module-level functions. The caller must not hold a process
group itself. Assertions inside a worker fail the calling test with the worker's traceback, and the
other workers are stopped.
"""

from __future__ import annotations

import multiprocessing
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lwm.parallel import free_local_port

multiprocessing.set_forkserver_preload(["torch", "lwm.model", "lwm.training"])


def run_distributed(worker, world_size: int, *args, threads_per_rank: int = 1, timeout_s: float = 120) -> None:
    mp.start_processes(
        _run_rank, args=(worker, world_size, free_local_port(), args, threads_per_rank, timeout_s), nprocs=world_size,
        start_method="forkserver",
    )


def _run_rank(rank, worker, world_size, port, args, threads_per_rank, timeout_s):
    torch.set_num_threads(threads_per_rank)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # all ranks are local; the hostname may not resolve
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
