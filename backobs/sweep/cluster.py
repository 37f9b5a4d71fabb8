"""Where a sweep's runs go: a running Dask scheduler, or a local cluster started here.

:class:`_Cluster` is the client of ``backobs sweep``: to the scheduler at an address or in a
scheduler file (``--scheduler``, or ``DASK_SCHEDULER_ADDRESS``), checked at once, or to a
``LocalCluster`` of single-threaded worker processes that it starts and stops. The local
workers preload this module: :func:`dask_setup` makes them ignore Ctrl-C (the sweep's process
handles it) and imports the code of a run before the first one arrives.

Importing this module loads no Dask and no torch; :meth:`_Cluster.__enter__` imports Dask.
"""

import contextlib
import importlib
import logging
import os
import signal
import socket
import threading

from backobs.checks import OptionError
from backobs.sweep.spec import _one_line

__all__ = ["ALLOWED_FAILURES", "RUN_MODULES", "dask_setup", "import_run_code", "scheduler_address"]

ALLOWED_FAILURES = 2
"""A run whose worker died this many times more is given up (Dask's ``KilledWorker``)."""

RUN_MODULES = (
    "backobs.optim",
    "backobs.adapter.problems",
    "backobs.runs.run",
    "backobs.runs.runner",
    "backobs.sweep.execute",
)
"""The modules a worker needs to run a run (torch, DeepOBS and BackOBS's own)."""


def import_run_code():
    """Import :data:`RUN_MODULES`, so that a worker's first run does not pay for them."""
    for name in RUN_MODULES:
        importlib.import_module(name)


def dask_setup(worker):
    """Dask's preload hook, run in each local worker process at start.

    It ignores SIGINT: Ctrl-C in a terminal goes to the whole process group, the local
    cluster's worker processes too; they would each die with a traceback. The sweep's own
    process handles it: it cancels the runs and shuts the cluster down. (A worker's event loop
    runs in its main thread, where signal handlers are set.) Then it imports the code of a run
    (:func:`import_run_code`).

    Args:
        worker (distributed.Worker): The worker being started.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    import_run_code()


def scheduler_address(scheduler):
    """The scheduler to connect to: ``--scheduler``, else ``DASK_SCHEDULER_ADDRESS``.

    Args:
        scheduler (str): The value of ``--scheduler`` (``None``: not given).

    Returns:
        tuple: ``(address, scheduler_file)``, at most one of them not ``None``; both ``None``
        for a local cluster.

    Raises:
        OptionError: If the value is neither an existing file nor an address with a protocol.
    """
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address is None:
        return None, None
    if os.path.isfile(address):
        return None, address
    if "://" not in address or address.endswith("://"):
        option = "--scheduler" if scheduler else "DASK_SCHEDULER_ADDRESS"
        raise OptionError(
            f"{option} must be a scheduler address such as tcp://127.0.0.1:8786 or a "
            f"scheduler file, got {address!r}"
        )
    return address, None


def _probe(address):
    """Fail at once if nothing listens at a tcp:// address (Dask would retry for its timeout)."""
    if not address or not address.startswith("tcp://"):
        return
    host, _, port = address[len("tcp://") :].rpartition(":")
    if not port.isdigit():
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
        pass


class _Cluster:
    """A Dask client: to a running scheduler, or to a LocalCluster started and stopped here."""

    def __init__(self, address, scheduler_file, workers):
        self.address = address
        self.scheduler_file = scheduler_file
        self.workers = workers or os.cpu_count() or 1
        self.cluster = None
        self.client = None

    def __enter__(self):
        import dask
        from distributed import Client, LocalCluster

        try:
            if self.address or self.scheduler_file:
                try:
                    _probe(self.address)
                    self.client = Client(
                        self.address, scheduler_file=self.scheduler_file, timeout="20s"
                    )
                except (OSError, TimeoutError) as error:
                    where = self.address or f"the scheduler file {self.scheduler_file}"
                    raise OptionError(
                        f"cannot reach the Dask scheduler at {where}: {_one_line(error)}"
                    ) from None
                return self.client
            config = {
                # a run whose worker died is re-run on another worker, twice at most
                "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                # hand a worker only as many runs as it has threads, so that a dead worker
                # holds one run and an idle worker never waits behind another's queue
                "distributed.scheduler.worker-saturation": 1.0,
            }
            with dask.config.set(config):
                self.cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    # the scheduler's HTTP server (dashboard, health) on a free port: 8787
                    # may belong to another cluster on a shared machine
                    dashboard_address=":0",
                    silence_logs=logging.ERROR,
                    env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                    # this module, by name: each worker runs its dask_setup at start
                    preload=[__name__],
                )
                self.client = Client(self.cluster)
            return self.client
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc_info):
        # A second Ctrl-C while the local cluster shuts down would leave its processes
        # behind; shutting down takes a few seconds at most.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.client is not None:
                _quietly(self.client.close)
            if self.cluster is not None:
                _quietly(self.cluster.close)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return False


def _quietly(function, *args):
    with contextlib.suppress(Exception):
        function(*args)
