"""``--final-seeds``'s choice is the report's ranking rule, on results files written by hand.

The cases are those where the sweep's former rule (the mean final validation accuracy, a
fixed list of problems without accuracy) chose another setting than ``backobs report``.
"""

import json
import os

import pytest

from backobs import report, runs, sweep
from backobs.sweep.spec import _run_key


def make_sweep(tmp_path, problems, optimizers, seeds=(42,)):
    return sweep.parse_sweep(
        {
            "problems": list(problems),
            "optimizers": optimizers,
            "seeds": list(seeds),
            "num_epochs": 1,
            "batch_size": 4,
            "synthetic_data": True,
            "output_dir": str(tmp_path / "results"),
        },
        source="test",
    )


def write_result(run, valid_loss, valid_accuracy=None, status="finished"):
    """A DeepOBS results file of ``run`` with the given final validation values."""
    data = {
        "optimizer_hyperparams": run.hyperparams,
        "random_seed": run.seed,
        "num_epochs": 1,
        "status": status,
        "train_losses": [2.0, 1.0],
        "valid_losses": [2.0, valid_loss],
        "test_losses": [2.0, valid_loss],
        "minibatch_train_losses": [2.0, 1.5, 1.0],
    }
    if valid_accuracy is not None:
        data.update(
            train_accuracies=[0.1, 0.5],
            valid_accuracies=[0.1, valid_accuracy],
            test_accuracies=[0.1, valid_accuracy],
        )
    directory = runs.settings_directory(run)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"random_seed__{run.seed}__2026-12-06-12-00-00.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file)
    return path


def write_grid(the_sweep, values):
    """``values``: ``(problem, lr) -> (valid_loss, valid_accuracy[, status])`` for sgd."""
    paths = {}
    for (problem, lr), value in values.items():
        for seed in the_sweep.seeds:
            run = the_sweep.make_run(
                problem, "sgd", the_sweep.hyperparameter_settings("sgd")[0] | {"lr": lr}, seed
            )
            paths[_run_key(run)] = write_result(run, *value)
    return paths


def report_best(the_sweep, problem):
    results = report.read_results(the_sweep.output_dir, warn=lambda message: None)
    return report.build_report(results)[problem].best("sgd").setting.hyperparams["lr"]


def test_a_tie_in_accuracy_is_broken_by_the_loss(tmp_path):
    # the former rule took the first of the tied settings (lr 0.01); the report, lr 0.1
    the_sweep = make_sweep(tmp_path, ["mnist_logreg"], {"sgd": {"lr": [0.01, 0.1]}})
    paths = write_grid(
        the_sweep, {("mnist_logreg", 0.01): (0.9, 0.75), ("mnist_logreg", 0.1): (0.4, 0.75)}
    )
    choice = sweep.choose_best(the_sweep, paths)["mnist_logreg"]["sgd"]
    assert choice["hyperparams"]["lr"] == 0.1 == report_best(the_sweep, "mnist_logreg")
    assert choice["metric"] == "valid_accuracies"
    assert choice["better"] == "higher"
    assert choice["score"] == pytest.approx(0.75)
    assert [candidate["rank"] for candidate in choice["candidates"]] == [2, 1]


def test_runs_without_accuracy_are_ranked_by_the_loss(tmp_path):
    # DeepOBS leaves the accuracies out of a problem that has none; the former rule knew only
    # a fixed list of such problems and scored the others' missing accuracy as 0 (all tied)
    the_sweep = make_sweep(tmp_path, ["mnist_logreg"], {"sgd": {"lr": [0.01, 0.1, 1.0]}})
    paths = write_grid(
        the_sweep,
        {
            ("mnist_logreg", 0.01): (0.9,),
            ("mnist_logreg", 0.1): (0.2,),
            ("mnist_logreg", 1.0): (0.5,),
        },
    )
    choice = sweep.choose_best(the_sweep, paths)["mnist_logreg"]["sgd"]
    assert choice["hyperparams"]["lr"] == 0.1 == report_best(the_sweep, "mnist_logreg")
    assert choice["metric"] == "valid_losses"
    assert choice["better"] == "lower"
    assert choice["score"] == pytest.approx(0.2)


def test_a_diverged_or_incomplete_setting_is_not_chosen(tmp_path):
    the_sweep = make_sweep(
        tmp_path, ["mnist_logreg"], {"sgd": {"lr": [0.01, 0.1, 1.0]}}, seeds=(42, 43)
    )
    paths = write_grid(
        the_sweep,
        {
            ("mnist_logreg", 0.01): (0.9, 0.6),
            ("mnist_logreg", 0.1): (0.1, 0.9, "diverged"),
            ("mnist_logreg", 1.0): (0.3, 0.95),
        },
    )
    # lr 1.0, the best, lost its seed 43: it is not ranked, and lr 0.1 diverged
    missing = the_sweep.make_run(
        "mnist_logreg", "sgd", the_sweep.hyperparameter_settings("sgd")[2], 43
    )
    del paths[_run_key(missing)]
    choice = sweep.choose_best(the_sweep, paths)["mnist_logreg"]["sgd"]
    assert choice["hyperparams"]["lr"] == 0.01
    ranks = {c["hyperparams"]["lr"]: c["rank"] for c in choice["candidates"]}
    assert ranks == {0.01: 1, 0.1: 2, 1.0: None}
    assert choice["settings_directory"] == runs.settings_directory(
        the_sweep.make_run("mnist_logreg", "sgd", the_sweep.hyperparameter_settings("sgd")[0], 42)
    )


def test_no_choice_when_every_setting_diverged(tmp_path):
    the_sweep = make_sweep(tmp_path, ["mnist_logreg"], {"sgd": {"lr": [0.01, 0.1]}})
    paths = write_grid(
        the_sweep,
        {
            ("mnist_logreg", 0.01): (0.9, 0.6, "diverged"),
            ("mnist_logreg", 0.1): (0.1, 0.9, "diverged"),
        },
    )
    choice = sweep.choose_best(the_sweep, paths)["mnist_logreg"]["sgd"]
    assert choice["hyperparams"] is None and choice["score"] is None
    assert sweep.final_runs(the_sweep, {"mnist_logreg": {"sgd": choice}}, 3) == []
