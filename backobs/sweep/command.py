"""The ``backobs sweep`` command: its options, the dry run, and what it prints at the end.

Importing it and building the parser (:func:`add_arguments`) loads neither torch nor DeepOBS
nor Dask (the sweep's modules import them in the functions that use them), so that ``backobs
sweep --help`` is fast.
"""

import json
import os
import shlex
import sys

from backobs import checks, runs
from backobs.checks import OptionError
from backobs.sweep.cluster import _Cluster, scheduler_address
from backobs.sweep.execute import MANIFEST_NAME, SweepOutcome
from backobs.sweep.protocol import SUMMARY_NAME, choose_best, final_runs, run_sweep
from backobs.sweep.spec import FIRST_SEED, _describe_run, _run_key, load_sweep

__all__ = ["add_arguments", "command"]

_RUN_STATUSES_DONE = ("finished", "diverged")


def add_arguments(parser):
    """Add ``backobs sweep``'s arguments to ``parser``.

    Args:
        parser (argparse.ArgumentParser): The subcommand's parser.
    """
    parser.description = (
        "Run a grid of BackOBS runs (problems x optimizers x hyperparameters x seeds) on "
        "Dask: a local cluster by default, or a running cluster. Finished runs are skipped, "
        "so the same command resumes an interrupted sweep."
    )
    parser.add_argument("spec", metavar="SPEC", help="The sweep file (YAML or JSON).")
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="Address of a running Dask scheduler (tcp://host:port) or its scheduler file; "
        "default: the environment variable DASK_SCHEDULER_ADDRESS, else a local cluster.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="Worker processes of the local cluster, one run and one torch thread each "
        f"(default: the number of cores, {os.cpu_count()}).",
    )
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="List the runs and which of them are done; run nothing.",
    )
    parser.add_argument(
        "--final-seeds",
        "--final_seeds",
        dest="final_seeds",
        type=int,
        default=None,
        metavar="K",
        help="DeepOBS's protocol: after the grid, run each (problem, optimizer)'s best "
        "setting (final validation accuracy; loss for quadratic_deep) with seeds 42, ..., "
        f"42+K-1, and write the choice to <output_dir>/{SUMMARY_NAME}.",
    )


def _check_arguments(args):
    checks.check_positive_int("--workers", args.workers)
    checks.check_positive_int("--final-seeds", args.final_seeds)
    address, scheduler_file = scheduler_address(args.scheduler)
    if args.workers is not None and (address or scheduler_file):
        raise OptionError(
            "--workers sets the size of the local cluster; with --scheduler (or "
            "DASK_SCHEDULER_ADDRESS) the cluster's own workers run the sweep"
        )
    return address, scheduler_file


def command(args):
    """Run ``backobs sweep`` with parsed arguments.

    Args:
        args (argparse.Namespace): From a parser set up by :func:`add_arguments`.

    Returns:
        int: 0 if every run ended with a results file, 1 if some failed, 130 after Ctrl-C.

    Raises:
        OptionError: For a bad option or sweep file, before anything runs.
    """
    address, scheduler_file = _check_arguments(args)
    sweep = load_sweep(args.spec)
    grid = sweep.runs()
    if args.dry_run:
        _dry_run(sweep, grid, args.final_seeds)
        return 0

    where = address or scheduler_file or f"a local cluster of {args.workers or os.cpu_count()}"
    print(f"[sweep] {args.spec}: {len(grid)} runs on {where}; results in {sweep.output_dir}")
    outcomes = []
    try:
        with _Cluster(address, scheduler_file, args.workers) as client:
            run_sweep(sweep, client, final_seeds=args.final_seeds, outcomes=outcomes)
    except KeyboardInterrupt:  # outside the loop over runs: while starting or connecting
        ended = sum(len(outcome.records) for outcome in outcomes)
        outcomes.append(
            SweepOutcome(records=[], interrupted=True, not_run=max(len(grid) - ended, 0))
        )
    return _report(args, sweep, outcomes)


def _report(args, sweep, outcomes):
    ran = sum(o.count(*_RUN_STATUSES_DONE) for o in outcomes)
    # the final seeds' seed 42 is the grid's run: skipped there, but not done before
    ran_now = {
        json.dumps(r["run"], sort_keys=True)
        for o in outcomes
        for r in o.records
        if r["status"] in _RUN_STATUSES_DONE
    }
    skipped = sum(
        r["status"] == "skipped"
        and not r.get("elsewhere")
        and json.dumps(r["run"], sort_keys=True) not in ran_now
        for o in outcomes
        for r in o.records
    )
    elsewhere = sum(
        r["status"] == "skipped" and bool(r.get("elsewhere")) for o in outcomes for r in o.records
    )
    by_others = f", {elsewhere} run by another command on the folder" if elsewhere else ""
    diverged = sum(o.count("diverged") for o in outcomes)
    failed = sum(o.count("failed", "interrupted") for o in outcomes)
    manifest = os.path.join(sweep.output_dir, MANIFEST_NAME)
    if any(o.interrupted for o in outcomes):
        not_run = sum(o.not_run for o in outcomes)
        print(
            f"backobs sweep: interrupted: {ran} runs finished, {diverged} of them diverged, "
            f"{skipped} were done before, "
            f"{failed} failed, {not_run} not run; run the same command again to resume "
            f"({_command_line(args)}); finished runs are skipped",
            file=sys.stderr,
        )
        return 130
    print(
        f"[sweep] done: {ran} runs finished, {diverged} of them diverged, {skipped} were done "
        f"before{by_others}, {failed} failed"
    )
    print(f"[sweep] manifest: {manifest}")
    if failed:
        print(
            f"backobs sweep: {failed} runs failed; their errors are in {manifest}",
            file=sys.stderr,
        )
        return 1
    return 0


def _command_line(args):
    """The command as the user would type it again (to resume)."""
    words = ["backobs", "sweep", args.spec]
    if args.scheduler:
        words += ["--scheduler", args.scheduler]
    if args.workers:
        words += ["--workers", str(args.workers)]
    if args.final_seeds:
        words += ["--final-seeds", str(args.final_seeds)]
    return " ".join(shlex.quote(word) for word in words)


def _dry_run(sweep, grid, final_seeds):
    done = {}
    for run in grid:
        done[_run_key(run)] = runs.existing_result(run)
    missing = sum(path is None for path in done.values())
    print(
        f"{sweep.source}: {len(grid)} runs, {len(grid) - missing} done, {missing} to run "
        f"(results in {sweep.output_dir})"
    )
    for run in grid:
        path = done[_run_key(run)]
        state = "done  " if path else "to run"
        suffix = f"  {os.path.relpath(path, sweep.output_dir)}" if path else ""
        print(f"  {state}  {_describe_run(run)}{suffix}")
    if not final_seeds:
        return
    if missing:
        print(
            f"final seeds: each (problem, optimizer)'s best setting is chosen after the grid "
            f"({missing} grid runs to run), then run with seeds {FIRST_SEED}.."
            f"{FIRST_SEED + final_seeds - 1}"
        )
        return
    choices = choose_best(sweep, {key: path for key, path in done.items()})
    final = final_runs(sweep, choices, final_seeds)
    todo = [run for run in final if runs.existing_result(run) is None]
    print(f"final seeds: {len(final)} runs, {len(final) - len(todo)} done, {len(todo)} to run")
    for run in final:
        state = "to run" if run in todo else "done  "
        print(f"  {state}  {_describe_run(run)}")
