"""example/plot.py turns a results JSON and its step log into a PNG."""

import json
import sys

from example_loader import load_example

plot = load_example("plot")


def fake_run(tmp_path, steps=4):
    results = {
        "testproblem": "mnist_logreg",
        "optimizer_name": "SGD",
        "optimizer_hyperparams": {"lr": 0.1},
        "batch_size": 3,
        "train_losses": [2.3, 1.9],
        "valid_losses": [2.3, 2.0],
        "test_losses": [2.3, 2.1],
        "train_accuracies": [0.1, 0.4],
        "valid_accuracies": [0.1, 0.35],
        "test_accuracies": [0.1, 0.3],
    }
    records = []
    for step in range(steps):
        spread = {"mean": 1.0 + step, "std": 0.1, "min": 0.5, "max": 2.0 + step}
        records.append(
            {
                "epoch": 0,
                "step": step,
                "global_step": step,
                "loss": 2.3 - 0.1 * step,
                "extensions": {
                    "BatchGrad": {
                        "savefield": "grad_batch",
                        "parameters": {
                            "dense.weight": {"shape": [3, 10, 784], "norm": 1.0 + step,
                                             "mean": 0.0, "sample_norms": spread},
                            "dense.bias": None,
                        },
                    },
                    "KFAC": {
                        "savefield": "kfac",
                        "parameters": {
                            "dense.weight": {"shape": [[10, 10], [784, 784]], "norm": [1.0, 2.0],
                                             "mean": [0.1, 0.2]},
                        },
                    },
                },
            }
        )  # fmt: skip
    results_path = tmp_path / "random_seed__42__2020.json"
    results_path.write_text(json.dumps(results))
    with open(plot.step_log_path(results_path), "w") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
    return results_path


def test_plot_writes_png_with_a_panel_per_quantity(tmp_path, monkeypatch, capsys):
    results_path = fake_run(tmp_path)
    monkeypatch.setattr(sys, "argv", ["plot.py", str(results_path)])
    plot.main()
    png = results_path.with_suffix(".png")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert str(png) in capsys.readouterr().out

    results = json.loads(results_path.read_text())
    figure = plot.plot_run(results, plot.read_step_log(plot.step_log_path(results_path)))
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == [
        "loss per epoch",
        "accuracy per epoch",
        "mini-batch loss per step",
        "BatchGrad: norm per parameter",
        "BatchGrad: per-sample norms (mean, min to max)",
        "KFAC: norm per parameter",
    ]


def test_plot_without_step_log(tmp_path):
    results_path = fake_run(tmp_path)
    plot.step_log_path(results_path).unlink()
    results = json.loads(results_path.read_text())
    figure = plot.plot_run(results, plot.read_step_log(plot.step_log_path(results_path)))
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 2
