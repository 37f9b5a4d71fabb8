"""A sweep with a researcher's own optimizer beside sgd, on a real Dask cluster, then the report.

The workers are subprocesses (a scheduler and two workers, stopped by their pids) that see
the researcher's package through their ``PYTHONPATH``; a cluster whose workers do not see it
records the runs as failed, with the reason, and the sweep goes on.
"""

import argparse
import glob
import json
import os

import pytest
import yaml
from dask_processes import _cluster
from sweep_files import parse_command_line, read_manifest

from backobs import report, sweep
from backobs.checks import OptionError
from backobs.optim import registry
from backobs.sweep import command as sweep_command

SIGN = "own_optim_pkg.opt:SignDescent"


@pytest.fixture(autouse=True)
def fresh_registry():
    registry._RESOLVED.clear()
    yield
    registry._RESOLVED.clear()


def _spec(tmp_path, optimizers, output_dir):
    content = {
        "problems": ["mnist_logreg"],
        "optimizers": optimizers,
        "seeds": [42],
        "batch_size": 4,
        "num_epochs": 1,
        "steps_per_epoch": 2,
        "eval_batches": 1,
        "synthetic_data": True,
        "output_dir": str(output_dir),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return str(path)


def test_a_sweep_with_an_own_optimizer_on_a_cluster_then_the_report(own_package, tmp_path, capsys):
    output_dir = tmp_path / "results"
    spec = _spec(
        tmp_path,
        {"sgd": {"lr": [0.01, 0.1]}, SIGN: {"lr": [0.001, 0.01], "warmup": 3}},
        output_dir,
    )
    with _cluster(tmp_path, {"PYTHONPATH": os.environ["PYTHONPATH"]}) as cluster:
        assert sweep_command.command(parse_command_line(spec, "--scheduler", cluster.address)) == 0
    records = read_manifest(output_dir)
    assert len(records) == 4 and {record["status"] for record in records} == {"finished"}
    assert {record["worker"] for record in records} <= set(cluster.worker_pids)
    own = sorted(glob.glob(str(output_dir / "mnist_logreg" / "SignDescent" / "*" / "*.json")))
    assert len(own) == 2
    for path in own:
        with open(path) as file:
            hyperparams = json.load(file)["optimizer_hyperparams"]
        assert hyperparams["warmup"] == 3 and hyperparams["mode"] == "plain"

    capsys.readouterr()
    reports = report.build_report(report.read_results(str(output_dir)))
    assert set(reports["mnist_logreg"].rankings) == {"sgd", "SignDescent"}
    assert len(reports["mnist_logreg"].rankings["SignDescent"]) == 2
    out = tmp_path / "report"
    parser = argparse.ArgumentParser()
    report.command.add_arguments(parser)
    assert report.command.command(parser.parse_args([str(output_dir), "-o", str(out)])) == 0
    table = capsys.readouterr().out
    assert "| mnist_logreg | SignDescent |" in table and "| mnist_logreg | sgd |" in table


def test_workers_that_cannot_import_it_record_failed_runs(own_package, tmp_path, capsys):
    output_dir = tmp_path / "results"
    spec = _spec(tmp_path, {"sgd": {"lr": 0.1}, SIGN: {"lr": 0.01}}, output_dir)
    others = [p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p != str(own_package)]
    with _cluster(tmp_path, {"PYTHONPATH": os.pathsep.join(others)}) as cluster:
        code = sweep_command.command(parse_command_line(spec, "--scheduler", cluster.address))
    assert code == 1
    by_optimizer = {record["run"]["optimizer"]: record for record in read_manifest(output_dir)}
    assert by_optimizer["sgd"]["status"] == "finished"
    failed = by_optimizer[SIGN]
    assert failed["status"] == "failed"
    assert "module 'own_optim_pkg.opt' does not import" in failed["error"]
    assert "PYTHONPATH" in failed["error"]


def test_two_classes_of_one_name_are_refused(own_package, tmp_path):
    spec = _spec(
        tmp_path,
        {SIGN: {"lr": 0.1}, "own_optim_pkg.other:SignDescent": {"lr": 0.1}},
        tmp_path / "results",
    )
    with pytest.raises(OptionError, match="different classes named 'SignDescent'"):
        sweep.load_sweep(spec)


def test_a_bad_setting_is_found_before_the_first_run(own_package, tmp_path):
    spec = _spec(tmp_path, {SIGN: {"lr": [0.1, -1.0]}}, tmp_path / "results")
    with pytest.raises(OptionError, match="rejects the hyperparameters lr=-1.0"):
        sweep.load_sweep(spec)
    assert not os.path.exists(tmp_path / "results")
