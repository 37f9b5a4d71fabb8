"""The report's tables: the best setting per optimizer and problem, every setting's rank.

Each is a :class:`pandas.DataFrame` (written as CSV) and :func:`markdown_table` the summary
as a Markdown table.
"""

import math

import pandas as pd

from backobs.report.rank import aggregate
from backobs.report.stats import LEVEL, welch_difference

DIFFERENCE_COLUMNS = ("diff_metric", "diff_vs_baseline", "diff_ci_low", "diff_ci_high")
"""The columns of ``report.csv`` that compare an optimizer with the baseline."""


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


def summary_table(reports, baseline="sgd"):
    """The best setting of every optimizer on every problem, one row each.

    Args:
        reports (dict[str, ProblemReport]): As :func:`build_report` returns them.
        baseline (str): The optimizer the differences are taken to (any case).

    Returns:
        pandas.DataFrame: Columns ``problem``, ``optimizer``, ``hyperparameters`` (those
        tuned, see :func:`tuned_hyperparams`), ``all_hyperparameters``, ``seeds``,
        ``settings`` (number tried), ``ranked_by`` (e.g. ``"final
        valid_accuracies"``), ``score``, ``test_accuracy``, ``test_loss``,
        ``seconds_per_epoch`` (each followed by its ``_std`` with ``mean``, or ``_q25`` and
        ``_q75`` with ``median``), ``cost_vs_sgd`` (seconds per epoch / SGD's, ``nan``
        without SGD or timings), ``diff_metric`` (``test_accuracies``, or ``test_losses``
        where the problem has no accuracy), ``diff_vs_baseline`` (the seed mean of that
        metric's final value minus the baseline's best setting's), ``diff_ci_low`` and
        ``diff_ci_high`` (its 95 % Welch interval; ``nan`` for the baseline itself and where
        a side has fewer than two seeds), and ``notes``.
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
            row.update(_difference_columns(report, optimizer, baseline))
            notes = list(best.notes)
            diverged_settings = sum(item.setting.diverged_runs > 0 for item in ranking)
            if diverged_settings and not setting.diverged_runs:
                notes.append(f"{diverged_settings} of {len(ranking)} settings diverged")
            row["notes"] = "; ".join(notes)
            rows.append(row)
    return pd.DataFrame(rows)


def _difference_columns(report, optimizer, baseline):
    """The final test metric's difference to the baseline, with its Welch interval."""
    metric = "test_accuracies" if report.has_accuracies else "test_losses"
    columns = dict.fromkeys(DIFFERENCE_COLUMNS[1:], math.nan)
    columns["diff_metric"] = metric
    baseline_name = report.find(baseline)
    if baseline_name is None or baseline_name == optimizer:
        return columns
    setting = report.best(optimizer).setting
    base = report.best(baseline_name).setting
    if not (setting.has_metric(metric) and base.has_metric(metric)):
        return columns
    difference = welch_difference(setting.values(metric)[:, -1], base.values(metric)[:, -1], LEVEL)
    columns.update(
        diff_vs_baseline=difference.value,
        diff_ci_low=difference.low,
        diff_ci_high=difference.high,
    )
    return columns


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


def markdown_table(summary, how="mean", baseline="sgd"):
    """The summary table as a Markdown (GitHub) table, numbers with their spread.

    Where some optimizer has a difference to the baseline with an interval (two or more
    seeds on both sides), a column before the notes gives it as ``+0.25 [-0.13, +0.63]``,
    followed by ``not significant`` where the interval contains 0; ``baseline`` on the
    baseline's rows.

    Args:
        summary (pandas.DataFrame): As :func:`summary_table` returns it.
        how (str): The aggregate it was made with: ``mean`` shows ``m ± std``, ``median``
            shows ``median (q25–q75)``.
        baseline (str): The baseline's name, for the header.

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
    with_difference = "diff_ci_low" in summary and summary["diff_ci_low"].notna().any()
    if with_difference:
        header.insert(-1, f"test acc. (loss) − {baseline}, {LEVEL:.0%} CI")
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
        if with_difference:
            cells.insert(-1, _difference_cell(row, baseline))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _difference_cell(row, baseline):
    if row["optimizer"].lower() == baseline.lower():
        return "baseline"
    value, low, high = row["diff_vs_baseline"], row["diff_ci_low"], row["diff_ci_high"]
    if math.isnan(low):
        return "–"
    cell = f"{value:+.3g} [{low:+.3g}, {high:+.3g}]"
    return cell + (" not significant" if low <= 0 <= high else "")


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
