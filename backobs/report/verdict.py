"""The verdict across problems: time to a target, performance profile, benchmark score.

Each problem gets a *target*: a value of its ranking metric (:func:`ranking_metric`: the
final validation accuracy, or the validation loss where runs record no accuracy), given with
``--target PROBLEM=VALUE`` or else the seed-mean final value of the baseline optimizer's
(``--baseline``, default ``sgd``) best setting. A problem without either is left out of the
profile with a warning.

For every problem and optimizer, on the optimizer's best setting, each seed *reaches* the
target at the first evaluation ``e`` (0 before training, ``k`` after epoch ``k``) whose value
is ``>=`` the target (an accuracy) or ``<=`` it (a loss); a non-finite value never reaches it.
Its time to the target is ``t``, the sum of its ``epoch_seconds`` of epochs ``1 .. e``
(training time, evaluation excluded); a seed that never reaches it has ``e = t = inf``.
``epochs_to_target`` and ``seconds_to_target`` are the medians over the seeds (``inf``: not
reached), ``speedup_vs_baseline`` the baseline's seconds over the optimizer's.

The performance profile (Dolan and Moré) compares the optimizers across problems by seconds
to target (by epochs where some best setting does not record ``epoch_seconds``): on each
problem ``r`` = an optimizer's time over the smallest of all optimizers' (``inf`` if it does
not reach the target or did not run there; ``1`` where the smallest time is 0 and its own is
0 too), and ``rho(tau)`` is the fraction of the problems with ``r <= tau``. The benchmark
score is the integral of ``rho`` over ``[1, tau_max]`` divided by ``tau_max - 1``: 1 for an
optimizer that is fastest everywhere, 0 for one never within ``tau_max`` times the fastest.
``rho`` is a step function, so the integral is exact: the mean over problems of
``max(0, tau_max - r)``, divided by ``tau_max - 1``.

Besides, the verdict notes two things that tuning should fix, per problem and optimizer: a
best setting at the edge of the grid of a tuned hyperparameter, and an optimizer whose every
setting diverged.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from backobs.checks import OptionError
from backobs.report.rank import higher_is_better
from backobs.report.read import warn_on_stderr

PROFILE_BY = ("seconds", "epochs")
"""What the performance profile compares: seconds or epochs to the target."""

DEFAULT_BASELINE = "sgd"
DEFAULT_TAU_MAX = 4.0

SCORES_COLUMNS = (
    "problem",
    "optimizer",
    "target",
    "epochs_to_target",
    "seconds_to_target",
    "speedup_vs_baseline",
    "seeds_reached",
)
"""The columns of ``scores.csv``."""

_SMALLER_IS_SAFER = {"lr": "smaller", "learning_rate": "smaller", "damping": "larger"}


@dataclass(eq=False)
class Verdict:
    """The verdict across problems, as :func:`build_verdict` makes it.

    Attributes:
        scores (pandas.DataFrame): One row per problem (with a target) and optimizer:
            :data:`SCORES_COLUMNS`, ``inf`` where a target is not reached.
        by (str): What the profile compares: ``"seconds"`` or ``"epochs"``.
        tau_max (float): The profile's upper end for the score.
        ratios (dict[str, list[float]]): optimizer -> its ratio ``r`` on each profiled
            problem (in the order of :attr:`problems`).
        benchmark_scores (dict[str, float]): optimizer -> its score, best first.
        problems (list[str]): The problems in the profile (those with a target).
        baseline (str): The baseline's name as given.
        notes (dict[tuple[str, str], list[str]]): ``(problem, optimizer)`` -> warnings.
    """

    scores: pd.DataFrame
    by: str
    tau_max: float
    ratios: dict
    benchmark_scores: dict
    problems: list
    baseline: str
    notes: dict = field(default_factory=dict)

    def target_of(self, problem):
        """A problem's target and each optimizer's median seconds to it.

        Returns:
            tuple: ``(target, {optimizer: seconds})``, ``(None, None)`` without a target.
        """
        rows = self.scores[self.scores["problem"] == problem]
        if not len(rows):
            return None, None
        seconds = dict(zip(rows["optimizer"], rows["seconds_to_target"].astype(float)))
        return float(rows["target"].iloc[0]), seconds

    def profile_table(self):
        """The profile as a long table: :func:`profile_table` of this verdict."""
        return profile_table(self.ratios, self.benchmark_scores)


def parse_targets(values):
    """``["mnist_logreg=0.9", ...]`` (``--target``) -> ``{"mnist_logreg": 0.9}``.

    Raises:
        OptionError: If a value is not ``PROBLEM=NUMBER`` or names a problem twice.
    """
    targets = {}
    for value in values or ():
        problem, equals, number = str(value).rpartition("=")
        try:
            target = float(number)
        except ValueError:
            target = math.nan
        if not equals or not problem or not math.isfinite(target):
            raise OptionError(
                f"--target must be PROBLEM=VALUE with a finite number, e.g. "
                f"mnist_logreg=0.9, got {value!r}"
            )
        if problem in targets:
            raise OptionError(f"--target gives {problem!r} twice: give one target per problem")
        targets[problem] = target
    return targets


def find_baseline(report, baseline):
    """The baseline's folder on a problem (names match case-insensitively), or ``None``."""
    return report.find(baseline)


def default_target(report, baseline):
    """The seed-mean final value of the baseline's best setting's ranking metric, or ``None``.

    ``None`` if the problem has no folder of the baseline, or its best setting has no finite
    final value (all its settings diverged).
    """
    name = find_baseline(report, baseline)
    if name is None:
        return None
    value = float(np.mean(report.best(name).setting.values(report.metric)[:, -1]))
    return value if math.isfinite(value) else None


def first_reach(values, target, higher):
    """The first index whose value reaches ``target`` (``>=`` if ``higher``, else ``<=``).

    Args:
        values (array-like): One seed's metric, index 0 before training.
        target (float): The target.
        higher (bool): Larger is better.

    Returns:
        float: The index, or ``inf`` if no (finite) value reaches it.
    """
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        reached = values >= target if higher else values <= target
    hits = np.flatnonzero(reached & np.isfinite(values))
    return float(hits[0]) if len(hits) else math.inf


def seed_crossings(setting, metric, target):
    """Per seed of ``setting``: evaluations and training seconds to reach ``target``.

    Returns:
        tuple[numpy.ndarray, numpy.ndarray]: ``e`` and ``t`` per seed, ``inf`` where not
        reached; ``t`` is ``nan`` where the seed records no ``epoch_seconds`` for its
        epochs ``1 .. e``.
    """
    higher = higher_is_better(metric)
    epochs, seconds = [], []
    for run in setting.runs:
        e = first_reach(run.metrics[metric], target, higher)
        epochs.append(e)
        if math.isinf(e):
            seconds.append(math.inf)
        elif run.epoch_seconds is None or len(run.epoch_seconds) < e:
            seconds.append(math.nan)
        else:
            seconds.append(float(np.sum(run.epoch_seconds[: int(e)])))
    return np.array(epochs), np.array(seconds)


def benchmark_score(ratios, tau_max=DEFAULT_TAU_MAX):
    """The exact integral of ``rho`` over ``[1, tau_max]``, divided by ``tau_max - 1``.

    Args:
        ratios (list[float]): An optimizer's ratio ``r >= 1`` on each problem (``inf``: not
            reached).
        tau_max (float): Greater than 1.

    Returns:
        float: In ``[0, 1]``; ``nan`` for no problems.
    """
    if not len(ratios):
        return math.nan
    areas = [max(0.0, tau_max - max(float(r), 1.0)) for r in ratios]
    return float(np.mean(areas)) / (tau_max - 1.0)


def profile_steps(ratios):
    """The step function ``rho`` of one optimizer: ``[(tau, rho), ...]``.

    ``rho(tau)`` holds from each ``tau`` to the next: the first step is at ``tau = 1``, then
    one at each distinct finite ratio above 1 (ratios are ``>= 1``).
    """
    ratios = np.asarray(ratios, dtype=float)
    taus = [1.0] + sorted({float(r) for r in ratios if math.isfinite(r) and r > 1.0})
    return [(tau, float(np.mean(ratios <= tau))) for tau in taus]


def profile_table(ratios, scores):
    """The profile as a long table, one row per step, optimizers best first.

    Args:
        ratios (dict[str, list[float]]): optimizer -> its ratios.
        scores (dict[str, float]): optimizer -> its benchmark score (its order is kept).

    Returns:
        pandas.DataFrame: Columns ``optimizer``, ``score`` (repeated on its rows), ``tau``
        and ``rho``: ``rho`` holds from ``tau`` to the next row's ``tau``.
    """
    rows = [
        {"optimizer": optimizer, "score": score, "tau": tau, "rho": rho}
        for optimizer, score in scores.items()
        for tau, rho in profile_steps(ratios[optimizer])
    ]
    return pd.DataFrame(rows, columns=["optimizer", "score", "tau", "rho"])


def build_verdict(
    reports,
    targets=None,
    baseline=DEFAULT_BASELINE,
    profile_by=None,
    tau_max=DEFAULT_TAU_MAX,
    warn=None,
):
    """Time to target, performance profile and benchmark scores across problems.

    Args:
        reports (dict[str, ProblemReport]): As :func:`build_report` returns them.
        targets (dict[str, float], optional): problem -> target (``--target``).
        baseline (str): The optimizer whose best setting sets the default targets and the
            speedups (matched case-insensitively).
        profile_by (str, optional): ``"seconds"`` or ``"epochs"``; default ``seconds``
            unless some best setting in the profile lacks ``epoch_seconds``.
        tau_max (float): The profile's upper end for the score, > 1.
        warn (callable, optional): Called with one line per warning; default stderr.

    Returns:
        Verdict: The verdict.

    Raises:
        OptionError: If a target names an unknown problem, ``profile_by`` is unknown or
            ``"seconds"`` without timings, or ``tau_max`` is not > 1.
    """
    warn = warn or warn_on_stderr
    targets = dict(targets or {})
    unknown = sorted(set(targets) - set(reports))
    if unknown:
        raise OptionError(
            f"--target names {', '.join(map(repr, unknown))}, not a problem of these results "
            f"(problems: {', '.join(reports)})"
        )
    if profile_by not in (None, *PROFILE_BY):
        raise OptionError(
            f"--profile-by must be one of {', '.join(PROFILE_BY)}, got {profile_by!r}"
        )
    if not (isinstance(tau_max, (int, float)) and math.isfinite(tau_max) and tau_max > 1):
        raise OptionError(f"--tau-max must be a finite number > 1, got {tau_max!r}")

    notes = hyperparameter_notes(reports, warn)
    rows, problems, untimed = [], [], []
    for problem, report in reports.items():
        target = targets.get(problem, default_target(report, baseline))
        if target is None:
            warn(
                f"{problem} is left out of the profile: no target (no finite result of "
                f"the baseline {baseline!r}; give one with --target {problem}=VALUE)"
            )
            continue
        problems.append(problem)
        baseline_name = find_baseline(report, baseline)
        per_optimizer = {}
        for optimizer, ranking in report.rankings.items():
            setting = ranking[0].setting
            epochs, seconds = seed_crossings(setting, report.metric, target)
            if np.isnan(seconds).any():
                untimed.append(f"{problem}/{optimizer}")
            per_optimizer[optimizer] = (
                float(np.median(epochs)),
                float(np.median(seconds)),
                f"{int(np.isfinite(epochs).sum())}/{len(epochs)}",
            )
        base_seconds = per_optimizer[baseline_name][1] if baseline_name else math.nan
        for optimizer, (epochs, seconds, reached) in per_optimizer.items():
            speedup = math.nan
            if math.isfinite(base_seconds) and math.isfinite(seconds) and seconds > 0:
                speedup = base_seconds / seconds
            elif base_seconds == 0 and seconds == 0:
                speedup = 1.0
            rows.append(
                {
                    "problem": problem,
                    "optimizer": optimizer,
                    "target": target,
                    "epochs_to_target": epochs,
                    "seconds_to_target": seconds,
                    "speedup_vs_baseline": speedup,
                    "seeds_reached": reached,
                }
            )
    scores = pd.DataFrame(rows, columns=list(SCORES_COLUMNS))

    if profile_by == "seconds" and untimed:
        raise OptionError(
            f"--profile-by seconds: the best settings of {', '.join(untimed)} record no "
            "epoch_seconds; use --profile-by epochs"
        )
    by = profile_by or ("epochs" if untimed else "seconds")
    ratios = profile_ratios(scores, problems, f"{by}_to_target")
    benchmark = {optimizer: benchmark_score(r, tau_max) for optimizer, r in ratios.items()}
    benchmark = dict(sorted(benchmark.items(), key=lambda item: -item[1]))
    return Verdict(scores, by, float(tau_max), ratios, benchmark, problems, baseline, notes)


def profile_ratios(scores, problems, column):
    """Each optimizer's ratio to the fastest on each problem (``inf``: not reached or run).

    Args:
        scores (pandas.DataFrame): As :attr:`Verdict.scores`.
        problems (list[str]): The problems, in order.
        column (str): ``"seconds_to_target"`` or ``"epochs_to_target"``.
    """
    optimizers = list(dict.fromkeys(scores["optimizer"]))
    ratios = {optimizer: [] for optimizer in optimizers}
    for problem in problems:
        rows = scores[scores["problem"] == problem]
        values = dict(zip(rows["optimizer"], rows[column].astype(float)))
        best = min(values.values(), default=math.inf)
        for optimizer in optimizers:
            value = values.get(optimizer, math.inf)
            if not math.isfinite(value):
                ratio = math.inf
            elif best == 0:
                ratio = 1.0 if value == 0 else math.inf
            else:
                ratio = value / best
            ratios[optimizer].append(ratio)
    return ratios


def hyperparameter_notes(reports, warn=None):
    """Warnings about the grids, per problem and optimizer, each also passed to ``warn``.

    - The best setting's value of a tuned (numeric, varying) hyperparameter is the grid's
      smallest or largest: ``best lr is the grid's smallest, 0.1: extend the grid below``.
    - Every setting diverged (some seed of each): ``all 4 settings diverged: try a smaller
      lr or a larger damping`` (after the hyperparameters the settings have).

    Returns:
        dict[tuple[str, str], list[str]]: ``(problem, optimizer)`` -> its notes.
    """
    warn = warn or warn_on_stderr
    notes = {}
    for problem, report in reports.items():
        for optimizer, ranking in report.rankings.items():
            found = _grid_notes(ranking)
            for note in found:
                warn(f"{problem}/{optimizer}: {note}")
            if found:
                notes[(problem, optimizer)] = found
    return notes


def _grid_notes(ranking):
    settings = [item.setting for item in ranking]
    if all(setting.diverged_runs for setting in settings):
        names = list(settings[0].hyperparams)
        hints = [f"a {_SMALLER_IS_SAFER[n]} {n}" for n in names if n in _SMALLER_IS_SAFER]
        hint = " or ".join(hints) if hints else "other hyperparameters"
        count = "the only setting" if len(settings) == 1 else f"all {len(settings)} settings"
        return [f"{count} diverged: try {hint}"]
    best = settings[0]
    found = []
    for name, value in best.hyperparams.items():
        grid = [setting.hyperparams.get(name) for setting in settings]
        if not all(_is_number(v) for v in grid) or len(set(grid)) < 2:
            continue
        for edge, word, where in (
            (min(grid), "smallest", "below"),
            (max(grid), "largest", "above"),
        ):
            if value == edge:
                found.append(
                    f"best {name} is the grid's {word}, {value:g}: extend the grid {where}"
                )
    return found


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def add_notes(summary, notes):
    """The summary table with the verdict's notes appended to its ``notes`` column."""
    summary = summary.copy()
    if not len(summary):
        return summary
    merged = []
    for row in summary.to_dict("records"):
        extra = notes.get((row["problem"], row["optimizer"]), [])
        merged.append("; ".join(part for part in [row["notes"], *extra] if part))
    summary["notes"] = merged
    return summary


def _cell(value, digits=4):
    if isinstance(value, str):
        return value
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "not reached"
    return f"{value:.{digits}g}"


def markdown_sections(verdict, figure_name=None):
    """The "Time to target" and "Performance profile" sections of ``report.md``.

    Args:
        verdict (Verdict): The verdict.
        figure_name (str, optional): The profile figure's file name, if drawn.

    Returns:
        str: Markdown.
    """
    base = verdict.baseline
    lines = [
        "## Time to target",
        "",
        "On each optimizer's best setting: the first evaluation (0 = before training) whose "
        "ranking metric reaches the problem's target (`--target`, else the seed-mean final "
        f"value of {base}'s best setting) and the training seconds until then, median over "
        "the seeds.",
        "",
        "| problem | optimizer | target | epochs to target | seconds to target | "
        f"speedup vs {base} | seeds reached | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in verdict.scores.to_dict("records"):
        note = "; ".join(verdict.notes.get((row["problem"], row["optimizer"]), []))
        cells = [row[column] for column in SCORES_COLUMNS] + [note]
        lines.append("| " + " | ".join(_cell(c).replace("|", "\\|") for c in cells) + " |")
    count = len(verdict.problems)
    lines += [
        "",
        "## Performance profile",
        "",
        f"By {verdict.by} to target over {count} problem{'s' if count != 1 else ''}: "
        "rho(tau) is the fraction of problems on which an optimizer is within tau times the "
        f"fastest; the score is the area under rho over [1, {verdict.tau_max:g}] divided by "
        f"{verdict.tau_max - 1:g} (1: fastest everywhere).",
    ]
    if count == 1:
        lines += [
            "",
            "One problem only: the profile is one step per optimizer (from 0 to 1 at its "
            "ratio to the fastest), so the score only restates that ratio.",
        ]
    if figure_name:
        lines += ["", f"![performance profile]({figure_name})"]
    lines += ["", "| optimizer | score |", "|---|---|"]
    lines += [f"| {name} | {_cell(score)} |" for name, score in verdict.benchmark_scores.items()]
    return "\n".join(lines) + "\n"
