"""The verdict across problems: time to target, performance profile, benchmark score, notes.

Every number is worked out by hand in the comments. Accuracies are binary fractions (0.125,
0.75, ...) so that seed means are exact and "reaches" (>=) is decided without rounding.
"""

import argparse
import json
import math
import os

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from backobs import report
from backobs.checks import OptionError

INF = math.inf


def parse(*arguments):
    parser = argparse.ArgumentParser(prog="backobs report")
    report.add_arguments(parser)
    return parser.parse_args([str(argument) for argument in arguments])


def write_run(root, problem, optimizer, hyperparams, seed, valid, seconds=None, status=None):
    """One results file; ``valid``: validation accuracies, or ``("loss", [...])``."""
    kind, values = valid if isinstance(valid, tuple) else ("accuracy", valid)
    length = len(values)
    falling = [1.0 / (k + 1) for k in range(length)]  # constant losses read as DeepOBS's abort
    data = {
        "testproblem": problem,
        "num_epochs": length - 1,
        "random_seed": seed,
        "optimizer_hyperparams": hyperparams,
        "train_losses": falling,
        "valid_losses": values if kind == "loss" else [1.0] * length,
        "test_losses": [1.0] * length,
        "minibatch_train_losses": falling,
        "status": status or "finished",
    }
    if kind == "accuracy":
        data.update(
            train_accuracies=[0.5] * length, valid_accuracies=values, test_accuracies=values
        )
    if seconds is not None:
        data["epoch_seconds"] = seconds
    setting = "__".join(f"{name}__{value:g}" for name, value in hyperparams.items())
    directory = os.path.join(root, problem, optimizer, setting)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"random_seed__{seed}__2026.json"), "w") as file:
        json.dump(data, file)


def write_folder(root):
    """Three problems; the numbers of each are in the comments."""
    # mnist_logreg (accuracy), default target: sgd's seed-mean final (0.875+0.75+0.625)/3 = 0.75.
    # sgd: seed 1 reaches 0.75 at evaluation 2 (t = 1 + 2 = 3), seed 2 at 3 (t = 2+2+2 = 6),
    # seed 3 never: e = [2, 3, inf] -> median 3; t = [3, 6, inf] -> median 6; 2/3 seeds.
    for seed, valid, seconds in (
        (1, [0.125, 0.5, 0.75, 0.875], [1.0, 2.0, 3.0]),
        (2, [0.125, 0.5, 0.625, 0.75], [2.0, 2.0, 2.0]),
        (3, [0.125, 0.25, 0.5, 0.625], [2.0, 2.0, 2.0]),
    ):
        write_run(root, "mnist_logreg", "sgd", {"lr": 0.1}, seed, valid, seconds)
    # kfac: lr=1 is best (final 0.875 > 0.5) and the grid's largest lr (a note); every seed
    # reaches 0.75 at evaluation 1, t = 4: median 1 and 4, 3/3; speedup 6 / 4 = 1.5.
    for seed in (1, 2, 3):
        write_run(root, "mnist_logreg", "kfac", {"lr": 1.0, "damping": 0.1}, seed,
                  [0.125, 0.75, 0.875, 0.875], [4.0, 4.0, 4.0])  # fmt: skip
        write_run(root, "mnist_logreg", "kfac", {"lr": 0.1, "damping": 0.1}, seed,
                  [0.125, 0.25, 0.5, 0.5], [4.0, 4.0, 4.0])  # fmt: skip
    # adam never reaches 0.75: not reached, 0/1, no speedup.
    write_run(root, "mnist_logreg", "adam", {"lr": 0.001}, 1, [0.125, 0.25, 0.25, 0.5],
              [0.5, 0.5, 0.5])  # fmt: skip

    # quadratic_deep (loss), target given: 1.0 (sgd's final would be 0.5).
    # sgd reaches <= 1 at evaluation 3 (t = 3); kfac at 1 (t = 2); adam at 2 (t = 1).
    # Speedups vs sgd: kfac 3 / 2 = 1.5, adam 3 / 1 = 3.
    for optimizer, losses, seconds in (
        ("sgd", [8.0, 4.0, 2.0, 0.5], [1.0, 1.0, 1.0]),
        ("kfac", [8.0, 1.0, 0.5, 0.5], [2.0, 2.0, 2.0]),
        ("adam", [8.0, 2.0, 1.0, 0.5], [0.5, 0.5, 0.5]),
    ):
        write_run(root, "quadratic_deep", optimizer, {"lr": 0.1}, 1, ("loss", losses), seconds)

    # cifar10_3c3d: no sgd and no --target: left out of the profile, with a warning.
    for optimizer in ("kfac", "adam"):
        write_run(root, "cifar10_3c3d", optimizer, {"lr": 0.1}, 1, [0.125, 0.5], [1.0])


# The profile by seconds over mnist_logreg and quadratic_deep:
#   mnist_logreg: sgd 6, kfac 4, adam inf -> r = 1.5, 1, inf
#   quadratic_deep: sgd 3, kfac 2, adam 1 -> r = 3, 2, 1
# Scores (tau_max 4, the mean over problems of max(0, 4 - r), divided by 3):
#   kfac (3 + 2) / 2 / 3 = 5/6; sgd (2.5 + 1) / 2 / 3 = 7/12; adam (0 + 3) / 2 / 3 = 1/2.
SCORES = {"kfac": 5 / 6, "sgd": 7 / 12, "adam": 1 / 2}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "results"
    write_folder(str(root))
    return root


def verdict_of(folder, **options):
    lines = []
    reports = report.build_report(report.read_results(str(folder)))
    return report.build_verdict(reports, warn=lines.append, **options), lines


def rows_of(verdict):
    return {(row["problem"], row["optimizer"]): row for row in verdict.scores.to_dict("records")}


def test_time_to_target_default_and_given_targets(folder):
    verdict, lines = verdict_of(folder, targets={"quadratic_deep": 1.0})
    rows = rows_of(verdict)
    expected = {
        # (target, epochs, seconds, speedup, seeds reached)
        ("mnist_logreg", "sgd"): (0.75, 3.0, 6.0, 1.0, "2/3"),
        ("mnist_logreg", "kfac"): (0.75, 1.0, 4.0, 1.5, "3/3"),
        ("mnist_logreg", "adam"): (0.75, INF, INF, math.nan, "0/1"),
        ("quadratic_deep", "sgd"): (1.0, 3.0, 3.0, 1.0, "1/1"),
        ("quadratic_deep", "kfac"): (1.0, 1.0, 2.0, 1.5, "1/1"),
        ("quadratic_deep", "adam"): (1.0, 2.0, 1.0, 3.0, "1/1"),
    }
    assert set(rows) == set(expected)
    for key, (target, epochs, seconds, speedup, reached) in expected.items():
        row = rows[key]
        assert row["target"] == target, key
        assert row["epochs_to_target"] == epochs, key
        assert row["seconds_to_target"] == seconds, key
        assert row["speedup_vs_baseline"] == pytest.approx(speedup, nan_ok=True), key
        assert row["seeds_reached"] == reached, key
    assert verdict.problems == ["mnist_logreg", "quadratic_deep"]
    assert lines == [
        "mnist_logreg/kfac: best lr is the grid's largest, 1: extend the grid above",
        "cifar10_3c3d is left out of the profile: no target (no finite result of the "
        "baseline 'sgd'; give one with --target cifar10_3c3d=VALUE)",
    ]


def test_default_target_of_a_loss_problem_and_a_baseline_in_another_case(folder):
    # quadratic_deep without --target: sgd's final 0.5; sgd reaches it at 3 (t 3), kfac at 2
    # (t 4), adam at 3 (t 1.5).
    verdict, _ = verdict_of(folder)
    rows = rows_of(verdict)
    names = ("sgd", "kfac", "adam")
    assert [rows["quadratic_deep", name]["target"] for name in names] == [0.5] * 3
    seconds = [rows["quadratic_deep", name]["seconds_to_target"] for name in names]
    assert seconds == [3.0, 4.0, 1.5]
    # --baseline KFAC matches the folder kfac: its seed-mean final 0.875 on mnist_logreg,
    # which only kfac reaches (evaluation 2, t 8; sgd's seed 1 at 3, its others never: median
    # inf); sgd's speedup is empty there.
    verdict, lines = verdict_of(folder, baseline="KFAC", targets={"quadratic_deep": 1.0})
    rows = rows_of(verdict)
    assert rows["mnist_logreg", "kfac"]["target"] == 0.875
    assert rows["mnist_logreg", "kfac"]["seconds_to_target"] == 8.0
    assert rows["mnist_logreg", "sgd"]["seconds_to_target"] == INF
    assert rows["mnist_logreg", "sgd"]["seeds_reached"] == "1/3"
    assert math.isnan(rows["mnist_logreg", "sgd"]["speedup_vs_baseline"])
    assert rows["quadratic_deep", "sgd"]["speedup_vs_baseline"] == pytest.approx(2 / 3)
    # cifar10_3c3d has a kfac now: its final 0.5 is the target, reached at evaluation 1.
    assert rows["cifar10_3c3d", "adam"]["epochs_to_target"] == 1.0
    assert not any("left out" in line for line in lines)


def test_profile_and_exact_benchmark_scores(folder):
    verdict, _ = verdict_of(folder, targets={"quadratic_deep": 1.0})
    assert verdict.by == "seconds"
    assert verdict.ratios == {"sgd": [1.5, 3.0], "kfac": [1.0, 2.0], "adam": [INF, 1.0]}
    assert list(verdict.benchmark_scores) == ["kfac", "sgd", "adam"]  # best first
    for name, score in SCORES.items():
        assert verdict.benchmark_scores[name] == pytest.approx(score, rel=1e-15)
    table = verdict.profile_table()
    assert list(table.columns) == ["optimizer", "score", "tau", "rho"]
    steps = [(row["optimizer"], row["tau"], row["rho"]) for row in table.to_dict("records")]
    assert steps == [
        ("kfac", 1.0, 0.5),
        ("kfac", 2.0, 1.0),
        ("sgd", 1.0, 0.0),
        ("sgd", 1.5, 0.5),
        ("sgd", 3.0, 1.0),
        ("adam", 1.0, 0.5),
    ]
    # tau_max 2: kfac (1 + 0) / 2 / 1 = 1/2; sgd (0.5 + 0) / 2 = 1/4; adam (0 + 1) / 2 = 1/2.
    verdict, _ = verdict_of(folder, targets={"quadratic_deep": 1.0}, tau_max=2)
    assert verdict.benchmark_scores == {"kfac": 0.5, "adam": 0.5, "sgd": 0.25}


def test_benchmark_score_is_the_exact_integral_of_the_step_function():
    # rho of ratios [1, 2.5, inf]: 1/3 on [1, 2.5), 2/3 on [2.5, 4]: area 0.5 + 1 = 1.5, / 3.
    assert report.benchmark_score([1.0, 2.5, INF], tau_max=4) == 0.5
    assert report.profile_steps([1.0, 2.5, INF]) == [(1.0, 1 / 3), (2.5, 2 / 3)]
    # A ratio beyond tau_max adds nothing: [5] -> 0; [1] -> 1.
    assert report.benchmark_score([5.0], tau_max=4) == 0.0
    assert report.benchmark_score([1.0], tau_max=4) == 1.0


def test_first_reach_accuracy_loss_and_non_finite():
    assert report.first_reach([0.1, 0.5, 0.5], 0.5, higher=True) == 1
    assert report.first_reach([0.6, 0.5], 0.5, higher=True) == 0  # before training
    assert report.first_reach([3.0, 2.0, 1.0], 1.0, higher=False) == 2
    assert report.first_reach([3.0, math.nan, math.nan], 1.0, higher=False) == INF


def write_untimed_folder(root):
    """One problem, no epoch_seconds: the profile goes by epochs."""
    # Target: sgd's final 0.75, reached at evaluation 2; adam at 1; kfac diverged everywhere
    # (nan): never. Ratios: sgd 2, adam 1, kfac inf. Scores: adam 3/3 = 1, sgd 2/3, kfac 0.
    write_run(root, "mnist_logreg", "sgd", {"lr": 0.1}, 1, [0.125, 0.5, 0.75])
    write_run(root, "mnist_logreg", "adam", {"lr": 0.001}, 1, [0.125, 0.75, 0.875])
    for lr in (0.1, 1.0):
        write_run(root, "mnist_logreg", "kfac", {"lr": lr, "damping": 0.01}, 1,
                  [0.125, math.nan, math.nan], status="diverged")  # fmt: skip


def test_results_without_epoch_seconds_are_profiled_by_epochs(tmp_path):
    write_untimed_folder(str(tmp_path / "results"))
    verdict, lines = verdict_of(tmp_path / "results")
    assert verdict.by == "epochs"
    rows = rows_of(verdict)
    assert math.isnan(rows["mnist_logreg", "sgd"]["seconds_to_target"])
    assert rows["mnist_logreg", "sgd"]["epochs_to_target"] == 2.0
    assert verdict.ratios == {"sgd": [2.0], "adam": [1.0], "kfac": [INF]}
    assert verdict.benchmark_scores == {"adam": 1.0, "sgd": pytest.approx(2 / 3), "kfac": 0.0}
    assert lines == [
        "mnist_logreg/kfac: all 2 settings diverged: try a smaller lr or a larger damping"
    ]
    with pytest.raises(OptionError, match="--profile-by seconds: the best settings of "):
        verdict_of(tmp_path / "results", profile_by="seconds")


def test_command_writes_scores_profile_figure_and_sections(folder, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = parse(folder, "-o", out, "--target", "quadratic_deep=1")
    assert report.command.command(arguments) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "backobs report: warning: mnist_logreg/kfac: best lr is the grid's largest, 1: "
        "extend the grid above",
        "backobs report: warning: cifar10_3c3d is left out of the profile: no target (no "
        "finite result of the baseline 'sgd'; give one with --target cifar10_3c3d=VALUE)",
    ]
    assert "best lr is the grid's largest, 1" in captured.out  # the summary's notes

    scores = pd.read_csv(out / "scores.csv", keep_default_na=False)
    assert list(scores.columns) == list(report.SCORES_COLUMNS)
    adam = scores[(scores["problem"] == "mnist_logreg") & (scores["optimizer"] == "adam")]
    assert adam.to_dict("records") == [
        {"problem": "mnist_logreg", "optimizer": "adam", "target": 0.75,
         "epochs_to_target": "", "seconds_to_target": "", "speedup_vs_baseline": "",
         "seeds_reached": "0/1"}
    ]  # fmt: skip
    assert "cifar10_3c3d" not in set(scores["problem"])
    profile = pd.read_csv(out / "profile.csv")
    assert dict(zip(profile["optimizer"], profile["score"])) == pytest.approx(SCORES)
    assert len(profile) == 6

    image = imread(out / "performance_profile.png")
    assert image.shape[0] > 200 and image[..., :3].std() > 0.05
    markdown = (out / "report.md").read_text()
    assert "## Time to target" in markdown and "## Performance profile" in markdown
    assert "| mnist_logreg | sgd | 0.75 | 3 | 6 | 1 | 2/3 |  |" in markdown
    assert "| mnist_logreg | adam | 0.75 | not reached | not reached | – | 0/1 |  |" in markdown
    assert "By seconds to target over 2 problems" in markdown
    assert "![performance profile](performance_profile.png)" in markdown
    scores_table = markdown[markdown.index("| optimizer | score |") :].splitlines()[2:5]
    assert scores_table == ["| kfac | 0.8333 |", "| sgd | 0.5833 |", "| adam | 0.5 |"]
    summary = pd.read_csv(out / "report.csv")
    kfac = summary[(summary["problem"] == "mnist_logreg") & (summary["optimizer"] == "kfac")]
    assert list(kfac["notes"]) == ["best lr is the grid's largest, 1: extend the grid above"]


def test_command_one_problem_by_epochs(tmp_path):
    write_untimed_folder(str(tmp_path / "results"))
    out = tmp_path / "out"
    assert report.command.command(parse(tmp_path / "results", "-o", out, "--tau-max", 3)) == 0
    markdown = (out / "report.md").read_text()
    assert "By epochs to target over 1 problem:" in markdown
    assert "One problem only: the profile is one step per optimizer" in markdown
    # tau_max 3: adam (3 - 1) / 2 = 1, sgd (3 - 2) / 2 = 0.5, kfac 0.
    profile = pd.read_csv(out / "profile.csv")
    scores = dict(zip(profile["optimizer"], profile["score"]))
    assert scores == {"adam": 1.0, "sgd": 0.5, "kfac": 0.0}
    # One step per optimizer: rho jumps from 0 to 1 at its ratio (adam's is 1, kfac's inf).
    steps = list(zip(profile["optimizer"], profile["tau"], profile["rho"]))
    assert steps == [("adam", 1.0, 1.0), ("sgd", 1.0, 0.0), ("sgd", 2.0, 1.0), ("kfac", 1.0, 0.0)]


@pytest.mark.parametrize(
    "options, message",
    [
        (("--target", "mnist_logreg"), "--target must be PROBLEM=VALUE"),
        (("--target", "mnist_logreg=high"), "--target must be PROBLEM=VALUE"),
        (("--target", "nope=1"), "--target names 'nope', not a problem of these results"),
        (("--tau-max", "1"), "--tau-max must be > 1"),
    ],
)
def test_bad_options_are_one_clear_line(folder, tmp_path, options, message):
    with pytest.raises(OptionError, match=message):
        report.command.command(parse(folder, "-o", tmp_path / "out", *options))


def test_cost_figure_tick_labels_do_not_overlap_for_twelve_long_names(tmp_path):
    root = str(tmp_path / "results")
    names = [f"kfac_with_a_long_name_{index:02d}" for index in range(12)]
    for name in names:
        write_run(root, "mnist_logreg", name, {"lr": 0.1}, 1, [0.125, 0.5], [1.0])
    reports = report.build_report(report.read_results(root))
    figure = report.plot_cost(reports["mnist_logreg"], str(tmp_path / "cost.png"))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = sorted(
        (label.get_window_extent(renderer) for label in figure.axes[0].get_xticklabels()),
        key=lambda box: box.x0,
    )
    assert len(boxes) == 12
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 <= right.x0, (left, right)
