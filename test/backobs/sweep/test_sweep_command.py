"""``backobs sweep``'s options, checked before anything runs, and the dry run.

No cluster here (test_sweep_cluster.py has those); these cases are fast.
"""

import os

import pytest
from sweep_files import parse_command_line, spec_content, write_spec

from backobs import runs
from backobs.checks import OptionError
from backobs.sweep import command as sweep_command
from backobs.sweep.execute import MANIFEST_NAME
from backobs.sweep.spec import load_sweep


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
    path = write_spec(tmp_path, spec_content(tmp_path))
    with pytest.raises(OptionError, match=expected):
        sweep_command.command(parse_command_line(path, *options))
    assert not os.path.exists(tmp_path / "results")


def test_environment_scheduler_address_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "not-an-address")
    with pytest.raises(OptionError, match="DASK_SCHEDULER_ADDRESS must be"):
        sweep_command.command(parse_command_line(write_spec(tmp_path, spec_content(tmp_path))))


def test_unreachable_scheduler_is_one_error(tmp_path):
    path = write_spec(tmp_path, spec_content(tmp_path, problems=["mnist_logreg"]))
    # port 9 (discard) on localhost: nothing listens there, the connection is refused
    with pytest.raises(OptionError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        sweep_command.command(parse_command_line(path, "--scheduler", "tcp://127.0.0.1:9"))


def test_dry_run_lists_runs_and_which_are_done(tmp_path, capsys):
    spec = spec_content(
        tmp_path, problems=["mnist_logreg"], optimizers={"sgd": {"lr": [0.01, 0.1]}}
    )
    path = write_spec(tmp_path, spec)
    grid = load_sweep(path).runs()
    outcome = runs.execute(grid[1], verbose=False)  # one run done, for real
    assert sweep_command.command(parse_command_line(path, "--dry-run", "--final-seeds", "3")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"2 runs, 1 done, 1 to run (results in {tmp_path / 'results'})")
    assert lines[1].split() == ["to", "run", "mnist_logreg", "sgd", "lr=0.01", "seed", "42"]
    assert lines[2].split()[:6] == ["done", "mnist_logreg", "sgd", "lr=0.1", "seed", "42"]
    assert lines[2].split()[6] == os.path.relpath(outcome["path"], tmp_path / "results")
    assert "chosen after the grid (1 grid runs to run), then run with seeds 42..44" in lines[3]
    assert not os.path.exists(tmp_path / "results" / MANIFEST_NAME)


def test_package_names_are_their_modules_objects():
    import backobs.sweep as package
    from backobs.sweep import cluster, execute, protocol, spec

    owners = {
        spec: ("Sweep", "load_sweep", "parse_sweep", "FIRST_SEED", "SPEC_KEYS"),
        execute: ("execute_runs", "SweepOutcome", "MANIFEST_NAME"),
        cluster: ("dask_setup",),
        protocol: ("run_sweep", "choose_best", "final_runs", "SUMMARY_NAME"),
        sweep_command: ("add_arguments",),
    }
    for module, names in owners.items():
        for name in names:
            assert getattr(package, name) is getattr(module, name), name
    assert package.command is sweep_command and callable(sweep_command.command)
    assert package.dask_setup.__module__ == "backobs.sweep.cluster"  # the workers' preload
    with pytest.raises(AttributeError, match="no attribute 'report'"):
        package.report  # noqa: B018
