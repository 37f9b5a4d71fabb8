"""The problems DeepOBS 1.1.2 lacks, and quadratic_deep re-expressed for the engine."""

import pytest
import torch
from problem_helpers import HEAVY, make_problem

import backobs
from backobs.adapter import deepobs as _deepobs
from backobs.adapter import testproblems as problems

# name -> (data set class, input shape, outputs, number of parameter tensors, default l2)
NEW_PROBLEMS = {
    "fmnist_logreg": ("fmnist", (1, 28, 28), 10, 2, None),
    "svhn_3c3d": ("svhn", (3, 32, 32), 10, 12, 0.002),
    "cifar10_vgg16": ("cifar10", (3, 32, 32), 10, 32, 5e-4),
    "cifar10_vgg19": ("cifar10", (3, 32, 32), 10, 38, 5e-4),
    "cifar100_vgg16": ("cifar100", (3, 32, 32), 100, 32, 5e-4),
    "cifar100_vgg19": ("cifar100", (3, 32, 32), 100, 38, 5e-4),
    "cifar100_wrn164": ("cifar100", (3, 32, 32), 100, None, 5e-4),
    "cifar100_wrn404": ("cifar100", (3, 32, 32), 100, None, 5e-4),
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if n in HEAVY else []) for n in sorted(NEW_PROBLEMS)],
)
def test_new_problem_matches_deepobs_description(name):
    dataset, input_shape, outputs, parameter_tensors, l2 = NEW_PROBLEMS[name]
    problem_class = backobs.get_problem_class(name)
    assert backobs.adapter.problems.default_l2_factor(problem_class) == l2
    tproblem = problem_class(2) if l2 is None else problem_class(2, 0.001)
    tproblem.set_up()
    assert type(tproblem.data).__name__ == dataset
    assert tproblem.loss_function is torch.nn.CrossEntropyLoss
    parameters = list(tproblem.net.named_parameters())
    if parameter_tensors is not None:
        assert len(parameters) == parameter_tensors
    tproblem.net.eval()
    with torch.no_grad():
        assert tproblem.net(torch.zeros(2, *input_shape)).shape == (2, outputs)
    if l2 is not None:  # l2 on weights (for WRN: conv and dense weights), never on biases
        groups = tproblem.regularization_groups
        assert set(groups) == {0.0, 0.001}
        penalized = {id(p) for p in groups[0.001]}
        for parameter_name, parameter in parameters:
            if "bias" in parameter_name:
                assert id(parameter) not in penalized
        assert len(penalized) > 0


def test_wrn_depths():
    def conv_layers(name):
        tproblem = backobs.get_problem_class(name)(2)
        tproblem.set_up()
        return sum(isinstance(m, torch.nn.Conv2d) for m in tproblem.net.modules())

    # WRN-d-k has d - 4 = 6 n conv layers in the residual blocks, + first conv + 3 shortcuts
    assert conv_layers("cifar100_wrn164") == 12 + 1 + 3
    assert conv_layers("cifar100_wrn404") == 36 + 1 + 3


def _deepobs_and_backobs_quadratic(batch_size):
    """DeepOBS 1.1.2's quadratic_deep and BackOBS's, with the same Hessian and data order."""
    torch.manual_seed(0)
    original = _deepobs.testproblems.quadratic_deep(batch_size)
    original.set_up()
    rewritten = _deepobs.testproblems.quadratic_deep(batch_size)
    rewritten.set_up()  # DeepOBS draws a new rotation per set_up: share the first Hessian
    rewritten.net.Hessian = original.net.Hessian
    problems._rewrite_quadratic(rewritten)
    assert isinstance(rewritten, backobs.get_problem_class("quadratic_deep"))
    return original, rewritten


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_quadratic_deep_same_losses_and_gradients(reduction):
    original, rewritten = _deepobs_and_backobs_quadratic(batch_size=8)
    for phase in ("train_init_op", "test_init_op"):
        getattr(original, phase)()
        getattr(rewritten, phase)()
        torch.manual_seed(1)
        for _ in range(3):  # the train loader shuffles: same seed, same batches
            state = torch.get_rng_state()
            loss, accuracy = original.get_batch_loss_and_accuracy(reduction=reduction)
            torch.set_rng_state(state)
            new_loss, new_accuracy = rewritten.get_batch_loss_and_accuracy(reduction=reduction)
            torch.testing.assert_close(new_loss, loss, rtol=1e-5, atol=1e-4)
            assert new_accuracy == accuracy == 0.0
            if phase == "train_init_op":
                (gradient,) = torch.autograd.grad(loss.sum(), original.net.theta)
                (new_gradient,) = torch.autograd.grad(new_loss.sum(), rewritten.net.theta)
                # float32, summed in another order (through sqrt(Q)): which rotation DeepOBS
                # draws depends on the instances made before in the process, and one of them
                # put a 100-term gradient entry 1.9e-5 apart.
                torch.testing.assert_close(new_gradient, gradient, rtol=1e-5, atol=1e-4)


def test_quadratic_deep_parameters_and_extension_of_a_deepobs_instance():
    original, rewritten = _deepobs_and_backobs_quadratic(batch_size=4)
    assert [name for name, _ in rewritten.net.named_parameters()] == ["shift.bias"]
    assert rewritten.net.theta is rewritten.net.shift.bias
    torch.testing.assert_close(rewritten.net.theta, original.net.theta)
    # extend_problem converts a DeepOBS 1.1.2 instance itself
    deepobs_instance = _deepobs.testproblems.quadratic_deep(4)
    deepobs_instance.set_up()
    backobs.extend_problem(deepobs_instance)
    assert isinstance(deepobs_instance.net, problems.QuadraticDeepNet)
    deepobs_instance.train_init_op()
    deepobs_instance.get_batch_loss_and_accuracy()[0].backward()
    assert deepobs_instance.net.theta.grad.shape == (100,)


def test_quadratic_loss_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        problems.QuadraticLoss("max")


def test_backobs_quadratic_deep_class_builds_engine_net():
    tproblem = make_problem(backobs.get_problem_class("quadratic_deep"))
    assert isinstance(tproblem.net, problems.QuadraticDeepNet)
    assert tproblem.loss_function is problems.QuadraticLoss
