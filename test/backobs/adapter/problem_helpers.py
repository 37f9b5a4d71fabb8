"""Helpers shared by the BackOBS tests: building problems, fixing a batch."""

import pytest
import torch

import backobs

# Problems whose cases take long on a CPU (VGG upsamples to 224x224): marked slow.
HEAVY = {"cifar10_vgg16", "cifar10_vgg19", "cifar100_vgg16", "cifar100_vgg19"}


def problem_param(problem_class, *values):
    """A pytest parameter named after the problem, marked slow for the heavy ones."""
    name = problem_class.__name__
    marks = [pytest.mark.slow] if name in HEAVY else []
    return pytest.param(problem_class, *values, id=name, marks=marks)


def make_problem(problem_class, batch_size=3, weight_decay=0.0, seed=0):
    """Construct and set up a problem (l2 off for the regularised ones), in training mode."""
    torch.manual_seed(seed)
    if problem_class in backobs.REGULARIZED:
        tproblem = problem_class(batch_size, weight_decay)
    else:
        tproblem = problem_class(batch_size)
    tproblem.set_up()
    tproblem.train_init_op()
    return tproblem


def freeze_batch(tproblem):
    """Make every later ``get_batch_loss_and_accuracy`` use the same (next) batch."""
    batch = tproblem._get_next_batch()
    tproblem._get_next_batch = lambda: batch
    return batch
