"""Running a list of runs on a Dask client: skip what exists, record every run as it ends.

:func:`execute_runs` submits one task per missing run (:func:`_run_on_worker`, which calls
:func:`backobs.runs.execute`, the code of ``backobs run``), shows a progress bar and one line
per ended run, and appends one JSON line per run to ``<output_dir>/sweep_manifest.jsonl``
(:data:`MANIFEST_NAME`). A run that raises is a result (``"failed"`` with its error), not a
crash of the sweep; a run whose worker died is re-run by Dask on another worker.

Importing this module loads no torch, no Dask and no tqdm: a worker imports torch for its first
run.
"""

import contextlib
import io
import json
import os
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from backobs import runs
from backobs.sweep import claims
from backobs.sweep.cluster import ALLOWED_FAILURES, _quietly
from backobs.sweep.spec import _describe_run, _one_line, _run_key

__all__ = ["MANIFEST_NAME", "SweepOutcome", "execute_runs"]

MANIFEST_NAME = "sweep_manifest.jsonl"
"""The manifest's file name in the output directory: one JSON line per run and sweep."""


@dataclass
class SweepOutcome:
    """What became of a list of runs.

    Attributes:
        records (list): One manifest record per run that reached an end (run, skipped or
            failed), in the order they ended.
        interrupted (bool): Whether Ctrl-C stopped the sweep before every run ended.
        not_run (int): Runs that neither ran nor were skipped (after an interruption).
    """

    records: list
    interrupted: bool = False
    not_run: int = 0

    def count(self, *statuses):
        """Number of records with one of ``statuses``."""
        return sum(record["status"] in statuses for record in self.records)


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Manifest:
    """``<output_dir>/sweep_manifest.jsonl``: appended one line per run as it ends."""

    def __init__(self, path, sweep_id, source):
        self.path = path
        self.sweep_id = sweep_id
        self.source = source

    def append(self, run, status, seconds=None, worker=None, error=None, path=None, **extra):
        record = {
            "sweep": self.sweep_id,
            "spec": self.source,
            "time": _now(),
            "run": run.to_dict(),
            "status": status,
            "seconds": seconds,
            "worker": worker,
            "error": error,
            "path": path,
        }
        record.update(extra)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # One write() per record on a file opened with O_APPEND: the kernel appends it whole,
        # so the records of several sweep commands on one folder never interleave.
        data = (json.dumps(record, allow_nan=False, default=str) + "\n").encode("utf-8")
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(descriptor, data)
            while written < len(data):  # a short write (a signal): append the rest
                written += os.write(descriptor, data[written:])
        finally:
            os.close(descriptor)
        return record


# One run at a time per worker process: DeepOBS seeds the process-wide random generators and
# the runner sets process-wide switches (synthetic data, default device) for the time of a
# run, so two runs in two threads of one process would change each other's numbers.
_RUN_LOCK = threading.Lock()


def _run_on_worker(run_dict, sweep_id=None):
    """Execute one run in a Dask worker; never raises for the run's own errors.

    The run is claimed first (:mod:`backobs.sweep.claims`); a run that another live command
    has claimed is not run here (status ``"claimed"``, with the claimant in ``owner``).

    Returns:
        dict: ``status`` (``"finished"``, ``"diverged"``, ``"interrupted"``, ``"failed"`` or
        ``"claimed"``), ``path``, ``seconds``, ``worker``, ``error`` (``"Type: message"``;
        for a diverged run ``"diverged at step N: <quantity> not finite: <reason>"``, with
        ``diverged_at_step`` and ``diverged_quantity`` beside it), ``output`` (the tail of
        what the run printed, for failed runs).
    """
    import torch

    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = None
    record = {"worker": worker, "pid": os.getpid(), "error": None, "output": None}
    with _RUN_LOCK:
        start = time.perf_counter()
        captured = io.StringIO()
        try:
            # One torch thread per run: several runs share the machine, and a run's numbers
            # must not depend on the thread count (it changes the order of float sums).
            torch.set_num_threads(1)
            run = runs.Run.from_dict(run_dict)
            done = runs.existing_result(run)
            if done is not None:  # a retry after the first worker died having written it
                record.update(status="finished", path=done, seconds=0.0, reused=True)
                return record
            held, owner = claims.claim(claims.claim_path(run), sweep_id)
            if held is None:
                record.update(status="claimed", path=None, seconds=0.0, owner=owner)
                return record
            with held:
                done = runs.existing_result(run)  # finished elsewhere just before the claim
                if done is not None:
                    record.update(status="finished", path=done, seconds=0.0, reused=True)
                    return record
                claims.remove_leftovers(run)  # of a claimant killed mid-run
                # The runner gives DeepOBS a Python random generator of its own for the run
                # (the Dask event loop draws from the global one).
                with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                    result = runs.execute(run, verbose=False)
        except Exception as error:  # a failed run is a result of the sweep
            record.update(
                status="failed",
                path=None,
                error=f"{type(error).__name__}: {_one_line(error)}",
                traceback=traceback.format_exc(limit=-8),
                output=captured.getvalue()[-2000:] or None,
            )
        else:
            record.update(status=result.get("status", "finished"), path=result.get("path"))
            if record["status"] == "diverged":
                record.update(_divergence(result))
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record


def _divergence(result):
    """A diverged run's record: the step, what was not finite, and why (as ``error``)."""
    step = result.get("diverged_at_step")
    quantity = result.get("diverged_quantity") or "a quantity"
    reason = result.get("diverged_reason") or "not recorded"
    return {
        "diverged_at_step": step,
        "diverged_quantity": result.get("diverged_quantity"),
        "error": f"diverged at step {step}: {quantity} not finite: {reason}",
    }


def _status_line(done, failed, total, started):
    elapsed = time.perf_counter() - started
    text = f"{done}/{total} runs, {failed} failed"
    if done and done < total:
        left = elapsed / done * (total - done)
        text += f", ~{_duration(left)} left"
    return text


def _duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def execute_runs(runs_to_do, client, manifest, *, progress=None, out=None):
    """Run what is missing of ``runs_to_do`` on a Dask client; skip what exists.

    Each run whose results file exists (:func:`backobs.runs.existing_result`) is recorded as
    ``"skipped"``; the others are submitted as one task each and recorded as they end. A run
    whose worker dies is re-run by Dask on another worker (up to the scheduler's
    ``allowed-failures``, then recorded as failed); a run that raises is recorded as failed.

    Args:
        runs_to_do (list): :class:`backobs.runs.Run` objects.
        client (distributed.Client): Where the runs go.
        manifest (_Manifest): Where the records go.
        progress (bool): Show a tqdm bar on stderr (default: if stderr is a terminal).
        out: Stream for one line per ended run (default: ``sys.stdout``).

    Returns:
        SweepOutcome: The records; ``interrupted`` if Ctrl-C stopped it (the pending runs
        are cancelled first).
    """
    from distributed import KilledWorker
    from tqdm import tqdm

    out = out if out is not None else sys.stdout
    outcome = SweepOutcome(records=[])
    pending_runs = []
    for run in runs_to_do:
        path = runs.existing_result(run)
        if path is None:
            pending_runs.append(run)
        else:
            outcome.records.append(manifest.append(run, "skipped", path=path))
    total = len(pending_runs)
    if not total:
        return outcome

    futures = {}
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(
        total=total,
        unit="run",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}{postfix}]",
        desc="sweep",
    )
    started = time.perf_counter()
    counts = {"ended": 0, "failed": 0}

    deferred = {}  # runs another command has claimed: run key -> (run, its claimant)

    def submit(run):
        key = f"backobs-run-{run.problem}-{run.optimizer}-{uuid.uuid4().hex[:12]}"
        # No retries: a run that raises is recorded as failed (it would raise again); a
        # run whose worker died is rescheduled by the scheduler (allowed-failures).
        futures[
            client.submit(_run_on_worker, run.to_dict(), manifest.sweep_id, key=key, pure=False)
        ] = run

    def record(future):
        run = futures.pop(future)
        result = _collect(future, run, KilledWorker)
        result["task"] = future.key
        status = result.pop("status")
        if status == "claimed":
            owner = result.get("owner") or {}
            deferred[_run_key(run)] = (run, owner)
            tqdm.write(
                f"[sweep] {_describe_run(run)}: claimed by another command "
                f"(host {owner.get('host')}, pid {owner.get('pid')}); waiting for it",
                file=out,
            )
            return
        outcome.records.append(manifest.append(run, status, **result))
        counts["ended"] += 1
        counts["failed"] += status == "failed"
        bar.update(1)
        line = (
            f"[{_status_line(counts['ended'], counts['failed'], total, started)}] {status} "
            f"{_describe_run(run)} ({result.get('seconds') or 0.0:.1f} s)"
        )
        if status in ("failed", "diverged") and result.get("error"):
            line += f": {result['error']}"
        tqdm.write(line, file=out)

    last_poll, running = 0.0, 0
    try:
        for run in pending_runs:
            submit(run)
        last_check = 0.0
        while futures or deferred:
            for future in [future for future in futures if future.done()]:
                record(future)
            if deferred and time.perf_counter() - last_check > CLAIM_POLL_SECONDS:
                last_check = time.perf_counter()
                for key in list(deferred):
                    _check_deferred(key, deferred, submit, outcome, manifest, counts, bar)
            now = time.perf_counter()
            if futures and now - last_poll > 1.0:
                running = _running(client, set(f.key for f in futures))
                last_poll = now
            bar.set_postfix_str(f"failed {counts['failed']}, running {running}", refresh=False)
            bar.refresh()
            if futures:
                time.sleep(0.2)
    except KeyboardInterrupt:
        outcome.interrupted = True
        _quietly(client.cancel, [future for future in futures if not future.done()])
        # runs that ended before the cancel reached them are results: record them
        for future in [f for f in futures if f.done() and f.status == "finished"]:
            _quietly(record, future)
        outcome.not_run = len(futures) + len(deferred)
    finally:
        bar.close()
    return outcome


CLAIM_POLL_SECONDS = 2.0
"""How often a sweep looks at the runs that another command is running."""


def _check_deferred(key, deferred, submit, outcome, manifest, counts, bar):
    """A run another command claimed: done there (skipped here), or abandoned (run here)."""
    run, _ = deferred[key]
    path = runs.existing_result(run)
    if path is not None:
        _, owner = deferred.pop(key)
        outcome.records.append(manifest.append(run, "skipped", path=path, elsewhere=owner or None))
        counts["ended"] += 1
        bar.update(1)
        return
    claim_file = claims.claim_path(run)
    current = claims.owner_of(claim_file)
    if current is None or claims.is_stale(claim_file, current):
        del deferred[key]  # its claimant ended without results, or is gone: run it here
        submit(run)


def _collect(future, run, killed_worker_error):
    """The record of an ended future (a task that raised or lost its workers: failed)."""
    try:
        return future.result()
    except killed_worker_error as error:
        message = (
            f"its worker died {ALLOWED_FAILURES + 1} times (killed, or out of memory): "
            f"{_one_line(error)}"
        )
    except Exception as error:  # cancelled (scheduler gone), not deserialisable, ...
        message = f"{type(error).__name__}: {_one_line(error) or 'the task ended on the cluster'}"
    return {"status": "failed", "error": message, "seconds": None, "worker": None}


def _running(client, keys):
    """How many of ``keys`` a worker is processing (at most its thread count)."""
    try:
        processing = client.processing()
        threads = client.nthreads()
    except Exception:  # the scheduler is busy or gone; the bar shows the last number
        return 0
    return sum(
        min(len(keys.intersection(tasks)), threads.get(worker, 1))
        for worker, tasks in processing.items()
    )
