"""Plot a BackpackRunner run: loss and accuracy per epoch, extension summaries per step.

Reads DeepOBS's results JSON and the step log that the runner writes beside it
(``<results stem>.steps.jsonl``) and saves one PNG: the train/valid/test loss and accuracy
at each evaluation, the mini-batch loss of every step, and for every logged extension the
norm of its quantity on each parameter per step (for per-sample quantities also the mean and
the range of the per-sample norms). Kronecker factors are labelled B and A (a weight's
``[B, A]``, a bias's ``[B]``); each layer keeps one colour in every panel, the line style
tells its curves apart (weight or factor B solid, factor A dashed, bias dotted).

The figure says what the results file says about the run: synthetic data, an interrupted run
(``"status": "interrupted"``, the epochs completed are drawn) and a diverged one
(``"status": "diverged"``: a vertical line at ``"diverged_at_step"`` on the per-step panels;
the values DeepOBS fills in for the epochs after the divergence are not drawn). Non-finite
numbers (``null`` in strict JSON, ``NaN``/``Infinity`` in older files) are gaps in the curves.

A file that is not a results file (or, for ``--steps``, not a step log) ends the script with
one line on stderr and exit code 2.

Example:
    python example/run.py mnist_logreg --lr 0.1 --synthetic-data --steps-per-epoch 20 -N 3
    python example/plot.py results/mnist_logreg/SGD/*/random_seed__42__*.json
"""

import argparse
import glob
import json
import math
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PHASES = ("train", "valid", "test")
EPOCH_METRICS = tuple(
    f"{phase}_{metric}" for metric in ("losses", "accuracies") for phase in PHASES
)
RESULTS_KEYS = ("testproblem", "train_losses", "valid_losses", "test_losses")
STEP_LOG_SUFFIX = ".steps.jsonl"
# Line styles of the curves of one layer, in the order of its parameters (weight, bias) and
# their Kronecker factors (B, A): weight / weight B, weight A, bias / bias B, ...
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
COMPACT_LEGEND_ABOVE = 12  # curves; more get one legend entry per layer and per kind
LEGEND_ROWS = 20
DIVERGENCE_LINE = {"color": "black", "linestyle": "-", "linewidth": 3, "alpha": 0.3}


class FileFormatError(ValueError):
    """A file that is missing or not what the script expects; the message is one line."""


def step_log_path(results_path):
    """The step log that the runner writes beside a results file."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + STEP_LOG_SUFFIX)


def _without_part(name):
    """A file name without the runner's temporary suffix (``.<pid>-<random>.part``, ``.part``)."""
    return re.sub(r"(\.\d+-[0-9a-f]+)?\.part$", "", name)


def results_path_of_step_log(path):
    """The results file that a step log belongs to (the inverse of :func:`step_log_path`)."""
    path = Path(path)
    name = _without_part(path.name)  # the name while the run writes it
    stem = name[: -len(STEP_LOG_SUFFIX)] if name.endswith(STEP_LOG_SUFFIX) else Path(name).stem
    return path.with_name(stem + ".json")


def read_results(path):
    """Read a results file written by the runner (DeepOBS's results JSON).

    Args:
        path (str or Path): The results file.

    Returns:
        dict: Its content. Non-finite numbers stay as written: ``None`` for strict JSON's
        ``null``, a float ``nan``/``inf`` for older files.

    Raises:
        FileFormatError: If the file is missing, not JSON, a step log, or JSON without the
            keys of a results file.
    """
    path = Path(path)
    text = _read_text(path, "results file")
    try:
        results = json.loads(text)
    except json.JSONDecodeError as error:
        name = _without_part(path.name)
        if name.endswith(STEP_LOG_SUFFIX) or _is_step_record(_first_line_as_json(text)):
            raise _step_log_given(path) from None
        raise FileFormatError(
            f"{path} is not a results file: not JSON "
            f"({error.msg}, line {error.lineno} column {error.colno})"
        ) from None
    if _is_step_record(results):
        raise _step_log_given(path)
    if not isinstance(results, dict):
        raise FileFormatError(
            f"{path} is not a results file: a JSON {type(results).__name__}, "
            f"not an object with {', '.join(RESULTS_KEYS)}"
        )
    missing = [key for key in RESULTS_KEYS if key not in results]
    if missing:
        raise FileFormatError(
            f"{path} is not a results file of a run: it has no {', '.join(missing)}"
        )
    for key in (*EPOCH_METRICS, "minibatch_train_losses"):
        if key in results and not _is_number_list(results[key]):
            raise FileFormatError(f"{path} is not a results file: {key} is not a list of numbers")
    return results


def read_step_log(path):
    """The records of a step log, one dict per logged step (an empty list without file).

    Non-finite numbers stay as written: ``None`` for strict JSON's ``null``, a float
    ``nan``/``inf`` in older logs. An incomplete last line (a process killed while writing
    it) is left out.

    Args:
        path (str or Path): The step log (``<results stem>.steps.jsonl``).

    Returns:
        list[dict]: The records, with keys ``epoch``, ``step``, ``global_step``, ``loss`` and
        ``extensions``.

    Raises:
        FileFormatError: If the file is not a step log.
    """
    records, _ = _read_step_log(path)
    return records


def _read_step_log(path):
    """The records of a step log and whether an incomplete last line was left out."""
    path = Path(path)
    if not path.exists():
        return [], False
    text = _read_text(path, "step log")
    lines = text.split("\n")
    last = max((number for number, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == last and number == len(lines) - 1 and records:
                return records, True  # no newline after it: the writer was stopped mid-line
            if _is_results(_whole_text_as_json(text)):
                raise _results_given(path) from None
            raise FileFormatError(
                f"{path} is not a step log: line {number + 1} is not JSON ({error.msg})"
            ) from None
        if not _is_step_record(record):
            if _is_results(record):
                raise _results_given(path)
            raise FileFormatError(
                f"{path} is not a step log: line {number + 1} is not a step record "
                "(a JSON object with global_step, loss and extensions)"
            )
        records.append(record)
    return records, False


def _read_text(path, what):
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no such file (expected a {what})") from None
    except IsADirectoryError:
        raise FileFormatError(f"{path} is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise FileFormatError(f"{path} is not a {what}: not UTF-8 text, so not JSON") from None
    except OSError as error:
        raise FileFormatError(f"cannot read {path}: {error.strerror or error}") from None


def _first_line_as_json(text):
    try:
        return json.loads(text.split("\n", 1)[0])
    except json.JSONDecodeError:
        return None


def _whole_text_as_json(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _is_step_record(value):
    return (
        isinstance(value, dict)
        and _is_int(value.get("global_step"))
        and "loss" in value
        and isinstance(value.get("extensions"), dict)
    )


def _is_results(value):
    return isinstance(value, dict) and all(key in value for key in RESULTS_KEYS)


def _step_log_given(path):
    return FileFormatError(
        f"{path} is a step log, not a results file: pass the results file beside it "
        f"({results_path_of_step_log(path).name})"
    )


def _results_given(path):
    return FileFormatError(
        f"{path} is a results file, not a step log: pass it as the first argument"
    )


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number_list(value):
    return isinstance(value, list) and all(v is None or _is_number(v) for v in value)


def _finite(value):
    """A number as a float; ``nan`` (a gap in a curve) for null, non-finite or non-numbers."""
    if _is_number(value) and math.isfinite(value):
        return float(value)
    return math.nan


def factor_names(count):
    """Names of the Kronecker factors of one parameter, in the order of the step log.

    Args:
        count (int): Number of factors logged for the parameter.

    Returns:
        tuple[str]: ``("B", "A")`` for a weight's ``[B, A]``, ``("B",)`` for a bias's ``[B]``,
        ``("[0]", "[1]", ...)`` for any other number of factors.
    """
    if count == 2:
        return ("B", "A")
    if count == 1:
        return ("B",)
    return tuple(f"[{index}]" for index in range(count))


def series_label(parameter, factor=None):
    """Legend label of one curve, e.g. ``"conv1.weight"`` or ``"conv1.weight B"``.

    Args:
        parameter (str): The parameter's name in the net.
        factor (str, optional): A Kronecker factor's name from :func:`factor_names`.

    Returns:
        str: The label.
    """
    if factor is None:
        return parameter
    return f"{parameter}{factor}" if factor.startswith("[") else f"{parameter} {factor}"


def _curves(steps, extension, key):
    """``{(parameter, factor): (steps, values)}`` of one summary key of one extension."""
    curves = {}
    for record in steps:
        summary = record["extensions"].get(extension)
        parameters = summary.get("parameters") if isinstance(summary, dict) else None
        if not isinstance(parameters, dict):
            continue
        for parameter, stats in parameters.items():
            if not isinstance(stats, dict) or key not in stats:
                continue
            values = stats[key]
            if isinstance(values, list):
                pairs = zip(factor_names(len(values)), values)
            else:
                pairs = [(None, values)]
            for factor, value in pairs:
                xs, ys = curves.setdefault((parameter, factor), ([], []))
                xs.append(record["global_step"])
                ys.append(value)
    return curves


class _Styles:
    """One colour per layer in every panel; line styles tell a layer's curves apart."""

    def __init__(self, steps):
        parameters = list(
            dict.fromkeys(
                parameter
                for record in steps
                for summary in record["extensions"].values()
                if isinstance(summary, dict) and isinstance(summary.get("parameters"), dict)
                for parameter in summary["parameters"]
            )
        )
        layers = list(dict.fromkeys(_layer(parameter) for parameter in parameters))
        self._colours = dict(zip(layers, _distinct_colours(len(layers))))
        self._rank = {}
        for parameter in parameters:
            siblings = [p for p in parameters if _layer(p) == _layer(parameter)]
            self._rank[parameter] = siblings.index(parameter)

    def __call__(self, parameter, factor):
        """Keyword arguments of ``plot`` for one curve."""
        second = 1 if factor == "A" else 0
        style = LINE_STYLES[(2 * self._rank.get(parameter, 0) + second) % len(LINE_STYLES)]
        return {"color": self._colours.get(_layer(parameter)), "linestyle": style}

    def legend_handles(self, series):
        """A short legend for many curves: one colour per layer, one line style per kind.

        Args:
            series (list[tuple]): The ``(parameter, factor)`` of each curve of a panel.

        Returns:
            list[Line2D] or None: Legend handles, or ``None`` if a line style stands for
            two kinds of curves (then only the full legend says which is which).
        """
        kinds = {}
        for parameter, factor in series:
            leaf = parameter[len(_layer(parameter)) :] or parameter
            kinds.setdefault(self(parameter, factor)["linestyle"], set()).add(
                series_label(leaf, factor)
            )
        if any(len(descriptions) > 1 for descriptions in kinds.values()):
            return None
        layers = dict.fromkeys(_layer(parameter) for parameter, _ in series)
        handles = [
            Line2D([], [], color=self._colours[layer], linewidth=2.5, label=layer)
            for layer in layers
        ]
        handles += [
            Line2D([], [], color="black", linestyle=style, linewidth=1.2, label=description)
            for style, (description,) in kinds.items()
        ]
        return handles


def _layer(parameter):
    return parameter.rpartition(".")[0] or parameter


def _distinct_colours(count):
    if count <= 10:
        return list(plt.get_cmap("tab10").colors[:count])
    if count <= 20:
        pairs = plt.get_cmap("tab20").colors  # dark and light shade of ten hues
        return list(pairs[0::2] + pairs[1::2])[:count]
    return list(plt.get_cmap("turbo")(np.linspace(0.03, 0.97, count)))


def _legend_outside(axes, curves=None, styles=None):
    """The legend to the right of the panel; a short one (layers, kinds) for many curves.

    Args:
        axes: The panel.
        curves (dict, optional): ``{(parameter, factor): line}`` of the parameters' curves.
        styles (_Styles, optional): The styles the curves were drawn with.
    """
    handles, labels = axes.get_legend_handles_labels()
    if curves and len(curves) > COMPACT_LEGEND_ABOVE:
        compact = styles.legend_handles(list(curves))
        if compact:
            # what is not a parameter's curve (the divergence line) keeps its entry
            lines = set(curves.values())
            handles = compact + [handle for handle in handles if handle not in lines]
            labels = [handle.get_label() for handle in handles]
    if handles:
        axes.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            fontsize="small",
            ncols=math.ceil(len(handles) / LEGEND_ROWS),
        )


def _step_axis(axes, diverged_at_step):
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step")
    if diverged_at_step is not None:
        axes.axvline(
            diverged_at_step, label=f"diverged (step {diverged_at_step})", **DIVERGENCE_LINE
        )


def _plot_epochs(axes, results, metric, label, evaluations):
    drawn = False
    for phase in PHASES:
        values = [_finite(v) for v in (results.get(f"{phase}_{metric}") or [])[:evaluations]]
        if values:
            axes.plot(range(len(values)), values, marker="o", label=phase)
            drawn = True
    if not drawn:
        axes.text(0.5, 0.5, "no evaluation completed", ha="center", transform=axes.transAxes)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epochs trained")
    axes.set_ylabel(label)
    axes.set_title(f"{label} per epoch")
    _legend_outside(axes)


def _plot_step_loss(axes, steps, diverged_at_step):
    losses = [_finite(s["loss"]) for s in steps]
    axes.plot([s["global_step"] for s in steps], losses, lw=1, label="mini-batch loss")
    finite = [v for v in losses if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 1e3 * min(finite):
        axes.set_yscale("log")  # a diverging loss would flatten the rest of the curve
    _step_axis(axes, diverged_at_step)
    axes.set_ylabel("mini-batch loss")
    axes.set_title("mini-batch loss per step")
    if diverged_at_step is not None:
        _legend_outside(axes)


def _plot_norms(axes, steps, extension, styles, diverged_at_step):
    savefield = next(
        (
            s["extensions"][extension].get("savefield", "?")
            for s in steps
            if isinstance(s["extensions"].get(extension), dict)
        ),
        "?",
    )
    drawn, lines = [], {}
    for (parameter, factor), (xs, ys) in _curves(steps, extension, "norm").items():
        values = [_finite(y) for y in ys]
        drawn += values
        (lines[parameter, factor],) = axes.plot(
            xs, values, lw=1.2, label=series_label(parameter, factor), **styles(parameter, factor)
        )
    _log_scale_if_positive(axes, drawn)
    _step_axis(axes, diverged_at_step)
    axes.set_ylabel(f"norm of .{savefield}")
    axes.set_title(f"{extension}: norm per parameter")
    _legend_outside(axes, lines, styles)


def _plot_sample_spread(axes, steps, extension, key, styles, diverged_at_step):
    curves = {}
    for (parameter, factor), (xs, ys) in _curves(steps, extension, key).items():
        spreads = [y if isinstance(y, dict) else {} for y in ys]
        curves[parameter, factor] = (
            xs,
            *(
                [_finite(spread.get(statistic)) for spread in spreads]
                for statistic in ("mean", "min", "max")
            ),
        )
    log = _log_scale_if_positive(
        axes, [v for _, means, lows, highs in curves.values() for v in means + lows + highs]
    )
    alpha = min(0.15, 1.5 / max(len(curves), 1))  # many overlapping bands turn grey
    lines = {}
    for (parameter, factor), (xs, means, lows, highs) in curves.items():
        if log:  # a band down to a zero minimum would cover the panel's lower part
            lows = [low if low > 0 else math.nan for low in lows]
        style = styles(parameter, factor)
        label = f"{series_label(parameter, factor)} (mean)"
        (lines[parameter, factor],) = axes.plot(xs, means, lw=1.2, label=label, **style)
        axes.fill_between(xs, lows, highs, color=style["color"], alpha=alpha, linewidth=0)
    _step_axis(axes, diverged_at_step)
    what = "per-sample norms" if key == "sample_norms" else "per-sample values"
    axes.set_ylabel(what)
    axes.set_title(f"{extension}: {what} (mean, min to max)")
    _legend_outside(axes, lines, styles)


def _log_scale_if_positive(axes, values):
    """Log scale if the positive values are all there is or span decades (a diverging run).

    Zeros (a layer whose quantity vanished) then drop to the bottom edge of the panel.

    Returns:
        bool: Whether the scale is logarithmic.
    """
    finite = [v for v in values if math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if positive and (len(positive) == len(finite) or max(positive) > 1e3 * min(positive)):
        axes.set_yscale("log")
        return True
    return False


def _evaluations_before_divergence(results):
    """How many evaluations of a diverged run are real.

    DeepOBS fills the epochs after the divergence with the first evaluation's values
    (``_abort_routine``); they are the trailing entries equal to the first in every list.
    """
    lists = [results[key] for key in EPOCH_METRICS if results.get(key)]
    if not lists:
        return 0
    count = max(len(values) for values in lists)
    while count > 1 and all(
        len(values) >= count and values[count - 1] == values[0] for values in lists
    ):
        count -= 1
    return count


def _diverged_at_step(results):
    if results.get("status") != "diverged":
        return None
    step = results.get("diverged_at_step")
    return step if _is_int(step) else None


def run_notes(results):
    """What the figure must say about a run besides its curves.

    Args:
        results (dict): The results file's content.

    Returns:
        list[str]: Notes on synthetic data, an interrupted or a diverged run.
    """
    notes = []
    training = results.get("training_params")
    synthetic = results.get("synthetic_data")
    if synthetic is None and isinstance(training, dict):
        synthetic = training.get("synthetic_data")
    if synthetic:
        notes.append("SYNTHETIC DATA: the numbers say nothing about the benchmark")
    status = results.get("status")
    if status == "interrupted":
        completed = results.get("epoch_seconds")
        planned = results.get("num_epochs")
        if isinstance(completed, list) and _is_int(planned):
            notes.append(f"INTERRUPTED after {len(completed)} of {planned} epochs (partial run)")
        else:
            notes.append("INTERRUPTED (partial run)")
    elif status == "diverged":
        step = _diverged_at_step(results)
        where = f" at step {step}" if step is not None else ""
        note = f"DIVERGED{where}: the mini-batch loss became non-finite"
        hidden = _evaluation_count(results) - _evaluations_before_divergence(results)
        if hidden > 0:
            note += f"; the {hidden} evaluations DeepOBS fills in after it are not drawn"
        notes.append(note)
    elif status not in (None, "finished"):
        notes.append(f"status: {status}")
    return notes


def _evaluation_count(results):
    return max((len(results[key]) for key in EPOCH_METRICS if results.get(key)), default=0)


def run_title(results):
    """The figure's first title line: problem, optimizer, hyperparameters and batch size."""
    hyperparameters = results.get("optimizer_hyperparams")
    if isinstance(hyperparameters, dict):
        described = ", ".join(f"{k}={v}" for k, v in hyperparameters.items())
    else:
        described = ""
    return (
        f"{results.get('testproblem')}: {results.get('optimizer_name')} ({described}), "
        f"batch size {results.get('batch_size')}"
    )


def plot_run(results, steps, title=None):
    """Draw a run into a new figure.

    Args:
        results (dict): DeepOBS's results dictionary (as in the results JSON).
        steps (list[dict]): The records of the step log.
        title (str, optional): Figure title; the notes of :func:`run_notes` follow it.

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    diverged_at_step = _diverged_at_step(results)
    evaluations = (
        _evaluations_before_divergence(results)
        if results.get("status") == "diverged"
        else _evaluation_count(results)
    )
    styles = _Styles(steps)
    panels = [lambda ax: _plot_epochs(ax, results, "losses", "loss", evaluations)]
    if results.get("test_accuracies"):
        panels.append(lambda ax: _plot_epochs(ax, results, "accuracies", "accuracy", evaluations))
    if steps:
        panels.append(lambda ax: _plot_step_loss(ax, steps, diverged_at_step))
        extensions = list(dict.fromkeys(e for s in steps for e in s["extensions"]))
        for extension in extensions:
            panels.append(
                lambda ax, e=extension: _plot_norms(ax, steps, e, styles, diverged_at_step)
            )
            for key in ("sample_norms", "sample_values"):
                if _curves(steps, extension, key):
                    panels.append(
                        lambda ax, e=extension, k=key: _plot_sample_spread(
                            ax, steps, e, k, styles, diverged_at_step
                        )
                    )
    columns = 2
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(8 * columns, 4 * rows), squeeze=False, layout="constrained"
    )
    for panel, ax in zip(panels, axes.flat):
        panel(ax)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    heading = "\n".join(([title] if title else []) + run_notes(results))
    if heading:
        figure.suptitle(heading)
    return figure


def main(argv=None):
    """Read a results JSON (and its step log) and save the PNG.

    Args:
        argv (list[str], optional): The arguments (default: the command line).

    Returns:
        int: The exit code: 0, or 2 for a file that cannot be read or written.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results JSON written by the runner")
    parser.add_argument("--steps", help="step log (default: <results stem>.steps.jsonl)")
    parser.add_argument("--output", "-o", help="PNG to write (default: <results stem>.png)")
    args = parser.parse_args(argv)

    results_path = Path(args.results)
    output = Path(args.output) if args.output else results_path.with_suffix(".png")
    steps_path = Path(args.steps) if args.steps else step_log_path(results_path)
    # the runner writes <log>.<pid>-<random>.part (older ones <log>.part), renamed when closed
    unfinished = sorted(
        [*steps_path.parent.glob(glob.escape(steps_path.name) + ".*.part"),
         *steps_path.parent.glob(glob.escape(steps_path.name) + ".part")],
        key=lambda candidate: candidate.stat().st_mtime,
    )  # fmt: skip
    if not args.steps and not steps_path.exists() and unfinished:
        steps_path = unfinished[-1]
    try:
        results = read_results(results_path)
        if args.steps and not steps_path.exists():
            raise FileFormatError(f"{steps_path}: no such file (expected a step log, --steps)")
        steps, incomplete = _read_step_log(steps_path)
        if not output.parent.is_dir():
            raise FileFormatError(f"cannot write {output}: no directory {output.parent}")
        figure = plot_run(results, steps, run_title(results))
        try:
            figure.savefig(output, dpi=100)
        except OSError as error:
            raise FileFormatError(f"cannot write {output}: {error.strerror or error}") from None
        except ValueError as error:  # matplotlib's message for an unknown file extension
            raise FileFormatError(f"cannot write {output}: {error}") from None
        finally:
            plt.close(figure)
    except FileFormatError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    if unfinished and steps_path == unfinished[-1]:
        print(f"Read the unfinished step log {steps_path} (its run has not closed it)")
    if incomplete:
        print(f"{parser.prog}: warning: left out the incomplete last line of {steps_path}",
              file=sys.stderr)  # fmt: skip
    if not steps:
        where = "holds no steps" if steps_path.exists() else "does not exist"
        print(f"The step log {steps_path} {where}: only the per-epoch panels are drawn")
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
