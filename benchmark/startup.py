"""Start-up time of each ``backobs`` command: wall-clock seconds of ``python -m backobs ...``.

Each command runs in a fresh interpreter (what a user's shell does); the best of ``--repeats``
runs is reported, since the machine's load only ever adds time. ``backobs report`` reads a
results folder of one run written by this script. ``--checkout DIR`` measures another checkout
of BackOBS (e.g. a git worktree of an older commit), for before/after tables::

    python benchmark/startup.py                      # this checkout
    python benchmark/startup.py --checkout /tmp/old  # another one
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "backobs --help": ["--help"],
    "backobs report --help": ["report", "--help"],
    "backobs sweep --help": ["sweep", "--help"],
    "backobs run --optimizer sgd --help": ["run", "--optimizer", "sgd", "--help"],
    "backobs report RESULTS_DIR": ["report", "{results}", "-o", "{out}"],
}


def write_results(root):
    directory = root / "mnist_logreg" / "sgd" / "num_epochs__1__batch_size__8__lr__1.e-01"
    directory.mkdir(parents=True)
    curve = [2.3, 1.0]
    result = {
        "testproblem": "mnist_logreg",
        "batch_size": 8,
        "num_epochs": 1,
        "random_seed": 42,
        "optimizer_name": "sgd",
        "optimizer_hyperparams": {"lr": 0.1},
        "train_losses": curve,
        "valid_losses": curve,
        "test_losses": curve,
        "minibatch_train_losses": [2.3, 1.5],
        "train_accuracies": [0.1, 0.6],
        "valid_accuracies": [0.1, 0.6],
        "test_accuracies": [0.1, 0.6],
        "status": "finished",
        "epoch_seconds": [0.5],
    }
    (directory / "random_seed__42__2026-01-01-00-00-00.json").write_text(json.dumps(result))


def best_time(argv, checkout, cwd, repeats):
    environment = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "backobs", *argv],
            cwd=cwd,
            env=environment,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        write_results(root / "results")
        print(f"checkout: {args.checkout}")
        print("| command | seconds (best of %d) |" % args.repeats)
        print("|---|---|")
        for label, argv in COMMANDS.items():
            argv = [a.format(results=root / "results", out=root / "out") for a in argv]
            seconds = best_time(argv, args.checkout, root, args.repeats)
            print(f"| `{label}` | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
