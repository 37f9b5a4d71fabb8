"""The ranking rule: which setting of an optimizer is its best (DeepOBS's rule).

One rule, used by ``backobs report`` and by ``backobs sweep --final-seeds``
(:func:`backobs.sweep.choose_best`): a setting's score is the aggregate over seeds of the
ranking metric at the last epoch (``final``) or at its best epoch (``best``); the metric is
the validation accuracy, or the validation loss where a run records no accuracy
(:func:`ranking_metric`). :func:`rank_settings` orders the settings: diverged ones last,
before them those that did not learn (a final value no better than the evaluation before
training), then those without a finite score; ties in an accuracy are broken by the loss of
the same split; remaining ties keep folder order.
"""

import math
from dataclasses import dataclass

import numpy as np

from backobs.report.read import ACCURACY_KEYS, Setting

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
        notes (list[str]): ``"diverged (k of n seeds)"``; ``"did not learn (...)"``; ``"k of
            m seeds"`` if the setting has fewer seeds than another setting of the same
            optimizer (m: the most).
        learned (bool): The aggregate of the metric's last value is better than that of its
            first (the evaluation before training); ``True`` where either is not finite
            (a diverged setting is marked as diverged instead).
    """

    setting: Setting
    rank: int
    score: float
    score_spread: float
    notes: list
    learned: bool = True


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

    def find(self, name):
        """The folder of optimizer ``name`` (matched case-insensitively), or ``None``."""
        if name in self.rankings:
            return name
        return next((folder for folder in self.rankings if folder.lower() == name.lower()), None)

    @property
    def sgd(self):
        """The SGD folder (``sgd``, else DeepOBS's ``SGD``) if present, else ``None``."""
        for name in ("sgd", "SGD"):
            if name in self.rankings:
                return name
        return next((name for name in self.rankings if name.lower() == "sgd"), None)


def higher_is_better(metric):
    """bool: A larger value of ``metric`` is better (an accuracy, not a loss)."""
    return "acc" in metric


def ranking_metric(metric, settings):
    """The metric a problem is ranked by (DeepOBS's fallback for problems without accuracy).

    Args:
        metric (str): One of :data:`METRICS`.
        settings (list[Setting]): Every setting of the problem (all optimizers).

    Returns:
        str: ``metric`` or, for an accuracy that some run lacks, the loss of its split.
    """
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
        candidates = np.where(finite, center, -np.inf if higher_is_better(metric) else np.inf)
        index = int(np.argmax(candidates) if higher_is_better(metric) else np.argmin(candidates))
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
        problem_metric = ranking_metric(metric, settings)
        rankings = {
            optimizer: rank_settings(group, problem_metric, mode, how)
            for optimizer, group in optimizers.items()
        }
        reports[problem] = ProblemReport(
            problem=problem,
            metric=problem_metric,
            mode=mode,
            how=how,
            rankings=rankings,
            has_accuracies=all(
                setting.has_metric(key) for setting in settings for key in ACCURACY_KEYS
            ),
            synthetic_data=any(setting.synthetic_data for setting in settings),
        )
    return reports


def rank_settings(settings, metric, mode="final", how="mean"):
    """The settings of one optimizer, best first: the ranking rule.

    Diverged settings come last, before them the settings that did not learn (see
    :func:`learned`), then settings without a finite score; with ``most``, more seeds come
    first among the others. An accuracy that ties (saturated at 1.0, or coarse
    with few evaluation batches) is decided by the loss of the same split; remaining ties
    keep the given (folder) order (DeepOBS sorts the folders, then the values).

    Args:
        settings (list[Setting]): The settings of one optimizer on one problem (not empty).
        metric (str): The ranking metric, as :func:`ranking_metric` gives it.
        mode (str): ``"final"``, ``"best"`` or ``"most"`` (see :data:`MODES`).
        how (str): ``"mean"`` or ``"median"``: the aggregate over seeds.

    Returns:
        list[RankedSetting]: Best first, ranks 1, 2, ...
    """
    tie_breaker = metric.replace("accuracies", "losses")
    sign = -1.0 if higher_is_better(metric) else 1.0

    def key(item):
        setting, score, _, did_learn = item
        loss, _ = _score(aggregate(setting.values(tie_breaker), how), tie_breaker, mode)
        return (
            setting.diverged_runs > 0,
            not did_learn and not setting.diverged_runs,  # among diverged ones: no matter
            -len(setting.runs) if mode == "most" else 0,
            math.isnan(score),
            0.0 if math.isnan(score) else sign * score,
            math.isnan(loss),
            0.0 if math.isnan(loss) else loss,
        )

    scored = []
    for setting in settings:
        curve = aggregate(setting.values(metric), how)
        score, spread = _score(curve, metric, mode)
        scored.append((setting, score, spread, learned(curve.center, metric)))
    scored.sort(key=key)
    max_seeds = max(len(setting.runs) for setting in settings)
    return [
        RankedSetting(
            setting, rank, score, spread, _notes(setting, max_seeds, metric, did_learn), did_learn
        )
        for rank, (setting, score, spread, did_learn) in enumerate(scored, start=1)
    ]


def learned(center, metric):
    """Whether a setting learned: its last value is better than its first.

    Args:
        center (numpy.ndarray): The metric's aggregate over seeds per evaluation, index 0
            before training.
        metric (str): The metric (larger is better for an accuracy).

    Returns:
        bool: ``False`` if the last value is no better than the first (e.g. 10 % accuracy on
        ten classes, before and after); ``True`` if it is better, or either is not finite
        (divergence is noted apart) or there is only the evaluation before training.
    """
    if len(center) < 2 or not (math.isfinite(center[0]) and math.isfinite(center[-1])):
        return True
    if higher_is_better(metric):
        return bool(center[-1] > center[0])
    return bool(center[-1] < center[0])


def _notes(setting, max_seeds, metric, did_learn):
    notes = []
    if setting.diverged_runs:
        notes.append(f"diverged ({setting.diverged_runs} of {len(setting.runs)} seeds)")
    elif not did_learn:
        notes.append(f"did not learn (final {metric} no better than before training)")
    if len(setting.runs) < max_seeds:
        notes.append(f"{len(setting.runs)} of {max_seeds} seeds")
    return notes
