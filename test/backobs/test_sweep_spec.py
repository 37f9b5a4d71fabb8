"""The sweep file: validation before anything runs, grid expansion, DeepOBS's choice, dry run.

No cluster here (test_sweep_cluster.py has those); these cases are fast.
"""

import argparse
import json
import os

import pytest
import yaml

from backobs import runs, sweep
from backobs.runs.options import OptionError

TINY = {
    "batch_size": 4,
    "num_epochs": 1,
    "steps_per_epoch": 2,
    "eval_batches": 2,
    "synthetic_data": True,
}


def _spec(tmp_path, **overrides):
    content = {
        "problems": ["mnist_logreg", "quadratic_deep"],
        "optimizers": {"sgd": {"lr": [0.01, 0.1]}, "kfac": {"lr": [0.01, 0.1], "damping": 0.01}},
        "seeds": [42],
        "output_dir": str(tmp_path / "results"),
        **TINY,
    }
    content.update(overrides)
    return {key: value for key, value in content.items() if value is not _DROP}


_DROP = object()


def _write(tmp_path, content, name="sweep.yaml"):
    path = tmp_path / name
    text = yaml.safe_dump(content, sort_keys=False) if isinstance(content, dict) else content
    path.write_text(text)
    return str(path)


def _args(spec_path, *options):
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    return parser.parse_args([spec_path, *options])


def test_grid_expands_problems_optimizers_settings_seeds(tmp_path):
    loaded = sweep.load_sweep(_write(tmp_path, _spec(tmp_path, seeds=[42, 43])))
    grid = loaded.runs()
    assert len(grid) == 2 * (2 + 2) * 2
    assert len({json.dumps(run.to_dict(), sort_keys=True) for run in grid}) == len(grid)
    first = grid[0]
    assert (first.problem, first.optimizer, first.hyperparams, first.seed) == (
        "mnist_logreg",
        "sgd",
        {"lr": 0.01},
        42,
    )
    assert [run.seed for run in grid[:2]] == [42, 43]  # seeds innermost
    kfac = [run for run in grid if run.optimizer == "kfac"]
    # the fixed damping on every point, the optimizer's other defaults filled in
    assert {run.hyperparams["damping"] for run in kfac} == {0.01}
    assert {run.hyperparams["lr"] for run in kfac} == {0.01, 0.1}
    assert kfac[0].hyperparams["mc_samples"] == 1
    assert all(os.path.isabs(run.output_dir) for run in grid)
    assert all(run.batch_size == 4 and run.synthetic_data for run in grid)


def test_json_file_and_yaml_exponents(tmp_path):
    content = _spec(tmp_path, optimizers={"sgd": {"lr": ["1e-3", 0.1]}}, problems="mnist_logreg")
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(content))
    grid = sweep.load_sweep(str(path)).runs()
    assert [run.hyperparams["lr"] for run in grid] == [0.001, 0.1]
    # YAML 1.1 reads 1e-3 (no dot) as a string; the sweep takes it as the number
    text = "problems: mnist_logreg\noptimizers:\n  sgd: {lr: [1e-3]}\n"
    text += f"synthetic_data: true\noutput_dir: {tmp_path / 'results'}\n"
    assert sweep.load_sweep(_write(tmp_path, text)).runs()[0].hyperparams == {"lr": 0.001}


BAD_SPECS = {
    "unknown key": ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    "problems missing": ({"problems": _DROP}, "problems: missing"),
    "unknown problem": ({"problems": ["mnist_logreg", "mnist_resnet"]}, "'mnist_resnet'"),
    "unsupported problem": ({"problems": ["mnist_vae"]}, "mnist_vae is not supported"),
    "batch norm problem": ({"problems": ["svhn_wrn164"]}, "batch normalization"),
    "empty problems": ({"problems": []}, "problems: an empty list"),
    "duplicate problem": ({"problems": ["mnist_logreg"] * 2}, "listed twice"),
    "unknown optimizer": ({"optimizers": {"lbfgs": {"lr": 0.1}}}, "unknown optimizer 'lbfgs'"),
    "no optimizers": ({"optimizers": {}}, "optimizers: empty"),
    "unknown hyperparameter": (
        {"optimizers": {"sgd": {"lr": 0.1, "momentum": 0.9}}},
        "optimizers.sgd: unknown hyperparameter 'momentum'",
    ),
    "empty grid axis": ({"optimizers": {"sgd": {"lr": []}}}, "optimizers.sgd.lr: an empty list"),
    "missing required hyperparameter": ({"optimizers": {"sgd": None}}, "lr"),
    "negative lr": ({"optimizers": {"sgd": {"lr": [0.1, -1.0]}}}, "must be >= 0"),
    "lr not a number": ({"optimizers": {"sgd": {"lr": "fast"}}}, "must be a number"),
    "zero damping": ({"optimizers": {"kfac": {"lr": 0.1, "damping": 0}}}, "damping must be > 0"),
    "bad kfac_approx": (
        {"optimizers": {"kfac": {"lr": 0.1, "kfac_approx": "sideways"}}},
        "kfac_approx must be one of",
    ),
    "batch size zero": ({"batch_size": 0}, "batch_size: must be a positive integer, got 0"),
    "batch size grid": ({"batch_size": [64, 128]}, "batch_size: must be a single value"),
    "negative seed": ({"seeds": [-1]}, "seeds: a seed must be an integer"),
    "synthetic not bool": ({"synthetic_data": "yes"}, "synthetic_data: must be true or false"),
    "unknown extension": ({"extensions": ["BatchGrad", "Curvature"]}, "'Curvature'"),
    "problems as mapping": ({"problems": {"mnist_logreg": 1}}, "a single number or name"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_one_clear_error(tmp_path, case):
    overrides, expected = BAD_SPECS[case]
    path = _write(tmp_path, _spec(tmp_path, **overrides))
    with pytest.raises(OptionError) as error:
        sweep.load_sweep(path)
    message = str(error.value)
    assert expected in message
    assert message.startswith(path) and "\n" not in message
    assert not os.path.exists(tmp_path / "results")  # nothing ran, nothing was written


def test_bad_files(tmp_path):
    with pytest.raises(OptionError, match="does not exist"):
        sweep.load_sweep(str(tmp_path / "missing.yaml"))
    with pytest.raises(OptionError, match=r"not valid YAML or JSON \(line 2"):
        sweep.load_sweep(_write(tmp_path, "problems: [mnist_logreg\noptimizers: {sgd: {lr: 1}"))
    with pytest.raises(OptionError, match="must be a mapping"):
        sweep.load_sweep(_write(tmp_path, "- mnist_logreg\n"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OptionError, match="output_dir: .* is a file"):
        sweep.load_sweep(_write(tmp_path, _spec(tmp_path, output_dir=str(blocker / "results"))))
    with pytest.raises(OptionError, match="data_dir: .* does not exist"):
        spec = _spec(tmp_path, synthetic_data=False, data_dir=str(tmp_path / "no_data"))
        sweep.load_sweep(_write(tmp_path, spec))


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--workers", "0"], "--workers must be a positive integer, got 0"),
        (["--final-seeds", "-2"], "--final-seeds must be a positive integer, got -2"),
        (["--scheduler", "localhost"], "--scheduler must be a scheduler address"),
        (["--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "--workers sets the size"),
    ],
)
def test_bad_options_fail_before_anything_runs(tmp_path, options, expected):
    path = _write(tmp_path, _spec(tmp_path))
    with pytest.raises(OptionError, match=expected):
        sweep.command(_args(path, *options))
    assert not os.path.exists(tmp_path / "results")


def test_environment_scheduler_address_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "not-an-address")
    with pytest.raises(OptionError, match="DASK_SCHEDULER_ADDRESS must be"):
        sweep.command(_args(_write(tmp_path, _spec(tmp_path))))


def test_unreachable_scheduler_is_one_error(tmp_path):
    path = _write(tmp_path, _spec(tmp_path, problems=["mnist_logreg"]))
    # port 9 (discard) on localhost: nothing listens there, the connection is refused
    with pytest.raises(OptionError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        sweep.command(_args(path, "--scheduler", "tcp://127.0.0.1:9"))


def test_dry_run_lists_runs_and_which_are_done(tmp_path, capsys):
    spec = _spec(tmp_path, problems=["mnist_logreg"], optimizers={"sgd": {"lr": [0.01, 0.1]}})
    path = _write(tmp_path, spec)
    grid = sweep.load_sweep(path).runs()
    outcome = runs.execute(grid[1], verbose=False)  # one run done, for real
    assert sweep.command(_args(path, "--dry-run", "--final-seeds", "3")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"2 runs, 1 done, 1 to run (results in {tmp_path / 'results'})")
    assert lines[1].split() == ["to", "run", "mnist_logreg", "sgd", "lr=0.01", "seed", "42"]
    assert lines[2].split()[:6] == ["done", "mnist_logreg", "sgd", "lr=0.1", "seed", "42"]
    assert lines[2].split()[6] == os.path.relpath(outcome["path"], tmp_path / "results")
    assert "chosen after the grid (1 grid runs to run), then run with seeds 42..44" in lines[3]
    assert not os.path.exists(tmp_path / "results" / sweep.MANIFEST_NAME)


# DeepOBS's choice, on results files written by hand ------------------------------------


def _fake_result(run, valid_accuracies=None, valid_losses=(1.0,), status="finished"):
    directory = runs.settings_directory(run)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"random_seed__{run.seed}__2026-01-01-00-00-00.json")
    content = {"status": status, "valid_losses": list(valid_losses)}
    if valid_accuracies is not None:
        content["valid_accuracies"] = list(valid_accuracies)
    with open(path, "w") as stream:
        json.dump(content, stream)
    return path


def test_choose_best_by_final_valid_accuracy_or_loss(tmp_path):
    spec = _spec(
        tmp_path,
        optimizers={"sgd": {"lr": [0.01, 0.1, 1.0]}},
        seeds=[42, 43],
    )
    loaded = sweep.load_sweep(_write(tmp_path, spec))
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
            paths[sweep._run_key(run)] = path
    choices = sweep.choose_best(loaded, paths)
    mnist, quadratic = choices["mnist_logreg"]["sgd"], choices["quadratic_deep"]["sgd"]
    assert mnist["hyperparams"] == {"lr": 0.01} and mnist["score"] == pytest.approx(0.75)
    assert mnist["metric"] == "valid_accuracies"
    assert quadratic["hyperparams"] == {"lr": 0.1} and quadratic["score"] == pytest.approx(1.25)
    assert quadratic["metric"] == "valid_losses" and quadratic["better"] == "lower"
    scores = {c["hyperparams"]["lr"]: c["score"] for c in quadratic["candidates"]}
    assert scores[1.0] is None  # a non-finite final loss (null) ranks last
    assert mnist["settings_directory"] == runs.settings_directory(
        loaded.make_run("mnist_logreg", "sgd", {"lr": 0.01}, 42)
    )
    final = sweep.final_runs(loaded, choices, 3)
    assert [(run.problem, run.hyperparams["lr"], run.seed) for run in final] == [
        ("mnist_logreg", 0.01, 42),
        ("mnist_logreg", 0.01, 43),
        ("mnist_logreg", 0.01, 44),
        ("quadratic_deep", 0.1, 42),
        ("quadratic_deep", 0.1, 43),
        ("quadratic_deep", 0.1, 44),
    ]


def test_choose_best_without_any_result_chooses_nothing(tmp_path):
    loaded = sweep.load_sweep(_write(tmp_path, _spec(tmp_path, problems=["mnist_logreg"])))
    choices = sweep.choose_best(loaded, {})
    assert choices["mnist_logreg"]["sgd"]["hyperparams"] is None
    assert sweep.final_runs(loaded, choices, 2) == []
