"""DeepOBS test problems that the PyPI release (1.1.2) lacks, and quadratic_deep for the engine.

The eight classes below reproduce the problems of DeepOBS's develop branch (architecture,
data set, default l2 factor, which parameters are penalised) with the constructor of the 1.1.2
classes, ``(batch_size, weight_decay=None)``, and the 1.1.2 network modules. Importing
``backobs`` registers them as attributes of ``deepobs.pytorch.testproblems`` (where DeepOBS's
runner looks problems up by name), unless that DeepOBS version has them already.

``quadratic_deep`` here is DeepOBS's problem with a network the engine can differentiate: the
1.1.2 network computes the loss itself, from a parameter ``theta``; this one outputs
``S (theta - x)`` with ``S`` the symmetric square root of the Hessian ``Q``, and the loss
module turns it into ``0.5 (theta - x)^T Q (theta - x)``.
"""

import sys
import threading
import warnings

import numpy as np
import torch
from torch import nn

from backobs.adapter import deepobs as _deepobs

__all__ = [
    "fmnist_logreg",
    "svhn_3c3d",
    "cifar10_vgg16",
    "cifar10_vgg19",
    "cifar100_vgg16",
    "cifar100_vgg19",
    "cifar100_wrn164",
    "cifar100_wrn404",
    "quadratic_deep",
    "QuadraticDeepNet",
    "QuadraticLoss",
    "MISSING_FROM_DEEPOBS",
    "register_with_deepobs",
]

_modules = _deepobs.testproblems.testproblems_modules
_base = _deepobs.testproblems.testproblem
_datasets = _deepobs.datasets


def _l2_factor(tproblem):
    """The l2 factor of a problem under 1.1.2's name (``_weight_decay``) or develop's."""
    for attribute in _deepobs.L2_ATTRIBUTES:
        if hasattr(tproblem, attribute):
            return getattr(tproblem, attribute)
    return None


class _WeightRegularizedProblem(_base.TestProblem):
    """A problem with l2 regularisation on the weights (not the biases)."""

    def _is_penalized(self, parameter_name):
        return "bias" not in parameter_name

    def get_regularization_groups(self):
        """Group the net's parameters by their l2 factor.

        Returns:
            dict: ``{factor: [parameters]}``; weights get the problem's factor, biases ``0.0``.
        """
        no_penalty, penalty = 0.0, _l2_factor(self)
        groups = {no_penalty: [], penalty: []}
        for name, parameter in self.net.named_parameters():
            groups[penalty if self._is_penalized(name) else no_penalty].append(parameter)
        return groups

    def _finish_set_up(self, data, net):
        self.data = data
        self.loss_function = nn.CrossEntropyLoss
        self.net = net
        self.net.to(self._device)
        self.regularization_groups = self.get_regularization_groups()


class fmnist_logreg(_base.UnregularizedTestproblem):
    """Multinomial logistic regression on Fashion-MNIST (DeepOBS).

    Inputs ``[N, 1, 28, 28]`` are flattened and mapped to 10 logits by one linear layer whose
    weights and biases start at ``0.0``; cross-entropy loss; no l2 regularisation.

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): Ignored (with a warning if given): the problem has no l2 term.
    """

    def __init__(self, batch_size, weight_decay=None):
        super().__init__(batch_size, weight_decay)
        if weight_decay is not None and weight_decay != 0.0:
            warnings.warn(
                "fmnist_logreg has no l2 regularisation; weight_decay is ignored.",
                RuntimeWarning,
                stacklevel=2,
            )

    def set_up(self):
        """Build the Fashion-MNIST data, the logistic regression net, and the loss."""
        self.data = _datasets.fmnist(self._batch_size)
        self.loss_function = nn.CrossEntropyLoss
        self.net = _modules.net_mnist_logreg(num_outputs=10)
        self.net.to(self._device)
        self.regularization_groups = self.get_regularization_groups()


class svhn_3c3d(_WeightRegularizedProblem):
    """The 3c3d conv net of cifar10_3c3d on SVHN (DeepOBS).

    Three conv layers (64, 96, 128 filters) with ReLU and max-pooling, two dense layers (512,
    256) with ReLU, 10 logits; cross-entropy loss; l2 on the weights, not the biases.
    Inputs: ``[N, 3, 32, 32]``; training data augmented as DeepOBS's ``svhn`` does.

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): l2 factor on the weights. Defaults to ``0.002``.
    """

    def __init__(self, batch_size, weight_decay=0.002):
        super().__init__(batch_size, weight_decay)

    def set_up(self):
        """Build the SVHN data, the 3c3d net, and the loss."""
        self._finish_set_up(
            _datasets.svhn(self._batch_size), _modules.net_cifar10_3c3d(num_outputs=10)
        )


class _vgg_problem(_WeightRegularizedProblem):
    """VGG on CIFAR: images upsampled to ``224 x 224``, l2 on the weights, not the biases."""

    _dataset = None  # "cifar10" or "cifar100"
    _num_outputs = None
    _variant = None  # 16 or 19

    def __init__(self, batch_size, weight_decay=0.0005):
        super().__init__(batch_size, weight_decay)

    def set_up(self):
        """Build the CIFAR data, the VGG net (bilinear upsampling to 224x224), and the loss."""
        data = getattr(_datasets, self._dataset)(self._batch_size)
        net = _modules.net_vgg(num_outputs=self._num_outputs, variant=self._variant)
        self._finish_set_up(data, net)


class cifar10_vgg16(_vgg_problem):
    """VGG 16 on CIFAR-10 (DeepOBS).

    Inputs ``[N, 3, 32, 32]`` are upsampled to ``224 x 224``; 13 conv layers and 3 dense
    layers (4096, 4096, 10) with dropout 0.5; cross-entropy loss; l2 on the weights.

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): l2 factor on the weights. Defaults to ``5e-4``.
    """

    _dataset, _num_outputs, _variant = "cifar10", 10, 16


class cifar10_vgg19(_vgg_problem):
    """VGG 19 on CIFAR-10 (DeepOBS): as :class:`cifar10_vgg16` with 16 conv layers.

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): l2 factor on the weights. Defaults to ``5e-4``.
    """

    _dataset, _num_outputs, _variant = "cifar10", 10, 19


class cifar100_vgg16(_vgg_problem):
    """VGG 16 on CIFAR-100 (DeepOBS): as :class:`cifar10_vgg16` with 100 outputs.

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): l2 factor on the weights. Defaults to ``5e-4``.
    """

    _dataset, _num_outputs, _variant = "cifar100", 100, 16


class cifar100_vgg19(_vgg_problem):
    """VGG 19 on CIFAR-100 (DeepOBS): as :class:`cifar10_vgg19` with 100 outputs.

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): l2 factor on the weights. Defaults to ``5e-4``.
    """

    _dataset, _num_outputs, _variant = "cifar100", 100, 19


class _wrn_problem(_WeightRegularizedProblem):
    """Wide ResNet on CIFAR-100 (with BatchNorm); l2 on conv and dense weights only."""

    _num_residual_blocks = None

    def __init__(self, batch_size, weight_decay=0.0005):
        super().__init__(batch_size, weight_decay)

    def _is_penalized(self, parameter_name):
        return "weight" in parameter_name and (
            "dense" in parameter_name or "conv" in parameter_name
        )

    def set_up(self):
        """Build the CIFAR-100 data, the wide residual net, and the loss."""
        net = _modules.net_wrn(
            num_residual_blocks=self._num_residual_blocks, widening_factor=4, num_outputs=100
        )
        self._finish_set_up(_datasets.cifar100(self._batch_size), net)


class cifar100_wrn164(_wrn_problem):
    """Wide ResNet 16-4 on CIFAR-100 (DeepOBS); BackOBS rejects it (BatchNorm).

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): l2 factor on conv and dense weights. Defaults to ``5e-4``.
    """

    _num_residual_blocks = 2


class cifar100_wrn404(_wrn_problem):
    """Wide ResNet 40-4 on CIFAR-100 (DeepOBS); BackOBS rejects it (BatchNorm).

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): l2 factor on conv and dense weights. Defaults to ``5e-4``.
    """

    _num_residual_blocks = 6


def _symmetric_square_root(matrix):
    """Return ``S`` symmetric with ``S @ S == matrix`` for a symmetric PSD ``[D, D]`` matrix."""
    symmetric = 0.5 * (matrix + matrix.T).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
    root = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    return root.to(matrix.dtype)


def _frozen_linear(weight, bias=None):
    """A Linear layer ``x @ weight.T (+ bias)`` whose weight is a buffer, not a parameter."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None)
    del layer.weight
    layer.register_buffer("weight", weight)
    if bias is not None:
        layer.bias = nn.Parameter(bias)
    return layer


class QuadraticDeepNet(nn.Sequential):
    """``x -> S (theta - x)`` as two Linear layers; ``theta`` is the only parameter.

    ``shift`` computes ``theta - x`` (weight ``-I``, a buffer; bias ``theta``, trainable) and
    ``sqrt_hessian`` multiplies by ``S`` (a buffer), so that
    ``0.5 * ||output||^2 = 0.5 (theta - x)^T Q (theta - x)``.

    Args:
        hessian (torch.Tensor): The problem's Hessian ``Q``, ``[D, D]``, symmetric PSD.
        theta (torch.Tensor): Initial value of ``theta``, ``[D]``.

    Shapes:
        input ``[N, D]``, output ``[N, D]``.
    """

    def __init__(self, hessian, theta):
        dim = theta.numel()
        eye = torch.eye(dim, dtype=theta.dtype, device=theta.device)
        super().__init__()
        self.add_module("shift", _frozen_linear(-eye, theta.detach().clone()))
        self.add_module("sqrt_hessian", _frozen_linear(_symmetric_square_root(hessian)))
        self.Hessian = hessian

    @property
    def theta(self):
        """The trainable parameter ``theta``, ``[D]`` (the bias of ``shift``)."""
        return self.shift.bias


class QuadraticLoss(nn.Module):
    """``0.5 * ||output_n - target_n||^2`` per sample, reduced as DeepOBS reduces.

    An ``MSELoss`` whose output is multiplied by a positive constant: ``0.5 * D`` for
    ``"mean"`` (MSELoss averages over ``N * D`` entries, DeepOBS over ``N`` samples) and
    ``0.5`` for ``"sum"``. For ``"none"`` the per-sample values ``[N]`` are returned.

    Args:
        reduction (str): ``"mean"``, ``"sum"`` or ``"none"``.

    Shapes:
        output and target ``[N, D]``; result a scalar, or ``[N]`` for ``"none"``.
    """

    def __init__(self, reduction="mean"):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        super().__init__()
        self.reduction = reduction
        self.mse = nn.MSELoss(reduction=reduction)

    def forward(self, output, target):
        """Compute the loss (see the class docstring)."""
        squared_error = self.mse(output, target)
        if self.reduction == "none":
            return 0.5 * squared_error.flatten(start_dim=1).sum(dim=1)
        if self.reduction == "mean":
            return (0.5 * output[0].numel()) * squared_error
        return 0.5 * squared_error


# DeepOBS 1.1.2 seeds the module-level generator of its quadratic_deep module with 42.
_DEEPOBS_QUADRATIC_SEED = 42
_QUADRATIC_RNG_LOCK = threading.Lock()
# Looked up once: the runner may put BackOBS's class under DeepOBS's name for a run.
_DEEPOBS_QUADRATIC_MODULE = sys.modules[_deepobs.testproblems.quadratic_deep.__module__]


class quadratic_deep(_deepobs.testproblems.quadratic_deep):
    """DeepOBS's quadratic_deep with a network and loss module the engine differentiates.

    Same data, Hessian and initial ``theta`` as DeepOBS's problem, same loss values and
    gradients for every batch and reduction; the net is a :class:`QuadraticDeepNet`, the loss
    a :class:`QuadraticLoss` against zero targets. Accuracy is ``0.0`` as in DeepOBS.

    Args:
        batch_size (int): Batch size to use.
        weight_decay (float): Ignored: the problem has no l2 term.
    """

    def set_up(self):
        """Set up DeepOBS's problem, then re-express its net (see :func:`_rewrite_quadratic`).

        DeepOBS 1.1.2 draws the Hessian's rotation from a module-level ``RandomState(42)``,
        so each instance set up in one process would get another Hessian; here every instance
        gets the one a fresh process's first instance gets (the intended problem), so that a
        run's numbers do not depend on what its process ran before.
        """
        with _QUADRATIC_RNG_LOCK:
            module = _DEEPOBS_QUADRATIC_MODULE
            shared_rng = module.rng
            module.rng = np.random.RandomState(_DEEPOBS_QUADRATIC_SEED)
            try:
                super().set_up()
            finally:
                module.rng = shared_rng
        _rewrite_quadratic(self)

    def get_batch_loss_and_accuracy_func(
        self, reduction="mean", add_regularization_if_available=True
    ):
        """Fetch the next batch and return a function computing its loss and accuracy.

        Args:
            reduction (str): ``"mean"``, ``"sum"`` or ``"none"`` (per-sample losses ``[N]``).
            add_regularization_if_available (bool): Add the regularisation loss (zero here).

        Returns:
            callable: Without arguments, returns ``(loss, accuracy)``.
        """
        inputs = self._get_next_batch()[0].to(self._device)

        def forward_func():
            with torch.set_grad_enabled(self.phase not in ("train_eval", "test", "valid")):
                outputs = self.net(inputs)
                targets = torch.zeros_like(outputs)
                loss = self.loss_function(reduction=reduction)(outputs, targets)
            if add_regularization_if_available:
                regularization = self.get_regularization_loss()
            else:
                regularization = torch.tensor(0.0, device=self._device)
            return loss + regularization, 0.0

        return forward_func


def _rewrite_quadratic(tproblem):
    """Turn a set-up DeepOBS quadratic_deep (1.1.2 net) into :class:`quadratic_deep`, in place.

    Keeps the data, the Hessian and the current ``theta``. The instance's class becomes
    :class:`quadratic_deep` (a subclass adding no state), so its methods match the new net.
    """
    old_net = tproblem.net
    tproblem.net = QuadraticDeepNet(old_net.Hessian, old_net.theta.detach()).to(tproblem._device)
    tproblem.loss_function = QuadraticLoss
    tproblem.__class__ = quadratic_deep
    tproblem.regularization_groups = tproblem.get_regularization_groups()


def _is_deepobs_quadratic_net(net):
    return isinstance(net, _modules.net_quadratic_deep)


MISSING_FROM_DEEPOBS = (
    fmnist_logreg,
    svhn_3c3d,
    cifar10_vgg16,
    cifar10_vgg19,
    cifar100_vgg16,
    cifar100_vgg19,
    cifar100_wrn164,
    cifar100_wrn404,
)


def register_with_deepobs():
    """Make the problems above reachable as ``deepobs.pytorch.testproblems.<name>``.

    DeepOBS's runner finds a problem with ``getattr(deepobs.pytorch.testproblems, name)``.
    A DeepOBS version that has a problem of that name keeps its own.
    """
    for problem_class in MISSING_FROM_DEEPOBS:
        if not hasattr(_deepobs.testproblems, problem_class.__name__):
            setattr(_deepobs.testproblems, problem_class.__name__, problem_class)
