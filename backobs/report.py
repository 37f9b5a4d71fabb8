"""``backobs report``: compare optimizers from a results folder, as DeepOBS's analyzer does.

DeepOBS 1.1.2's own analyzer cannot be imported without TensorFlow and expects keys that its
PyTorch runner never writes, so BackOBS reads DeepOBS's results layout itself::

    RESULTS_DIR/<problem>/<optimizer>/<setting>/random_seed__<seed>__<date>.json

as BackOBS's runner and DeepOBS's own PyTorch runners write it (step logs
``*.steps.jsonl`` and other files are ignored). For every problem and optimizer the settings
(hyperparameter combinations) are ranked by DeepOBS's rule: the final value of the
validation accuracy, averaged over the seeds, or of the validation loss where a problem has
no accuracies (``--metric`` chooses another metric; ``--mode best`` ranks by the best epoch
instead of the last, ``--mode most`` puts the settings with the most seeds first, for the
folder of ``backobs sweep --final-seeds``). The best setting of each optimizer is reported:

- ``report.md`` / ``report.csv``: problem, optimizer, best hyperparameters, seeds, final test
  accuracy and loss (mean ± standard deviation over the seeds, or median and quartiles with
  ``--aggregate median``), seconds per training epoch and that cost relative to SGD;
  ``settings.csv``: every setting with its rank;
- ``<problem>_performance.png``: test loss, test accuracy, train loss and train accuracy
  against epochs, one line and band per optimizer (DeepOBS's performance plot);
- ``<problem>_sensitivity.png``: the ranking metric against the learning rate, one panel per
  optimizer, one curve per value of the other hyperparameters;
- ``<problem>_cost.png``: seconds per epoch per optimizer and test loss against wall-clock
  time, from the ``epoch_seconds`` that BackOBS's runner records (DeepOBS's runners do not).

Messy folders are reported, not fatal: a setting with a diverged seed (``"status":
"diverged"``, a non-finite number, or the initial values that DeepOBS writes for the epochs
after an abort) is ranked after all others and marked; a setting with fewer seeds than the
problem's others is marked; an unreadable or foreign JSON file, and an interrupted run, is
left out with a one-line warning on stderr naming it. A folder without any results is an
:class:`~backobs.runs.options.OptionError`.

Nothing here imports DeepOBS (or TensorFlow); the figures are drawn with matplotlib's
object-oriented API on the Agg canvas, without ``pyplot``, so no global backend is changed.
"""

import glob
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from backobs.checks import (
    OptionError,
    check_readable_directory,
    check_writable_directory,
)

__all__ = [
    "METRICS",
    "MODES",
    "AGGREGATES",
    "SeedResult",
    "Setting",
    "Curve",
    "RankedSetting",
    "ProblemReport",
    "read_results",
    "aggregate",
    "build_report",
    "format_hyperparams",
    "tuned_hyperparams",
    "summary_table",
    "settings_table",
    "markdown_table",
    "plot_performance",
    "plot_sensitivity",
    "plot_cost",
    "write_report",
    "add_arguments",
    "command",
]

METRICS = (
    "valid_accuracies",
    "valid_losses",
    "test_accuracies",
    "test_losses",
    "train_accuracies",
    "train_losses",
)
"""The metrics a setting can be ranked by (DeepOBS's keys)."""

MODES = ("final", "best", "most")
"""``final``: rank by the last epoch's value; ``best``: by the best epoch's value; ``most``:
the settings with the most seeds first, then by the last epoch's value (DeepOBS's modes)."""

AGGREGATES = ("mean", "median")
"""``mean``: mean ± standard deviation over seeds; ``median``: median and quartiles."""

DEFAULT_METRIC = "valid_accuracies"
_LOSS_KEYS = ("train_losses", "valid_losses", "test_losses")
_ACCURACY_KEYS = ("train_accuracies", "valid_accuracies", "test_accuracies")
_PERFORMANCE_PANELS = (
    ("test_losses", "Test loss"),
    ("test_accuracies", "Test accuracy"),
    ("train_losses", "Train loss"),
    ("train_accuracies", "Train accuracy"),
)
_LEARNING_RATE_NAMES = ("lr", "learning_rate")


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
    warn = warn or _warn_on_stderr
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


def _warn_on_stderr(message):
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
            run = _read_run(path)
        except _Skip as reason:
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


class _Skip(Exception):
    """The reason a file is left out."""


def _read_run(path):
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _Skip(f"unreadable ({first_line})") from None
    if not isinstance(data, dict):
        raise _Skip("not a DeepOBS results file (not a JSON object)")
    missing = [key for key in ("optimizer_hyperparams", *_LOSS_KEYS) if key not in data]
    if missing:
        raise _Skip(f"not a DeepOBS results file (no {', '.join(missing)})")
    if not isinstance(data["optimizer_hyperparams"], dict):
        raise _Skip("not a DeepOBS results file (optimizer_hyperparams is not an object)")

    metrics = {}
    for key in (*_LOSS_KEYS, *_ACCURACY_KEYS, "minibatch_train_losses"):
        if key in data:
            metrics[key] = _numbers(data[key], key)
    lengths = {len(metrics[key]) for key in (*_LOSS_KEYS, *_ACCURACY_KEYS) if key in metrics}
    if len(lengths) != 1 or 0 in lengths:
        raise _Skip("not a DeepOBS results file (metric lists empty or of different lengths)")
    length = lengths.pop()

    status = data.get("status")
    num_epochs = data.get("num_epochs")
    if status == "interrupted" or (
        status is None and isinstance(num_epochs, int) and length < num_epochs + 1
    ):
        raise _Skip(f"interrupted run ({length - 1} of {num_epochs} epochs)")

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
        raise _Skip(f"not a DeepOBS results file ({key} is not a list)")
    numbers = []
    for value in values:
        if value is None:
            numbers.append(math.nan)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.append(float(value))
        else:
            raise _Skip(f"not a DeepOBS results file ({key} holds {value!r})")
    return np.array(numbers, dtype=float)


def _seed_from_file_name(path):
    parts = os.path.basename(path).split("__")
    if len(parts) >= 2 and parts[0] == "random_seed":
        try:
            return int(parts[1])
        except ValueError:
            pass
    raise _Skip("not a DeepOBS results file (no random_seed)")


def _ends_with_deepobs_fill_in(metrics, minibatch):
    """DeepOBS's abort: the remaining epochs repeat the initial values, bit for bit."""
    losses = [metrics[key] for key in _LOSS_KEYS]
    if len(losses[0]) < 2 or len(minibatch) < 2:
        return False
    return all(values[-1] == values[0] for values in losses) and minibatch[-1] == minibatch[0]


# Aggregating and ranking ----------------------------------------------------------------


@dataclass(eq=False)
class Curve:
    """A metric aggregated over seeds, per epoch.

    Attributes:
        center (numpy.ndarray): Mean (or median) over seeds, ``[epochs]``.
        low (numpy.ndarray): Lower edge of the band: mean - std (or lower quartile).
        high (numpy.ndarray): Upper edge: mean + std (or upper quartile).
        spread (numpy.ndarray): Standard deviation (``mean``) or interquartile range
            (``median``).
    """

    center: np.ndarray
    low: np.ndarray
    high: np.ndarray
    spread: np.ndarray


def aggregate(values, how="mean"):
    """Aggregate values over seeds (axis 0), as DeepOBS does.

    Args:
        values (array-like): ``[seeds, ...]``.
        how (str): ``"mean"``: mean and (population, ``ddof=0``) standard deviation, band
            mean ± std; ``"median"``: median, band between the quartiles (``numpy.quantile``,
            linear interpolation).

    Returns:
        Curve: The aggregate over the first axis. A ``nan`` in a column makes it ``nan``.
    """
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        if how == "mean":
            center = values.mean(axis=0)
            spread = values.std(axis=0)
            return Curve(center, center - spread, center + spread, spread)
        if how == "median":
            low, center, high = np.quantile(values, [0.25, 0.5, 0.75], axis=0)
            return Curve(center, low, high, high - low)
    raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}")


@dataclass(eq=False)
class RankedSetting:
    """A setting with its place in its optimizer's ranking.

    Attributes:
        setting (Setting): The setting.
        rank (int): 1 for the best.
        score (float): The ranking value: the metric's aggregate at the last (``final``) or
            best (``best``) epoch; ``nan`` if not finite.
        score_spread (float): Its standard deviation (or interquartile range) over seeds.
        notes (list[str]): ``"diverged (k of n seeds)"``; ``"k of m seeds"`` if the setting
            has fewer seeds than another setting of the same optimizer (m: the most).
    """

    setting: Setting
    rank: int
    score: float
    score_spread: float
    notes: list


@dataclass(eq=False)
class ProblemReport:
    """What the report says about one problem.

    Attributes:
        problem (str): The problem's folder name.
        metric (str): The metric the settings were ranked by.
        mode (str): ``"final"``, ``"best"`` or ``"most"``.
        how (str): ``"mean"`` or ``"median"``.
        rankings (dict[str, list[RankedSetting]]): optimizer -> its settings, best first.
        has_accuracies (bool): Every run records accuracies.
        synthetic_data (bool): Some run trained on synthetic data.
    """

    problem: str
    metric: str
    mode: str
    how: str
    rankings: dict
    has_accuracies: bool
    synthetic_data: bool

    def best(self, optimizer):
        """RankedSetting: The optimizer's best setting."""
        return self.rankings[optimizer][0]

    @property
    def score_name(self):
        """str: What a setting's score is, e.g. ``"final valid_accuracies"``."""
        return f"{'best' if self.mode == 'best' else 'final'} {self.metric}"

    @property
    def ranked_by(self):
        """str: The ranking rule, e.g. ``"final valid_accuracies"``."""
        return f"most seeds, then {self.score_name}" if self.mode == "most" else self.score_name

    @property
    def sgd(self):
        """The SGD folder (``sgd``, else DeepOBS's ``SGD``) if present, else ``None``."""
        for name in ("sgd", "SGD"):
            if name in self.rankings:
                return name
        return next((name for name in self.rankings if name.lower() == "sgd"), None)


def _higher_is_better(metric):
    return "acc" in metric


def _ranking_metric(metric, settings):
    """DeepOBS's fallback: an accuracy that some run lacks becomes the loss of its split."""
    if all(setting.has_metric(metric) for setting in settings):
        return metric
    fallback = metric.replace("accuracies", "losses")
    return fallback


def _score(curve, metric, mode):
    center = curve.center
    if mode != "best":
        index = len(center) - 1
    else:
        finite = np.isfinite(center)
        if not finite.any():
            return math.nan, math.nan
        candidates = np.where(finite, center, -np.inf if _higher_is_better(metric) else np.inf)
        index = int(np.argmax(candidates) if _higher_is_better(metric) else np.argmin(candidates))
    score, spread = float(center[index]), float(curve.spread[index])
    return (score if math.isfinite(score) else math.nan), spread


def build_report(results, metric=None, mode="final", how="mean"):
    """Rank every optimizer's settings on every problem.

    Args:
        results (dict): As :func:`read_results` returns it.
        metric (str, optional): The ranking metric (one of :data:`METRICS`); default
            DeepOBS's rule: ``valid_accuracies``. Where a problem's runs lack the accuracy,
            the loss of the same split is used.
        mode (str): ``"final"`` (last epoch), ``"best"`` (best epoch of the aggregate) or
            ``"most"`` (most seeds first, then the last epoch: after DeepOBS's protocol, which
            re-runs only the best setting of a one-seed sweep with more seeds).
        how (str): ``"mean"`` or ``"median"``: the aggregate over seeds that is ranked and
            reported.

    Returns:
        dict[str, ProblemReport]: One per problem, in folder order.
    """
    metric = metric or DEFAULT_METRIC
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    reports = {}
    for problem, optimizers in results.items():
        settings = [setting for group in optimizers.values() for setting in group]
        problem_metric = _ranking_metric(metric, settings)
        rankings = {
            optimizer: _rank(group, problem_metric, mode, how)
            for optimizer, group in optimizers.items()
        }
        reports[problem] = ProblemReport(
            problem=problem,
            metric=problem_metric,
            mode=mode,
            how=how,
            rankings=rankings,
            has_accuracies=all(
                setting.has_metric(key) for setting in settings for key in _ACCURACY_KEYS
            ),
            synthetic_data=any(setting.synthetic_data for setting in settings),
        )
    return reports


def _rank(settings, metric, mode, how):
    """The settings of one optimizer, best first.

    Diverged settings come last, then settings without a finite score; with ``most``, more
    seeds come first among the others. An accuracy that ties
    (saturated at 1.0, or coarse with few evaluation batches) is decided by the loss of the
    same split; remaining ties keep folder order (DeepOBS sorts the folders, then the values).
    """
    tie_breaker = metric.replace("accuracies", "losses")
    sign = -1.0 if _higher_is_better(metric) else 1.0

    def key(item):
        setting, score, _ = item
        loss, _ = _score(aggregate(setting.values(tie_breaker), how), tie_breaker, mode)
        return (
            setting.diverged_runs > 0,
            -len(setting.runs) if mode == "most" else 0,
            math.isnan(score),
            0.0 if math.isnan(score) else sign * score,
            math.isnan(loss),
            0.0 if math.isnan(loss) else loss,
        )

    scored = []
    for setting in settings:
        score, spread = _score(aggregate(setting.values(metric), how), metric, mode)
        scored.append((setting, score, spread))
    scored.sort(key=key)
    max_seeds = max(len(setting.runs) for setting in settings)
    return [
        RankedSetting(setting, rank, score, spread, _notes(setting, max_seeds))
        for rank, (setting, score, spread) in enumerate(scored, start=1)
    ]


def _notes(setting, max_seeds):
    notes = []
    if setting.diverged_runs:
        notes.append(f"diverged ({setting.diverged_runs} of {len(setting.runs)} seeds)")
    if len(setting.runs) < max_seeds:
        notes.append(f"{len(setting.runs)} of {max_seeds} seeds")
    return notes


# Tables ---------------------------------------------------------------------------------


def format_hyperparams(hyperparams):
    """``{"lr": 0.1, "momentum": 0.9}`` -> ``"lr=0.1, momentum=0.9"``."""
    return ", ".join(f"{name}={_format_value(value)}" for name, value in hyperparams.items())


def tuned_hyperparams(setting, settings):
    """The hyperparameters of ``setting`` that differ between ``settings`` (all if none do).

    Args:
        setting (Setting): One of ``settings``.
        settings (list[Setting]): The settings of the same optimizer on the same problem.

    Returns:
        dict: The tuned hyperparameters and their values in ``setting``; the defaults that
        every setting shares are left out so that tables and legends stay readable.
    """
    tuned = {
        name: value
        for name, value in setting.hyperparams.items()
        if len({_format_value(other.hyperparams.get(name)) for other in settings}) > 1
    }
    return tuned or dict(setting.hyperparams)


def _format_value(value):
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _final(setting, metric, how):
    """Aggregate of the last epoch's value: (center, spread, low, high), nan if absent."""
    if not setting.has_metric(metric):
        return (math.nan,) * 4
    curve = aggregate(setting.values(metric)[:, -1:], how)
    return tuple(float(getattr(curve, name)[0]) for name in ("center", "spread", "low", "high"))


def summary_table(reports):
    """The best setting of every optimizer on every problem, one row each.

    Args:
        reports (dict[str, ProblemReport]): As :func:`build_report` returns them.

    Returns:
        pandas.DataFrame: Columns ``problem``, ``optimizer``, ``hyperparameters`` (those
        tuned, see :func:`tuned_hyperparams`), ``all_hyperparameters``, ``seeds``,
        ``settings`` (number tried), ``ranked_by`` (e.g. ``"final
        valid_accuracies"``), ``score``, ``test_accuracy``, ``test_loss``,
        ``seconds_per_epoch`` (each followed by its ``_std`` with ``mean``, or ``_q25`` and
        ``_q75`` with ``median``), ``cost_vs_sgd`` (seconds per epoch / SGD's, ``nan``
        without SGD or timings) and ``notes``.
    """
    rows = []
    for report in reports.values():
        sgd_seconds = math.nan
        if report.sgd is not None:
            sgd_seconds = _seconds(report.best(report.sgd).setting, report.how)[0]
        for optimizer, ranking in report.rankings.items():
            best = ranking[0]
            setting = best.setting
            siblings = [item.setting for item in ranking]
            row = {
                "problem": report.problem,
                "optimizer": optimizer,
                "hyperparameters": format_hyperparams(tuned_hyperparams(setting, siblings)),
                "all_hyperparameters": format_hyperparams(setting.hyperparams),
                "seeds": len(setting.runs),
                "settings": len(ranking),
                "ranked_by": report.ranked_by,
                "score": best.score,
            }
            for column, metric in (
                ("test_accuracy", "test_accuracies"),
                ("test_loss", "test_losses"),
            ):
                row.update(_spread_columns(column, _final(setting, metric, report.how), report.how))
            seconds = _seconds(setting, report.how)
            row.update(_spread_columns("seconds_per_epoch", seconds, report.how))
            row["cost_vs_sgd"] = seconds[0] / sgd_seconds if sgd_seconds > 0 else math.nan
            notes = list(best.notes)
            diverged_settings = sum(item.setting.diverged_runs > 0 for item in ranking)
            if diverged_settings and not setting.diverged_runs:
                notes.append(f"{diverged_settings} of {len(ranking)} settings diverged")
            row["notes"] = "; ".join(notes)
            rows.append(row)
    return pd.DataFrame(rows)


def _spread_columns(column, values, how):
    center, spread, low, high = values
    if how == "mean":
        return {column: center, f"{column}_std": spread}
    return {column: center, f"{column}_q25": low, f"{column}_q75": high}


def _seconds(setting, how):
    per_seed = setting.seconds_per_epoch()
    if not len(per_seed):
        return (math.nan,) * 4
    curve = aggregate(per_seed[:, None], how)
    return tuple(float(getattr(curve, name)[0]) for name in ("center", "spread", "low", "high"))


def settings_table(reports):
    """Every setting of every optimizer with its rank.

    Returns:
        pandas.DataFrame: Columns ``problem``, ``optimizer``, ``rank``, ``setting`` (folder
        name), ``hyperparameters`` (tuned), ``all_hyperparameters``, ``seeds``,
        ``ranked_by``, ``score``, ``score_spread`` (standard deviation or interquartile range
        over seeds), ``notes``.
    """
    rows = [
        {
            "problem": report.problem,
            "optimizer": optimizer,
            "rank": item.rank,
            "setting": item.setting.name,
            "hyperparameters": format_hyperparams(
                tuned_hyperparams(item.setting, [other.setting for other in ranking])
            ),
            "all_hyperparameters": format_hyperparams(item.setting.hyperparams),
            "seeds": len(item.setting.runs),
            "ranked_by": report.ranked_by,
            "score": item.score,
            "score_spread": item.score_spread,
            "notes": "; ".join(item.notes),
        }
        for report in reports.values()
        for optimizer, ranking in report.rankings.items()
        for item in ranking
    ]
    return pd.DataFrame(rows)


def markdown_table(summary, how="mean"):
    """The summary table as a Markdown (GitHub) table, numbers with their spread.

    Args:
        summary (pandas.DataFrame): As :func:`summary_table` returns it.
        how (str): The aggregate it was made with: ``mean`` shows ``m ± std``, ``median``
            shows ``median (q25–q75)``.

    Returns:
        str: The table, one row per line.
    """
    header = [
        "problem",
        "optimizer",
        "best hyperparameters",
        "seeds",
        "ranked by",
        "test accuracy",
        "test loss",
        "s / epoch",
        "cost vs SGD",
        "notes",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        cells = [
            row["problem"],
            row["optimizer"],
            row["hyperparameters"],
            str(row["seeds"]),
            f"{row['ranked_by']} = {_number(row['score'])}",
            _with_spread(row, "test_accuracy", how),
            _with_spread(row, "test_loss", how),
            _with_spread(row, "seconds_per_epoch", how, digits=3),
            _number(row["cost_vs_sgd"], digits=3),
            row["notes"],
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def _with_spread(row, column, how, digits=4):
    center = row[column]
    if math.isnan(center):
        return "–"
    if how == "mean":
        return f"{center:.{digits}g} ± {row[f'{column}_std']:.2g}"
    low, high = row[f"{column}_q25"], row[f"{column}_q75"]
    return f"{center:.{digits}g} ({low:.{digits}g}–{high:.{digits}g})"


# Figures --------------------------------------------------------------------------------


def _figure(width, height):
    return Figure(figsize=(width, height), layout="constrained")


def _title(report, what):
    data = " (synthetic data)" if report.synthetic_data else ""
    return f"{report.problem}{data}: {what}"


def _aggregate_words(how):
    return "mean ± std over seeds" if how == "mean" else "median and quartiles over seeds"


def _color(report, optimizer):
    """One color per optimizer, the same in every figure of a problem."""
    return f"C{list(report.rankings).index(optimizer) % 10}"


def _label(report, optimizer):
    ranked = report.best(optimizer)
    siblings = [item.setting for item in report.rankings[optimizer]]
    label = f"{optimizer} ({format_hyperparams(tuned_hyperparams(ranked.setting, siblings))})"
    if ranked.notes:
        label += " [" + "; ".join(ranked.notes) + "]"
    return label


def _log_scale_if_wide(axis, arrays):
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays] or [[]])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 100:
        axis.set_yscale("log")


def plot_performance(report, path):
    """DeepOBS's performance plot of one problem, written as a PNG.

    Four panels (test loss, test accuracy, train loss, train accuracy against epochs), each
    with one line (mean or median over seeds) and band (± std or quartiles) per optimizer's
    best setting.

    Args:
        report (ProblemReport): The problem.
        path (str): The PNG to write.

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    figure = _figure(10, 7.5)
    axes = figure.subplots(2, 2, sharex=True)
    for axis, (metric, ylabel) in zip(axes.flat, _PERFORMANCE_PANELS):
        curves = []
        for optimizer in report.rankings:
            ranked = report.best(optimizer)
            if not ranked.setting.has_metric(metric):
                continue
            curve = aggregate(ranked.setting.values(metric), report.how)
            epochs = np.arange(len(curve.center))
            color = _color(report, optimizer)
            axis.plot(
                epochs, curve.center, marker=".", color=color, label=_label(report, optimizer)
            )
            axis.fill_between(epochs, curve.low, curve.high, color=color, alpha=0.2)
            curves += [curve.low, curve.high]
        if not curves:
            axis.text(
                0.5,
                0.5,
                "no accuracies in these results",
                ha="center",
                va="center",
                transform=axis.transAxes,
            )
        elif "loss" in metric:
            _log_scale_if_wide(axis, curves)
        axis.set_ylabel(ylabel)
        axis.xaxis.get_major_locator().set_params(integer=True)
    for axis in axes[1]:
        axis.set_xlabel("epoch")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", fontsize="small", ncols=1)
    figure.suptitle(
        _title(
            report,
            f"best setting per optimizer by {report.ranked_by}, {_aggregate_words(report.how)}",
        ),
        fontsize="medium",
    )
    figure.savefig(path, dpi=100)
    return figure


def _x_hyperparameter(settings):
    """The hyperparameter on the x axis: the learning rate, else the first that varies."""
    names = list(settings[0].hyperparams)
    numeric = [
        name
        for name in names
        if all(_is_number(setting.hyperparams.get(name)) for setting in settings)
    ]
    for name in _LEARNING_RATE_NAMES:
        if name in numeric:
            return name
    varying = [
        name for name in numeric if len({setting.hyperparams[name] for setting in settings}) > 1
    ]
    return (varying or numeric or [None])[0]


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_sensitivity(report, path):
    """Hyperparameter sensitivity of one problem, written as a PNG.

    One panel per optimizer: the ranking metric (final or best, aggregated over seeds, with
    its spread as error bars) against the learning rate on a log axis, one curve per value of
    the other hyperparameters that vary. The best setting is a star; diverged settings are
    crosses at the bottom edge.

    Args:
        report (ProblemReport): The problem.
        path (str): The PNG to write.

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    optimizers = list(report.rankings)
    columns = min(len(optimizers), 3)
    rows = math.ceil(len(optimizers) / columns)
    figure = _figure(4.2 * columns, 3.6 * rows + 0.6)
    axes = np.atleast_1d(figure.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    for axis in axes[len(optimizers) :]:
        axis.set_visible(False)
    for axis, optimizer in zip(axes, optimizers):
        ranking = report.rankings[optimizer]
        settings = [item.setting for item in ranking]
        x_name = _x_hyperparameter(settings)
        others = [
            name
            for name in settings[0].hyperparams
            if name != x_name
            and len({_format_value(s.hyperparams.get(name)) for s in settings}) > 1
        ]
        groups = {}
        for item in ranking:
            key = tuple((name, item.setting.hyperparams.get(name)) for name in others)
            groups.setdefault(key, []).append(item)

        def x_of(item, x_name=x_name, ranking=ranking):
            if x_name is None:
                return float(ranking.index(item))
            return float(item.setting.hyperparams[x_name])

        diverged_x = []
        for key, items in groups.items():
            finite = [
                it for it in items if not it.setting.diverged_runs and not math.isnan(it.score)
            ]
            diverged_x += [x_of(it) for it in items if it not in finite]
            if not finite:
                continue
            finite.sort(key=x_of)
            label = ", ".join(f"{name}={_format_value(value)}" for name, value in key) or None
            axis.errorbar(
                [x_of(it) for it in finite],
                [it.score for it in finite],
                yerr=[it.score_spread if math.isfinite(it.score_spread) else 0 for it in finite],
                marker="o",
                capsize=3,
                label=label,
            )
        best = ranking[0]
        if not best.setting.diverged_runs and not math.isnan(best.score):
            axis.plot(
                [x_of(best)],
                [best.score],
                marker="*",
                markersize=16,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                label="best",
                zorder=5,
            )
        if diverged_x:
            axis.plot(
                diverged_x,
                [0.02] * len(diverged_x),
                marker="x",
                markersize=9,
                color="red",
                linestyle="none",
                transform=axis.get_xaxis_transform(),
                label="diverged",
            )
        xs = [x_of(item) for item in ranking]
        if x_name is not None and min(xs) > 0:
            axis.set_xscale("log")
        axis.set_xlabel(x_name or "setting")
        axis.set_title(optimizer)
        axis.legend(fontsize="x-small")
    axes[0].set_ylabel(report.score_name)
    figure.suptitle(
        _title(report, f"{report.score_name} per setting, {_aggregate_words(report.how)}"),
        fontsize="medium",
    )
    figure.savefig(path, dpi=100)
    return figure


def plot_cost(report, path):
    """Cost of one problem's optimizers, written as a PNG, if the runs record their time.

    Left: seconds per training epoch of each optimizer's best setting (mean ± std or median
    and quartiles over seeds). Right: the test loss against cumulative training time.

    Args:
        report (ProblemReport): The problem.
        path (str): The PNG to write.

    Returns:
        matplotlib.figure.Figure or None: The figure; ``None`` (nothing written) if no run
        of the problem records ``epoch_seconds``.
    """
    timed = [
        (optimizer, report.best(optimizer))
        for optimizer in report.rankings
        if len(report.best(optimizer).setting.seconds_per_epoch())
    ]
    if not timed:
        return None
    figure = _figure(11, 4.5)
    bars, losses = figure.subplots(1, 2)
    colors = [_color(report, optimizer) for optimizer, _ in timed]
    centers, errors = [], [[], []]
    for _, ranked in timed:
        center, _, low, high = _seconds(ranked.setting, report.how)
        centers.append(center)
        errors[0].append(center - low)
        errors[1].append(high - center)
    names = [optimizer for optimizer, _ in timed]
    bars.bar(names, centers, yerr=errors, capsize=4, color=colors)
    bars.set_ylabel("seconds per training epoch")
    bars.set_title(f"best setting per optimizer, {_aggregate_words(report.how)}", fontsize="small")
    curves = []
    for color, (optimizer, ranked) in zip(colors, timed):
        seconds = [
            run.epoch_seconds for run in ranked.setting.runs if run.epoch_seconds is not None
        ]
        length = min(len(values) for values in seconds)
        elapsed = np.concatenate(
            [[0.0], np.cumsum(aggregate([s[:length] for s in seconds]).center)]
        )
        curve = aggregate(ranked.setting.values("test_losses"), report.how).center
        count = min(len(elapsed), len(curve))
        losses.plot(elapsed[:count], curve[:count], marker=".", color=color, label=optimizer)
        curves.append(curve[:count])
    _log_scale_if_wide(losses, curves)
    losses.set_xlabel("training time (s, evaluation excluded)")
    losses.set_ylabel("test loss")
    losses.legend(fontsize="small")
    figure.suptitle(_title(report, "cost"), fontsize="medium")
    figure.savefig(path, dpi=100)
    return figure


# Writing --------------------------------------------------------------------------------


def write_report(reports, out_dir, warn=None):
    """Write the tables and figures of :func:`build_report`'s reports into ``out_dir``.

    Args:
        reports (dict[str, ProblemReport]): The reports.
        out_dir (str): The output folder (created if missing).
        warn (callable, optional): Called with one line per figure that cannot be drawn.

    Returns:
        list[str]: The files written: ``report.md``, ``report.csv``, ``settings.csv``, and
        per problem ``<problem>_performance.png``, ``<problem>_sensitivity.png`` and
        ``<problem>_cost.png`` (the last only if its runs record ``epoch_seconds``).
    """
    warn = warn or _warn_on_stderr
    os.makedirs(out_dir, exist_ok=True)
    how = next(iter(reports.values())).how if reports else "mean"
    summary = summary_table(reports)
    settings = settings_table(reports)
    written = []

    def target(name):
        path = os.path.join(out_dir, name)
        written.append(path)
        return path

    summary.to_csv(target("report.csv"), index=False)
    settings.to_csv(target("settings.csv"), index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices of diverged runs
        for problem, report in reports.items():
            plot_performance(report, target(f"{problem}_performance.png"))
            plot_sensitivity(report, target(f"{problem}_sensitivity.png"))
            cost_path = os.path.join(out_dir, f"{problem}_cost.png")
            if plot_cost(report, cost_path) is not None:
                written.append(cost_path)
            else:
                warn(f"no cost figure for {problem}: its results record no epoch_seconds")
    with open(target("report.md"), "w", encoding="utf-8") as file:
        file.write(_markdown_document(reports, summary, settings, how, written))
    return written


def _markdown_document(reports, summary, settings, how, written):
    lines = [
        "# Optimizer comparison",
        "",
        f"Best setting per optimizer, {_aggregate_words(how)}.",
        "",
        markdown_table(summary, how),
    ]
    for problem, report in reports.items():
        lines.append(f"## {problem}" + (" (synthetic data)" if report.synthetic_data else ""))
        lines.append("")
        for kind in ("performance", "sensitivity", "cost"):
            name = f"{problem}_{kind}.png"
            if any(os.path.basename(path) == name for path in written):
                lines.append(f"![{kind}]({name})")
        lines += [
            "",
            "| optimizer | rank | hyperparameters | seeds | score | notes |",
            "|---|---|---|---|---|---|",
        ]
        for row in settings[settings["problem"] == problem].to_dict("records"):
            spread = "±" if how == "mean" else "IQR"
            score = _number(row["score"])
            if score != "–":
                score += f" ({spread} {_number(row['score_spread'], 2)})"
            lines.append(
                f"| {row['optimizer']} | {row['rank']} | {row['hyperparameters']} | "
                f"{row['seeds']} | {score} | {row['notes']} |"
            )
        lines.append("")
    return "\n".join(lines)


# Command line ---------------------------------------------------------------------------


def add_arguments(parser):
    """Add ``backobs report``'s arguments to ``parser``.

    Args:
        parser (argparse.ArgumentParser): The subcommand's parser.
    """
    parser.description = (
        "Compare optimizers from a results folder (DeepOBS's layout "
        "<problem>/<optimizer>/<setting>/random_seed__*.json): each optimizer's best "
        "setting per problem, tables (Markdown, CSV) and figures (PNG)."
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="The results folder.")
    parser.add_argument(
        "-o",
        "--out-dir",
        "--out_dir",
        dest="out_dir",
        default=None,
        metavar="OUT_DIR",
        help="Where to write the report (default: RESULTS_DIR/report).",
    )
    parser.add_argument(
        "--metric",
        default=None,
        choices=METRICS,
        help="Rank settings by this metric (default: valid_accuracies, valid_losses for "
        "problems without accuracies, as DeepOBS).",
    )
    parser.add_argument(
        "--mode",
        default="final",
        choices=MODES,
        help="final: rank by the last epoch's value (default); best: by the best epoch's; "
        "most: the settings with the most seeds first (after backobs sweep --final-seeds), "
        "then by the last epoch's value.",
    )
    parser.add_argument(
        "--aggregate",
        default="mean",
        choices=AGGREGATES,
        help="Over seeds: mean and standard deviation (default), or median and quartiles.",
    )


def command(args):
    """Run ``backobs report``.

    Args:
        args (argparse.Namespace): ``results_dir``, ``out_dir``, ``metric``, ``mode``,
            ``aggregate``.

    Returns:
        int: 0.

    Raises:
        OptionError: If an option is invalid, or the folder holds no results.
    """
    results_dir = check_readable_directory("RESULTS_DIR", args.results_dir)
    out_dir = args.out_dir if args.out_dir is not None else os.path.join(results_dir, "report")
    check_writable_directory("--out-dir", out_dir)
    for option, value, choices in (
        ("--metric", args.metric, (None, *METRICS)),
        ("--mode", args.mode, MODES),
        ("--aggregate", args.aggregate, AGGREGATES),
    ):
        if value not in choices:
            names = ", ".join(choice for choice in choices if choice)
            raise OptionError(f"{option} must be one of {names}, got {value!r}")

    results = read_results(results_dir, exclude=[out_dir])
    if not results:
        raise OptionError(
            f"RESULTS_DIR {results_dir!r} holds no results files "
            "(<problem>/<optimizer>/<setting>/random_seed__*.json)" + _layout_hint(results_dir)
        )
    reports = build_report(results, metric=args.metric, mode=args.mode, how=args.aggregate)
    written = write_report(reports, out_dir)
    print(markdown_table(summary_table(reports), args.aggregate), end="")
    for path in written:
        print(f"Wrote {path}")
    return 0


def _layout_hint(results_dir):
    """Say so if the user pointed at a problem, optimizer or settings folder."""
    for depth, what in enumerate(("a settings folder", "an optimizer folder", "a problem folder")):
        if glob.glob(os.path.join(results_dir, *["*"] * depth, "random_seed__*.json")):
            return f"; it looks like {what}: pass the folder {3 - depth} level(s) up"
    return ""
