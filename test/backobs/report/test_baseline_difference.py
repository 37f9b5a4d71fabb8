"""The report against the baseline: Welch intervals, not learning, the cost figure's target.

Every number is worked out by hand in the comments. Values are binary fractions (0.125,
0.5625, ...) so that means and variances are exact; the t quantiles are a table's
(t_{0.975, df} for df = 1, 2, 4: 12.706, 4.303, 2.776), so the intervals are checked to the
table's three decimals.
"""

import json
import math
import os

import pandas as pd
import pytest

from backobs import report
from backobs.report.stats import t_quantile, welch_difference

T_975 = {1: 12.706, 2: 4.303, 4: 2.776}
"""Student's t quantiles t_{0.975, df} from a printed table."""


def test_t_quantile_matches_the_table():
    for df, t in T_975.items():
        assert t_quantile(df, 0.975) == pytest.approx(t, abs=5e-4)


def test_welch_equal_variances_two_seeds_each_df_2():
    # means 0.8125 and 0.5625: difference 0.25. Each variance (ddof 1) is
    # 2 * 0.0625**2 / 1 = 0.0078125; se**2 = 0.0078125/2 + 0.0078125/2 = 0.0078125.
    # df = se**4 / (2 * (0.0078125/2)**2 / 1) = 4 / 2 = 2.
    difference = welch_difference([0.75, 0.875], [0.5, 0.625])
    se = math.sqrt(0.0078125)
    assert difference.value == 0.25 and difference.df == pytest.approx(2)
    assert difference.low == pytest.approx(0.25 - 4.303 * se, abs=1e-3 * se)
    assert difference.high == pytest.approx(0.25 + 4.303 * se, abs=1e-3 * se)  # [-0.13, 0.63]
    assert not difference.significant


def test_welch_one_side_without_variance_df_1():
    # baseline without spread: se**2 = 0.0078125/2 = 1/256, df = (1/256)**2 / (1/256)**2 = 1.
    difference = welch_difference([0.75, 0.875], [0.5, 0.5])
    assert difference.value == 0.3125 and difference.df == pytest.approx(1)
    assert difference.low == pytest.approx(0.3125 - 12.706 / 16, abs=1e-3 / 16)
    assert not difference.significant


def test_welch_three_seeds_each_df_4_significant():
    # means 0.9375 and 0.5625: difference 0.375; variances 2 * 0.0625**2 / 2 = 1/256 each;
    # se**2 = 2/768 = 1/384; df = (2x)**2 / (2 x**2 / 2) = 4 with x = 1/768.
    difference = welch_difference([0.875, 0.9375, 1.0], [0.5, 0.5625, 0.625])
    se = math.sqrt(1 / 384)
    assert difference.value == 0.375 and difference.df == pytest.approx(4)
    assert difference.low == pytest.approx(0.375 - 2.776 * se, abs=1e-3 * se)  # 0.233
    assert difference.high == pytest.approx(0.375 + 2.776 * se, abs=1e-3 * se)  # 0.517
    assert difference.significant


def test_welch_satterthwaite_fractional_df():
    # a = 0.0078125/2 = 1/256, b = (1/256)/3 = 1/768: df = (1/192)**2 / (a**2/1 + b**2/2)
    # = (1/36864) / (19/1179648) = 32/19.
    difference = welch_difference([0.75, 0.875], [0.5, 0.5625, 0.625])
    assert difference.df == pytest.approx(32 / 19)
    assert difference.value == pytest.approx(0.8125 - 0.5625)


def test_welch_without_spread_or_seeds():
    exact = welch_difference([1.0, 1.0], [1.0, 1.0])
    assert (exact.value, exact.low, exact.high) == (0.0, 0.0, 0.0) and not exact.significant
    for sample, baseline in (
        ([0.5], [0.25, 0.5]),
        ([0.5, 0.75], [0.25]),
        ([0.5, math.nan], [0.25, 0.5]),
    ):
        difference = welch_difference(sample, baseline)
        assert math.isnan(difference.value) and math.isnan(difference.low)


def write_run(root, problem, optimizer, lr, seed, valid, test=None, seconds=None):
    """One results file; ``valid``/``test``: accuracies, or ``("loss", [...])``."""
    kind, values = valid if isinstance(valid, tuple) else ("accuracy", valid)
    test = test if test is not None else values
    test = test[1] if isinstance(test, tuple) else test
    length = len(values)
    falling = [1.0 / (k + 1) for k in range(length)]
    data = {
        "num_epochs": length - 1,
        "random_seed": seed,
        "optimizer_hyperparams": {"lr": lr},
        "train_losses": falling,
        "valid_losses": values if kind == "loss" else falling,
        "test_losses": test if kind == "loss" else falling,
        "minibatch_train_losses": falling,
        "status": "finished",
    }
    if kind == "accuracy":
        data.update(train_accuracies=values, valid_accuracies=values, test_accuracies=test)
    if seconds is not None:
        data["epoch_seconds"] = seconds
    directory = os.path.join(root, problem, optimizer, f"lr__{lr:g}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"random_seed__{seed}__2026.json"), "w") as file:
        json.dump(data, file)


def write_difference_folder(root):
    # mnist_logreg, final test accuracies: sgd [0.5, 0.5625, 0.625], kfac [0.875, 0.9375, 1]
    # (difference 0.375, df 4: significant), momentum as sgd (0, df 4: not significant),
    # adam one seed (no interval).
    for optimizer, finals in (
        ("sgd", [0.5, 0.5625, 0.625]),
        ("kfac", [0.875, 0.9375, 1.0]),
        ("momentum", [0.5, 0.5625, 0.625]),
        ("adam", [0.75]),
    ):
        for seed, final in enumerate(finals, start=1):
            write_run(root, "mnist_logreg", optimizer, 0.1, seed, [0.125, final])
    # quadratic_deep (no accuracy), final test losses: sgd [2, 2.5], adam [1, 1.5]:
    # difference -1, variances 0.125, se**2 = 0.125, df 2: -1 ± 4.303 * 0.3536.
    for optimizer, finals in (("sgd", [2.0, 2.5]), ("adam", [1.0, 1.5])):
        for seed, final in enumerate(finals, start=1):
            losses = ("loss", [8.0, final])
            write_run(root, "quadratic_deep", optimizer, 0.1, seed, losses, losses)


def test_report_csv_and_table_give_the_difference_to_the_baseline(tmp_path, capsys):
    root, out = str(tmp_path / "results"), tmp_path / "out"
    write_difference_folder(root)
    assert report.command.command(_parse(root, "-o", out)) == 0
    summary = pd.read_csv(out / "report.csv")
    rows = {(row["problem"], row["optimizer"]): row for row in summary.to_dict("records")}

    kfac = rows["mnist_logreg", "kfac"]
    se = math.sqrt(1 / 384)
    assert kfac["diff_metric"] == "test_accuracies"
    assert kfac["diff_vs_baseline"] == 0.375
    assert kfac["diff_ci_low"] == pytest.approx(0.375 - 2.776 * se, abs=1e-3 * se)
    assert kfac["diff_ci_high"] == pytest.approx(0.375 + 2.776 * se, abs=1e-3 * se)
    momentum = rows["mnist_logreg", "momentum"]
    assert momentum["diff_vs_baseline"] == 0.0
    assert momentum["diff_ci_high"] == pytest.approx(2.776 * se, abs=1e-3 * se)
    assert math.isnan(rows["mnist_logreg", "adam"]["diff_ci_low"])  # one seed
    assert math.isnan(rows["mnist_logreg", "adam"]["diff_vs_baseline"])
    assert math.isnan(rows["mnist_logreg", "sgd"]["diff_vs_baseline"])  # the baseline
    quadratic = rows["quadratic_deep", "adam"]
    se = math.sqrt(0.125)
    assert quadratic["diff_metric"] == "test_losses"
    assert quadratic["diff_vs_baseline"] == -1.0
    assert quadratic["diff_ci_low"] == pytest.approx(-1 - 4.303 * se, abs=1e-3 * se)

    # The table: kfac +0.375 [0.233, 0.517]; momentum +0 [-0.142, 0.142], not significant.
    table = capsys.readouterr().out.splitlines()
    assert table[0].endswith("| cost vs SGD | test acc. (loss) − sgd, 95% CI | notes |")
    cells = {tuple(line.split(" | ")[:2]): line.split(" | ")[-2] for line in table[2:6]}
    assert cells["| mnist_logreg", "kfac"] == "+0.375 [+0.233, +0.517]"
    assert cells["| mnist_logreg", "momentum"] == "+0 [-0.142, +0.142] not significant"
    assert cells["| mnist_logreg", "adam"] == "–"
    assert cells["| mnist_logreg", "sgd"] == "baseline"
    markdown = (out / "report.md").read_text()
    assert "| quadratic_deep | adam |" in markdown
    assert "+0.375 [+0.233, +0.517]" in markdown
    assert "*not significant* where the interval contains 0" in markdown


def test_no_difference_column_with_one_seed(tmp_path, capsys):
    root = str(tmp_path / "results")
    for optimizer in ("sgd", "adam"):
        write_run(root, "mnist_logreg", optimizer, 0.1, 1, [0.125, 0.5])
    assert report.command.command(_parse(root, "-o", tmp_path / "out")) == 0
    assert "− sgd" not in capsys.readouterr().out
    summary = pd.read_csv(tmp_path / "out" / "report.csv")
    assert summary[["diff_vs_baseline", "diff_ci_low", "diff_ci_high"]].isna().all().all()


def test_a_setting_that_did_not_learn_ranks_below_those_that_learned(tmp_path):
    root = str(tmp_path / "results")
    # lr 1 ends highest (0.875) but started there: it did not learn; lr 0.1 rose from 0.125
    # to 0.5. (Settings of one optimizer share the evaluation before training when they share
    # the seeds; here lr 1's seed is another one.)
    write_run(root, "mnist_logreg", "sgd", 1.0, 1, [0.875, 0.75, 0.875])
    write_run(root, "mnist_logreg", "sgd", 0.1, 2, [0.125, 0.25, 0.5])
    # adam's only setting did not learn: it stays the best, marked.
    write_run(root, "mnist_logreg", "adam", 0.1, 1, [0.125, 0.125, 0.125])
    # quadratic_deep (a loss): 4 -> 4 did not learn, 4 -> 8 neither; 4 -> 3 did.
    for lr, final in ((0.01, 4.0), (0.1, 3.0), (1.0, 8.0)):
        write_run(root, "quadratic_deep", "sgd", lr, 1, ("loss", [4.0, final]))
    reports = report.build_report(report.read_results(root))

    ranking = reports["mnist_logreg"].rankings["sgd"]
    assert [item.setting.hyperparams["lr"] for item in ranking] == [0.1, 1.0]
    assert [item.learned for item in ranking] == [True, False]
    assert ranking[1].notes == [
        "did not learn (final valid_accuracies no better than before training)"
    ]
    assert ranking[1].score == 0.875  # the score is kept; only the order changes
    adam = reports["mnist_logreg"].best("adam")
    assert not adam.learned and adam.notes[0].startswith("did not learn")
    quadratic = reports["quadratic_deep"].rankings["sgd"]
    assert [item.setting.hyperparams["lr"] for item in quadratic] == [0.1, 0.01, 1.0]
    assert [item.learned for item in quadratic] == [True, False, False]

    summary = report.summary_table(reports).set_index(["problem", "optimizer"])
    assert summary.loc[("mnist_logreg", "adam"), "notes"].startswith("did not learn")
    assert summary.loc[("mnist_logreg", "sgd"), "notes"] == ""


def test_the_sweep_choice_does_not_take_a_setting_that_did_not_learn(tmp_path):
    from backobs import sweep
    from backobs.sweep.spec import _run_key

    the_sweep = sweep.parse_sweep(
        {
            "problems": ["mnist_logreg"],
            "optimizers": {"sgd": {"lr": [0.1, 1.0]}},
            "num_epochs": 1,
            "batch_size": 4,
            "synthetic_data": True,
            "output_dir": str(tmp_path / "results"),
        },
        source="test",
    )
    paths = {}
    for run, valid in zip(the_sweep.runs(), ([0.125, 0.5], [0.875, 0.875])):
        write_run(the_sweep.output_dir, "mnist_logreg", "sgd", run.hyperparams["lr"], 42, valid)
        directory = os.path.join(the_sweep.output_dir, "mnist_logreg", "sgd")
        paths[_run_key(run)] = os.path.join(
            directory, f"lr__{run.hyperparams['lr']:g}", "random_seed__42__2026.json"
        )
    choice = sweep.choose_best(the_sweep, paths)["mnist_logreg"]["sgd"]
    assert choice["hyperparams"]["lr"] == 0.1 and choice["score"] == 0.5
    assert [c["rank"] for c in choice["candidates"]] == [1, 2]


def test_the_cost_figure_marks_the_target_and_where_each_optimizer_reaches_it(tmp_path):
    root = str(tmp_path / "results")
    # target: sgd's final 0.75. sgd reaches it at evaluation 2, after 1 + 2 = 3 s; kfac at
    # evaluation 1, after 4 s; adam never.
    write_run(root, "mnist_logreg", "sgd", 0.1, 1, [0.125, 0.5, 0.75], seconds=[1.0, 2.0])
    write_run(root, "mnist_logreg", "kfac", 0.1, 1, [0.125, 0.75, 0.875], seconds=[4.0, 4.0])
    write_run(root, "mnist_logreg", "adam", 0.1, 1, [0.125, 0.25, 0.5], seconds=[0.5, 0.5])
    reports = report.build_report(report.read_results(root))
    verdict = report.build_verdict(reports, warn=lambda line: None)
    target, seconds = verdict.target_of("mnist_logreg")
    assert target == 0.75 and seconds == {"sgd": 3.0, "kfac": 4.0, "adam": math.inf}

    figure = report.plot_cost(reports["mnist_logreg"], str(tmp_path / "cost.png"), target, seconds)
    assert len(figure.axes) == 3
    panel = figure.axes[2]
    assert panel.get_ylabel() == "valid_accuracies"
    lines = {line.get_label(): line for line in panel.get_lines()}
    assert list(lines["target 0.75"].get_ydata()) == [0.75, 0.75]
    for name, x in (("sgd", 3.0), ("kfac", 4.0)):
        star = lines[f"{name} reaches it: {x:.3g} s"]
        assert (list(star.get_xdata()), list(star.get_ydata())) == ([x], [0.75])
        assert star.get_marker() == "*"
    assert "adam: not reached" in lines
    # sgd's curve: the ranking metric at 0, 1 and 3 s.
    assert list(lines["sgd"].get_xdata()) == [0.0, 1.0, 3.0]
    assert list(lines["sgd"].get_ydata()) == [0.125, 0.5, 0.75]
    # Without a target: the two panels as before.
    assert len(report.plot_cost(reports["mnist_logreg"], str(tmp_path / "c.png")).axes) == 2


def _parse(*arguments):
    import argparse

    parser = argparse.ArgumentParser(prog="backobs report")
    report.add_arguments(parser)
    return parser.parse_args([str(argument) for argument in arguments])
