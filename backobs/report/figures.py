"""The report's figures: performance, sensitivity and cost of one problem, as PNGs.

Drawn with matplotlib's object-oriented API on the Agg canvas, without ``pyplot``, so no
global backend is changed.
"""

import math

import numpy as np
from matplotlib.figure import Figure

from backobs.report.rank import aggregate
from backobs.report.tables import _format_value, _seconds, format_hyperparams, tuned_hyperparams

_PERFORMANCE_PANELS = (
    ("test_losses", "Test loss"),
    ("test_accuracies", "Test accuracy"),
    ("train_losses", "Train loss"),
    ("train_accuracies", "Train accuracy"),
)
_LEARNING_RATE_NAMES = ("lr", "learning_rate")


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


def plot_cost(report, path, target=None, seconds_to_target=None):
    """Cost of one problem's optimizers, written as a PNG, if the runs record their time.

    Left: seconds per training epoch of each optimizer's best setting (mean ± std or median
    and quartiles over seeds). Middle: the test loss against cumulative training time.
    With a ``target`` (the verdict's, on the ranking metric), a third panel: the ranking
    metric against training time, the target as a horizontal line, and a star where each
    optimizer reaches it (its median seconds to target over the seeds, as in
    ``scores.csv``; the curve is the seed mean, so the star need not lie on it).

    Args:
        report (ProblemReport): The problem.
        path (str): The PNG to write.
        target (float, optional): The problem's target on ``report.metric``.
        seconds_to_target (dict[str, float], optional): optimizer -> its median seconds to
            the target (``inf``: not reached; ``nan``: not timed).

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
    with_target = target is not None
    figure = _figure(16 if with_target else 11, 4.5)
    panels = figure.subplots(1, 3 if with_target else 2)
    bars, losses = panels[0], panels[1]
    colors = [_color(report, optimizer) for optimizer, _ in timed]
    centers, errors = [], [[], []]
    for _, ranked in timed:
        center, _, low, high = _seconds(ranked.setting, report.how)
        centers.append(center)
        errors[0].append(center - low)
        errors[1].append(high - center)
    names = [optimizer for optimizer, _ in timed]
    bars.bar(names, centers, yerr=errors, capsize=4, color=colors)
    if len(names) > 4 or max(len(name) for name in names) > 10:
        # Many or long names: upright, one line of text wide each, so that none overlap.
        bars.tick_params(axis="x", labelrotation=90)
    bars.set_ylabel("seconds per training epoch")
    bars.set_title(f"best setting per optimizer, {_aggregate_words(report.how)}", fontsize="small")
    metrics = [("test_losses", losses)] + ([(report.metric, panels[2])] if with_target else [])
    for metric, axis in metrics:
        curves = []
        for color, (optimizer, ranked) in zip(colors, timed):
            elapsed = _elapsed(ranked.setting)
            curve = aggregate(ranked.setting.values(metric), report.how).center
            count = min(len(elapsed), len(curve))
            axis.plot(elapsed[:count], curve[:count], marker=".", color=color, label=optimizer)
            curves.append(curve[:count])
        if "loss" in metric:
            _log_scale_if_wide(axis, curves)
        axis.set_xlabel("training time (s, evaluation excluded)")
    losses.set_ylabel("test loss")
    losses.legend(fontsize="small")
    if with_target:
        _mark_target(panels[2], report, timed, colors, target, seconds_to_target or {})
    figure.suptitle(_title(report, "cost"), fontsize="medium")
    figure.savefig(path, dpi=100)
    return figure


def _elapsed(setting):
    """Cumulative training seconds at each evaluation (0 before training), seed mean."""
    seconds = [run.epoch_seconds for run in setting.runs if run.epoch_seconds is not None]
    length = min(len(values) for values in seconds)
    return np.concatenate([[0.0], np.cumsum(aggregate([s[:length] for s in seconds]).center)])


def _mark_target(axis, report, timed, colors, target, seconds_to_target):
    axis.axhline(target, color="gray", linestyle="--", label=f"target {target:.4g}")
    for color, (optimizer, _) in zip(colors, timed):
        seconds = seconds_to_target.get(optimizer, math.nan)
        if math.isfinite(seconds):
            axis.plot(
                [seconds],
                [target],
                marker="*",
                markersize=14,
                color=color,
                markeredgecolor="black",
                linestyle="none",
                zorder=5,
                label=f"{optimizer} reaches it: {seconds:.3g} s",
            )
        elif math.isinf(seconds):
            axis.plot([], [], color=color, label=f"{optimizer}: not reached")
    axis.set_ylabel(report.metric)
    axis.set_title("time to target (median over seeds)", fontsize="small")
    axis.legend(fontsize="x-small")


def plot_profile(verdict, path):
    """The performance profile, written as a PNG: ``rho`` against ``tau``, one step line each.

    The tau axis runs from 1 to ``tau_max`` (or to the largest finite ratio, if larger), on
    a log scale when that spans more than a decade; the legend gives each benchmark score.

    Args:
        verdict (Verdict): As :func:`~backobs.report.verdict.build_verdict` makes it.
        path (str): The PNG to write.

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    from backobs.report.verdict import profile_steps

    finite = [r for ratios in verdict.ratios.values() for r in ratios if math.isfinite(r)]
    end = max([verdict.tau_max, *finite])
    figure = _figure(7, 4.5)
    axis = figure.subplots()
    for index, (optimizer, score) in enumerate(verdict.benchmark_scores.items()):
        steps = profile_steps(verdict.ratios[optimizer])
        taus = [tau for tau, _ in steps] + [end]
        rhos = [rho for _, rho in steps] + [steps[-1][1]]
        axis.step(
            taus, rhos, where="post", color=f"C{index % 10}", label=f"{optimizer} ({score:.3g})"
        )
    if end > verdict.tau_max:
        axis.axvline(verdict.tau_max, color="gray", linestyle=":", label="tau_max")
    if end > 10:
        axis.set_xscale("log")
    axis.set_xlim(1, end)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel(f"tau ({verdict.by} to target / fastest's)")
    axis.set_ylabel("rho: fraction of problems within tau")
    axis.legend(title="optimizer (score)", fontsize="small")
    count = len(verdict.problems)
    figure.suptitle(
        f"Performance profile by {verdict.by} to target, {count} problem{'s' * (count != 1)}",
        fontsize="medium",
    )
    figure.savefig(path, dpi=100)
    return figure
