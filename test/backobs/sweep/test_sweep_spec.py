"""The sweep file: validation before anything runs, grid expansion.

No cluster here (test_sweep_cluster.py has those); these cases are fast.
"""

import json
import os

import pytest
from sweep_files import DROP, spec_content, write_spec

from backobs.checks import OptionError
from backobs.sweep.spec import load_sweep


def test_grid_expands_problems_optimizers_settings_seeds(tmp_path):
    loaded = load_sweep(write_spec(tmp_path, spec_content(tmp_path, seeds=[42, 43])))
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
    assert all(run.data_loader == "tensor" and run.step_log_interval is None for run in grid)


def test_data_loader_and_step_log_interval_reach_every_run(tmp_path):
    content = spec_content(tmp_path, data_loader="deepobs", step_log_interval=5)
    grid = load_sweep(write_spec(tmp_path, content)).runs()
    assert {(run.data_loader, run.step_log_interval) for run in grid} == {("deepobs", 5)}


def test_json_file_and_yaml_exponents(tmp_path):
    content = spec_content(
        tmp_path, optimizers={"sgd": {"lr": ["1e-3", 0.1]}}, problems="mnist_logreg"
    )
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(content))
    grid = load_sweep(str(path)).runs()
    assert [run.hyperparams["lr"] for run in grid] == [0.001, 0.1]
    # YAML 1.1 reads 1e-3 (no dot) as a string; the sweep takes it as the number
    text = "problems: mnist_logreg\noptimizers:\n  sgd: {lr: [1e-3]}\n"
    text += f"synthetic_data: true\noutput_dir: {tmp_path / 'results'}\n"
    assert load_sweep(write_spec(tmp_path, text)).runs()[0].hyperparams == {"lr": 0.001}


def test_a_problem_with_grids_of_its_own(tmp_path):
    # mnist_logreg takes the file's grids; quadratic_deep replaces kfac's damping (0.01) by
    # three values and keeps its lr list: 2 sgd + 2 kfac runs, then 2 sgd + 2 * 3 kfac runs.
    problems = {
        "mnist_logreg": None,
        "quadratic_deep": {"optimizers": {"kfac": {"damping": [0.1, 1.0, 10.0]}}},
    }
    loaded = load_sweep(write_spec(tmp_path, spec_content(tmp_path, problems=problems)))
    grid = loaded.runs()
    assert len(grid) == (2 + 2) + (2 + 2 * 3)
    points = {
        problem: [
            (run.optimizer, run.hyperparams["lr"], run.hyperparams.get("damping"))
            for run in grid
            if run.problem == problem
        ]
        for problem in problems
    }
    assert points["mnist_logreg"] == [
        ("sgd", 0.01, None), ("sgd", 0.1, None), ("kfac", 0.01, 0.01), ("kfac", 0.1, 0.01),
    ]  # fmt: skip
    assert points["quadratic_deep"] == [
        ("sgd", 0.01, None), ("sgd", 0.1, None),
        ("kfac", 0.01, 0.1), ("kfac", 0.01, 1.0), ("kfac", 0.01, 10.0),
        ("kfac", 0.1, 0.1), ("kfac", 0.1, 1.0), ("kfac", 0.1, 10.0),
    ]  # fmt: skip
    assert loaded.axes("kfac", "quadratic_deep") == (
        ("lr", (0.01, 0.1)),
        ("damping", (0.1, 1.0, 10.0)),
    )
    assert loaded.axes("kfac") == loaded.axes("kfac", "mnist_logreg")
    # A list of problems still works, as does a mapping without own grids.
    plain = load_sweep(write_spec(tmp_path, spec_content(tmp_path), name="plain.yaml"))
    mapped = spec_content(tmp_path, problems={"mnist_logreg": None, "quadratic_deep": {}})
    same = load_sweep(write_spec(tmp_path, mapped, name="mapped.yaml"))
    assert same.runs() == plain.runs()


def test_the_final_seeds_choice_ranks_a_problem_on_its_own_grid(tmp_path):
    from backobs.sweep.protocol import choose_best

    problems = {"quadratic_deep": {"optimizers": {"sgd": {"lr": [0.5, 1.0, 2.0]}}}}
    loaded = load_sweep(write_spec(tmp_path, spec_content(tmp_path, problems=problems)))
    choices = choose_best(loaded, {})
    candidates = choices["quadratic_deep"]["sgd"]["candidates"]
    assert [candidate["hyperparams"]["lr"] for candidate in candidates] == [0.5, 1.0, 2.0]


BAD_SPECS = {
    "unknown key": ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    "problems missing": ({"problems": DROP}, "problems: missing"),
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
    "problem entry not a mapping": (
        {"problems": {"mnist_logreg": 1}},
        "problems.mnist_logreg: must be null or a mapping with the key optimizers, got 1",
    ),
    "empty problems mapping": ({"problems": {}}, "problems: an empty mapping"),
    "unknown problem in a mapping": ({"problems": {"mnist_resnet": None}}, "'mnist_resnet'"),
    "unknown key of a problem": (
        {"problems": {"mnist_logreg": {"optimisers": {}}}},
        "problems.mnist_logreg: unknown key 'optimisers'; a problem's entry has the key optimizers",
    ),
    "problem's optimizers not a mapping": (
        {"problems": {"mnist_logreg": {"optimizers": ["kfac"]}}},
        "problems.mnist_logreg.optimizers: must be a mapping from optimizer name",
    ),
    "problem's optimizer not in the file": (
        {"problems": {"mnist_logreg": {"optimizers": {"adam": {"lr": 0.1}}}}},
        "problems.mnist_logreg.optimizers: 'adam' is not one of the file's optimizers (sgd, "
        "kfac); a problem can only change their grids: add it to optimizers",
    ),
    "problem's unknown hyperparameter": (
        {"problems": {"mnist_logreg": {"optimizers": {"sgd": {"momentum": [0.9]}}}}},
        "problems.mnist_logreg.optimizers.sgd: unknown hyperparameter 'momentum'; sgd has lr",
    ),
    "problem's empty axis": (
        {"problems": {"mnist_logreg": {"optimizers": {"kfac": {"damping": []}}}}},
        "problems.mnist_logreg.optimizers.kfac.damping: an empty list",
    ),
    "problem's bad value": (
        {"problems": {"mnist_logreg": {"optimizers": {"kfac": {"damping": [1, 0]}}}}},
        "problems.mnist_logreg.optimizers.kfac: hyperparameter damping must be > 0, got 0.0",
    ),
    "step log interval zero": ({"step_log_interval": 0}, "step_log_interval: must be a positive"),
    "unknown data loader": ({"data_loader": "pil"}, "'pil' is not a data loader; choose one"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_one_clear_error(tmp_path, case):
    overrides, expected = BAD_SPECS[case]
    path = write_spec(tmp_path, spec_content(tmp_path, **overrides))
    with pytest.raises(OptionError) as error:
        load_sweep(path)
    message = str(error.value)
    assert expected in message
    assert message.startswith(path) and "\n" not in message
    assert not os.path.exists(tmp_path / "results")  # nothing ran, nothing was written


def test_bad_files(tmp_path):
    with pytest.raises(OptionError, match="does not exist"):
        load_sweep(str(tmp_path / "missing.yaml"))
    with pytest.raises(OptionError, match=r"not valid YAML or JSON \(line 2"):
        load_sweep(write_spec(tmp_path, "problems: [mnist_logreg\noptimizers: {sgd: {lr: 1}"))
    with pytest.raises(OptionError, match="must be a mapping"):
        load_sweep(write_spec(tmp_path, "- mnist_logreg\n"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OptionError, match="output_dir: .* is a file"):
        load_sweep(
            write_spec(tmp_path, spec_content(tmp_path, output_dir=str(blocker / "results")))
        )
    with pytest.raises(OptionError, match="data_dir: .* does not exist"):
        spec = spec_content(tmp_path, synthetic_data=False, data_dir=str(tmp_path / "no_data"))
        load_sweep(write_spec(tmp_path, spec))
