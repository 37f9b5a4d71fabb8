"""A second-order optimizer on the runner: damped Newton steps with the diagonal GGN.

Each step divides the gradient by the Monte-Carlo estimate of the generalised Gauss-Newton
diagonal plus a damping term,

    p <- p - lr * p.grad / (p.diag_ggn_mc + damping),

which is :class:`backobs.optim.DampedNewton` with the curvature ``"diag_ggn_mc"``: its
``step()`` reads ``diag_ggn_mc`` from the parameters, and the :class:`BackpackRunner` runs
the backward pass inside ``backpack(DiagGGNMC())`` and calls ``step()`` while the quantity is
there. ``backobs run PROBLEM --optimizer diag_ggn_mc`` trains the same optimizer (and the
other curvatures: ``diag_ggn_exact``, ``kfac``, ``kflr``, ``kfra``); this script shows how to
put an optimizer of your own on the runner.

The defaults are a short demo (batch size 128, 2 epochs of 20 steps, evaluation on
10 mini-batches per set); every DeepOBS and runner flag overrides them, ``--full`` drops them.

Examples:
    python example/diag_ggn_newton.py mnist_logreg --synthetic-data
    python example/diag_ggn_newton.py fmnist_2c2d --synthetic-data --lr 0.01 --damping 0.3
"""

from backobs.optim import DampedNewton
from backobs.runs.runner import BackpackRunner
from backpack_core.extensions import DiagGGNMC


class DiagGGNNewton(DampedNewton):
    """Damped diagonal Newton steps with the Monte-Carlo GGN diagonal (``p.diag_ggn_mc``).

    The runner names results folders after the optimizer class, hence a class of its own.

    Args:
        params: Parameters (or parameter groups) to optimise.
        lr (float): Step size applied to the Newton direction.
        damping (float): Added to the curvature diagonal before dividing; keeps the step
            bounded where the curvature is small.
    """

    def __init__(self, params, lr=0.02, damping=0.3):
        super().__init__(params, "diag_ggn_mc", lr=lr, damping=damping)


# The diagonal ignores the strong correlations between input pixels (all images share a
# bright mean), so it underestimates the curvature along them: undamped steps with lr=1
# overshoot on these problems. These defaults lowered the loss on mnist_logreg and
# fmnist_2c2d (synthetic data, test/example/test_diag_ggn_newton.py).
HYPERPARAMETERS = {
    "lr": {"type": float, "default": 0.02},
    "damping": {"type": float, "default": 0.3},
}

DEMO_DEFAULTS = {
    "batch_size": 128,
    "num_epochs": 2,
    "steps_per_epoch": 20,
    "eval_batches": 10,
    "log_interval": 0,
}


def make_runner(**kwargs):
    """A runner that trains with :class:`DiagGGNNewton` and ``DiagGGNMC`` active.

    Args:
        **kwargs: Further arguments of :class:`BackpackRunner` (``cli_defaults``,
            ``progress_bar``).

    Returns:
        BackpackRunner: The runner.
    """
    return BackpackRunner(
        DiagGGNNewton, HYPERPARAMETERS, make_extensions=lambda: [DiagGGNMC(mc_samples=1)], **kwargs
    )


def main():
    """Parse the command line and train with damped diagonal GGN Newton steps."""
    make_runner(cli_defaults=DEMO_DEFAULTS, progress_bar=True).main()


if __name__ == "__main__":
    main()
