"""Throughput of ``backobs sweep`` on a local cluster, and what the engine adds to each run.

A grid of 16 short runs (2 problems x 2 optimizers x 4 learning rates, synthetic data) goes
through ``backobs sweep``'s code (:func:`backobs.sweep.run_sweep` on the ``LocalCluster``
that the command starts) with 1 and 2 worker processes. Measured:

- cluster start: ``LocalCluster`` with N worker processes up, each having imported BackOBS
  (``backobs sweep`` preloads it in the workers);
- process start and import: a fresh interpreter importing a run's code as a local worker does
  at start (:func:`backobs.sweep.cluster.import_run_code`; what each worker process pays once,
  inside the cluster start);
- runs per minute, without and with the cluster start;
- the runs' own time: the seconds the runs report (``runs.execute`` in the worker);
- per-run overhead: (wall time x workers - the runs' own time) / runs, i.e. what scheduling,
  submitting, results handling and the existence checks add to each run;
- for reference, the same 16 runs one after another in this process (``runs.execute``).

Not a test: run ``python benchmark/sweep_throughput.py`` on an otherwise idle machine and
copy the table into benchmark/RESULTS.md. ``--steps`` changes the length of each run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

# BackOBS and torch are imported inside the functions: the local cluster's worker processes
# re-import this file (multiprocessing's spawn), and should start as bare as under
# `backobs sweep`, so that "import in a worker" is measured on its own.


def _spec(output_dir, steps):
    return {
        "problems": ["mnist_logreg", "quadratic_deep"],
        "optimizers": {
            "sgd": {"lr": [0.01, 0.02, 0.05, 0.1]},
            "diag_ggn_mc": {"lr": [0.01, 0.02, 0.05, 0.1]},
        },
        "batch_size": 32,
        "num_epochs": 1,
        "steps_per_epoch": steps,
        "eval_batches": 2,
        "synthetic_data": True,
        "output_dir": output_dir,
    }


def _in_process(spec):
    """The runs one after another in this process (one torch thread, as in a worker)."""
    import torch

    from backobs import runs, sweep

    torch.set_num_threads(1)
    loaded = sweep.parse_sweep(spec, source="benchmark")
    grid = loaded.runs()
    runs.execute(grid[0], verbose=False)  # warm-up: lazy imports, first allocations
    shutil.rmtree(loaded.output_dir)
    started = time.perf_counter()
    seconds = [runs.execute(run, verbose=False)["seconds"] for run in grid]
    return time.perf_counter() - started, sum(seconds), len(grid)


def _on_cluster(spec, workers):
    from backobs import sweep
    from backobs.sweep.cluster import _Cluster

    loaded = sweep.parse_sweep(spec, source="benchmark")
    started = time.perf_counter()
    with _Cluster(None, None, workers) as client:
        cluster_start = time.perf_counter() - started
        before = time.perf_counter()
        (outcome,) = sweep.run_sweep(loaded, client)
        sweep_seconds = time.perf_counter() - before
    total = time.perf_counter() - started
    records = [r for r in outcome.records if r["status"] in ("finished", "diverged")]
    if len(records) != len(outcome.records):
        failed = [r["error"] for r in outcome.records if r not in records]
        raise RuntimeError(f"runs failed: {failed[:3]}")
    own = sum(r["seconds"] for r in records)
    return {
        "workers": workers,
        "runs": len(records),
        "cluster_start": cluster_start,
        "sweep": sweep_seconds,
        "total": total,
        "own": own,
    }


def _fresh_import_seconds(repeats=3):
    """Process start and a worker's imports in a new interpreter (best of ``repeats``)."""
    code = "from backobs.sweep import cluster; cluster.import_run_code()"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - started)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="Training steps per run.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="backobs_sweep_bench_")
    load_before = os.getloadavg()[0]
    try:
        fresh_import = _fresh_import_seconds()
        serial, serial_own, count = _in_process(_spec(os.path.join(root, "serial"), args.steps))
        rows = [
            _on_cluster(_spec(os.path.join(root, f"workers{n}"), args.steps), n)
            for n in args.workers
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    import torch

    print(
        f"{count} runs (2 problems x 2 optimizers x 4 lr), {args.steps} steps, batch 32, "
        f"synthetic data; {os.cpu_count()} cores; torch {torch.__version__}; Python "
        f"{sys.version.split()[0]}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(f"process start + a worker's imports in a fresh interpreter: {fresh_import:.1f} s")
    print(
        f"in this process, one after another: {serial:.1f} s, "
        f"{60 * count / serial:.0f} runs/min, {serial_own / count:.2f} s per run"
    )
    print(
        "| workers | cluster start, BackOBS imported (s) | sweep (s) | runs/min "
        "| runs/min incl. start | run's own time (s/run) | engine overhead (s/run) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        per_run_own = row["own"] / row["runs"]
        overhead = (row["sweep"] * row["workers"] - row["own"]) / row["runs"]
        print(
            f"| {row['workers']} | {row['cluster_start']:.1f} | {row['sweep']:.1f} "
            f"| {60 * row['runs'] / row['sweep']:.0f} "
            f"| {60 * row['runs'] / row['total']:.0f} | {per_run_own:.2f} | {overhead:.2f} |"
        )


if __name__ == "__main__":
    main()
