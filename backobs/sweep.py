"""``backobs sweep``: a grid of runs, executed on Dask, resumable, with DeepOBS's protocol.

A sweep file (YAML, or JSON, which is YAML too) names problems, optimizers with grids of
hyperparameters, seeds and the training settings of ``backobs run``::

    problems: [mnist_logreg, fmnist_2c2d]
    optimizers:
      sgd: {lr: [0.01, 0.1]}
      kfac: {lr: [0.01, 0.1], damping: [0.001, 0.01]}
    seeds: [42]
    num_epochs: 2
    output_dir: results

Every list is a grid axis and a scalar is fixed; :func:`load_sweep` checks all of it before
anything runs and raises one :class:`~backobs.runs.options.OptionError` naming the file, the key
and what it accepts. :meth:`Sweep.runs` expands the grid into :class:`backobs.runs.Run`
objects; :func:`execute_runs` hands them to a Dask client (a ``LocalCluster`` by default, any
scheduler with ``--scheduler``), skips the runs whose results file exists, and appends one
JSON line per run to ``<output_dir>/sweep_manifest.jsonl``. :func:`choose_best` implements
the choice of DeepOBS's protocol (best final validation accuracy, or loss where a problem has
no accuracy) for ``--final-seeds``.

The sweep is data handed to an executor: the code that runs one run is the code of
``backobs run`` (:func:`backobs.runs.execute`), in a worker process; a run that raises is a
result (``"failed"`` with its error), not a crash of the sweep.
"""

import contextlib
import io
import itertools
import json
import logging
import math
import os
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import yaml
from tqdm import tqdm

from backobs import optim, runs
from backobs.adapter import problems
from backobs.checks import OptionError
from backobs.runs import options

__all__ = [
    "Sweep",
    "SweepOutcome",
    "SPEC_KEYS",
    "MANIFEST_NAME",
    "SUMMARY_NAME",
    "FIRST_SEED",
    "NO_ACCURACY_PROBLEMS",
    "load_sweep",
    "parse_sweep",
    "execute_runs",
    "run_sweep",
    "choose_best",
    "final_runs",
    "add_arguments",
    "command",
]

MANIFEST_NAME = "sweep_manifest.jsonl"
"""The manifest's file name in the output directory: one JSON line per run and sweep."""

SUMMARY_NAME = "sweep_summary.json"
"""The file name of ``--final-seeds``'s choice in the output directory."""

FIRST_SEED = 42
"""DeepOBS's protocol tunes on this seed and re-runs the best setting with 42, 43, ..."""

NO_ACCURACY_PROBLEMS = frozenset({"quadratic_deep", "mnist_vae", "fmnist_vae"})
"""Problems without an accuracy: their best setting has the lowest final validation loss."""

# key -> (what it accepts, for messages). "problems" and "optimizers" are required.
SPEC_KEYS = {
    "problems": "a problem name or a list of them",
    "optimizers": "a mapping from optimizer name to its hyperparameters",
    "seeds": "an integer >= 0 or a list of them (default: [42])",
    "batch_size": "a positive integer (default: DeepOBS's per problem)",
    "num_epochs": "a positive integer (default: DeepOBS's per problem)",
    "steps_per_epoch": "an integer >= 0 (0: whole epochs)",
    "eval_batches": "an integer >= 0 (0: evaluate on all batches)",
    "synthetic_data": "true or false",
    "data_dir": "a directory",
    "output_dir": "a directory (default: results)",
    "extensions": "a list of extension names active in every step",
    "device": "a device such as cpu or cuda:0",
}
"""The keys a sweep file may have, with what each accepts."""

_REQUIRED_KEYS = ("problems", "optimizers")
_RUN_STATUSES_DONE = ("finished", "diverged")
_ALLOWED_FAILURES = 2  # a run whose worker died this many times more is given up (KilledWorker)


# -----------------------------------------------------------------------------------------
# The sweep file
# -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file.

    Attributes:
        source (str): Where it came from (the file name), for messages.
        problems (tuple): Problem names, in the file's order.
        optimizers (tuple): ``(name, axes)`` pairs; ``axes`` is a tuple of
            ``(hyperparameter, values)`` with ``values`` a tuple (one value: fixed).
        seeds (tuple): Seeds of the grid.
        settings (dict): The training settings shared by every run: ``batch_size``,
            ``num_epochs``, ``steps_per_epoch``, ``eval_batches``, ``synthetic_data``,
            ``data_dir`` and ``output_dir`` (absolute paths), ``extensions``, ``device``.
    """

    source: str
    problems: tuple
    optimizers: tuple
    seeds: tuple
    settings: dict

    @property
    def output_dir(self):
        """str: The absolute output directory (results, manifest, summary)."""
        return self.settings["output_dir"]

    def hyperparameter_settings(self, optimizer):
        """Every point of an optimizer's grid, defaults filled in.

        Args:
            optimizer (str): One of the sweep's optimizers.

        Returns:
            list: Dictionaries of hyperparameters, in grid order (last axis fastest).
        """
        axes = dict(self.optimizers)[optimizer]
        names = [name for name, _ in axes]
        return [
            optim.check_hyperparameters(optimizer, dict(zip(names, point)))
            for point in itertools.product(*(values for _, values in axes))
        ]

    def make_run(self, problem, optimizer, hyperparams, seed):
        """The run of one grid point with the sweep's training settings.

        Args:
            problem (str): Problem name.
            optimizer (str): Optimizer name.
            hyperparams (dict): Its hyperparameters.
            seed (int): Random seed.

        Returns:
            backobs.runs.Run: The run.
        """
        return runs.Run(
            problem=problem,
            optimizer=optimizer,
            hyperparams=dict(hyperparams),
            seed=seed,
            **self.settings,
        )

    def runs(self):
        """Expand the grid: problems x optimizers x hyperparameter grid x seeds.

        Returns:
            list: :class:`backobs.runs.Run` objects, problems outermost, seeds innermost.
        """
        return [
            self.make_run(problem, optimizer, hyperparams, seed)
            for problem in self.problems
            for optimizer, _ in self.optimizers
            for hyperparams in self.hyperparameter_settings(optimizer)
            for seed in self.seeds
        ]


def load_sweep(path):
    """Read and validate a sweep file (YAML or JSON).

    Args:
        path (str): The file.

    Returns:
        Sweep: The validated sweep.

    Raises:
        OptionError: If the file cannot be read or parsed, or any entry is invalid; one line
            naming the file, the key and what it accepts.
    """
    if not os.path.exists(path):
        raise OptionError(f"sweep file {path!r} does not exist")
    if os.path.isdir(path):
        raise OptionError(f"sweep file {path!r} is a directory, not a YAML or JSON file")
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or str(error)
        raise OptionError(f"{path}: not valid YAML or JSON{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise OptionError(f"sweep file {path!r} cannot be read: {error}") from None
    return parse_sweep(data, source=path)


def parse_sweep(data, source="<sweep>"):
    """Validate a sweep given as a dictionary (a parsed sweep file).

    Args:
        data (dict): The sweep file's content.
        source (str): Its name in messages.

    Returns:
        Sweep: The validated sweep; ``output_dir`` and ``data_dir`` made absolute, so that
        workers with another working directory write to the same place.

    Raises:
        OptionError: For unknown or missing keys, unknown or unsupported problems, unknown
            optimizers or hyperparameters, empty grids, duplicates, and bad values.
    """

    def fail(key, message):
        raise OptionError(f"{source}: {key}: {message}")

    if not isinstance(data, dict):
        raise OptionError(
            f"{source}: a sweep file must be a mapping with the keys "
            f"{', '.join(_REQUIRED_KEYS)} (and optionally {', '.join(_optional_keys())}), "
            f"got {type(data).__name__}"
        )
    unknown = [key for key in data if key not in SPEC_KEYS]
    if unknown:
        raise OptionError(
            f"{source}: unknown key {unknown[0]!r}; a sweep file has the keys "
            f"{', '.join(SPEC_KEYS)}"
        )
    for key in _REQUIRED_KEYS:
        if key not in data or data[key] is None:
            fail(key, f"missing; give {SPEC_KEYS[key]}")

    problem_names = _parse_problems(data["problems"], fail)
    optimizer_grid = _parse_optimizers(data["optimizers"], fail)
    seeds = _axis(data.get("seeds", [FIRST_SEED]), "seeds", fail)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            fail("seeds", f"a seed must be an integer in [0, 2**32), got {seed!r}")
    settings = _parse_settings(data, fail)
    sweep = Sweep(source, problem_names, optimizer_grid, seeds, settings)
    for optimizer, _ in optimizer_grid:
        try:
            sweep.hyperparameter_settings(optimizer)
        except ValueError as error:
            fail(f"optimizers.{optimizer}", _one_line(error))
    for run in sweep.runs():  # what `backobs run` would refuse, refused before any run starts
        try:
            runs.settings_directory(run)
        except (ValueError, NotImplementedError) as error:  # OptionError is a ValueError
            raise OptionError(f"{source}: {_describe_run(run)}: {_one_line(error)}") from None
    return sweep


def _optional_keys():
    return [key for key in SPEC_KEYS if key not in _REQUIRED_KEYS]


def _one_line(error):
    return " ".join(str(error).split())


def _axis(value, key, fail):
    """A grid axis: a list (non-empty, no duplicates) or one scalar."""
    values = value if isinstance(value, list) else [value]
    if not values:
        fail(key, "an empty list: the grid would have no runs")
    for item in values:
        if isinstance(item, (dict, list)):
            fail(key, f"a value must be a single number or name, got {item!r}")
    seen = set()
    for item in values:
        identity = (isinstance(item, bool), item)  # True == 1, but not the same setting
        if identity in seen:
            fail(key, f"{item!r} is listed twice")
        seen.add(identity)
    return tuple(values)


def _parse_problems(value, fail):
    names = _axis(value, "problems", fail)
    support = {row.name: row for row in problems.SUPPORT_TABLE}
    for name in names:
        if not isinstance(name, str):
            fail("problems", f"a problem is a name such as mnist_logreg, got {name!r}")
        try:
            problems.get_problem_class(name)
        except ValueError as error:
            fail("problems", _one_line(error))
        row = support.get(name)
        if row is not None and not row.supported:
            fail("problems", f"{name} is not supported by BackOBS: {row.reason}")
    return names


def _parse_optimizers(value, fail):
    if not isinstance(value, dict):
        fail("optimizers", f"must be {SPEC_KEYS['optimizers']}, e.g. {{sgd: {{lr: [0.01, 0.1]}}}}")
    if not value:
        fail("optimizers", "empty: the grid would have no runs")
    grid = []
    for name, hyperparams in value.items():
        key = f"optimizers.{name}"
        if name not in optim.OPTIMIZERS:
            fail(
                "optimizers",
                f"unknown optimizer {name!r}; choose from {', '.join(optim.OPTIMIZERS)}",
            )
        if hyperparams is None:
            hyperparams = {}
        if not isinstance(hyperparams, dict):
            fail(
                key, f"must be a mapping from hyperparameter to value or list, got {hyperparams!r}"
            )
        known = optim.OPTIMIZERS[name].hyperparameters
        axes = []
        for hyperparameter, values in hyperparams.items():
            if hyperparameter not in known:
                fail(
                    key,
                    f"unknown hyperparameter {hyperparameter!r}; {name} has {', '.join(known)}",
                )
            kind = known[hyperparameter].get("type")
            values = _axis(values, f"{key}.{hyperparameter}", fail)
            axes.append((hyperparameter, tuple(_yaml_number(v, kind) for v in values)))
        grid.append((name, tuple(axes)))
    return tuple(grid)


def _yaml_number(value, kind):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a float hyperparameter takes it as 0.001."""
    if kind is float and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _parse_settings(data, fail):
    def scalar(key):
        value = data.get(key)
        if isinstance(value, (list, dict)):
            fail(key, f"must be a single value ({SPEC_KEYS[key]}), not a grid, got {value!r}")
        return value

    def checked(key, check, *args):
        try:
            return check(key, scalar(key), *args)
        except OptionError as error:
            fail(key, str(error).split(f"{key} ", 1)[-1])

    settings = {
        "batch_size": checked("batch_size", options.check_positive_int),
        "num_epochs": checked("num_epochs", options.check_positive_int),
        "steps_per_epoch": checked("steps_per_epoch", options.check_nonnegative_int),
        "eval_batches": checked("eval_batches", options.check_nonnegative_int),
    }
    synthetic = data.get("synthetic_data", False)
    if not isinstance(synthetic, bool):
        fail("synthetic_data", f"must be true or false, got {synthetic!r}")
    settings["synthetic_data"] = synthetic

    for key in ("data_dir", "output_dir", "device"):
        value = scalar(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            fail(key, f"must be {SPEC_KEYS[key]}, got {value!r}")
    output_dir = data.get("output_dir") or "results"
    checked_dir = _check_directory(options.check_writable_directory, "output_dir", output_dir)
    if checked_dir is not None:
        fail("output_dir", checked_dir)
    settings["output_dir"] = os.path.abspath(output_dir)
    data_dir = data.get("data_dir")
    if data_dir is not None and not synthetic:
        checked_dir = _check_directory(options.check_readable_directory, "data_dir", data_dir)
        if checked_dir is not None:
            fail("data_dir", checked_dir)
    settings["data_dir"] = os.path.abspath(data_dir) if data_dir is not None else None

    extensions = data.get("extensions") or []
    if isinstance(extensions, str):
        extensions = [extensions]
    if not isinstance(extensions, list):
        fail("extensions", f"must be {SPEC_KEYS['extensions']}, got {extensions!r}")
    from backobs.runs.runner import EXTENSION_NAMES

    for name in extensions:
        if name not in EXTENSION_NAMES:
            fail(
                "extensions",
                f"unknown extension {name!r}; choose from {', '.join(EXTENSION_NAMES)}",
            )
    settings["extensions"] = tuple(extensions)
    settings["device"] = data.get("device")
    return settings


def _check_directory(check, key, path):
    """The message of ``check`` without the key, or ``None`` if the directory is fine."""
    try:
        check(key, path)
    except OptionError as error:
        return str(error).split(f"{key} ", 1)[-1]
    return None


# -----------------------------------------------------------------------------------------
# Running on Dask
# -----------------------------------------------------------------------------------------


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


def _run_key(run):
    return json.dumps(run.to_dict(), sort_keys=True)


def _describe_hyperparams(optimizer, hyperparams):
    """``name=value`` of the hyperparameters that differ from the optimizer's defaults."""
    known = optim.OPTIMIZERS[optimizer].hyperparameters
    return " ".join(
        f"{name}={value}"
        for name, value in hyperparams.items()
        if "default" not in known.get(name, {}) or known[name]["default"] != value
    )


def _describe_run(run):
    """One line: problem, optimizer, hyperparameters other than the defaults, seed."""
    hyperparams = _describe_hyperparams(run.optimizer, run.hyperparams)
    return f"{run.problem} {run.optimizer} {hyperparams} seed {run.seed}".replace("  ", " ")


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
        # One small write per record, appended: records of one sweep never interleave.
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record, allow_nan=False, default=str) + "\n")
            stream.flush()
        return record


# One run at a time per worker process: DeepOBS seeds the process-wide random generators and
# the runner sets process-wide switches (synthetic data, default device) for the time of a
# run, so two runs in two threads of one process would change each other's numbers.
_RUN_LOCK = threading.Lock()


def _run_on_worker(run_dict):
    """Execute one run in a Dask worker; never raises for the run's own errors.

    Returns:
        dict: ``status`` (``"finished"``, ``"diverged"``, ``"interrupted"`` or ``"failed"``),
        ``path``, ``seconds``, ``worker``, ``error`` (``"Type: message"``), ``output``
        (the tail of what the run printed, for failed runs).
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
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record


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

    def record(future):
        run = futures.pop(future)
        result = _collect(future, run, KilledWorker)
        result["task"] = future.key
        status = result.pop("status")
        outcome.records.append(manifest.append(run, status, **result))
        counts["ended"] += 1
        counts["failed"] += status == "failed"
        bar.update(1)
        line = (
            f"[{_status_line(counts['ended'], counts['failed'], total, started)}] {status} "
            f"{_describe_run(run)} ({result.get('seconds') or 0.0:.1f} s)"
        )
        if status == "failed":
            line += f": {result['error']}"
        tqdm.write(line, file=out)

    last_poll, running = 0.0, 0
    try:
        for run in pending_runs:
            key = f"backobs-run-{run.problem}-{run.optimizer}-{uuid.uuid4().hex[:12]}"
            # No retries: a run that raises is recorded as failed (it would raise again); a
            # run whose worker died is rescheduled by the scheduler (allowed-failures).
            future = client.submit(_run_on_worker, run.to_dict(), key=key, pure=False)
            futures[future] = run
        while futures:
            for future in [future for future in futures if future.done()]:
                record(future)
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
        outcome.not_run = len(futures)
    finally:
        bar.close()
    return outcome


def _collect(future, run, killed_worker_error):
    """The record of an ended future (a task that raised or lost its workers: failed)."""
    try:
        return future.result()
    except killed_worker_error as error:
        message = (
            f"its worker died {_ALLOWED_FAILURES + 1} times (killed, or out of memory): "
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


def _quietly(function, *args):
    with contextlib.suppress(Exception):
        function(*args)


# -----------------------------------------------------------------------------------------
# DeepOBS's protocol
# -----------------------------------------------------------------------------------------


def _final_value(results, key):
    values = results.get(key) or []
    value = values[-1] if values else None
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def choose_best(sweep, results_paths):
    """DeepOBS's choice: each (problem, optimizer)'s best setting of the grid.

    A setting's score is the final validation accuracy (the last entry of
    ``valid_accuracies``), averaged over the grid's seeds; for problems without accuracy
    (:data:`NO_ACCURACY_PROBLEMS`) the final validation loss, lower is better. A setting
    with a failed, missing or diverged run, or a non-finite final value, ranks last.

    Args:
        sweep (Sweep): The sweep.
        results_paths (dict): ``_run_key(run) -> results path`` of the grid runs that
            ended with a results file.

    Returns:
        dict: ``{problem: {optimizer: choice}}``; ``choice`` has ``hyperparams`` (``None`` if
        no setting has a finite score), ``metric``, ``score``, ``settings_directory`` and
        ``candidates`` (every setting with its score and results files).
    """
    choices = {}
    for problem in sweep.problems:
        metric = "valid_losses" if problem in NO_ACCURACY_PROBLEMS else "valid_accuracies"
        lower_is_better = metric == "valid_losses"
        for optimizer, _ in sweep.optimizers:
            candidates = []
            for hyperparams in sweep.hyperparameter_settings(optimizer):
                values, paths = [], []
                for seed in sweep.seeds:
                    run = sweep.make_run(problem, optimizer, hyperparams, seed)
                    path = results_paths.get(_run_key(run))
                    value = None
                    if path is not None:
                        paths.append(path)
                        with open(path, encoding="utf-8") as stream:
                            results = json.load(stream)
                        if results.get("status", "finished") == "finished":
                            value = _final_value(results, metric)
                            if value is None and metric == "valid_accuracies":
                                # DeepOBS drops accuracies that are all zero
                                value = 0.0 if results.get("valid_losses") else None
                    values.append(value)
                score = None if None in values else sum(values) / len(values)
                candidates.append({"hyperparams": hyperparams, "score": score, "results": paths})
            scored = [c for c in candidates if c["score"] is not None]
            best = None
            if scored:
                best = (min if lower_is_better else max)(scored, key=lambda c: c["score"])
            directory = None
            if best is not None:
                directory = runs.settings_directory(
                    sweep.make_run(problem, optimizer, best["hyperparams"], FIRST_SEED)
                )
            choices.setdefault(problem, {})[optimizer] = {
                "hyperparams": best["hyperparams"] if best else None,
                "metric": metric,
                "better": "lower" if lower_is_better else "higher",
                "score": best["score"] if best else None,
                "settings_directory": directory,
                "candidates": candidates,
            }
    return choices


def final_runs(sweep, choices, count):
    """The runs of DeepOBS's final step: each chosen setting with seeds 42, ..., 42+count-1.

    Args:
        sweep (Sweep): The sweep (its training settings).
        choices (dict): From :func:`choose_best`.
        count (int): Number of seeds.

    Returns:
        list: :class:`backobs.runs.Run` objects (none for a pair without a choice).
    """
    return [
        sweep.make_run(problem, optimizer, choice["hyperparams"], seed)
        for problem, by_optimizer in choices.items()
        for optimizer, choice in by_optimizer.items()
        if choice["hyperparams"] is not None
        for seed in range(FIRST_SEED, FIRST_SEED + count)
    ]


def _write_json_atomically(path, content):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(content, stream, indent=2, allow_nan=False, default=str)
        stream.write("\n")
    os.replace(temporary, path)


# -----------------------------------------------------------------------------------------
# The command
# -----------------------------------------------------------------------------------------


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


def _scheduler_address(args):
    address = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address is None:
        return None, None
    if os.path.isfile(address):
        return None, address
    if "://" not in address or address.endswith("://"):
        option = "--scheduler" if args.scheduler else "DASK_SCHEDULER_ADDRESS"
        raise OptionError(
            f"{option} must be a scheduler address such as tcp://127.0.0.1:8786 or a "
            f"scheduler file, got {address!r}"
        )
    return address, None


def _check_arguments(args):
    options.check_positive_int("--workers", args.workers)
    options.check_positive_int("--final-seeds", args.final_seeds)
    address, scheduler_file = _scheduler_address(args)
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


def run_sweep(sweep, client, final_seeds=None, outcomes=None):
    """Run a sweep on a Dask client: the grid, then (optionally) DeepOBS's final seeds.

    For Python callers with a cluster of their own (e.g. dask-jobqueue's ``SLURMCluster``);
    ``backobs sweep`` calls it with a local cluster or a scheduler address.

    Args:
        sweep (Sweep): From :func:`load_sweep`.
        client (distributed.Client): Where the runs go.
        final_seeds (int, optional): Run each (problem, optimizer)'s best setting with this
            many seeds (42, 43, ...) after the grid; the choice goes to
            ``<output_dir>/sweep_summary.json``.
        outcomes (list, optional): A list to append each phase's :class:`SweepOutcome` to as
            it ends (so that a caller sees the grid's outcome after a Ctrl-C in the final
            phase).

    Returns:
        list: The :class:`SweepOutcome` of the grid, and of the final seeds if run.
    """
    outcomes = [] if outcomes is None else outcomes
    manifest = _Manifest(
        os.path.join(sweep.output_dir, MANIFEST_NAME), uuid.uuid4().hex[:12], sweep.source
    )
    grid = sweep.runs()
    outcomes.append(execute_runs(grid, client, manifest))
    if final_seeds and not outcomes[-1].interrupted:
        outcomes.append(
            _final_seeds_phase(sweep, grid, outcomes[-1], client, manifest, final_seeds)
        )
    return outcomes


def _final_seeds_phase(sweep, grid, outcome, client, manifest, final_seeds):
    paths = {}
    for run in grid:
        path = runs.existing_result(run)
        if path is not None:
            paths[_run_key(run)] = path
    # failed or diverged grid runs have no finished results file; their settings rank last
    for record in outcome.records:
        if record["status"] == "diverged" and record.get("path"):
            paths[_run_key(runs.Run.from_dict(record["run"]))] = record["path"]
    choices = choose_best(sweep, paths)
    summary_path = os.path.join(sweep.output_dir, SUMMARY_NAME)
    summary = {"spec": sweep.source, "final_seeds": final_seeds, "choices": choices}
    _write_json_atomically(summary_path, summary)
    for problem, by_optimizer in choices.items():
        for optimizer, choice in by_optimizer.items():
            chosen = choice["hyperparams"]
            text = (
                "no setting ended with a finite score"
                if chosen is None
                else (
                    f"{_describe_hyperparams(optimizer, chosen) or 'the defaults'} "
                    f"({choice['metric']} {choice['score']:.6g})"
                )
            )
            print(f"[sweep] best for {problem} {optimizer}: {text}")
    print(f"[sweep] choice written to {summary_path}")
    final = final_runs(sweep, choices, final_seeds)
    final_outcome = execute_runs(final, client, manifest)
    for by_optimizer in choices.values():
        for choice in by_optimizer.values():
            choice["final_runs"] = []
    for run in final:
        choices[run.problem][run.optimizer]["final_runs"].append(
            {"seed": run.seed, "path": runs.existing_result(run)}
        )
    _write_json_atomically(summary_path, summary)
    return final_outcome


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
        r["status"] == "skipped" and json.dumps(r["run"], sort_keys=True) not in ran_now
        for o in outcomes
        for r in o.records
    )
    failed = sum(o.count("failed", "interrupted") for o in outcomes)
    manifest = os.path.join(sweep.output_dir, MANIFEST_NAME)
    if any(o.interrupted for o in outcomes):
        not_run = sum(o.not_run for o in outcomes)
        print(
            f"backobs sweep: interrupted: {ran} runs finished, {skipped} were done before, "
            f"{failed} failed, {not_run} not run; run the same command again to resume "
            f"({_command_line(args)}); finished runs are skipped",
            file=sys.stderr,
        )
        return 130
    print(f"[sweep] done: {ran} runs finished, {skipped} were done before, {failed} failed")
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


def dask_setup(worker):
    """Dask's preload hook, run in each local worker process at start: ignore SIGINT.

    Ctrl-C in a terminal goes to the whole process group, the local cluster's worker
    processes too; they would each die with a traceback. The sweep's own process handles it:
    it cancels the runs and shuts the cluster down. (A worker's event loop runs in its main
    thread, where signal handlers are set.)

    Args:
        worker (distributed.Worker): The worker being started.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


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
                "distributed.scheduler.allowed-failures": _ALLOWED_FAILURES,
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
                    preload=[__name__],  # runs dask_setup; also imports BackOBS at start
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
