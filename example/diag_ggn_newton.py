"""A second-order optimizer on the runner: damped Newton steps with the diagonal GGN.

Each step divides the gradient by the Monte-Carlo estimate of the generalised Gauss-Newton
diagonal plus a damping term,

    p <- p - lr * p.grad / (p.diag_ggn_mc + damping),

reading ``diag_ggn_mc`` from the parameters in ``step()``: the :class:`BackpackRunner` runs the
backward pass inside ``backpack(DiagGGNMC())`` and calls ``step()`` while the quantity is
there. This is the use BackOBS exists for: benchmarking optimizers that need more than the
gradient on DeepOBS problems.

The defaults are a short demo (batch size 128, 2 epochs of 20 steps, evaluation on
10 mini-batches per set); every DeepOBS and runner flag overrides them, ``--full`` drops them.

Examples:
    python example/diag_ggn_newton.py mnist_logreg --synthetic-data
    python example/diag_ggn_newton.py fmnist_2c2d --synthetic-data --lr 0.01 --damping 0.3
"""

import torch

from backobs.runner import BackpackRunner
from backpack_core.extensions import DiagGGNMC


class DiagGGNNewton(torch.optim.Optimizer):
    """Damped diagonal Newton steps with the Monte-Carlo GGN diagonal (``p.diag_ggn_mc``).

    Args:
        params: Parameters (or parameter groups) to optimise.
        lr (float): Step size applied to the Newton direction.
        damping (float): Added to the curvature diagonal before dividing; keeps the step
            bounded where the curvature is small.
        savefield (str): The curvature attribute to read, ``"diag_ggn_mc"`` by default; any
            diagonal with the parameter's shape works (``"diag_ggn_exact"``, ``"diag_h"``).

    Raises:
        RuntimeError: In ``step()``, if a parameter with a gradient lacks the curvature
            attribute (the backward pass ran without the matching extension).
    """

    def __init__(self, params, lr=0.02, damping=0.3, savefield="diag_ggn_mc"):
        if lr <= 0.0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if damping <= 0.0:
            raise ValueError(f"damping must be positive, got {damping}.")
        super().__init__(params, {"lr": lr, "damping": damping})
        self.savefield = savefield

    @torch.no_grad()
    def step(self, closure=None):
        """Take one damped diagonal Newton step.

        Args:
            closure: Unsupported (the curvature comes from the last backward pass).

        Returns:
            None
        """
        if closure is not None:
            raise ValueError("DiagGGNNewton takes no closure; call backward() before step().")
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                curvature = getattr(parameter, self.savefield, None)
                if curvature is None:
                    raise RuntimeError(
                        f"Parameter of shape {tuple(parameter.shape)} has no "
                        f".{self.savefield}: run the backward pass inside "
                        "backpack(DiagGGNMC()) (BackpackRunner does that for this optimizer)."
                    )
                direction = parameter.grad / (curvature + group["damping"])
                parameter.add_(direction, alpha=-group["lr"])


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
        DiagGGNNewton, HYPERPARAMETERS, extensions=lambda: [DiagGGNMC(mc_samples=1)], **kwargs
    )


def main():
    """Parse the command line and train with damped diagonal GGN Newton steps."""
    make_runner(cli_defaults=DEMO_DEFAULTS, progress_bar=True).main()


if __name__ == "__main__":
    main()
