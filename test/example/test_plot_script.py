"""example/plot.py as a user runs it: a finished, an interrupted and a diverged run, wrong files.

The runs are made by the runner (``example/run.py`` on synthetic data) or written by hand in
the runner's formats (strict JSON: non-finite numbers as ``null``; older logs with
``NaN``/``Infinity``). The script runs in a subprocess; the figure's content is checked on
``plot_run``'s figure.
"""

import glob
import json
import math

import pytest
from example_loader import load_example

plot = load_example("plot")


def strict_loads(text):
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (they are not JSON)."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def results_dict(num_epochs=3, evaluations=4, **extra):
    """A results file's content with ``evaluations`` evaluations."""
    results = {
        "testproblem": "mnist_mlp",
        "optimizer_name": "sgd",
        "optimizer_hyperparams": {"lr": 0.1},
        "batch_size": 8,
        "num_epochs": num_epochs,
        "random_seed": 42,
        "synthetic_data": True,
    }
    for phase, start in (("train", 2.3), ("valid", 2.4), ("test", 2.5)):
        results[f"{phase}_losses"] = [start - 0.1 * i for i in range(evaluations)]
        results[f"{phase}_accuracies"] = [0.1 + 0.1 * i for i in range(evaluations)]
    results["minibatch_train_losses"] = [2.3 - 0.01 * i for i in range(evaluations)]
    results.update(extra)
    return results


def step_record(global_step, layers, loss=None, kfac_norm=1.0):
    """One step-log record with BatchGrad and KFAC on ``layers`` dense layers."""
    grad_batch, kfac = {}, {}
    for layer in range(layers):
        for name, scale in (("weight", 1.0), ("bias", 0.1)):
            size = scale * (1.0 + layer) * (1.0 + 0.1 * global_step)
            grad_batch[f"layer{layer}.{name}"] = {
                "shape": [8, 4, 4] if name == "weight" else [8, 4],
                "norm": 3.0 * size,
                "mean": 0.0,
                "sample_norms": {"mean": size, "std": 0.1, "min": 0.8 * size, "max": 1.3 * size},
            }
        kfac[f"layer{layer}.weight"] = {
            "shape": [[4, 4], [5, 5]],
            "norm": [kfac_norm, 2.0 * layer + 1.0],
            "mean": [0.1, 0.2],
        }
        kfac[f"layer{layer}.bias"] = {"shape": [[4, 4]], "norm": [kfac_norm], "mean": [0.1]}
    return {
        "epoch": global_step // 4,
        "step": global_step % 4,
        "global_step": global_step,
        "loss": 2.3 - 0.01 * global_step if loss is None else loss,
        "extensions": {
            "BatchGrad": {"savefield": "grad_batch", "parameters": grad_batch},
            "KFAC": {"savefield": "kfac", "parameters": kfac},
        },
    }


def write_run(directory, results, records, strict=True, last_newline=True, suffix=""):
    """Write a results file and its step log as the runner does; return the results path."""
    results_path = directory / "random_seed__42__2026-11-26-12-00-00.json"
    results_path.write_text(json.dumps(results, allow_nan=not strict))
    lines = [json.dumps(record, allow_nan=not strict) for record in records]
    text = "\n".join(lines) + ("\n" if last_newline else "")
    log = plot.step_log_path(results_path)
    log.with_name(log.name + suffix).write_text(text)
    return results_path


def assert_plotted(result, png):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Wrote {png}" in result.stdout
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000


def visible_axes(figure):
    return {ax.get_title(): ax for ax in figure.axes if ax.get_visible()}


def series_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("diverged")]


def test_factor_names_and_labels():
    assert plot.factor_names(2) == ("B", "A")
    assert plot.factor_names(1) == ("B",)
    assert plot.factor_names(3) == ("[0]", "[1]", "[2]")
    assert plot.series_label("conv1.weight", "B") == "conv1.weight B"
    assert plot.series_label("conv1.weight", "A") == "conv1.weight A"
    assert plot.series_label("dense.bias") == "dense.bias"
    assert plot.series_label("theta", "[2]") == "theta[2]"


def test_runner_output_is_plotted(run_example, tmp_path):
    run = run_example(
        "run.py", "mnist_logreg", "--lr", 0.1, "--synthetic-data", "--steps-per-epoch", 3,
        "-N", 1, "--log-interval", 0, "--extensions", "BatchGrad", "KFAC",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (results_path,) = glob.glob(str(tmp_path / "results/mnist_logreg/*/*/*[0-9].json"))
    png = tmp_path / "run.png"
    assert_plotted(run_example("plot.py", results_path, "-o", png), png)

    results = plot.read_results(results_path)
    steps = plot.read_step_log(plot.step_log_path(results_path))
    assert [record["global_step"] for record in steps] == list(range(3))
    figure = plot.plot_run(results, steps, plot.run_title(results))
    panels = visible_axes(figure)
    assert list(panels) == [
        "loss per epoch",
        "accuracy per epoch",
        "mini-batch loss per step",
        "BatchGrad: norm per parameter",
        "BatchGrad: per-sample norms (mean, min to max)",
        "KFAC: norm per parameter",
    ]
    kfac_labels = [
        text.get_text() for text in panels["KFAC: norm per parameter"].get_legend().texts
    ]
    assert kfac_labels == ["dense.weight B", "dense.weight A", "dense.bias B"]
    assert "SYNTHETIC DATA" in figure.get_suptitle()
    assert "DIVERGED" not in figure.get_suptitle()
    for title in ("loss per epoch", "mini-batch loss per step"):
        ticks = panels[title].get_xticks()  # 1 epoch, 3 steps: matplotlib's default has 0.25
        assert all(tick == int(tick) for tick in ticks), (title, ticks)


def test_interrupted_run_with_partial_log(run_example, tmp_path):
    results = results_dict(evaluations=2, status="interrupted", epoch_seconds=[0.5])
    records = [step_record(step, layers=2) for step in range(6)]
    results_path = write_run(tmp_path, results, records, last_newline=False)
    log = plot.step_log_path(results_path)
    log.write_text(log.read_text()[:-20])  # the process was killed while writing step 5
    png = tmp_path / "partial.png"
    result = run_example("plot.py", results_path, "-o", png)
    assert_plotted(result, png)
    assert result.stderr.strip() == f"plot.py: warning: left out the incomplete last line of {log}"

    steps = plot.read_step_log(log)
    assert [record["global_step"] for record in steps] == list(range(5))
    figure = plot.plot_run(results, steps, "title")
    assert "INTERRUPTED after 1 of 3 epochs (partial run)" in figure.get_suptitle()
    losses = visible_axes(figure)["loss per epoch"]
    assert [len(line.get_xdata()) for line in losses.get_lines()] == [2, 2, 2]


@pytest.mark.parametrize("suffix", [".4242-0a1b2c3d.part", ".part"], ids=["runner's", "older"])
def test_unfinished_step_log_is_read(run_example, tmp_path, suffix):
    """A run killed before closing its log leaves ``<stem>.steps.jsonl.<pid>-<random>.part``."""
    records = [step_record(step, layers=1) for step in range(3)]
    results_path = write_run(tmp_path, results_dict(), records, suffix=suffix)
    result = run_example("plot.py", results_path)
    assert_plotted(result, results_path.with_suffix(".png"))
    assert "unfinished step log" in result.stdout


def diverged_run(tmp_path, layers):
    """A run that diverged at step 9 in epoch 2 of 4, in the runner's strict format."""
    # DeepOBS fills the evaluations after the divergence with the first one's values
    results = results_dict(num_epochs=4, evaluations=3, status="diverged", diverged_at_step=9)
    results["valid_losses"][2] = None  # non-finite evaluation
    for key in plot.EPOCH_METRICS:
        results[key] += [results[key][0]] * 2
    results["epoch_seconds"] = [0.4, 0.5]
    records = [step_record(step, layers, kfac_norm=10.0**step) for step in range(9)]
    records[6]["loss"] = None
    records[7]["extensions"]["KFAC"]["parameters"]["layer0.weight"]["norm"] = [None, 1.0]
    records[8]["extensions"]["BatchGrad"]["parameters"]["layer1.bias"]["sample_norms"] = {
        "mean": None, "std": None, "min": None, "max": None
    }  # fmt: skip
    records.append({"epoch": 2, "step": 1, "global_step": 9, "loss": None, "extensions": {}})
    results_path = write_run(tmp_path, results, records)
    for line in plot.step_log_path(results_path).read_text().splitlines():
        strict_loads(line)
    strict_loads(results_path.read_text())
    return results_path


def test_diverged_run_is_marked_and_nulls_are_gaps(run_example, tmp_path):
    results_path = diverged_run(tmp_path, layers=12)
    png = tmp_path / "diverged.png"
    result = run_example("plot.py", results_path, "-o", png)
    assert_plotted(result, png)
    assert result.stderr == ""

    results = plot.read_results(results_path)
    figure = plot.plot_run(results, plot.read_step_log(plot.step_log_path(results_path)))
    assert "DIVERGED at step 9" in figure.get_suptitle()
    assert "the 2 evaluations DeepOBS fills in after it are not drawn" in figure.get_suptitle()
    panels = visible_axes(figure)
    for title, ax in panels.items():
        markers = [line for line in ax.get_lines() if line.get_label() == "diverged (step 9)"]
        if title.endswith("per epoch"):
            assert not markers
            assert [len(line.get_xdata()) for line in ax.get_lines()] == [3, 3, 3]
        else:
            assert len(markers) == 1 and list(markers[0].get_xdata()) == [9, 9], title
    valid = panels["loss per epoch"].get_lines()[1]
    assert math.isnan(valid.get_ydata()[2])
    loss = panels["mini-batch loss per step"].get_lines()[0]
    assert list(loss.get_xdata()) == list(range(10))
    assert [math.isnan(y) for y in loss.get_ydata()] == [False] * 6 + [True, False, False, True]
    kfac = {line.get_label(): line for line in series_lines(panels["KFAC: norm per parameter"])}
    assert len(kfac) == 36
    assert math.isnan(kfac["layer0.weight B"].get_ydata()[7])
    assert panels["KFAC: norm per parameter"].get_yscale() == "log"
    # 36 curves: one legend entry per layer and per kind of curve
    legend = [text.get_text() for text in panels["KFAC: norm per parameter"].get_legend().texts]
    kinds = [".weight B", ".weight A", ".bias B", "diverged (step 9)"]
    assert legend == [f"layer{layer}" for layer in range(12)] + kinds

    for title, ax in panels.items():
        lines = series_lines(ax)
        styles = [(line.get_color(), line.get_linestyle()) for line in lines]
        assert len(set(map(str, styles))) == len(styles), title
    grad_batch = series_lines(panels["BatchGrad: norm per parameter"])
    weight_colours = [str(line.get_color()) for line in grad_batch if "weight" in line.get_label()]
    assert len(set(weight_colours)) == 12  # one colour per layer, none repeated


def test_old_log_with_nan_and_infinity(tmp_path):
    """Logs written before the strict format hold ``NaN``/``Infinity``: gaps as well."""
    records = [step_record(step, layers=1) for step in range(4)]
    records[2]["loss"] = math.inf
    records[3]["extensions"]["BatchGrad"]["parameters"]["layer0.weight"]["norm"] = math.nan
    results_path = write_run(tmp_path, results_dict(), records, strict=False)
    assert "Infinity" in plot.step_log_path(results_path).read_text()
    results = plot.read_results(results_path)
    figure = plot.plot_run(results, plot.read_step_log(plot.step_log_path(results_path)))
    panels = visible_axes(figure)
    loss = panels["mini-batch loss per step"].get_lines()[0].get_ydata()
    assert [math.isnan(y) for y in loss] == [False, False, True, False]
    (weight,) = [
        line
        for line in panels["BatchGrad: norm per parameter"].get_lines()
        if line.get_label() == "layer0.weight"
    ]
    assert math.isnan(weight.get_ydata()[3])
    assert figure.get_suptitle() == "SYNTHETIC DATA: the numbers say nothing about the benchmark"


WRONG_RESULTS = {
    "missing": (None, "no such file"),
    "not JSON": ("epoch 1: loss 2.3\n", "is not a results file: not JSON"),
    "empty": ("", "is not a results file: not JSON"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff", "not UTF-8 text"),
    "JSON list": ("[1, 2, 3]", "is not a results file: a JSON list"),
    "other JSON": ('{"loss": 2.3}', "has no testproblem, train_losses, valid_losses"),
    "bad metric": (
        json.dumps(results_dict() | {"train_losses": "2.3"}),
        "train_losses is not a list of numbers",
    ),
}


@pytest.mark.parametrize("case", WRONG_RESULTS)
def test_wrong_results_file_is_one_line(run_example, tmp_path, case):
    content, fragment = WRONG_RESULTS[case]
    path = tmp_path / "random_seed__42__2026.json"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    assert_one_line_error(run_example("plot.py", path), str(path), fragment)
    assert not path.with_suffix(".png").exists()


@pytest.mark.parametrize("records", [1, 3])
def test_step_log_given_as_results_file(run_example, tmp_path, records):
    results_path = write_run(tmp_path, results_dict(), [step_record(s, 1) for s in range(records)])
    log = plot.step_log_path(results_path)
    result = run_example("plot.py", log)
    assert_one_line_error(result, f"{log} is a step log, not a results file", results_path.name)


def test_directory_given_as_results_file(run_example, tmp_path):
    assert_one_line_error(run_example("plot.py", tmp_path), "is a directory")


def test_wrong_step_log_is_one_line(run_example, tmp_path):
    records = [step_record(step, layers=1) for step in range(3)]
    results_path = write_run(tmp_path, results_dict(), records)
    result = run_example("plot.py", results_path, "--steps", results_path)
    assert_one_line_error(result, "is a results file, not a step log")
    result = run_example("plot.py", results_path, "--steps", tmp_path / "nothing.jsonl")
    assert_one_line_error(result, "nothing.jsonl: no such file")

    log = plot.step_log_path(results_path)
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "oops", lines[2]]) + "\n")
    assert_one_line_error(run_example("plot.py", results_path), "line 2 is not JSON")
    log.write_text(lines[0] + '\n{"step": 1}\n')
    assert_one_line_error(run_example("plot.py", results_path), "line 2 is not a step record")
    assert not results_path.with_suffix(".png").exists()


@pytest.mark.parametrize(
    ("output", "fragment"),
    [("missing/run.png", "no directory"), ("run.unknown-format", "cannot write")],
)
def test_unwritable_output_is_one_line(run_example, tmp_path, output, fragment):
    results_path = write_run(tmp_path, results_dict(), [step_record(0, layers=1)])
    result = run_example("plot.py", results_path, "-o", tmp_path / output)
    assert_one_line_error(result, fragment)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("plot.py: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Wrote" not in result.stdout
