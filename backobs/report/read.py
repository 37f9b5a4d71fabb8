"""Reading a results folder: DeepOBS's layout into :class:`Setting` objects.

``RESULTS_DIR/<problem>/<optimizer>/<setting>/random_seed__<seed>__<date>.json``, as
BackOBS's runner and DeepOBS's own PyTorch runners write it. :func:`read_results` reads the
folder, :func:`read_run` one file; a file that is not a results file is left out with a
warning (:class:`Skip` says why), not fatal.
"""

import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

LOSS_KEYS = ("train_losses", "valid_losses", "test_losses")
"""The per-epoch losses of a DeepOBS results file."""
ACCURACY_KEYS = ("train_accuracies", "valid_accuracies", "test_accuracies")
"""The per-epoch accuracies (absent for problems without accuracy)."""

# Reading --------------------------------------------------------------------------------
# The dataclasses compare by identity (eq=False): they hold numpy arrays, which have no
# single truth value for ==.


@dataclass(eq=False)
class SeedResult:
    """One results file: one run of one setting with one seed.

    Attributes:
        path (str): The file.
        seed (int): The random seed.
        hyperparams (dict): The optimizer's hyperparameters (``optimizer_hyperparams``).
        metrics (dict[str, numpy.ndarray]): DeepOBS's per-epoch lists (``train_losses``,
            ..., ``test_accuracies`` where present), shape ``[num_epochs + 1]``, ``nan`` where
            the file holds ``null`` or ``NaN``.
        epoch_seconds (numpy.ndarray or None): Wall-clock seconds of each epoch's training
            steps, shape ``[completed epochs]``; ``None`` if the file does not record them.
        diverged (bool): The run diverged (see :func:`read_results`).
        synthetic_data (bool): The run trained on synthetic stand-in data.
    """

    path: str
    seed: int
    hyperparams: dict
    metrics: dict
    epoch_seconds: object = None
    diverged: bool = False
    synthetic_data: bool = False


@dataclass(eq=False)
class Setting:
    """A settings folder: one optimizer with one choice of hyperparameters, all its seeds.

    Attributes:
        problem (str): The problem's folder name, e.g. ``"mnist_logreg"``.
        optimizer (str): The optimizer's folder name, e.g. ``"sgd"`` or DeepOBS's ``"SGD"``.
        name (str): The settings folder's name.
        hyperparams (dict): The optimizer's hyperparameters.
        runs (list[SeedResult]): One per seed, ordered by seed.
    """

    problem: str
    optimizer: str
    name: str
    hyperparams: dict
    runs: list = field(default_factory=list)

    @property
    def seeds(self):
        """list[int]: The seeds of the runs."""
        return [run.seed for run in self.runs]

    @property
    def diverged_runs(self):
        """int: Number of seeds that diverged."""
        return sum(run.diverged for run in self.runs)

    @property
    def synthetic_data(self):
        """bool: Some run of the setting trained on synthetic data."""
        return any(run.synthetic_data for run in self.runs)

    def has_metric(self, metric):
        """bool: Every run records ``metric``."""
        return all(metric in run.metrics for run in self.runs)

    def values(self, metric):
        """The metric of every seed, ``[seeds, epochs]`` (cut to the shortest run)."""
        lists = [run.metrics[metric] for run in self.runs]
        length = min(len(values) for values in lists)
        return np.stack([values[:length] for values in lists])

    def seconds_per_epoch(self):
        """Mean seconds per training epoch of each seed that records them, ``[seeds]``."""
        return np.array(
            [
                float(np.mean(run.epoch_seconds))
                for run in self.runs
                if run.epoch_seconds is not None and len(run.epoch_seconds)
            ]
        )


def read_results(results_dir, exclude=(), warn=None):
    """Read every results file under ``results_dir`` (DeepOBS's layout).

    Only ``*.json`` files three folders down (``<problem>/<optimizer>/<setting>/``) are read;
    hidden entries and ``exclude`` are skipped, other files ignored. A run counts as diverged
    if its file says ``"status": "diverged"``, holds a non-finite metric (BackOBS writes them
    as ``null``, DeepOBS as ``NaN``), or ends with exactly its initial train, validation,
    test and mini-batch losses (what DeepOBS writes for the epochs after it aborts a run).
    Of two files of the same seed in one settings folder the newer (DeepOBS's file names end
    with the date) is read, the other left out with a warning.

    Args:
        results_dir (str): The results folder (a runner's ``--output_dir``).
        exclude (iterable of str): Folders not to read (e.g. the report's own output folder).
        warn (callable, optional): Called with one line for every file left out;
            default: printed to stderr as ``backobs report: warning: ...``.

    Returns:
        dict[str, dict[str, list[Setting]]]: problem -> optimizer -> settings (ordered by
        folder name; each with at least one run), only problems and optimizers with runs.
    """
    warn = warn or warn_on_stderr
    excluded = {os.path.realpath(path) for path in exclude}
    problems = {}
    for problem, problem_dir in _subdirectories(results_dir, excluded):
        for optimizer, optimizer_dir in _subdirectories(problem_dir, excluded):
            settings = []
            for name, setting_dir in _subdirectories(optimizer_dir, excluded):
                setting = _read_setting(problem, optimizer, name, setting_dir, warn)
                if setting is not None:
                    settings.append(setting)
            if settings:
                problems.setdefault(problem, {})[optimizer] = settings
    return problems


def warn_on_stderr(message):
    """Print ``message`` to stderr as ``backobs report: warning: ...``."""
    print(f"backobs report: warning: {message}", file=sys.stderr)


def _subdirectories(directory, excluded):
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [
        (name, os.path.join(directory, name))
        for name in names
        if not name.startswith(".")
        and os.path.isdir(os.path.join(directory, name))
        and os.path.realpath(os.path.join(directory, name)) not in excluded
    ]


def _read_setting(problem, optimizer, name, directory, warn):
    files = sorted(
        entry
        for entry in os.listdir(directory)
        if entry.endswith(".json") and not entry.startswith(".")
    )
    by_seed = {}
    for file_name in files:
        path = os.path.join(directory, file_name)
        try:
            run = read_run(path)
        except Skip as reason:
            warn(f"skipped {path}: {reason}")
            continue
        if run.seed in by_seed:
            # Sorted by name, so the later file is the newer one (DeepOBS puts the date last).
            warn(f"skipped {by_seed[run.seed].path}: a newer file of seed {run.seed} is {path}")
        by_seed[run.seed] = run
    if not by_seed:
        if files:
            warn(f"no usable results file in {directory}")
        return None
    runs = [by_seed[seed] for seed in sorted(by_seed)]
    return Setting(problem, optimizer, name, dict(runs[0].hyperparams), runs)


class Skip(Exception):
    """The reason a file is left out."""


def read_run(path):
    """Read one results file.

    Args:
        path (str): A DeepOBS results file.

    Returns:
        SeedResult: Its run; ``diverged`` as :func:`read_results` defines it.

    Raises:
        Skip: If the file is unreadable, not a DeepOBS results file, or of an interrupted
            run; the message says which.
    """
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Skip(f"unreadable ({first_line})") from None
    if not isinstance(data, dict):
        raise Skip("not a DeepOBS results file (not a JSON object)")
    missing = [key for key in ("optimizer_hyperparams", *LOSS_KEYS) if key not in data]
    if missing:
        raise Skip(f"not a DeepOBS results file (no {', '.join(missing)})")
    if not isinstance(data["optimizer_hyperparams"], dict):
        raise Skip("not a DeepOBS results file (optimizer_hyperparams is not an object)")

    metrics = {}
    for key in (*LOSS_KEYS, *ACCURACY_KEYS, "minibatch_train_losses"):
        if key in data:
            metrics[key] = _numbers(data[key], key)
    lengths = {len(metrics[key]) for key in (*LOSS_KEYS, *ACCURACY_KEYS) if key in metrics}
    if len(lengths) != 1 or 0 in lengths:
        raise Skip("not a DeepOBS results file (metric lists empty or of different lengths)")
    length = lengths.pop()

    status = data.get("status")
    num_epochs = data.get("num_epochs")
    if status == "interrupted" or (
        status is None and isinstance(num_epochs, int) and length < num_epochs + 1
    ):
        raise Skip(f"interrupted run ({length - 1} of {num_epochs} epochs)")

    seed = data.get("random_seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = _seed_from_file_name(path)
    epoch_seconds = data.get("epoch_seconds")
    if epoch_seconds is not None:
        epoch_seconds = _numbers(epoch_seconds, "epoch_seconds")
    minibatch = metrics.pop("minibatch_train_losses", np.array([]))
    diverged = (
        status == "diverged"
        or not all(np.isfinite(values).all() for values in metrics.values())
        or not np.isfinite(minibatch).all()
        or _ends_with_deepobs_fill_in(metrics, minibatch)
    )
    training_params = data.get("training_params")
    synthetic = bool(data.get("synthetic_data")) or (
        isinstance(training_params, dict) and bool(training_params.get("synthetic_data"))
    )
    return SeedResult(
        path=path,
        seed=seed,
        hyperparams=data["optimizer_hyperparams"],
        metrics=metrics,
        epoch_seconds=epoch_seconds,
        diverged=bool(diverged),
        synthetic_data=synthetic,
    )


def _numbers(values, key):
    if not isinstance(values, list):
        raise Skip(f"not a DeepOBS results file ({key} is not a list)")
    numbers = []
    for value in values:
        if value is None:
            numbers.append(math.nan)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.append(float(value))
        else:
            raise Skip(f"not a DeepOBS results file ({key} holds {value!r})")
    return np.array(numbers, dtype=float)


def _seed_from_file_name(path):
    parts = os.path.basename(path).split("__")
    if len(parts) >= 2 and parts[0] == "random_seed":
        try:
            return int(parts[1])
        except ValueError:
            pass
    raise Skip("not a DeepOBS results file (no random_seed)")


def _ends_with_deepobs_fill_in(metrics, minibatch):
    """DeepOBS's abort: the remaining epochs repeat the initial values, bit for bit."""
    losses = [metrics[key] for key in LOSS_KEYS]
    if len(losses[0]) < 2 or len(minibatch) < 2:
        return False
    return all(values[-1] == values[0] for values in losses) and minibatch[-1] == minibatch[0]
