"""Run SGD on a DeepOBS problem with backprop extensions active in every training step.

The command line is DeepOBS's (problem name, ``--lr``, ``--momentum``, ``--batch_size``,
``--num_epochs``, ``--random_seed``, ``--data_dir``, ``--output_dir``, ``--weight_decay``
...) plus BackOBS's options (``--extensions``, ``--l2_reg``, ``--synthetic-data``,
``--steps-per-epoch``, ``--eval-batches``, ``--log-interval``, ``--device``), defined once
in :mod:`backobs.runs.options` and shared with ``backobs run``; ``--help`` lists them all. Every
value is checked before any work (one line on stderr, exit code 2); Ctrl-C writes the
completed epochs and exits with code 130.

The defaults are a demo that finishes in seconds, as in the original BackOBS README: one
epoch of three steps with batch size 3, BatchGrad, and evaluation on the first
10 mini-batches of each set. Every flag overrides them; ``--full`` drops them all (DeepOBS's
batch size and number of epochs, whole epochs, full evaluation).

Examples:
    python example/run.py mnist_logreg --lr 0.1 --synthetic-data
    python example/run.py mnist_logreg --lr 0.1 --extensions BatchGrad DiagGGNMC
    python example/run.py cifar10_3c3d --lr 0.1 --l2_reg 0.0 --synthetic-data
    python example/run.py mnist_logreg --lr 0.1 --momentum 0.9 --full
"""

from torch.optim import SGD

from backobs.runs.runner import BackpackRunner

SGD_HYPERPARAMETERS = {
    "lr": {"type": float, "help": "Learning rate."},
    "momentum": {"type": float, "default": 0.0, "help": "Momentum factor."},
}

DEMO_DEFAULTS = {
    "batch_size": 3,
    "num_epochs": 1,
    "steps_per_epoch": 3,
    "eval_batches": 10,
}


def main():
    """Parse the command line and run SGD with the chosen extensions."""
    runner = BackpackRunner(SGD, SGD_HYPERPARAMETERS, cli_defaults=DEMO_DEFAULTS, progress_bar=True)
    runner.main()


if __name__ == "__main__":
    main()
