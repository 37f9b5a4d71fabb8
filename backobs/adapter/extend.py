"""Extend a set-up DeepOBS problem for the backpack_core engine."""

import functools

import torch
from torch import nn

import backpack_core
from backobs.adapter import deepobs as _deepobs
from backobs.adapter import testproblems as _backobs_problems
from backobs.adapter.problems import UNSUPPORTED_REASONS

__all__ = ["extend_problem", "extend", "extend_with_access_unreduced_loss"]

_EXTENDED_FLAG = "_backobs_extended"
_utils = _deepobs.testproblems.testproblems_utils
_modules = _deepobs.testproblems.testproblems_modules


def _problem_name(tproblem):
    return type(tproblem).__name__


def _check_supported(tproblem):
    """Raise ``NotImplementedError`` for VAEs and nets with BatchNorm."""
    name = _problem_name(tproblem)
    if isinstance(tproblem.net, getattr(_modules, "net_vae", ())) or name.endswith("_vae"):
        raise NotImplementedError(
            f"{name} is not supported by BackOBS: {UNSUPPORTED_REASONS['mnist_vae']}."
        )
    batch_norm_class = nn.modules.batchnorm._BatchNorm
    batch_norms = [m for m in tproblem.net.modules() if isinstance(m, batch_norm_class)]
    if batch_norms:
        raise NotImplementedError(
            f"{name} is not supported by BackOBS: its net has {len(batch_norms)} "
            f"{type(batch_norms[0]).__name__} layers; {UNSUPPORTED_REASONS['svhn_wrn164']}."
        )


def _active_l2_factor(tproblem):
    """The largest l2 factor that acts on some parameter, ``0.0`` if none does."""
    groups = getattr(tproblem, "regularization_groups", None)
    if groups is not None:
        return max(
            (factor for factor, parameters in groups.items() if factor and len(parameters) > 0),
            default=0.0,
        )
    factor = _backobs_problems._l2_factor(tproblem)
    return factor or 0.0


def _check_unregularized(tproblem):
    factor = _active_l2_factor(tproblem)
    if factor > 0.0:
        name = _problem_name(tproblem)
        raise NotImplementedError(
            f"{name} adds l2 regularization with factor {factor} to its loss. BackOBS does not "
            "support that: the extensions see only the loss module applied to the network "
            "output, so the regularizer's part of their quantities would be missing. "
            f"Construct the problem with weight decay 0 ({name}(batch_size, 0.0)), or pass "
            "--l2_reg 0.0 to the runner."
        )


def _replace_deepobs_flatten(module):
    """Swap each DeepOBS ``flatten`` for ``torch.nn.Flatten`` (same values), in place."""
    for name, child in module.named_children():
        if isinstance(child, _utils.flatten):
            setattr(module, name, nn.Flatten())
        else:
            _replace_deepobs_flatten(child)


def _extended_loss_factory(loss_factory, debug):
    """Wrap a loss factory so that every module it returns is extended."""

    @functools.wraps(loss_factory)
    def extended_loss_factory(*args, **kwargs):
        return backpack_core.extend(loss_factory(*args, **kwargs), debug=debug)

    extended_loss_factory.unextended = loss_factory
    return extended_loss_factory


def extend_problem(tproblem, debug=False):
    """Make a set-up DeepOBS problem work with ``backpack_core``'s extensions.

    Swaps DeepOBS's ``flatten`` modules for ``torch.nn.Flatten``, re-expresses DeepOBS
    1.1.2's ``quadratic_deep`` net (see :class:`backobs.adapter.testproblems.quadratic_deep`),
    extends the net, and wraps ``tproblem.loss_function`` so that every
    ``tproblem.loss_function(reduction=...)`` returns an extended loss module. Forward
    values, accuracies and gradients stay those of the unextended problem.

    Args:
        tproblem (deepobs.pytorch.testproblems.TestProblem): A problem after ``set_up()``.
        debug (bool): Passed to ``backpack_core.extend`` (print what is extended).

    Returns:
        The same problem, extended.

    Raises:
        NotImplementedError: For a VAE, a net with BatchNorm, or active l2 regularization
            (the message gives the factor and how to switch it off).
        ValueError: If the problem is already extended or not set up.
    """
    name = _problem_name(tproblem)
    if getattr(tproblem, _EXTENDED_FLAG, False):
        raise ValueError(f"{name} is already extended; extend a problem only once.")
    if getattr(tproblem, "net", None) is None:
        raise ValueError(f"{name} is not set up: call tproblem.set_up() before extending it.")
    _check_supported(tproblem)
    _check_unregularized(tproblem)

    if _backobs_problems._is_deepobs_quadratic_net(tproblem.net):
        _backobs_problems._rewrite_quadratic(tproblem)
    _replace_deepobs_flatten(tproblem.net)
    backpack_core.extend(tproblem.net, debug=debug)
    tproblem.loss_function = _extended_loss_factory(tproblem.loss_function, debug)
    setattr(tproblem, _EXTENDED_FLAG, True)
    return tproblem


extend = extend_problem


def extend_with_access_unreduced_loss(tproblem, savefield="_unreduced_loss", detach=False):
    """Extend like :func:`extend_problem`; the mini-batch loss also carries per-sample losses.

    After this, the loss returned by ``tproblem.get_batch_loss_and_accuracy()`` (any
    reduction) has the attribute ``savefield``: the per-sample losses, shape ``[N]``
    (``reduction="none"`` values of the same forward pass). For ``reduction="mean"`` their
    mean equals the loss, for ``"sum"`` their sum.

    Args:
        tproblem (deepobs.pytorch.testproblems.TestProblem): A problem after ``set_up()``.
        savefield (str): Name of the attribute on the loss.
        detach (bool): Store the per-sample losses detached from the autograd graph.

    Returns:
        The same problem, extended.

    Raises:
        NotImplementedError, ValueError: As :func:`extend_problem`.
    """
    extend_problem(tproblem)
    extended_factory = tproblem.loss_function
    plain_factory = extended_factory.unextended
    last_call = {}

    @functools.wraps(extended_factory)
    def recording_loss_factory(*args, **kwargs):
        loss_module = extended_factory(*args, **kwargs)

        def record(module, inputs, output):
            last_call["inputs"] = inputs

        loss_module.register_forward_hook(record)
        return loss_module

    recording_loss_factory.unextended = plain_factory
    tproblem.loss_function = recording_loss_factory
    batch_loss_func = tproblem.get_batch_loss_and_accuracy_func

    @functools.wraps(batch_loss_func)
    def batch_loss_func_with_unreduced(*args, **kwargs):
        forward_func = batch_loss_func(*args, **kwargs)

        def forward_func_with_unreduced():
            last_call.clear()
            loss, accuracy = forward_func()
            with torch.set_grad_enabled(not detach and torch.is_grad_enabled()):
                unreduced = plain_factory(reduction="none")(*last_call.pop("inputs"))
            setattr(loss, savefield, unreduced.detach() if detach else unreduced)
            return loss, accuracy

        return forward_func_with_unreduced

    tproblem.get_batch_loss_and_accuracy_func = batch_loss_func_with_unreduced
    return tproblem
