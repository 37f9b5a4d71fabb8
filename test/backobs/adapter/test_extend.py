"""extend_problem and extend_with_access_unreduced_loss on every DeepOBS problem."""

import pytest
import torch
from problem_helpers import freeze_batch, make_problem, problem_param

import backobs
from backpack_core import backpack
from backpack_core.extensions import BatchGrad


def _loss_accuracy_gradients(tproblem, seed=1):
    torch.manual_seed(seed)  # the same dropout masks in both passes
    tproblem.net.zero_grad()
    loss, accuracy = tproblem.get_batch_loss_and_accuracy()
    loss.backward()
    gradients = [p.grad.clone() for p in tproblem.net.parameters()]
    return loss.detach(), accuracy, gradients


@pytest.mark.parametrize("problem_class", [problem_param(c) for c in backobs.SUPPORTED])
def test_extension_keeps_forward_and_backward(problem_class):
    tproblem = make_problem(problem_class)
    freeze_batch(tproblem)
    before = _loss_accuracy_gradients(tproblem)

    assert backobs.extend_problem(tproblem) is tproblem
    after = _loss_accuracy_gradients(tproblem)

    torch.testing.assert_close(after[0], before[0], rtol=1e-6, atol=1e-6)
    assert after[1] == before[1]
    assert len(after[2]) == len(before[2])
    for grad_after, grad_before in zip(after[2], before[2]):
        torch.testing.assert_close(grad_after, grad_before, rtol=1e-5, atol=1e-7)
    # the extended problem runs an extension
    tproblem.net.zero_grad()
    with backpack(BatchGrad()):
        tproblem.get_batch_loss_and_accuracy()[0].backward()
    for parameter in tproblem.net.parameters():
        assert parameter.grad_batch.shape == (3, *parameter.shape)


@pytest.mark.parametrize("problem_class", [problem_param(c) for c in backobs.UNSUPPORTED])
def test_unsupported_problems_raise(problem_class):
    tproblem = make_problem(problem_class)
    reason = "variational autoencoder" if "vae" in problem_class.__name__ else "BatchNorm2d"
    with pytest.raises(NotImplementedError, match=reason):
        backobs.extend_problem(tproblem)


REGULARIZED_SUPPORTED = [c for c in backobs.REGULARIZED if c in backobs.SUPPORTED]


@pytest.mark.parametrize("problem_class", [problem_param(c) for c in REGULARIZED_SUPPORTED])
def test_active_l2_raises_with_factor_and_fix(problem_class):
    torch.manual_seed(0)
    tproblem = problem_class(3)  # default l2 factor > 0
    tproblem.set_up()
    with pytest.raises(NotImplementedError) as error:
        backobs.extend_problem(tproblem)
    factor = backobs.adapter.problems.default_l2_factor(problem_class)
    assert str(factor) in str(error.value)
    assert "--l2_reg 0.0" in str(error.value)
    assert "weight decay 0" in str(error.value)


def test_ignored_weight_decay_of_unregularized_problem_is_fine():
    # mnist_logreg ignores its weight_decay argument (DeepOBS warns), so nothing to reject
    with pytest.warns(RuntimeWarning):
        tproblem = backobs.get_problem_class("mnist_logreg")(3, 0.5)
    tproblem.set_up()
    backobs.extend_problem(tproblem)


def test_double_extension_raises():
    tproblem = make_problem(backobs.get_problem_class("mnist_logreg"))
    backobs.extend(tproblem)
    with pytest.raises(ValueError, match="already extended"):
        backobs.extend(tproblem)
    with pytest.raises(ValueError, match="already extended"):
        backobs.extend_with_access_unreduced_loss(tproblem)


def test_problem_not_set_up_raises():
    with pytest.raises(ValueError, match="set_up"):
        backobs.extend_problem(backobs.get_problem_class("mnist_logreg")(3))


def test_deepobs_flatten_is_replaced():
    tproblem = make_problem(backobs.get_problem_class("cifar100_allcnnc"))
    backobs.extend_problem(tproblem)
    flatten_class = backobs.adapter.deepobs.testproblems.testproblems_utils.flatten
    assert not any(isinstance(m, flatten_class) for m in tproblem.net.modules())
    assert any(isinstance(m, torch.nn.Flatten) for m in tproblem.net.modules())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["mnist_logreg", "quadratic_deep"])
def test_loss_function_returns_extended_modules(name, reduction):
    tproblem = make_problem(backobs.get_problem_class(name))
    backobs.extend_problem(tproblem)
    tproblem.net.zero_grad()
    with backpack(BatchGrad()):
        loss, _ = tproblem.get_batch_loss_and_accuracy(reduction=reduction)
        loss.backward()
    for parameter in tproblem.net.parameters():
        torch.testing.assert_close(parameter.grad_batch.sum(0), parameter.grad)


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("name", ["mnist_logreg", "fmnist_2c2d", "quadratic_deep"])
def test_unreduced_loss(name, detach):
    tproblem = make_problem(backobs.get_problem_class(name), batch_size=5)
    batch = freeze_batch(tproblem)
    backobs.extend_with_access_unreduced_loss(tproblem, savefield="per_sample", detach=detach)

    loss, _ = tproblem.get_batch_loss_and_accuracy()
    unreduced = loss.per_sample
    assert unreduced.shape == (5,)
    torch.testing.assert_close(unreduced.mean(), loss.detach(), rtol=1e-6, atol=1e-6)
    assert unreduced.requires_grad == (not detach)
    # the values are the per-sample losses of the same batch
    with torch.no_grad():
        outputs = tproblem.net(batch[0])
        targets = torch.zeros_like(outputs) if name == "quadratic_deep" else batch[1]
        expected = tproblem.loss_function.unextended(reduction="none")(outputs, targets)
    torch.testing.assert_close(unreduced.detach(), expected)

    summed, _ = tproblem.get_batch_loss_and_accuracy(reduction="sum")
    torch.testing.assert_close(summed.per_sample.sum(), summed.detach(), rtol=1e-6, atol=1e-5)
    # extensions still run (once the earlier graphs are gone), and eval phases carry the
    # attribute as well
    del loss, unreduced, summed
    with backpack(BatchGrad()):
        tproblem.get_batch_loss_and_accuracy()[0].backward()
    tproblem.test_init_op()
    assert tproblem.get_batch_loss_and_accuracy()[0].per_sample.shape == (5,)


def test_unreduced_loss_default_savefield():
    tproblem = make_problem(backobs.get_problem_class("mnist_mlp"))
    backobs.extend_with_access_unreduced_loss(tproblem)
    loss, _ = tproblem.get_batch_loss_and_accuracy()
    torch.testing.assert_close(loss._unreduced_loss.mean(), loss.detach())
