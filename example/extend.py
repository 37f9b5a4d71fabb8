"""Extend a DeepOBS problem and read the extensions' quantities from its parameters.

Builds ``mnist_logreg`` with batch size 128, extends it with :func:`backobs.extend_problem`,
runs one backward pass with ten extensions active and prints the shape of every quantity
on every parameter. Without the MNIST files (or network) the script switches to synthetic
data of the same shapes and says so on stderr; ``--synthetic-data`` asks for it directly.

Example:
    python example/extend.py
    python example/extend.py --all   # also the per-sample diagonals and BatchDotGrad
"""

import argparse
import sys

import backobs
from backobs.adapter.deepobs import testproblems
from backpack_core import backpack
from backpack_core.extensions import (
    KFAC,
    KFLR,
    KFRA,
    BatchDiagGGNExact,
    BatchDiagGGNMC,
    BatchDiagHessian,
    BatchDotGrad,
    BatchGrad,
    BatchL2Grad,
    DiagGGNExact,
    DiagGGNMC,
    DiagHessian,
    SumGradSquared,
    Variance,
)

# (label, attribute) in the order of the original BackOBS output.
QUANTITIES = [
    (".grad.shape:", "grad"),
    (".grad_batch.shape:", "grad_batch"),
    (".variance.shape:", "variance"),
    (".sum_grad_squared.shape:", "sum_grad_squared"),
    (".batch_l2.shape:", "batch_l2"),
    (".diag_ggn_mc.shape:", "diag_ggn_mc"),
    (".diag_ggn_exact.shape:", "diag_ggn_exact"),
    (".diag_h.shape:", "diag_h"),
    (".kfac (shapes):", "kfac"),
    (".kflr (shapes):", "kflr"),
    (".kfra (shapes):", "kfra"),
]
MORE_QUANTITIES = [
    (".batch_dot.shape:", "batch_dot"),
    (".diag_ggn_exact_batch.shape:", "diag_ggn_exact_batch"),
    (".diag_ggn_mc_batch.shape:", "diag_ggn_mc_batch"),
    (".diag_h_batch.shape:", "diag_h_batch"),
]


def extensions(include_more=False):
    """The extensions of the original example, and optionally the four newer ones."""
    chosen = [
        BatchGrad(),
        Variance(),
        SumGradSquared(),
        BatchL2Grad(),
        DiagGGNExact(),
        DiagGGNMC(),
        KFAC(),
        KFLR(),
        KFRA(),
        DiagHessian(),
    ]
    if include_more:
        chosen += [BatchDotGrad(), BatchDiagGGNExact(), BatchDiagGGNMC(), BatchDiagHessian()]
    return chosen


def set_up_mnist_logreg(batch_size, synthetic_data=False):
    """Build and set up ``mnist_logreg``; fall back to synthetic data without MNIST files."""
    if synthetic_data:
        backobs.use_synthetic_data()
    # Route DeepOBS's data sets through BackOBS: one clear error when MNIST is missing.
    backobs.adapter.data.install()
    tproblem = testproblems.mnist_logreg(batch_size=batch_size)
    try:
        tproblem.set_up()
    except backobs.DataUnavailableError:
        print(
            "[backobs] MNIST is not available here (no files, no network): "
            "using synthetic data of the same shapes.",
            file=sys.stderr,
        )
        backobs.use_synthetic_data()
        tproblem = testproblems.mnist_logreg(batch_size=batch_size)
        tproblem.set_up()
    return tproblem


def print_quantities(net, include_more=False):
    """Print the shapes of the quantities on each parameter of ``net``."""
    quantities = QUANTITIES + (MORE_QUANTITIES if include_more else [])
    width = max(len(label) for label, _ in quantities) + 2
    for name, parameter in net.named_parameters():
        print(name)
        for label, attribute in quantities:
            value = getattr(parameter, attribute)
            if isinstance(value, (list, tuple)):
                value = [factor.shape for factor in value]
            else:
                value = value.shape
            print(f"  {label:<{width}}{value}")


def parse_args():
    """Command-line flags of the example."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-data", action="store_true", help="use synthetic MNIST")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--all", action="store_true", help="also BatchDotGrad and the per-sample diagonals"
    )
    return parser.parse_args()


def main():
    """Extend mnist_logreg, run one backward pass with the extensions, print the shapes."""
    args = parse_args()
    tproblem = set_up_mnist_logreg(args.batch_size, args.synthetic_data)
    backobs.extend_problem(tproblem)

    tproblem.train_init_op()
    batch_loss, _ = tproblem.get_batch_loss_and_accuracy()
    with backpack(*extensions(args.all)):
        batch_loss.backward()

    print_quantities(tproblem.net, args.all)


if __name__ == "__main__":
    main()
