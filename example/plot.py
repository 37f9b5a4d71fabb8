"""Plot a BackpackRunner run: loss and accuracy per epoch, extension summaries per step.

Reads DeepOBS's results JSON and the step log that the runner writes beside it
(``<results stem>.steps.jsonl``) and saves one PNG: the train/valid/test loss and accuracy
at each evaluation, the mini-batch loss of every step, and for every logged extension the
norm of its quantity on each parameter per step (for per-sample quantities also the mean and
the range of the per-sample norms).

Example:
    python example/run.py mnist_logreg --lr 0.1 --synthetic-data --steps-per-epoch 20 -N 3
    python example/plot.py results/mnist_logreg/SGD/*/random_seed__42__*.json
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

PHASES = ("train", "valid", "test")


def step_log_path(results_path):
    """The step log that the runner writes beside a results file."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + ".steps.jsonl")


def read_step_log(path):
    """The records of a step log, one dict per logged step (an empty list without file)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def _plot_epochs(axes, results, metric, label):
    for phase in PHASES:
        values = results.get(f"{phase}_{metric}")
        if values:
            axes.plot(range(len(values)), values, marker="o", label=phase)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epochs trained")
    axes.set_ylabel(label)
    axes.set_title(f"{label} per epoch")
    axes.legend()


def _plot_step_loss(axes, steps):
    axes.plot([s["global_step"] for s in steps], [s["loss"] for s in steps], lw=1)
    axes.set_xlabel("step")
    axes.set_ylabel("mini-batch loss")
    axes.set_title("mini-batch loss per step")


def _curves(steps, extension, key):
    """``{label: (steps, values)}`` of one summary key of one extension, per parameter."""
    curves = {}
    for record in steps:
        summary = record["extensions"].get(extension)
        if summary is None:
            continue
        for parameter, stats in summary["parameters"].items():
            if stats is None or key not in stats:
                continue
            values = stats[key]
            labelled = (
                [(f"{parameter}[{i}]", v) for i, v in enumerate(values)]
                if isinstance(values, list)
                else [(parameter, values)]
            )
            for label, value in labelled:
                xs, ys = curves.setdefault(label, ([], []))
                xs.append(record["global_step"])
                ys.append(value)
    return curves


def _plot_norms(axes, steps, extension):
    savefield = next(
        s["extensions"][extension]["savefield"] for s in steps if extension in s["extensions"]
    )
    for label, (xs, ys) in _curves(steps, extension, "norm").items():
        axes.plot(xs, ys, lw=1, label=label)
    _log_scale_if_positive(axes)
    axes.set_xlabel("step")
    axes.set_ylabel(f"norm of .{savefield}")
    axes.set_title(f"{extension}: norm per parameter")
    axes.legend(fontsize="small")


def _plot_sample_spread(axes, steps, extension, key):
    for label, (xs, ys) in _curves(steps, extension, key).items():
        means = [stats["mean"] for stats in ys]
        (line,) = axes.plot(xs, means, lw=1, label=f"{label} (mean)")
        axes.fill_between(
            xs, [s["min"] for s in ys], [s["max"] for s in ys], color=line.get_color(), alpha=0.2
        )
    _log_scale_if_positive(axes)
    axes.set_xlabel("step")
    what = "per-sample norms" if key == "sample_norms" else "per-sample values"
    axes.set_ylabel(what)
    axes.set_title(f"{extension}: {what} (mean, min to max)")
    axes.legend(fontsize="small")


def _log_scale_if_positive(axes):
    values = [y for line in axes.get_lines() for y in line.get_ydata()]
    if values and all(math.isfinite(v) and v > 0 for v in values):
        axes.set_yscale("log")


def plot_run(results, steps, title=None):
    """Draw a run into a new figure.

    Args:
        results (dict): DeepOBS's results dictionary (as in the results JSON).
        steps (list[dict]): The records of the step log.
        title (str, optional): Figure title.

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    panels = [lambda ax: _plot_epochs(ax, results, "losses", "loss")]
    if results.get("test_accuracies"):
        panels.append(lambda ax: _plot_epochs(ax, results, "accuracies", "accuracy"))
    if steps:
        panels.append(lambda ax: _plot_step_loss(ax, steps))
        extensions = list(dict.fromkeys(e for s in steps for e in s["extensions"]))
        for extension in extensions:
            panels.append(lambda ax, e=extension: _plot_norms(ax, steps, e))
            for key in ("sample_norms", "sample_values"):
                if _curves(steps, extension, key):
                    panels.append(
                        lambda ax, e=extension, k=key: _plot_sample_spread(ax, steps, e, k)
                    )
    columns = 2
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False, layout="constrained"
    )
    for panel, ax in zip(panels, axes.flat):
        panel(ax)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure


def main():
    """Read a results JSON (and its step log) and save the PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results JSON written by the runner")
    parser.add_argument("--steps", help="step log (default: <results stem>.steps.jsonl)")
    parser.add_argument("--output", "-o", help="PNG to write (default: <results stem>.png)")
    args = parser.parse_args()

    results_path = Path(args.results)
    results = json.loads(results_path.read_text(encoding="utf-8"))
    steps = read_step_log(args.steps or step_log_path(results_path))
    hyperparameters = ", ".join(
        f"{k}={v}" for k, v in results.get("optimizer_hyperparams", {}).items()
    )
    title = (
        f"{results.get('testproblem')}: {results.get('optimizer_name')} ({hyperparameters}), "
        f"batch size {results.get('batch_size')}"
    )
    figure = plot_run(results, steps, title)
    output = Path(args.output) if args.output else results_path.with_suffix(".png")
    figure.savefig(output, dpi=100)
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
