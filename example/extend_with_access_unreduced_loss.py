"""Extend a DeepOBS problem so that its mini-batch loss carries the per-sample losses.

Builds ``mnist_logreg`` with batch size 128, extends it with
:func:`backobs.extend_with_access_unreduced_loss`, prints the individual losses' shape, the
mini-batch loss and the mean of the individual losses (the same number), then runs the
backward pass with the extensions of ``extend.py`` and prints their shapes. Without the MNIST
files the script uses synthetic data (see ``extend.py``); ``--synthetic-data`` asks for it.

Example:
    python example/extend_with_access_unreduced_loss.py
"""

from extend import extensions, parse_args, print_quantities, set_up_mnist_logreg

import backobs
from backpack_core import backpack

SAVEFIELD = "_unreduced_loss"


def main():
    """Extend mnist_logreg, print individual and mini-batch losses, then the quantities."""
    args = parse_args()
    tproblem = set_up_mnist_logreg(args.batch_size, args.synthetic_data)
    # detach=True: the individual losses are for reading, the backward pass runs on the
    # mini-batch loss.
    backobs.extend_with_access_unreduced_loss(tproblem, savefield=SAVEFIELD, detach=True)

    tproblem.train_init_op()
    batch_loss, _ = tproblem.get_batch_loss_and_accuracy()
    individual_loss = getattr(batch_loss, SAVEFIELD)

    print("Individual loss shape:   ", individual_loss.shape)
    print("Mini-batch loss:         ", batch_loss)
    print("Averaged individual loss:", individual_loss.mean())

    # The extensions work as with backobs.extend_problem.
    with backpack(*extensions(args.all)):
        batch_loss.backward()

    print_quantities(tproblem.net, args.all)


if __name__ == "__main__":
    main()
