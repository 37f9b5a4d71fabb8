"""Writing a report: the tables and figures of every problem into one folder."""

import math
import os
import warnings

from backobs.report.figures import (
    _aggregate_words,
    plot_cost,
    plot_performance,
    plot_profile,
    plot_sensitivity,
)
from backobs.report.read import warn_on_stderr
from backobs.report.stats import LEVEL
from backobs.report.tables import _number, markdown_table, settings_table, summary_table
from backobs.report.verdict import add_notes, build_verdict, markdown_sections


def write_report(reports, out_dir, warn=None, verdict=None):
    """Write the tables and figures of :func:`build_report`'s reports into ``out_dir``.

    Args:
        reports (dict[str, ProblemReport]): The reports.
        out_dir (str): The output folder (created if missing).
        warn (callable, optional): Called with one line per figure that cannot be drawn
            (and, without ``verdict``, per warning of the verdict).
        verdict (Verdict, optional): The verdict across problems; default
            :func:`~backobs.report.verdict.build_verdict` with its defaults.

    Returns:
        list[str]: The files written: ``report.md``, ``report.csv``, ``settings.csv``,
        ``scores.csv``, ``profile.csv``, ``performance_profile.png`` (if some problem has a
        target), and per problem ``<problem>_performance.png``, ``<problem>_sensitivity.png``
        and ``<problem>_cost.png`` (the last only if its runs record ``epoch_seconds``).
    """
    warn = warn or warn_on_stderr
    os.makedirs(out_dir, exist_ok=True)
    how = next(iter(reports.values())).how if reports else "mean"
    if verdict is None:
        verdict = build_verdict(reports, warn=warn)
    summary = add_notes(summary_table(reports, verdict.baseline), verdict.notes)
    settings = settings_table(reports)
    written = []

    def target(name):
        path = os.path.join(out_dir, name)
        written.append(path)
        return path

    summary.to_csv(target("report.csv"), index=False)
    settings.to_csv(target("settings.csv"), index=False)
    # Not reached (inf) is an empty cell, like a speedup that cannot be computed.
    verdict.scores.replace(math.inf, math.nan).to_csv(target("scores.csv"), index=False)
    verdict.profile_table().to_csv(target("profile.csv"), index=False)
    profile_name = None
    if verdict.problems:
        profile_name = "performance_profile.png"
        plot_profile(verdict, target(profile_name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices of diverged runs
        for problem, report in reports.items():
            plot_performance(report, target(f"{problem}_performance.png"))
            plot_sensitivity(report, target(f"{problem}_sensitivity.png"))
            cost_path = os.path.join(out_dir, f"{problem}_cost.png")
            if plot_cost(report, cost_path, *verdict.target_of(problem)) is not None:
                written.append(cost_path)
            else:
                warn(f"no cost figure for {problem}: its results record no epoch_seconds")
    with open(target("report.md"), "w", encoding="utf-8") as file:
        verdict_md = markdown_sections(verdict, profile_name)
        file.write(
            _markdown_document(
                reports, summary, settings, how, written, verdict_md, verdict.baseline
            )
        )
    return written


def _markdown_document(reports, summary, settings, how, written, verdict_md, baseline):
    lines = [
        "# Optimizer comparison",
        "",
        f"Best setting per optimizer, {_aggregate_words(how)}.",
        "",
        markdown_table(summary, how, baseline),
    ]
    if summary["diff_ci_low"].notna().any():
        lines += [
            f"Difference to {baseline}: the seed mean of the final test accuracy (the test "
            f"loss on problems without accuracy) minus that of {baseline}'s best setting, "
            f"with its {LEVEL:.0%} Welch interval (Welch–Satterthwaite degrees of freedom, "
            "Student's t), where both have two or more seeds; *not significant* where the "
            "interval contains 0.",
            "",
        ]
    lines.append(verdict_md)
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
