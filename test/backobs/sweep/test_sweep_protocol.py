"""DeepOBS's choice of the best setting and the final runs, on results files written by hand."""

import json
import os

import pytest
from sweep_files import spec_content, write_spec

from backobs import runs
from backobs.sweep.protocol import choose_best, final_runs
from backobs.sweep.spec import _run_key, load_sweep


def _fake_result(run, valid_accuracies=None, valid_losses=None, status="finished"):
    """A results file as the runner writes it, with the given validation curve."""
    directory = runs.settings_directory(run)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"random_seed__{run.seed}__2026-01-01-00-00-00.json")
    length = len(valid_accuracies if valid_losses is None else valid_losses)
    flat = [1.0] * length
    content = {
        "status": status,
        "random_seed": run.seed,
        "optimizer_hyperparams": run.hyperparams,
        "train_losses": flat,
        "valid_losses": flat if valid_losses is None else list(valid_losses),
        "test_losses": flat,
    }
    if valid_accuracies is not None:
        content.update(
            train_accuracies=flat, valid_accuracies=list(valid_accuracies), test_accuracies=flat
        )
    with open(path, "w") as stream:
        json.dump(content, stream)
    return path


def test_choose_best_by_final_valid_accuracy_or_loss(tmp_path):
    spec = spec_content(
        tmp_path,
        optimizers={"sgd": {"lr": [0.01, 0.1, 1.0]}},
        seeds=[42, 43],
    )
    loaded = load_sweep(write_spec(tmp_path, spec))
    by_hand = {
        # problem, lr -> per seed (valid accuracies or losses over epochs), status
        ("mnist_logreg", 0.01): [([0.1, 0.80], "finished"), ([0.1, 0.70], "finished")],
        # best final accuracy of one seed, but the mean over seeds (0.74) is lower
        ("mnist_logreg", 0.1): [([0.9, 0.95], "finished"), ([0.9, 0.53], "finished")],
        # highest numbers, but one seed diverged: ranks last
        ("mnist_logreg", 1.0): [([0.99, 0.99], "finished"), ([0.99, 0.99], "diverged")],
        ("quadratic_deep", 0.01): [([5.0, 3.0], "finished"), ([5.0, 2.0], "finished")],
        ("quadratic_deep", 0.1): [([5.0, 1.0], "finished"), ([5.0, 1.5], "finished")],
        ("quadratic_deep", 1.0): [([5.0, None], "finished"), ([5.0, 0.1], "finished")],
    }
    paths = {}
    for (problem, lr), per_seed in by_hand.items():
        for seed, (values, status) in zip([42, 43], per_seed):
            run = loaded.make_run(problem, "sgd", {"lr": lr}, seed)
            if problem == "quadratic_deep":
                path = _fake_result(run, valid_losses=values, status=status)
            else:
                path = _fake_result(run, valid_accuracies=values, status=status)
            paths[_run_key(run)] = path
    choices = choose_best(loaded, paths)
    mnist, quadratic = choices["mnist_logreg"]["sgd"], choices["quadratic_deep"]["sgd"]
    assert mnist["hyperparams"] == {"lr": 0.01} and mnist["score"] == pytest.approx(0.75)
    assert mnist["metric"] == "valid_accuracies"
    assert quadratic["hyperparams"] == {"lr": 0.1} and quadratic["score"] == pytest.approx(1.25)
    assert quadratic["metric"] == "valid_losses" and quadratic["better"] == "lower"
    scores = {c["hyperparams"]["lr"]: c["score"] for c in quadratic["candidates"]}
    assert scores[1.0] is None  # a non-finite final loss (null): diverged, never chosen
    assert mnist["settings_directory"] == runs.settings_directory(
        loaded.make_run("mnist_logreg", "sgd", {"lr": 0.01}, 42)
    )
    final = final_runs(loaded, choices, 3)
    assert [(run.problem, run.hyperparams["lr"], run.seed) for run in final] == [
        ("mnist_logreg", 0.01, 42),
        ("mnist_logreg", 0.01, 43),
        ("mnist_logreg", 0.01, 44),
        ("quadratic_deep", 0.1, 42),
        ("quadratic_deep", 0.1, 43),
        ("quadratic_deep", 0.1, 44),
    ]


def test_choose_best_without_any_result_chooses_nothing(tmp_path):
    loaded = load_sweep(write_spec(tmp_path, spec_content(tmp_path, problems=["mnist_logreg"])))
    choices = choose_best(loaded, {})
    assert choices["mnist_logreg"]["sgd"]["hyperparams"] is None
    assert final_runs(loaded, choices, 2) == []
