"""``backobs report`` on results folders written here: by hand (exact numbers) and by runners.

The hand-written folder holds numbers whose best settings, means, standard deviations,
medians and quartiles are worked out in the comments; the runner folders come from
BackOBS's runner and from DeepOBS's own ``StandardRunner``.
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from backobs import report
from backobs.runs.options import OptionError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def parse(*arguments):
    parser = argparse.ArgumentParser(prog="backobs report")
    report.add_arguments(parser)
    return parser.parse_args([str(argument) for argument in arguments])


def write_result(root, problem, optimizer, hyperparams, seed, file_name=None, **metrics):
    """A results file as the runner writes it; metrics not given are harmless defaults."""
    data = {
        "testproblem": problem,
        "batch_size": 8,
        "num_epochs": 2,
        "random_seed": seed,
        "weight_decay": None,
        "optimizer_name": optimizer,
        "optimizer_hyperparams": hyperparams,
        "training_params": {"synthetic_data": True},
        "train_losses": [2.0, 1.0, 0.5],
        "valid_losses": [2.0, 1.0, 0.5],
        "test_losses": [2.0, 1.0, 0.5],
        "minibatch_train_losses": [2.0, 1.5, 1.0, 0.7],
        "train_accuracies": [0.1, 0.5, 0.9],
        "valid_accuracies": [0.1, 0.5, 0.9],
        "test_accuracies": [0.1, 0.5, 0.9],
        "status": "finished",
        "diverged_at_step": None,
        "synthetic_data": True,
    }
    data.update(metrics)
    data = {key: value for key, value in data.items() if value is not ...}
    setting = "num_epochs__2__batch_size__8__" + "__".join(
        f"{name}__{value:.0e}" for name, value in hyperparams.items()
    )
    directory = os.path.join(root, problem, optimizer, setting)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, file_name or f"random_seed__{seed}__2026-01-01-00-00-00.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file)  # NaN as NaN, as DeepOBS writes it
    return path


def write_clean_folder(root):
    """mnist_logreg with two optimizers; every number chosen to be checked by hand."""
    # sgd, lr=0.1: final valid accuracy (0.8 + 0.9) / 2 = 0.85; best epoch is the last.
    # test accuracy final 0.7, 0.8 -> 0.75 ± 0.05; test loss 1, 2 -> 1.5 ± 0.5;
    # seconds per epoch: seed 1 (1 + 3) / 2 = 2, seed 2 (2 + 2) / 2 = 2 -> 2 ± 0.
    for seed, valid, test_acc, test_loss, seconds in (
        (1, 0.8, 0.7, 1.0, [1.0, 3.0]),
        (2, 0.9, 0.8, 2.0, [2.0, 2.0]),
    ):
        write_result(
            root, "mnist_logreg", "sgd", {"lr": 0.1}, seed,
            valid_accuracies=[0.1, valid - 0.3, valid],
            test_accuracies=[0.1, 0.3, test_acc],
            test_losses=[3.0, 2.5, test_loss],
            epoch_seconds=seconds,
        )  # fmt: skip
    # sgd, lr=0.01: final valid accuracy (0.7 + 0.8) / 2 = 0.75 < 0.85, but its best epoch
    # (the middle one, 0.95) beats lr=0.1's best (0.85): --mode best picks it.
    for seed, valid in ((1, 0.7), (2, 0.8)):
        write_result(
            root, "mnist_logreg", "sgd", {"lr": 0.01}, seed,
            valid_accuracies=[0.1, 0.95, valid], epoch_seconds=[2.0, 2.0],
        )  # fmt: skip
    # kfac, lr=1, damping=0.01: 3 seeds, final valid accuracy 0.9 each.
    # test accuracy final 0.8, 0.9, 1.0: mean 0.9, std sqrt((0.01 + 0 + 0.01) / 3);
    # median 0.9, quartiles 0.85 and 0.95 (linear interpolation).
    # seconds per epoch 6 -> 3 times sgd's 2.
    for seed, test_acc in ((1, 0.8), (2, 0.9), (3, 1.0)):
        write_result(
            root, "mnist_logreg", "kfac", {"lr": 1.0, "damping": 0.01}, seed,
            valid_accuracies=[0.1, 0.5, 0.9], test_accuracies=[0.1, 0.5, test_acc],
            epoch_seconds=[6.0, 6.0],
        )  # fmt: skip
    # kfac, lr=0.1, damping=0.01: final valid accuracy 0.6 (and 0.6 at its best epoch).
    for seed in (1, 2, 3):
        write_result(
            root, "mnist_logreg", "kfac", {"lr": 0.1, "damping": 0.01}, seed,
            valid_accuracies=[0.1, 0.6, 0.6], epoch_seconds=[6.0, 6.0],
        )  # fmt: skip


@pytest.fixture
def clean_folder(tmp_path):
    root = tmp_path / "results"
    write_clean_folder(str(root))
    return root


def by_optimizer(table):
    return {row["optimizer"]: row for row in table.to_dict("records")}


def hyperparams_by_rank(reports, problem, optimizer):
    return [item.setting.hyperparams for item in reports[problem].rankings[optimizer]]


def test_best_setting_by_final_validation_accuracy(clean_folder):
    reports = report.build_report(report.read_results(str(clean_folder)))
    assert reports["mnist_logreg"].metric == "valid_accuracies"
    assert hyperparams_by_rank(reports, "mnist_logreg", "sgd") == [{"lr": 0.1}, {"lr": 0.01}]
    assert hyperparams_by_rank(reports, "mnist_logreg", "kfac") == [
        {"lr": 1.0, "damping": 0.01},
        {"lr": 0.1, "damping": 0.01},
    ]
    best = reports["mnist_logreg"].best("sgd")
    assert best.score == pytest.approx(0.85) and best.score_spread == pytest.approx(0.05)


def test_mode_best_ranks_by_the_best_epoch(clean_folder):
    reports = report.build_report(report.read_results(str(clean_folder)), mode="best")
    assert hyperparams_by_rank(reports, "mnist_logreg", "sgd") == [{"lr": 0.01}, {"lr": 0.1}]
    assert reports["mnist_logreg"].best("sgd").score == pytest.approx(0.95)


def test_mode_most_puts_the_setting_rerun_with_more_seeds_first(tmp_path):
    # DeepOBS's protocol: a one-seed sweep, then the chosen setting with more seeds, whose
    # mean (0.8) may end below another setting's single value (0.9).
    write_result(str(tmp_path), "p_x", "sgd", {"lr": 0.1}, 42, valid_accuracies=[0.1, 0.5, 0.9])
    for seed in (42, 43, 44):
        write_result(str(tmp_path), "p_x", "sgd", {"lr": 0.2}, seed,
                     valid_accuracies=[0.1, 0.5, 0.8])  # fmt: skip
    results = report.read_results(str(tmp_path))
    final = report.build_report(results)["p_x"].rankings["sgd"]
    assert [item.setting.hyperparams for item in final] == [{"lr": 0.1}, {"lr": 0.2}]
    assert final[0].notes == ["1 of 3 seeds"]
    most = report.build_report(results, mode="most")["p_x"].rankings["sgd"]
    assert [item.setting.hyperparams for item in most] == [{"lr": 0.2}, {"lr": 0.1}]
    assert most[0].score == pytest.approx(0.8)
    summary = report.summary_table(report.build_report(results, mode="most"))
    assert list(summary["ranked_by"]) == ["most seeds, then final valid_accuracies"]


def test_metric_option_ranks_by_another_metric(clean_folder):
    # Final test loss: lr=0.1 ends at (1 + 2) / 2 = 1.5, lr=0.01 at the default 0.5.
    reports = report.build_report(report.read_results(str(clean_folder)), metric="test_losses")
    assert hyperparams_by_rank(reports, "mnist_logreg", "sgd") == [{"lr": 0.01}, {"lr": 0.1}]
    assert reports["mnist_logreg"].best("sgd").score == pytest.approx(0.5)


def test_table_means_and_deviations_by_hand(clean_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.command.command(parse(clean_folder, "-o", out)) == 0
    stdout = capsys.readouterr().out

    table = pd.read_csv(out / "report.csv")
    assert list(table["problem"]) == ["mnist_logreg", "mnist_logreg"]
    assert sorted(table["optimizer"]) == ["kfac", "sgd"]
    rows = by_optimizer(table)
    sgd, kfac = rows["sgd"], rows["kfac"]
    assert sgd["hyperparameters"] == "lr=0.1" and sgd["seeds"] == 2 and sgd["settings"] == 2
    assert sgd["ranked_by"] == "final valid_accuracies"
    assert sgd["test_accuracy"] == pytest.approx(0.75)
    assert sgd["test_accuracy_std"] == pytest.approx(0.05)
    assert sgd["test_loss"] == pytest.approx(1.5) and sgd["test_loss_std"] == pytest.approx(0.5)
    assert sgd["seconds_per_epoch"] == pytest.approx(2.0)
    assert sgd["seconds_per_epoch_std"] == pytest.approx(0.0)
    assert sgd["cost_vs_sgd"] == pytest.approx(1.0)
    # damping is the same in every kfac setting: only lr was tuned.
    assert kfac["hyperparameters"] == "lr=1" and kfac["seeds"] == 3
    assert kfac["all_hyperparameters"] == "lr=1, damping=0.01"
    assert kfac["test_accuracy"] == pytest.approx(0.9)
    assert kfac["test_accuracy_std"] == pytest.approx(math.sqrt(0.02 / 3))
    assert kfac["cost_vs_sgd"] == pytest.approx(3.0)
    # Each best lr is its grid's largest: the verdict's note (test_verdict.py tests the rest).
    assert list(table["notes"]) == [
        f"best lr is the grid's largest, {lr}: extend the grid above"
        for lr in [rows[name]["hyperparameters"][3:] for name in table["optimizer"]]
    ]

    markdown = (out / "report.md").read_text()
    assert "| mnist_logreg | sgd | lr=0.1 | 2 | final valid_accuracies = 0.85 | 0.75 ± 0.05 |" in (
        markdown
    )
    assert "| mnist_logreg | sgd | lr=0.1 | 2 |" in stdout
    settings = pd.read_csv(out / "settings.csv")
    assert list(settings["rank"]) == [1, 2, 1, 2]
    for kind in ("performance", "sensitivity", "cost"):
        assert f"({'mnist_logreg'}_{kind}.png)" in markdown
        assert f"Wrote {out / f'mnist_logreg_{kind}.png'}" in stdout
        assert_png(out / f"mnist_logreg_{kind}.png")


def test_median_and_quartiles(clean_folder, tmp_path):
    out = tmp_path / "out"
    report.command.command(parse(clean_folder, "-o", out, "--aggregate", "median"))
    kfac = by_optimizer(pd.read_csv(out / "report.csv"))["kfac"]
    assert kfac["test_accuracy"] == pytest.approx(0.9)
    assert kfac["test_accuracy_q25"] == pytest.approx(0.85)
    assert kfac["test_accuracy_q75"] == pytest.approx(0.95)
    assert "test_accuracy_std" not in kfac
    assert "0.9 (0.85–0.95)" in (out / "report.md").read_text()


def test_aggregate_against_numpy():
    values = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]])
    mean = report.aggregate(values, "mean")
    np.testing.assert_allclose(mean.center, [3.0, 5.0])
    np.testing.assert_allclose(mean.spread, [math.sqrt(8 / 3), math.sqrt(14 / 3)])
    np.testing.assert_allclose(mean.low, mean.center - mean.spread)
    median = report.aggregate(values, "median")
    np.testing.assert_allclose(median.center, [3.0, 6.0])
    np.testing.assert_allclose(median.low, [2.0, 4.0])
    np.testing.assert_allclose(median.high, [4.0, 6.5])


def test_accuracy_ties_are_decided_by_the_loss(tmp_path):
    # Both reach accuracy 1.0; the folder sorted second has the lower validation loss.
    write_result(str(tmp_path), "p_x", "sgd", {"lr": 0.1}, 1,
                 valid_accuracies=[0.1, 1.0, 1.0], valid_losses=[2.0, 0.5, 0.3])  # fmt: skip
    write_result(str(tmp_path), "p_x", "sgd", {"lr": 0.2}, 1,
                 valid_accuracies=[0.1, 1.0, 1.0], valid_losses=[2.0, 0.5, 0.1])  # fmt: skip
    reports = report.build_report(report.read_results(str(tmp_path)))
    assert hyperparams_by_rank(reports, "p_x", "sgd") == [{"lr": 0.2}, {"lr": 0.1}]


def write_messy_folder(root):
    write_clean_folder(root)
    # kfac, lr=1, damping=0.1: the best final valid accuracy (0.99), but seed 2 diverged
    # (BackOBS writes the non-finite numbers as null): ranked last, marked.
    write_result(root, "mnist_logreg", "kfac", {"lr": 1.0, "damping": 0.1}, 1,
                 valid_accuracies=[0.1, 0.9, 0.99])  # fmt: skip
    write_result(root, "mnist_logreg", "kfac", {"lr": 1.0, "damping": 0.1}, 2,
                 valid_accuracies=[0.1, 0.9, 0.99], status="diverged", diverged_at_step=3,
                 train_losses=[2.0, None, None])  # fmt: skip
    # kfac, lr=3, damping=0.01: one seed only (the others have 3), final 0.7: second.
    write_result(root, "mnist_logreg", "kfac", {"lr": 3.0, "damping": 0.01}, 1,
                 valid_accuracies=[0.1, 0.7, 0.7])  # fmt: skip
    sgd_setting = os.path.dirname(
        write_result(
            root,
            "mnist_logreg",
            "sgd",
            {"lr": 0.1},
            1,
            epoch_seconds=[1.0, 3.0],
            valid_accuracies=[0.1, 0.5, 0.8],
            test_accuracies=[0.1, 0.3, 0.7],
            test_losses=[3.0, 2.5, 1.0],
        )  # fmt: skip
    )
    broken = os.path.join(sgd_setting, "random_seed__7__2026-01-01-00-00-00.json")
    with open(broken, "w", encoding="utf-8") as file:
        file.write('{"train_losses": [1.0, ')  # a run killed while writing
    foreign = os.path.join(sgd_setting, "notes.json")
    with open(foreign, "w", encoding="utf-8") as file:
        json.dump({"comment": "not a results file"}, file)
    for ignored in ("random_seed__1__2026-01-01-00-00-00.steps.jsonl", "README.txt"):
        with open(os.path.join(sgd_setting, ignored), "w", encoding="utf-8") as file:
            file.write("{}\n")
    interrupted = write_result(
        root, "mnist_logreg", "sgd", {"lr": 0.1}, 9, status="interrupted",
        train_losses=[2.0, 1.0], valid_losses=[2.0, 1.0], test_losses=[2.0, 1.0],
        train_accuracies=[0.1, 0.5], valid_accuracies=[0.1, 0.5], test_accuracies=[0.1, 0.5],
    )  # fmt: skip

    # A problem without accuracies, written as DeepOBS's runner writes it (no accuracy keys,
    # NaN for non-finite numbers, no status, no epoch_seconds): ranked by validation loss.
    no_accuracies = {
        "train_accuracies": ...,
        "valid_accuracies": ...,
        "test_accuracies": ...,
        "status": ...,
        "diverged_at_step": ...,
        "synthetic_data": ...,
    }
    # lr=0.01: final valid loss (2 + 4) / 2 = 3.
    for seed, valid in ((1, 2.0), (2, 4.0)):
        write_result(root, "quadratic_deep", "SGD", {"lr": 0.01}, seed,
                     valid_losses=[9.0, 5.0, valid], **no_accuracies)  # fmt: skip
    # lr=0.1: final valid loss 1 would win, but seed 2's test loss is NaN: diverged.
    write_result(root, "quadratic_deep", "SGD", {"lr": 0.1}, 1,
                 valid_losses=[9.0, 2.0, 1.0], **no_accuracies)  # fmt: skip
    write_result(root, "quadratic_deep", "SGD", {"lr": 0.1}, 2, valid_losses=[9.0, 2.0, 1.0],
                 test_losses=[9.0, 2.0, float("nan")], **no_accuracies)  # fmt: skip
    # lr=1: DeepOBS aborted after epoch 0 and repeated the initial values; an even lower
    # final validation loss, but diverged.
    write_result(root, "quadratic_deep", "SGD", {"lr": 1.0}, 1, train_losses=[0.5] * 3,
                 valid_losses=[0.5] * 3, test_losses=[0.5] * 3,
                 minibatch_train_losses=[0.5, 1e30, 0.5], **no_accuracies)  # fmt: skip
    return [broken, foreign, interrupted]


def test_messy_folder_marks_and_warnings(tmp_path, capsys):
    skipped = write_messy_folder(str(tmp_path / "results"))
    out = tmp_path / "out"
    assert report.command.command(parse(tmp_path / "results", "-o", out)) == 0
    stderr = capsys.readouterr().err.splitlines()

    # One line per skipped file, naming it; step logs and other files go unmentioned.
    for path in skipped:
        (line,) = [line for line in stderr if path in line]
        assert line.startswith("backobs report: warning: skipped ")
    assert "unreadable" in next(line for line in stderr if skipped[0] in line)
    assert "not a DeepOBS results file" in next(line for line in stderr if skipped[1] in line)
    assert "interrupted" in next(line for line in stderr if skipped[2] in line)
    assert not any("steps.jsonl" in line or "README" in line for line in stderr)
    assert any("no cost figure for quadratic_deep" in line for line in stderr)
    # And the verdict's notes on the grids (test_verdict.py tests them).
    assert [line for line in stderr if "grid" in line] == [
        "backobs report: warning: mnist_logreg/kfac: best damping is the grid's smallest, "
        "0.01: extend the grid below",
        "backobs report: warning: mnist_logreg/sgd: best lr is the grid's largest, 0.1: "
        "extend the grid above",
        "backobs report: warning: quadratic_deep/SGD: best lr is the grid's smallest, 0.01: "
        "extend the grid below",
    ]
    assert len(stderr) == 7

    settings = pd.read_csv(out / "settings.csv").fillna("")
    kfac = settings[settings["optimizer"] == "kfac"].to_dict("records")
    assert [(row["hyperparameters"], row["notes"]) for row in kfac] == [
        ("lr=1, damping=0.01", ""),
        ("lr=3, damping=0.01", "1 of 3 seeds"),
        ("lr=0.1, damping=0.01", ""),
        ("lr=1, damping=0.1", "diverged (1 of 2 seeds); 2 of 3 seeds"),
    ]
    quadratic = settings[settings["problem"] == "quadratic_deep"].to_dict("records")
    assert [(row["hyperparameters"], row["notes"]) for row in quadratic] == [
        ("lr=0.01", ""),
        ("lr=1", "diverged (1 of 1 seeds); 1 of 2 seeds"),
        ("lr=0.1", "diverged (1 of 2 seeds)"),
    ]
    assert set(settings[settings["problem"] == "quadratic_deep"]["ranked_by"]) == {
        "final valid_losses"
    }

    table = pd.read_csv(out / "report.csv")
    rows = {(row["problem"], row["optimizer"]): row for row in table.to_dict("records")}
    assert rows["mnist_logreg", "kfac"]["notes"] == (
        "1 of 4 settings diverged; best damping is the grid's smallest, 0.01: extend the grid below"
    )
    # The sgd setting kept its 2 seeds: the broken, foreign and interrupted files are out.
    assert rows["mnist_logreg", "sgd"]["seeds"] == 2
    quadratic = rows["quadratic_deep", "SGD"]
    assert quadratic["test_loss"] == pytest.approx(0.5) and math.isnan(quadratic["test_accuracy"])
    assert quadratic["score"] == pytest.approx(3.0)
    assert math.isnan(quadratic["seconds_per_epoch"]) and math.isnan(quadratic["cost_vs_sgd"])
    for name in ("quadratic_deep_performance.png", "quadratic_deep_sensitivity.png"):
        assert_png(out / name)
    assert not (out / "quadratic_deep_cost.png").exists()


def test_a_rerun_seed_counts_once_with_its_newest_file(tmp_path, capsys):
    old = write_result(str(tmp_path), "p_x", "sgd", {"lr": 0.1}, 1, test_losses=[2.0, 1.0, 0.9])
    new = write_result(str(tmp_path), "p_x", "sgd", {"lr": 0.1}, 1, test_losses=[2.0, 1.0, 0.3],
                       file_name="random_seed__1__2026-02-01-00-00-00.json")  # fmt: skip
    reports = report.build_report(report.read_results(str(tmp_path)))
    (run,) = reports["p_x"].best("sgd").setting.runs
    assert run.path == new and run.metrics["test_losses"][-1] == 0.3
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"backobs report: warning: skipped {old}: a newer file of seed 1")


def test_the_default_output_folder_is_not_read_as_results(clean_folder, capsys):
    for _ in range(2):
        assert report.command.command(parse(clean_folder)) == 0
    # Only the verdict's notes on the grids (each best lr is the largest), nothing read twice.
    assert [line.split(": ")[2] for line in capsys.readouterr().err.splitlines()] == [
        "mnist_logreg/kfac",
        "mnist_logreg/sgd",
    ] * 2
    assert_png(clean_folder / "report" / "mnist_logreg_performance.png")
    reports = report.build_report(report.read_results(str(clean_folder)))
    assert list(reports) == ["mnist_logreg"]


def test_a_setting_that_only_diverged_is_still_reported(tmp_path):
    write_result(str(tmp_path), "p_x", "adam", {"lr": 10.0}, 1, status="diverged",
                 valid_accuracies=[0.1, None, None])  # fmt: skip
    reports = report.build_report(report.read_results(str(tmp_path)))
    (best,) = reports["p_x"].rankings["adam"]
    assert best.notes == ["diverged (1 of 1 seeds)"] and math.isnan(best.score)
    out = tmp_path / "out"
    report.write_report(reports, str(out), warn=lambda message: None)
    assert_png(out / "p_x_performance.png")
    assert_png(out / "p_x_sensitivity.png")


@pytest.mark.parametrize("content", [None, "README.txt", "p/o/s/notes.txt", "p/o/s/"])
def test_a_folder_without_results_is_an_option_error(tmp_path, content):
    if content:
        path = tmp_path / content
        path.parent.mkdir(parents=True, exist_ok=True)
        if not content.endswith("/"):
            path.write_text("nothing\n")
    with pytest.raises(OptionError, match="holds no results files"):
        report.command.command(parse(tmp_path, "-o", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_options_are_option_errors(clean_folder, tmp_path):
    with pytest.raises(OptionError, match="does not exist"):
        report.command.command(parse(tmp_path / "missing"))
    arguments = parse(clean_folder)
    arguments.mode = "worst"
    with pytest.raises(OptionError, match="--mode must be one of final, best, most, got 'worst'"):
        report.command.command(arguments)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OptionError, match="--out-dir"):
        report.command.command(parse(clean_folder, "-o", blocker / "out"))


def test_pointing_at_a_settings_folder_says_where_to_point(clean_folder):
    (setting,) = glob.glob(str(clean_folder / "mnist_logreg" / "sgd" / "*lr__1e-01"))
    with pytest.raises(OptionError, match="settings folder: pass the folder 3 level"):
        report.command.command(parse(setting, "-o", clean_folder.parent / "out"))


def assert_png(path):
    assert path.stat().st_size > 5000, path
    image = imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # not a blank canvas


# Results written by the runners ----------------------------------------------------------


def run_backpack_runner(output_dir, optimizer_class, hyperparams, seed):
    from backobs.runs.runner import BackpackRunner

    names = {name: {"type": float} for name in hyperparams}
    runner = BackpackRunner(optimizer_class, names)
    return runner.run(
        testproblem="mnist_logreg", hyperparams=hyperparams, batch_size=8, num_epochs=2,
        random_seed=seed, steps_per_epoch=10, eval_batches=10, synthetic_data=True,
        output_dir=str(output_dir), log_interval=0,
    )  # fmt: skip


def run_deepobs_standard_runner(output_dir, lr):
    from backobs.adapter.deepobs import runners

    runner = runners.StandardRunner(torch.optim.SGD, {"lr": {"type": float}})
    return runner.run(
        testproblem="quadratic_deep", hyperparams={"lr": lr}, batch_size=128, num_epochs=2,
        random_seed=1, output_dir=str(output_dir), train_log_interval=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def runner_results(tmp_path_factory):
    """Two optimizers of BackOBS's runner on mnist_logreg, DeepOBS's on quadratic_deep."""
    import backobs
    from backobs.adapter import data

    output_dir = tmp_path_factory.mktemp("runner_results")
    argv = sys.argv
    sys.argv = ["runner"]  # DeepOBS's runners parse the command line
    try:
        backobs.use_synthetic_data(True, seed=0)
        for seed in (1, 2):
            run_backpack_runner(output_dir, torch.optim.SGD, {"lr": 0.1}, seed)
            run_backpack_runner(output_dir, torch.optim.Adam, {"lr": 0.01}, seed)
        run_backpack_runner(output_dir, torch.optim.SGD, {"lr": 0.001}, 1)
        with pytest.warns(RuntimeWarning, match="Loss is Nan or Inf"):
            run_backpack_runner(output_dir, torch.optim.SGD, {"lr": 1e38}, 1)
        run_deepobs_standard_runner(output_dir, 0.01)
        with pytest.warns(RuntimeWarning, match="Loss is Nan or Inf"):
            run_deepobs_standard_runner(output_dir, 10.0)
    finally:
        sys.argv = argv
        data._reset_synthetic_switch()
    return output_dir


def test_report_on_runner_results(runner_results, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.command.command(parse(runner_results, "-o", out)) == 0
    stderr = capsys.readouterr().err.splitlines()
    assert stderr == [
        "backobs report: warning: quadratic_deep/SGD: best lr is the grid's smallest, 0.01: "
        "extend the grid below",
        "backobs report: warning: no cost figure for quadratic_deep: its results record no "
        "epoch_seconds",
    ]

    table = pd.read_csv(out / "report.csv")
    rows = {(row["problem"], row["optimizer"]): row for row in table.to_dict("records")}
    assert set(rows) == {
        ("mnist_logreg", "SGD"),
        ("mnist_logreg", "Adam"),
        ("quadratic_deep", "SGD"),
    }
    for key in (("mnist_logreg", "SGD"), ("mnist_logreg", "Adam")):
        assert rows[key]["seeds"] == 2 and rows[key]["seconds_per_epoch"] > 0
        assert 0 <= rows[key]["test_accuracy"] <= 1
    assert rows["mnist_logreg", "SGD"]["hyperparameters"] == "lr=0.1"
    assert rows["mnist_logreg", "SGD"]["notes"] == "1 of 3 settings diverged"
    assert rows["mnist_logreg", "SGD"]["cost_vs_sgd"] == pytest.approx(1.0)
    assert rows["mnist_logreg", "Adam"]["cost_vs_sgd"] > 0
    assert rows["quadratic_deep", "SGD"]["hyperparameters"] == "lr=0.01"
    assert rows["quadratic_deep", "SGD"]["ranked_by"] == "final valid_losses"

    # The best settings' numbers are the runs' own, averaged by hand.
    sgd_files = glob.glob(str(runner_results / "mnist_logreg" / "SGD" / "*lr__1.e-01*" / "*.json"))
    runs = [json.load(open(path, encoding="utf-8")) for path in sgd_files]
    finals = [run["test_losses"][-1] for run in runs]
    assert len(finals) == 2
    assert rows["mnist_logreg", "SGD"]["test_loss"] == pytest.approx(sum(finals) / 2)
    assert rows["mnist_logreg", "SGD"]["test_loss_std"] == pytest.approx(
        abs(finals[0] - finals[1]) / 2
    )

    settings = pd.read_csv(out / "settings.csv").fillna("")
    sgd = settings[(settings["problem"] == "mnist_logreg") & (settings["optimizer"] == "SGD")]
    assert sgd["hyperparameters"].iloc[-1] == "lr=1e+38"
    assert sgd["notes"].iloc[-1].startswith("diverged (1 of 1 seeds)")
    quadratic = settings[settings["problem"] == "quadratic_deep"]
    assert list(quadratic["hyperparameters"]) == ["lr=0.01", "lr=10"]
    assert quadratic["notes"].iloc[-1] == "diverged (1 of 1 seeds)"

    # The performance plot: DeepOBS's four panels, one line per optimizer's best setting.
    reports = report.build_report(report.read_results(str(runner_results)))
    figure = report.plot_performance(reports["mnist_logreg"], str(tmp_path / "check.png"))
    assert [axis.get_ylabel() for axis in figure.axes] == [
        "Test loss", "Test accuracy", "Train loss", "Train accuracy",
    ]  # fmt: skip
    test_loss_lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert sorted(test_loss_lines) == ["Adam (lr=0.01)", "SGD (lr=0.1)"]
    np.testing.assert_allclose(
        test_loss_lines["SGD (lr=0.1)"].get_ydata(),
        np.mean([run["test_losses"] for run in runs], axis=0),
    )
    assert all(len(axis.collections) == 2 for axis in figure.axes)  # one band each
    figure = report.plot_performance(reports["quadratic_deep"], str(tmp_path / "check.png"))
    assert [len(axis.get_lines()) for axis in figure.axes] == [1, 0, 1, 0]
    assert "no accuracies" in figure.axes[1].texts[0].get_text()

    for name in (
        "mnist_logreg_performance.png",
        "mnist_logreg_sensitivity.png",
        "mnist_logreg_cost.png",
        "quadratic_deep_performance.png",
        "quadratic_deep_sensitivity.png",
    ):
        assert_png(out / name)


def test_command_line_without_tensorflow(runner_results, tmp_path):
    """``python -m backobs report`` in a process where importing TensorFlow kills it."""
    pytest.importorskip("backobs.cli")
    fake = tmp_path / "fake_tensorflow"
    (fake / "tensorflow").mkdir(parents=True)
    (fake / "tensorflow" / "__init__.py").write_text("import os\nos._exit(97)\n")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "backobs", "report", str(runner_results), "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{fake}{os.pathsep}{ROOT}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"Wrote {out / 'report.md'}" in done.stdout
    assert "| mnist_logreg | SGD | lr=0.1 | 2 |" in done.stdout


def test_command_line_empty_folder_exits_2(tmp_path, capsys):
    cli = pytest.importorskip("backobs.cli")
    assert cli.main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"backobs report: error: RESULTS_DIR {str(tmp_path)!r} holds no results files "
        "(<problem>/<optimizer>/<setting>/random_seed__*.json)"
    ]
