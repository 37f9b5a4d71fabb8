"""Every extension on every supported problem; values against torch.func/autograd references.

The references below are written with ``torch.func`` and ``torch.autograd`` on an unextended
copy of the net, independently of the engine.
"""

import copy

import pytest
import torch
from problem_helpers import HEAVY, freeze_batch, make_problem
from torch.func import functional_call, grad, jacrev, vmap

import backobs
from backpack_core import backpack
from backpack_core.extensions import (
    ALL,
    KFLR,
    BatchDiagGGNExact,
    BatchDiagHessian,
    BatchDotGrad,
    BatchGrad,
    BatchL2Grad,
    DiagGGNExact,
    DiagHessian,
    SumGradSquared,
    Variance,
)

BATCH_SIZE = 3
EXTENSIONS = list(ALL)


def _expected_shapes(extension, parameter):
    n, shape = BATCH_SIZE, tuple(parameter.shape)
    return {
        "grad_batch": (n, *shape),
        "batch_l2": (n,),
        "sum_grad_squared": shape,
        "variance": shape,
        "batch_dot": (n, n),
        "diag_ggn_exact": shape,
        "diag_ggn_mc": shape,
        "diag_ggn_exact_batch": (n, *shape),
        "diag_ggn_mc_batch": (n, *shape),
        "diag_h": shape,
        "diag_h_batch": (n, *shape),
    }.get(extension.savefield)


# One set-up problem at a time (the cases are ordered problem by problem): VGG nets hold
# 0.5 GB of parameters each.
_CACHE = {}


def _extended_problem(problem_class):
    if problem_class not in _CACHE:
        _CACHE.clear()
        tproblem = make_problem(problem_class, batch_size=BATCH_SIZE)
        freeze_batch(tproblem)
        _CACHE[problem_class] = backobs.extend_problem(tproblem)
    return _CACHE[problem_class]


# Exact curvature on All-CNN-C backpropagates 100 columns through 32x32x96 conv maps:
# 10-17 s per case here, so outside the default run.
_SLOW_ON_ALLCNNC = {DiagGGNExact, BatchDiagGGNExact, DiagHessian, BatchDiagHessian, KFLR}


def _cases():
    for problem_class in backobs.SUPPORTED:
        for extension_class in EXTENSIONS:
            name = problem_class.__name__
            slow = name in HEAVY or (
                name == "cifar100_allcnnc" and extension_class in _SLOW_ON_ALLCNNC
            )
            marks = [pytest.mark.slow] if slow else []
            case_id = f"{name}-{extension_class.__name__}"
            yield pytest.param(problem_class, extension_class, id=case_id, marks=marks)


@pytest.mark.parametrize("problem_class, extension_class", list(_cases()))
def test_every_extension_runs_on_every_supported_problem(problem_class, extension_class):
    tproblem = _extended_problem(problem_class)
    extension = extension_class()
    torch.manual_seed(0)
    tproblem.net.zero_grad()
    with backpack(extension):
        loss, _ = tproblem.get_batch_loss_and_accuracy()
        loss.backward()
    for parameter in tproblem.net.parameters():
        value = getattr(parameter, extension.savefield)
        expected = _expected_shapes(extension, parameter)
        if expected is not None:
            assert value.shape == expected
            assert torch.isfinite(value).all()
        else:  # Kronecker factors: a list of square matrices
            assert all(factor.shape[0] == factor.shape[1] for factor in value)
        delattr(parameter, extension.savefield)


# --- references --------------------------------------------------------------------------

REFERENCE_PROBLEMS = ["mnist_logreg", "mnist_mlp", "fmnist_2c2d", "quadratic_deep"]


class _Reference:
    """Per-sample gradients, GGN diagonals and Hessian diagonal entries of the mean loss."""

    def __init__(self, tproblem, inputs, labels):
        self.net = copy.deepcopy(tproblem.net)  # taken before extension
        self.names = [name for name, _ in self.net.named_parameters()]
        self.params = {k: v.detach() for k, v in self.net.named_parameters()}
        self.buffers = {k: v.detach() for k, v in self.net.named_buffers()}
        self.inputs, self.labels = inputs, labels
        self.quadratic = tproblem.__class__.__name__ == "quadratic_deep"
        if self.quadratic:
            self.hessian = tproblem.net.Hessian

    def output(self, params, x):
        return functional_call(self.net, (params, self.buffers), (x.unsqueeze(0),))[0]

    def loss_of_output(self, output, label):
        """One sample's loss as DeepOBS defines it (independent of the engine's modules)."""
        if self.quadratic:
            return 0.5 * (output**2).sum()
        return torch.nn.functional.cross_entropy(output.unsqueeze(0), label.unsqueeze(0))

    def sample_loss(self, params, x, label):
        if self.quadratic:  # DeepOBS 1.1.2's formula: 0.5 (theta - x)^T Q (theta - x)
            difference = params["shift.bias"] - x
            return 0.5 * difference @ self.hessian @ difference
        return self.loss_of_output(self.output(params, x), label)

    def grad_batch(self):
        per_sample = vmap(grad(self.sample_loss), in_dims=(None, 0, 0))(
            self.params, self.inputs, self.labels
        )
        return {k: v / len(self.inputs) for k, v in per_sample.items()}

    def diag_ggn_batch(self):
        def one(x, label):
            jacobian = jacrev(self.output)(self.params, x)  # name -> [C, *shape]
            output = self.output(self.params, x)
            loss_hessian = torch.func.hessian(self.loss_of_output)(output, label)  # [C, C]
            return {
                k: torch.einsum("c...,cd,d...->...", j, loss_hessian, j)
                for k, j in jacobian.items()
            }

        per_sample = vmap(one)(self.inputs, self.labels)
        return {k: v / len(self.inputs) for k, v in per_sample.items()}

    def hessian_diagonal_entries(self, sample, coordinates):
        """Exact diagonal Hessian entries via double backward; ``sample=None``: mean loss."""
        params = {k: v.clone().requires_grad_(True) for k, v in self.params.items()}
        indices = range(len(self.inputs)) if sample is None else [sample]
        loss = sum(self.sample_loss(params, self.inputs[i], self.labels[i]) for i in indices)
        loss = loss / len(self.inputs)
        gradients = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        entries = {}
        for (name, parameter), gradient in zip(params.items(), gradients):
            values = []
            for index in coordinates[name]:
                (row,) = torch.autograd.grad(
                    gradient.flatten()[index], parameter, retain_graph=True
                )
                values.append(row.flatten()[index])
            entries[name] = torch.stack(values)
        return entries


def _close(actual, expected, scale=None):
    """Float32 agreement: relative 1e-4, absolute 1e-5 of ``scale``.

    ``scale`` defaults to ``expected``'s largest entry; where the quantity is a difference,
    give the size of the terms.
    """
    scale = (expected.abs().max() if scale is None else scale).clamp(min=1e-8)
    expected = expected.to(actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale.item())


@pytest.fixture(scope="module", params=REFERENCE_PROBLEMS)
def extended_with_reference(request):
    torch.manual_seed(0)  # the net's initialisation, whatever ran before
    backobs.use_synthetic_data(True, seed=0)
    tproblem = make_problem(backobs.get_problem_class(request.param), batch_size=BATCH_SIZE)
    inputs, *rest = freeze_batch(tproblem)
    labels = rest[0] if rest else torch.zeros(len(inputs), dtype=torch.long)
    reference = _Reference(tproblem, inputs, labels)
    backobs.extend_problem(tproblem)

    def run(*extensions):
        tproblem.net.zero_grad()
        with backpack(*extensions):
            tproblem.get_batch_loss_and_accuracy()[0].backward()
        return dict(tproblem.net.named_parameters())

    return run, reference


def test_first_order_matches_reference(extended_with_reference):
    run, reference = extended_with_reference
    parameters = run(BatchGrad(), BatchL2Grad(), SumGradSquared(), Variance(), BatchDotGrad())
    grad_batch = reference.grad_batch()
    n = BATCH_SIZE
    for name in reference.names:
        expected, parameter = grad_batch[name], parameters[name]
        _close(parameter.grad_batch, expected)
        # the reductions of the float32 individual gradients are taken in float64
        wide = expected.double()
        _close(parameter.batch_l2, (wide**2).reshape(n, -1).sum(1))
        _close(parameter.sum_grad_squared, (wide**2).sum(0))
        _close(parameter.grad, wide.sum(0))
        # Variance's formula mean(g^2) - mean(g)^2 cancels where the g_n nearly agree: its
        # round-off is relative to mean(g^2), not to the variance (seen in CI at 2.7x the
        # variance-relative tolerance); the reference is the stable mean((g - mean g)^2)
        variance = ((wide - wide.mean(0)) ** 2).mean(0)
        _close(parameter.variance, variance, scale=(wide**2).mean(0).abs().max())
    # BatchDotGrad: Gram matrix of the per-sample gradients; stored on each parameter
    # for that parameter's block
    for name in reference.names:
        block = grad_batch[name].reshape(n, -1).double()
        _close(parameters[name].batch_dot, block @ block.T)


def test_diag_ggn_exact_matches_reference(extended_with_reference):
    run, reference = extended_with_reference
    parameters = run(DiagGGNExact(), BatchDiagGGNExact())
    per_sample = reference.diag_ggn_batch()
    for name in reference.names:
        _close(parameters[name].diag_ggn_exact_batch, per_sample[name])
        _close(parameters[name].diag_ggn_exact, per_sample[name].sum(0))


def test_diag_hessian_matches_reference(extended_with_reference):
    run, reference = extended_with_reference
    parameters = run(DiagHessian(), BatchDiagHessian())
    generator = torch.Generator().manual_seed(0)
    coordinates = {
        name: torch.randperm(p.numel(), generator=generator)[:4].tolist()
        for name, p in reference.params.items()
    }
    expected = reference.hessian_diagonal_entries(None, coordinates)
    for name in reference.names:
        _close(parameters[name].diag_h.flatten()[coordinates[name]], expected[name])
    for sample in range(BATCH_SIZE):
        expected = reference.hessian_diagonal_entries(sample, coordinates)
        for name in reference.names:
            actual = parameters[name].diag_h_batch[sample].flatten()[coordinates[name]]
            _close(actual, expected[name])
