"""A real Dask cluster for the sweep tests: a scheduler and two workers as subprocesses.

Started on 127.0.0.1 on free ports (a scheduler file) and stopped by their process ids.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from backobs.sweep import cluster

distributed = pytest.importorskip("distributed")


@dataclass
class Cluster:
    address: str
    scheduler_file: str
    client: "distributed.Client"
    worker_pids: dict  # worker address -> pid


def _child_environment():
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # a worker gets as many runs as it has threads (one), so "processing" means "running"
    environment["DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION"] = "1.0"
    return environment


def _stop(processes):
    """SIGTERM to each (workers first, then the scheduler), SIGKILL after 5 s."""
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def _cluster(directory, worker_environment=None):
    """A scheduler and two single-threaded workers without nannies, on 127.0.0.1.

    Args:
        directory: Where the scheduler file and the processes' log go.
        worker_environment (dict, optional): Variables set (or, with value ``None``,
            removed) in the workers' environment only.
    """
    scheduler_file = str(directory / "scheduler.json")
    log = open(directory / "cluster.log", "w")
    processes = []
    client = None

    def start(module, *arguments, extra=None):
        command = [sys.executable, "-m", module, *arguments]
        environment = _child_environment()
        for name, value in (extra or {}).items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        processes.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        )
        return processes[-1]

    try:
        start(
            "distributed.cli.dask_scheduler",
            *("--host", "127.0.0.1", "--port", "0", "--no-dashboard"),
            *("--scheduler-file", scheduler_file),
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(scheduler_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [
            start(
                "distributed.cli.dask_worker",
                *("--scheduler-file", scheduler_file, "--nthreads", "1", "--no-nanny"),
                *("--no-dashboard", "--name", f"worker-{index}"),
                extra=worker_environment,
            )
            for index in range(2)
        ]
        client = distributed.Client(scheduler_file=scheduler_file, timeout="60s")
        client.wait_for_workers(2, timeout=120)
        pids = client.run(os.getpid)
        assert sorted(pids.values()) == sorted(worker.pid for worker in workers)
        # Import a run's code in the workers now, so that the runs' times are the runs' own.
        client.run(cluster.import_run_code)
        yield Cluster(client.scheduler.address, scheduler_file, client, pids)
    finally:
        if client is not None:
            client.close()
        _stop(processes[::-1])
        log.close()
