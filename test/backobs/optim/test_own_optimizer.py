"""A researcher's own optimizer in ``backobs run``, by import path and by entry point.

The optimizer classes live in a package that the test session writes (``own_package`` in
``test/conftest.py``); nothing of it ships in BackOBS.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

from backobs import cli, optim
from backobs.optim import registry

SIGN = "own_optim_pkg.opt:SignDescent"
NEWTON = "own_optim_pkg.opt:DiagonalNewton"
TINY = [
    "mnist_logreg",
    "--synthetic-data",
    "--batch_size",
    "8",
    "--num_epochs",
    "1",
    "--steps-per-epoch",
    "3",
    "--eval-batches",
    "1",
]


@pytest.fixture(autouse=True)
def fresh_registry():
    """Resolve every name anew (the tests change sys.path and the installed entry points)."""
    registry._RESOLVED.clear()
    yield
    registry._RESOLVED.clear()


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hyperparameters_come_from_the_signature(own_package):
    spec = optim.resolve_optimizer(SIGN)
    assert spec.folder_name == "SignDescent"
    assert spec.description == (
        "Sign descent: every parameter moves by lr times the sign of its gradient."
    )
    assert spec.hyperparameters == {
        "lr": {"type": float},
        "scale": {"type": float, "default": 1.0},
        "warmup": {"type": int, "default": 0},
        "centered": {"type": bool, "default": False},
        "mode": {"type": str, "default": "plain"},
    }
    assert optim.check_hyperparameters(SIGN, {"lr": 1}) == {
        "lr": 1.0,
        "scale": 1.0,
        "warmup": 0,
        "centered": False,
        "mode": "plain",
    }


def test_declared_hyperparameters_and_their_ranges(own_package):
    spec = optim.resolve_optimizer(NEWTON)
    assert list(spec.hyperparameters) == ["lr", "damping"]
    assert spec.hyperparameters["damping"]["help"] == "added to C"
    with pytest.raises(ValueError, match=r"damping must be in \[0, inf\], got -1.0"):
        optim.check_hyperparameters(NEWTON, {"lr": 0.1, "damping": -1.0})


def test_a_torch_optimizer_by_import_path():
    # Union[float, Tensor] takes float; Optional[bool] = None stays None (torch's "not given")
    spec = optim.resolve_optimizer("torch.optim:SGD")
    assert spec.hyperparameters["lr"]["type"] is float
    assert spec.hyperparameters["nesterov"] == {"type": bool, "default": False}
    assert spec.hyperparameters["foreach"] == {"type": bool, "default": None}
    checked = optim.check_hyperparameters("torch.optim:SGD", {"lr": 0.1, "momentum": 0.5})
    assert checked["lr"] == 0.1 and checked["momentum"] == 0.5 and checked["foreach"] is None


def test_run_writes_results_under_the_class_name(own_package, tmp_path, capsys):
    out = tmp_path / "results"
    code, _, err = run_cli(
        [
            "run",
            *TINY,
            "--optimizer",
            SIGN,
            "--lr",
            "0.01",
            "--warmup",
            "2",
            "--output_dir",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    (path,) = glob.glob(str(out / "mnist_logreg" / "SignDescent" / "*" / "random_seed__42__*.json"))
    with open(path) as file:
        results = json.load(file)
    assert results["optimizer_name"] == "SignDescent"
    assert results["optimizer_hyperparams"] == {
        "lr": 0.01,
        "scale": 1.0,
        "warmup": 2,
        "centered": False,
        "mode": "plain",
    }
    assert len(results["train_losses"]) == 2


def test_the_backward_pass_computes_what_extensions_asks_for(own_package, tmp_path, capsys):
    # DiagonalNewton.step reads p.diag_ggn_exact: without the extension the run would fail
    code, _, err = run_cli(
        ["run", *TINY, "--optimizer", NEWTON, "--lr", "0.1", "--output_dir", str(tmp_path)],
        capsys,
    )
    assert code == 0, err
    (path,) = glob.glob(str(tmp_path / "mnist_logreg" / "DiagonalNewton" / "*" / "*.json"))
    with open(path) as file:
        results = json.load(file)
    assert results["optimizer_hyperparams"] == {"lr": 0.1, "damping": 1.0}
    assert results["status"] == "finished"


def test_help_lists_the_hyperparameters(own_package, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--optimizer", SIGN, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Sign descent: every parameter moves by lr times the sign of its gradient." in text
    for option in (
        "--lr LR (required)",
        "--scale SCALE (default: 1.0)",
        "--warmup WARMUP (default: 0)",
        "--centered",
        "--mode MODE (default: plain)",
    ):
        assert option in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--optimizer", "no_such_pkg.opt:SignDescent", "--lr", "0.1"],
            "module 'no_such_pkg.opt' does not import (ModuleNotFoundError: No module named "
            "'no_such_pkg'); make it importable here: install its package (pip install -e "
            "PATH) or put its folder on PYTHONPATH",
        ),
        (
            ["--optimizer", "own_optim_pkg.opt:Missing", "--lr", "0.1"],
            "module 'own_optim_pkg.opt' has no 'Missing'; its torch.optim.Optimizer "
            "subclasses: DiagonalNewton, SignDescent",
        ),
        (
            ["--optimizer", "own_optim_pkg.opt:helper", "--lr", "0.1"],
            "is not a torch.optim.Optimizer subclass",
        ),
        (["--optimizer", "sign_descent", "--lr", "0.1"], "unknown optimizer 'sign_descent'"),
        (["--optimizer", SIGN], "the following arguments are required: --lr"),
        (["--optimizer", SIGN, "--lr", "0.1", "--beta", "1"], "unrecognized arguments: --beta 1"),
        (["--optimizer", SIGN, "--lr", "0.1", "--warmup", "1.5"], "invalid int value: '1.5'"),
        (
            ["--optimizer", SIGN, "--lr", "-0.1"],
            "optimizer 'own_optim_pkg.opt:SignDescent' rejects the hyperparameters lr=-0.1, "
            "scale=1.0, warmup=0, centered=False, mode='plain': ValueError: lr must be "
            "positive, got -0.1",
        ),
    ],
    ids=[
        "no module",
        "no class",
        "not an optimizer",
        "unknown name",
        "missing",
        "unknown",
        "wrong type",
        "constructor raises",
    ],  # fmt: skip
)
def test_bad_input_is_one_line_and_exit_2(own_package, tmp_path, capsys, argv, message):
    # argparse's own errors leave by SystemExit(2), BackOBS's checks by main's return value
    try:
        code = cli.main(["run", *TINY, *argv, "--output_dir", str(tmp_path)])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith(("backobs run: error: ", "backobs: error: "))
    assert not os.listdir(tmp_path)  # nothing ran


def _install_entry_point(site, name, value):
    dist = site / "own_optim_dist-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: own-optim-dist\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[backobs.optimizers]\n{name} = {value}\n")


def test_an_entry_point_gives_a_short_name(own_package, tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    _install_entry_point(site, "signdescent", SIGN)
    monkeypatch.syspath_prepend(str(site))
    assert "signdescent" in optim.external.entry_points()
    spec = optim.resolve_optimizer("signdescent")
    assert spec.optimizer_class.__name__ == "SignDescent" and spec.folder_name == "SignDescent"
    out = tmp_path / "results"
    code, _, err = run_cli(
        ["run", *TINY, "--optimizer", "signdescent", "--lr", "0.01", "--output_dir", str(out)],
        capsys,
    )
    assert code == 0, err
    assert glob.glob(str(out / "mnist_logreg" / "SignDescent" / "*" / "*.json"))
    registry._RESOLVED.clear()
    with pytest.raises(
        ValueError, match=r"entry point of the group backobs.optimizers \(signdescent\)"
    ):
        optim.resolve_optimizer("nothing_like_it")


def test_the_console_command_finds_a_module_in_the_current_folder(own_package_root):
    # no PYTHONPATH entry for the package: the command puts the current folder on sys.path,
    # as `python -m` does (a console script's sys.path[0] is its own folder)
    command = os.path.join(os.path.dirname(sys.executable), "backobs")
    if not os.path.exists(command):
        pytest.skip(f"no console script {command} (BackOBS not installed into this Python)")
    result = subprocess.run(
        [command, "run", "--optimizer", SIGN, "--help"],
        capture_output=True,
        text=True,
        cwd=own_package_root,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "--warmup WARMUP" in result.stdout
