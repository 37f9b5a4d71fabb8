"""backobs.optim: damped Newton steps against dense references, the registry, the errors.

The references form the damped curvature densely and solve with it: the GGN diagonal from
``torch.func`` (J^T H J), the Kronecker curvatures as ``torch.kron`` of the damped factors
read from the parameters, with π computed here from its definition (Martens & Grosse 2015,
§6.3). The moving average and the inverse interval are written as their definitions (a
weighted sum over the steps, the curvature of the last refresh step), not as updates.
"""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from backobs.optim import (
    CURVATURES,
    OPTIMIZERS,
    DampedNewton,
    NonFiniteUpdateError,
    check_hyperparameters,
    make_optimizer,
    required_extensions,
)
from backpack_core import backpack, extend
from backpack_core.extensions import KFAC, DiagGGNExact

DTYPE = torch.float64


def mlp_sigmoid_ce():
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3))
    inputs = torch.randn(6, 4, dtype=DTYPE)
    return model, nn.CrossEntropyLoss(), inputs, torch.randint(0, 3, (6,))


def mlp_relu_mse_sum():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    inputs = torch.randn(5, 3, dtype=DTYPE)
    return model, nn.MSELoss(reduction="sum"), inputs, torch.randn(5, 2, dtype=DTYPE)


def conv_net_ce():
    model = nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    )
    inputs = torch.randn(4, 2, 4, 4, dtype=DTYPE)
    return model, nn.CrossEntropyLoss(), inputs, torch.randint(0, 3, (4,))


SETTINGS = {"mlp_sigmoid_ce": mlp_sigmoid_ce, "mlp_relu_mse_sum": mlp_relu_mse_sum}
SETTINGS_WITH_CONV = {**SETTINGS, "conv_net_ce": conv_net_ce}


def build(setting, seed=0):
    torch.manual_seed(seed)
    model, lossfunc, inputs, targets = setting()
    return extend(model.to(DTYPE)), extend(lossfunc), inputs, targets


def dense_ggn_diagonal(model, lossfunc, inputs, targets):
    """Diagonal of J^T H J per parameter, with torch.func only."""
    names = [name for name, _ in model.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}
    outputs = functional_call(model, params, (inputs,))
    jacobians = jacrev(lambda p: functional_call(model, p, (inputs,)))(params)
    loss_hessian = hessian(lambda out: lossfunc(out, targets))(outputs.detach())
    flat_outputs = outputs.numel()
    loss_hessian = loss_hessian.reshape(flat_outputs, flat_outputs)
    diagonals = {}
    for name in names:
        jacobian = jacobians[name].reshape(flat_outputs, -1)
        ggn = jacobian.T @ loss_hessian @ jacobian
        diagonals[name] = ggn.diagonal().reshape(params[name].shape)
    return diagonals


def pi_from_definition(output_factor, input_factor):
    input_norm = torch.trace(input_factor) / input_factor.shape[0]
    output_norm = torch.trace(output_factor) / output_factor.shape[0]
    if input_norm <= 0 or output_norm <= 0:
        return 1.0
    return math.sqrt(input_norm / output_norm)


def dense_damped_curvature(kind, curvature, damping):
    """The damped curvature matrix over the flattened parameter, formed densely."""
    if kind == "diagonal":
        return torch.diag(curvature.flatten() + damping)
    if len(curvature) == 1:
        (output_factor,) = curvature
        return output_factor + damping * torch.eye(output_factor.shape[0], dtype=DTYPE)
    output_factor, input_factor = curvature
    pi = pi_from_definition(output_factor, input_factor)
    root = math.sqrt(damping)
    eye_out = torch.eye(output_factor.shape[0], dtype=DTYPE)
    eye_in = torch.eye(input_factor.shape[0], dtype=DTYPE)
    return torch.kron(output_factor + root / pi * eye_out, input_factor + root * pi * eye_in)


def newton_step(theta, grad, matrix, lr):
    return theta - lr * torch.linalg.solve(matrix, grad.flatten()).reshape(theta.shape)


def train(model, lossfunc, inputs, targets, optimizer, steps, savefield):
    """Take ``steps`` steps on one batch; record what each step saw and did."""
    records = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = lossfunc(model(inputs), targets)
        with backpack(*optimizer.extensions()):
            loss.backward()
        record = {"before": {}, "grad": {}, "curvature": {}, "after": {}}
        for name, p in model.named_parameters():
            record["before"][name] = p.detach().clone()
            record["grad"][name] = p.grad.clone()
            value = getattr(p, savefield, None)
            if isinstance(value, list):
                value = [factor.clone() for factor in value]
            elif value is not None:
                value = value.clone()  # the default diagonal step reuses its memory
            record["curvature"][name] = value
        optimizer.step()
        for name, p in model.named_parameters():
            record["after"][name] = p.detach().clone()
        records.append(record)
    return records


def average(values, decay):
    """Bias-corrected exponential moving average as a weighted sum of ``values``."""
    t = len(values)
    weights = [(1 - decay) * decay ** (t - 1 - s) for s in range(t)]
    total = sum(weights)
    if isinstance(values[0], list):
        return [
            sum(w * v[i] for w, v in zip(weights, values)) / total for i in range(len(values[0]))
        ]
    return sum(w * v for w, v in zip(weights, values)) / total


def check_steps(records, kind, lr, damping, ema_decay=0.0, inverse_interval=1):
    for t, record in enumerate(records, start=1):
        refresh = 1 + inverse_interval * ((t - 1) // inverse_interval)
        for name, theta in record["before"].items():
            seen = [r["curvature"][name] for r in records[:refresh]]
            if ema_decay == 0.0:
                curvature = seen[-1]
            else:
                curvature = average(seen, ema_decay)
            matrix = dense_damped_curvature(kind, curvature, damping)
            expected = newton_step(theta, record["grad"][name], matrix, lr)
            torch.testing.assert_close(record["after"][name], expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("setting", SETTINGS_WITH_CONV.values(), ids=SETTINGS_WITH_CONV.keys())
def test_diag_ggn_exact_step_equals_dense_ggn_diagonal(setting):
    model, lossfunc, inputs, targets = build(setting)
    diagonals = dense_ggn_diagonal(model, lossfunc, inputs, targets)
    optimizer = DampedNewton(model.parameters(), "diag_ggn_exact", lr=0.7, damping=0.05)
    (record,) = train(model, lossfunc, inputs, targets, optimizer, 1, "diag_ggn_exact")
    for name, theta in record["before"].items():
        matrix = dense_damped_curvature("diagonal", diagonals[name], 0.05)
        expected = newton_step(theta, record["grad"][name], matrix, 0.7)
        torch.testing.assert_close(record["after"][name], expected, rtol=1e-9, atol=1e-11)


OPTIONS = {
    "plain": {},
    "ema": {"ema_decay": 0.6},
    "interval": {"inverse_interval": 2},
    "ema_and_interval": {"ema_decay": 0.6, "inverse_interval": 2},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("curvature", ["diag_ggn_exact", "diag_ggn_mc"])
def test_diagonal_steps_with_options(curvature, options):
    model, lossfunc, inputs, targets = build(mlp_sigmoid_ce)
    optimizer = DampedNewton(model.parameters(), curvature, lr=0.5, damping=0.1, **options)
    records = train(model, lossfunc, inputs, targets, optimizer, 3, curvature)
    check_steps(records, "diagonal", 0.5, 0.1, **options)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("curvature", ["kfac", "kflr", "kfra"])
@pytest.mark.parametrize("setting", SETTINGS_WITH_CONV.values(), ids=SETTINGS_WITH_CONV.keys())
def test_kronecker_steps_equal_dense_damped_factors(setting, curvature, options):
    model, lossfunc, inputs, targets = build(setting)
    optimizer = DampedNewton(model.parameters(), curvature, lr=0.5, damping=0.01, **options)
    records = train(model, lossfunc, inputs, targets, optimizer, 3, curvature)
    for name, _ in model.named_parameters():
        factors = records[0]["curvature"][name]
        assert len(factors) == (1 if name.endswith("bias") else 2), name
    check_steps(records, "kronecker", 0.5, 0.01, **options)


def test_interval_without_average_asks_for_the_curvature_only_when_it_is_used():
    model, lossfunc, inputs, targets = build(mlp_sigmoid_ce)
    optimizer = DampedNewton(model.parameters(), "kflr", lr=0.1, damping=0.1, inverse_interval=3)
    needed = []
    for _ in range(7):
        needed.append(bool(optimizer.extensions()))
        train(model, lossfunc, inputs, targets, optimizer, 1, "kflr")
    assert needed == [True, False, False, True, False, False, True]
    averaged = DampedNewton(
        model.parameters(), "kflr", lr=0.1, damping=0.1, inverse_interval=3, ema_decay=0.5
    )
    assert all(averaged.extensions() for _ in range(3))


def test_kfac_approx_reaches_the_extension():
    model, _, _, _ = build(conv_net_ce)
    for approx in ("backpack", "expand", "reduce"):
        optimizer = DampedNewton(model.parameters(), "kfac", 0.1, 0.1, kfac_approx=approx)
        (extension,) = optimizer.extensions()
        assert isinstance(extension, KFAC) and extension.kfac_approx == approx
        assert optimizer.extensions()[0] is not extension


def test_zero_equals_sgd_with_lr_over_damping():
    model, lossfunc, inputs, targets = build(mlp_relu_mse_sum)
    twin, _, _, _ = build(mlp_relu_mse_sum)
    optimizer = DampedNewton(model.parameters(), "zero", lr=0.3, damping=4.0)
    assert optimizer.extensions() == []
    sgd = torch.optim.SGD(twin.parameters(), lr=0.3 / 4.0)
    for _ in range(3):
        for net, opt in ((model, optimizer), (twin, sgd)):
            opt.zero_grad()
            lossfunc(net(inputs), targets).backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_pi_damping_as_defined():
    output_factor = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=DTYPE)  # tr / dim = 2.5
    input_factor = torch.diag(torch.tensor([1.0, 2.0, 6.0], dtype=DTYPE))  # tr / dim = 3
    weight = nn.Parameter(torch.zeros(2, 3, dtype=DTYPE))
    weight.grad = torch.arange(1.0, 7.0, dtype=DTYPE).reshape(2, 3)
    weight.kflr = [output_factor, input_factor]
    damping = 0.04
    DampedNewton([weight], "kflr", lr=1.0, damping=damping).step()
    pi = math.sqrt(3 / 2.5)
    left = output_factor + 0.2 / pi * torch.eye(2, dtype=DTYPE)
    right = input_factor + 0.2 * pi * torch.eye(3, dtype=DTYPE)
    expected = -torch.linalg.inv(left) @ weight.grad @ torch.linalg.inv(right)
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-12, atol=1e-14)


def test_pi_is_one_when_a_factor_has_no_trace():
    weight = nn.Parameter(torch.zeros(2, 2, dtype=DTYPE))
    weight.grad = torch.ones(2, 2, dtype=DTYPE)
    weight.kfac = [torch.zeros(2, 2, dtype=DTYPE), 4 * torch.eye(2, dtype=DTYPE)]
    DampedNewton([weight], "kfac", lr=1.0, damping=0.25).step()
    # (0 + 0.5 I)^-1 G (4 I + 0.5 I)^-1
    torch.testing.assert_close(weight.detach(), -torch.ones(2, 2, dtype=DTYPE) / 0.5 / 4.5)


def test_bias_gets_its_factor_plus_damping():
    bias = nn.Parameter(torch.zeros(2, dtype=DTYPE))
    bias.grad = torch.tensor([1.0, -2.0], dtype=DTYPE)
    factor = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=DTYPE)
    bias.kfra = [factor]
    DampedNewton([bias], "kfra", lr=0.5, damping=0.1).step()
    expected = -0.5 * torch.linalg.solve(factor + 0.1 * torch.eye(2, dtype=DTYPE), bias.grad)
    torch.testing.assert_close(bias.detach(), expected)


def test_singular_factors_in_float32_match_the_float64_reference():
    vector = torch.tensor([1.0, 2.0, 3.0])
    factors = [torch.tensor([[2.0, 1.0], [1.0, 0.5]]), torch.outer(vector, vector)]  # rank 1
    grad = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.0, 1.0]])
    weight = nn.Parameter(torch.zeros(2, 3))
    weight.grad = grad
    weight.kflr = factors
    DampedNewton([weight], "kflr", lr=1.0, damping=1e-4).step()
    matrix = dense_damped_curvature("kronecker", [f.to(DTYPE) for f in factors], 1e-4)
    expected = newton_step(torch.zeros(2, 3, dtype=DTYPE), grad.to(DTYPE), matrix, 1.0)
    torch.testing.assert_close(weight.detach(), expected.float(), rtol=1e-4, atol=1e-4)


def test_round_off_negative_eigenvalues_are_cut_at_zero():
    vector = torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE)
    # Rank one with unit eigenvalue, minus a round-off 1e-6 that the damping's shift
    # (sqrt(1e-14) * pi, about 6e-8) does not cover: the Cholesky factorisation fails.
    indefinite = torch.outer(vector, vector) / 14 - 1e-6 * torch.eye(3, dtype=DTYPE)
    weight = nn.Parameter(torch.zeros(1, 3, dtype=DTYPE))
    weight.grad = vector.reshape(1, 3).clone()  # in the range of the factor
    weight.kflr = [torch.ones(1, 1, dtype=DTYPE), indefinite]
    DampedNewton([weight], "kflr", lr=1.0, damping=1e-14).step()
    pi = math.sqrt((1 - 3e-6) / 3)
    shift_output, shift_input = 1e-7 / pi, 1e-7 * pi
    expected = -vector / (1 + shift_output) / (1 - 1e-6 + shift_input)
    torch.testing.assert_close(weight.detach()[0], expected, rtol=1e-8, atol=0)


def test_one_kflr_step_solves_linear_least_squares():
    torch.manual_seed(1)
    inputs = torch.randn(20, 4, dtype=DTYPE)
    targets = torch.randn(20, 3, dtype=DTYPE)
    model = extend(nn.Linear(4, 3, bias=False).to(DTYPE))
    lossfunc = extend(nn.MSELoss())
    optimizer = DampedNewton(model.parameters(), "kflr", lr=1.0, damping=1e-20)
    train(model, lossfunc, inputs, targets, optimizer, 1, "kflr")
    solution = torch.linalg.lstsq(inputs, targets).solution.T
    torch.testing.assert_close(model.weight.detach(), solution, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------
def test_registry_names():
    assert set(OPTIMIZERS) == {"sgd", "momentum", "adam", *CURVATURES}
    for name, spec in OPTIMIZERS.items():
        assert spec.name == name and spec.description
        assert spec.hyperparameters["lr"] == {"type": float}


def test_first_order_baselines_use_deepobs_names_and_defaults():
    params = [nn.Parameter(torch.zeros(2))]
    momentum = make_optimizer("momentum", params, lr=0.1)
    assert isinstance(momentum, torch.optim.SGD)
    assert momentum.defaults["momentum"] == 0.99 and momentum.defaults["nesterov"] is False
    adam = make_optimizer("adam", params, lr=0.01, beta1=0.8)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["betas"] == (0.8, 0.999) and adam.defaults["eps"] == 1e-8
    sgd = make_optimizer("sgd", params, lr=0.1)
    assert sgd.defaults["momentum"] == 0 and required_extensions(sgd) == []


def test_check_hyperparameters_fills_defaults_and_converts():
    assert check_hyperparameters("kfac", {"lr": 1}) == {
        "lr": 1.0,
        "damping": 1e-3,
        "ema_decay": 0.0,
        "inverse_interval": 1,
        "mc_samples": 1,
        "kfac_approx": "expand",
    }
    assert check_hyperparameters("zero", {"lr": 0.5, "damping": 2}) == {"lr": 0.5, "damping": 2.0}


@pytest.mark.parametrize("curvature", CURVATURES)
def test_make_optimizer_builds_damped_newton(curvature):
    model, _, _, _ = build(mlp_sigmoid_ce)
    optimizer = make_optimizer(curvature, model.parameters(), lr=0.1, damping=0.2)
    assert isinstance(optimizer, DampedNewton) and optimizer.curvature == curvature
    extensions = required_extensions(optimizer)
    assert [e.savefield for e in extensions] == ([] if curvature == "zero" else [curvature])


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
BAD_HYPERPARAMETERS = [
    ({"lr": -0.1}, "lr must be >= 0"),
    ({"lr": float("nan")}, "lr must be finite"),
    ({"lr": float("inf")}, "lr must be finite"),
    ({"damping": -1.0}, "damping must be > 0"),
    ({"damping": 0.0}, "damping must be > 0"),
    ({"damping": float("inf")}, "damping must be finite"),
    ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
    ({"inverse_interval": 0}, "inverse_interval must be > 0"),
    ({"inverse_interval": 2.5}, "inverse_interval must be an integer"),
    ({"kfac_approx": "full"}, "kfac_approx must be one of backpack, expand, reduce"),
    ({"lr": "fast"}, "lr must be a number"),
]


@pytest.mark.parametrize("bad, message", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters(bad, message):
    values = {"lr": 0.1, "damping": 0.1, **bad}
    with pytest.raises(ValueError, match=message):
        check_hyperparameters("kfac", values)
    with pytest.raises(ValueError, match=message):
        make_optimizer("kfac", [nn.Parameter(torch.zeros(1))], **values)
    with pytest.raises(ValueError, match=message):
        DampedNewton([nn.Parameter(torch.zeros(1))], "kfac", **values)


def test_unknown_names_list_the_choices():
    params = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="unknown curvature 'hessian'.*diag_ggn_exact.*zero"):
        DampedNewton(params, "hessian", lr=0.1, damping=0.1)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'.*sgd, momentum, adam"):
        make_optimizer("lbfgs", params, lr=0.1)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        check_hyperparameters("lbfgs", {})
    with pytest.raises(ValueError, match="no hyperparameter 'momentum'.*lr, damping"):
        check_hyperparameters("kflr", {"lr": 0.1, "momentum": 0.9})
    with pytest.raises(ValueError, match="needs the hyperparameter lr"):
        check_hyperparameters("sgd", {})
    with pytest.raises(ValueError, match="momentum must be in"):
        check_hyperparameters("momentum", {"lr": 0.1, "momentum": 1.5})


def test_step_without_the_extension_says_so():
    model, lossfunc, inputs, targets = build(mlp_sigmoid_ce)
    optimizer = DampedNewton(model.named_parameters(), "diag_ggn_exact", lr=0.1, damping=0.1)
    lossfunc(model(inputs), targets).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"'0.weight'.*no \.diag_ggn_exact.*DiagGGNExact"):
        optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_curvature_is_used_once():
    model, lossfunc, inputs, targets = build(mlp_sigmoid_ce)
    optimizer = DampedNewton(model.parameters(), "kflr", lr=0.1, damping=0.1)
    train(model, lossfunc, inputs, targets, optimizer, 1, "kflr")
    optimizer.zero_grad()
    lossfunc(model(inputs), targets).backward()  # outside backpack: the old factors are gone
    with pytest.raises(RuntimeError, match=r"backpack\(\*optimizer.extensions\(\)\)"):
        optimizer.step()


def test_closure_is_refused():
    optimizer = DampedNewton([nn.Parameter(torch.zeros(1))], "zero", lr=0.1, damping=0.1)
    with pytest.raises(ValueError, match="no closure"):
        optimizer.step(lambda: 0.0)


def test_non_finite_curvature_names_the_parameter_and_changes_nothing():
    first = nn.Parameter(torch.ones(2))
    second = nn.Parameter(torch.ones(3))
    for p in (first, second):
        p.grad = torch.ones_like(p)
    first.diag_ggn_mc = torch.ones(2)
    second.diag_ggn_mc = torch.tensor([1.0, float("nan"), 1.0])
    optimizer = DampedNewton([("a", first), ("b", second)], "diag_ggn_mc", lr=0.1, damping=0.1)
    with pytest.raises(NonFiniteUpdateError, match=r"curvature \.diag_ggn_mc of parameter 'b'"):
        optimizer.step()
    assert torch.equal(first.detach(), torch.ones(2))
    assert torch.equal(second.detach(), torch.ones(3))
    assert issubclass(NonFiniteUpdateError, ArithmeticError)


def test_non_finite_update_names_the_parameter():
    weight = nn.Parameter(torch.ones(2, 2))
    weight.grad = torch.tensor([[1.0, float("inf")], [0.0, 1.0]])
    weight.kfac = [torch.eye(2), torch.eye(2)]
    with pytest.raises(NonFiniteUpdateError, match="update of parameter 0 of parameter group 0"):
        DampedNewton([weight], "kfac", lr=0.1, damping=0.1).step()
    assert torch.equal(weight.detach(), torch.ones(2, 2))


def test_step_consumes_the_quantity():
    model, lossfunc, inputs, targets = build(mlp_sigmoid_ce)
    optimizer = DampedNewton(model.parameters(), "diag_ggn_exact", lr=0.1, damping=0.1)
    loss = lossfunc(model(inputs), targets)
    with backpack(*optimizer.extensions()):
        loss.backward()
    assert isinstance(optimizer.extensions()[0], DiagGGNExact)
    optimizer.step()
    assert not hasattr(model[0].weight, "diag_ggn_exact")


@pytest.mark.parametrize("curvature", ["diag_ggn_exact", "zero"])
def test_non_finite_gradient_names_the_parameter(curvature):
    weight = nn.Parameter(torch.ones(3))
    weight.grad = torch.tensor([0.0, float("-inf"), 1.0])
    weight.diag_ggn_exact = torch.zeros(3)  # inf * 0 must not hide the infinity
    optimizer = DampedNewton([("w", weight)], curvature, lr=0.1, damping=0.1)
    with pytest.raises(NonFiniteUpdateError, match="gradient of parameter 'w'"):
        optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3))


def test_state_dict_round_trip_continues_identically():
    model, lossfunc, inputs, targets = build(mlp_sigmoid_ce)
    twin, _, _, _ = build(mlp_sigmoid_ce)
    options = {"lr": 0.3, "damping": 0.05, "ema_decay": 0.8, "inverse_interval": 3}
    optimizer = DampedNewton(model.parameters(), "kflr", **options)
    train(model, lossfunc, inputs, targets, optimizer, 2, "kflr")
    twin.load_state_dict(model.state_dict())
    restored = DampedNewton(twin.parameters(), "kflr", **options)
    restored.load_state_dict(optimizer.state_dict())
    for net, opt in ((model, optimizer), (twin, restored)):
        train(net, lossfunc, inputs, targets, opt, 2, "kflr")
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
