"""The engine's interface: arguments, debug output, extending, errors, memory."""

import gc
import weakref

import pytest
import reference
import torch
from settings import SETTING_IDS, SETTINGS
from torch import nn
from torch.testing import assert_close

from backpack_core import backpack, engine, extend, no_records
from backpack_core.extensions import (
    ALL,
    KFLR,
    KFRA,
    BatchGrad,
    BatchL2Grad,
    DiagGGNExact,
    Variance,
)

SECOND_ORDER = [extension for extension in ALL if extension().quantities()]
SECOND_ORDER_IDS = [extension.__name__ for extension in SECOND_ORDER]
# errors that count as a clear refusal (an AssertionError or a crash deep inside would not)
REFUSALS = (NotImplementedError, ValueError, RuntimeError, TypeError)


def _setting(setting_id):
    return SETTINGS[SETTING_IDS.index(setting_id)]


def _linear_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    X, y = torch.randn(5, 6), torch.randint(3, (5,))
    return model, nn.CrossEntropyLoss(), X, y


# --------------------------------------------------------------------------------------------
# arguments of backpack(...)
# --------------------------------------------------------------------------------------------
def test_backpack_rejects_an_extension_class():
    with pytest.raises(ValueError, match="BatchGrad"):
        with backpack(BatchGrad):
            pass


def test_backpack_rejects_a_non_extension():
    with pytest.raises(ValueError, match="3"):
        with backpack(3):
            pass


# --------------------------------------------------------------------------------------------
# debug output, extending twice, no attributes outside backpack(...)
# --------------------------------------------------------------------------------------------
def _debug_lines(model, lossfunc, X, y, capsys, extend_times=1):
    for _ in range(extend_times):
        model = extend(model, debug=True)
        lossfunc = extend(lossfunc, debug=True)
    loss = lossfunc(model(X), y)
    capsys.readouterr()
    with backpack(BatchGrad(), debug=True):
        loss.backward()
    return [line for line in capsys.readouterr().out.splitlines() if "Running extension" in line]


def test_debug_prints_each_extension_run(capsys):
    lines = _debug_lines(*_linear_problem(), capsys)
    expected = [
        "[DEBUG] Running extension BatchGrad on Linear(in_features=4, out_features=3, bias=True)",
        "[DEBUG] Running extension BatchGrad on Linear(in_features=6, out_features=4, bias=True)",
    ]
    for line in expected:
        assert line in lines, f"{line!r} not in {lines}"


def test_extending_twice_gives_same_numbers_without_double_work(capsys):
    once = _debug_lines(*_linear_problem(), capsys, extend_times=1)
    model, lossfunc, X, y = _linear_problem()
    twice = _debug_lines(model, lossfunc, X, y, capsys, extend_times=2)
    assert twice == once
    expected = reference.first_order(*_linear_problem())["grad_batch"]
    for name, p in model.named_parameters():
        assert_close(p.grad_batch, expected[name])
        assert_close(p.grad, expected[name].sum(0))  # the gradient is not accumulated twice


def test_extend_returns_the_module():
    model, lossfunc, _, _ = _linear_problem()
    assert extend(model) is model
    assert extend(lossfunc) is lossfunc


def test_no_attributes_outside_backpack():
    model, lossfunc, X, y = _linear_problem()
    model, lossfunc = extend(model), extend(lossfunc)
    lossfunc(model(X), y).backward()
    for p in model.parameters():
        assert p.grad is not None
        for savefield in ("grad_batch", "batch_l2", "variance", "diag_ggn_exact", "kflr"):
            assert not hasattr(p, savefield), savefield


def test_float32_and_float64_both_work():
    for dtype in (torch.float32, torch.float64):
        model, lossfunc, X, y = _linear_problem()
        model, X = model.to(dtype), X.to(dtype)
        expected = reference.first_order(model, lossfunc, X, y)["grad_batch"]
        expected_ggn = reference.ggn_diagonal(model, lossfunc, X, y)
        model, lossfunc = extend(model), extend(lossfunc)
        with backpack(BatchGrad(), DiagGGNExact()):
            lossfunc(model(X), y).backward()
        for name, p in model.named_parameters():
            assert p.grad_batch.dtype == dtype and p.diag_ggn_exact.dtype == dtype
            assert_close(p.grad_batch, expected[name])
            assert_close(p.diag_ggn_exact, expected_ggn[name])


def test_backpack_without_extensions_is_a_plain_backward():
    model, lossfunc, X, y = _linear_problem()
    expected = reference.first_order(model, lossfunc, X, y)["grad"]
    model, lossfunc = extend(model), extend(lossfunc)
    with backpack():
        lossfunc(model(X), y).backward()
    for name, p in model.named_parameters():
        assert_close(p.grad, expected[name])
        assert not hasattr(p, "grad_batch")


def test_a_forward_without_records_gives_plain_gradients_and_keeps_nothing():
    model, lossfunc, X, y = _linear_problem()
    expected = reference.first_order(model, lossfunc, X, y)["grad"]
    model, lossfunc = extend(model), extend(lossfunc)
    with no_records():
        loss = lossfunc(model(X), y)
    assert not engine._PENDING  # no module kept its input or output
    with backpack(BatchGrad()):
        loss.backward()
    for name, p in model.named_parameters():
        assert_close(p.grad, expected[name])
        assert not hasattr(p, "grad_batch")  # unset, not zeros
    # outside the block the records are back: the next step gets its quantities
    model.zero_grad()
    with backpack(BatchGrad()):
        lossfunc(model(X), y).backward()
    assert all(p.grad_batch.shape == (5, *p.shape) for p in model.parameters())


def test_backward_with_create_graph_gives_the_same_values_without_a_graph():
    """Extension values carry no graph, also when the backward pass builds one.

    Autograd runs hooks with gradients on only for ``create_graph=True``; the engine then
    computes under ``no_grad`` itself.
    """
    values = []
    for create_graph in (False, True):
        model, lossfunc, X, y = _linear_problem()
        model, lossfunc = extend(model), extend(lossfunc)
        with backpack(BatchGrad(), DiagGGNExact()):
            lossfunc(model(X), y).backward(create_graph=create_graph)
        values.append([(p.grad_batch, p.diag_ggn_exact) for p in model.parameters()])
    for plain, with_graph in zip(*values):
        for expected, actual in zip(plain, with_graph):
            assert not actual.requires_grad and actual.grad_fn is None
            assert_close(actual, expected)


def test_only_the_backward_pass_inside_backpack_counts():
    model, lossfunc, X, y = _linear_problem()
    model, lossfunc = extend(model), extend(lossfunc)
    with backpack(BatchGrad()):
        loss = lossfunc(model(X), y)
    loss.backward()
    for p in model.parameters():
        assert not hasattr(p, "grad_batch")


def test_an_error_inside_backpack_deactivates_the_extensions():
    model, lossfunc, X, y = _linear_problem()
    model, lossfunc = extend(model), extend(lossfunc)
    with pytest.raises(KeyError):
        with backpack(BatchGrad()):
            raise KeyError("user error")
    lossfunc(model(X), y).backward()
    for p in model.parameters():
        assert not hasattr(p, "grad_batch")


def test_an_older_graph_still_alive_does_not_disturb_first_order():
    # e.g. a loss tensor kept for logging: its graph (and the module calls in it) stay alive
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    X_logged, y_logged = torch.randn(5, 6, dtype=torch.float64), torch.randint(3, (5,))
    X, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(3, (5,))
    expected = reference.first_order(model, nn.CrossEntropyLoss(), X, y)["grad_batch"]
    model, lossfunc = extend(model), extend(nn.CrossEntropyLoss())
    logged = lossfunc(model(X_logged), y_logged)  # noqa: F841 (kept alive on purpose)
    loss = lossfunc(model(X), y)
    with backpack(BatchGrad()):
        loss.backward()
    for name, p in model.named_parameters():
        assert_close(p.grad_batch, expected[name], rtol=1e-7, atol=1e-10)


# --------------------------------------------------------------------------------------------
# unsupported modules are errors that name the module and the extension
# --------------------------------------------------------------------------------------------
class Scale(nn.Module):
    """Elementwise scaling by a learned vector: a parameterised module unknown to the engine."""

    def __init__(self, features):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features) + 0.1 * torch.randn(features))

    def forward(self, x):
        return x * self.weight


class Square(nn.Module):
    """Elementwise square: a parameter-free module unknown to the engine."""

    def forward(self, x):
        return x**2


class Residual(nn.Module):
    """``x + f(x)``: a module that is no chain of its children."""

    def __init__(self, features):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(features, features), nn.Tanh())

    def forward(self, x):
        return x + self.f(x)


def _run(model, X, y, *extensions):
    model, lossfunc = extend(model), extend(nn.CrossEntropyLoss())
    loss = lossfunc(model(X), y)
    with backpack(*extensions):
        loss.backward()
    return model


@pytest.mark.parametrize("extension", [BatchGrad, DiagGGNExact, KFLR], ids=lambda e: e.__name__)
def test_unknown_parameterised_module_is_an_error_naming_it(extension):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), Scale(4), nn.Linear(4, 3))
    with pytest.raises(REFUSALS) as info:
        _run(model, torch.randn(3, 6), torch.randint(3, (3,)), extension())
    assert "Scale" in str(info.value) and extension.__name__ in str(info.value)


def test_embedding_is_an_error_naming_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 3), nn.Flatten(), nn.Linear(6, 3))
    with pytest.raises(REFUSALS) as info:
        _run(model, torch.randint(10, (4, 2)), torch.randint(3, (4,)), BatchGrad())
    assert "Embedding" in str(info.value) and "BatchGrad" in str(info.value)


class CenterOverBatch(nn.Module):
    """Subtracts the batch mean: parameter-free, but one sample's output depends on others."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


@pytest.mark.parametrize("extension", SECOND_ORDER, ids=SECOND_ORDER_IDS)
def test_parameter_free_module_mixing_samples_is_an_error_for_second_order(extension):
    # the autograd fallback differentiates per sample, which such a module does not allow
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), CenterOverBatch(), nn.Linear(4, 3))
    with pytest.raises(REFUSALS) as info:
        _run(model, torch.randn(3, 6), torch.randint(3, (3,)), extension())
    assert "CenterOverBatch" in str(info.value) and extension.__name__ in str(info.value)


def test_unknown_parameter_free_module_is_fine_for_first_order():
    # first-order quantities need only each parameterised module's input and output gradient
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), Square(), nn.Linear(4, 3))
    X, y = torch.randn(3, 6), torch.randint(3, (3,))
    expected = reference.first_order(model, nn.CrossEntropyLoss(), X, y)
    model = _run(model, X, y, BatchGrad(), BatchL2Grad())
    for name, p in model.named_parameters():
        assert_close(p.grad_batch, expected["grad_batch"][name])
        assert_close(p.batch_l2, expected["batch_l2"][name])


def test_batchnorm_in_train_mode_is_an_error_for_per_sample_quantities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    with pytest.raises(REFUSALS) as info:
        _run(model, torch.randn(3, 6), torch.randint(3, (3,)), BatchGrad())
    assert "BatchNorm1d" in str(info.value)


def test_residual_connection_is_an_error_for_kfra():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), Residual(4), nn.Linear(4, 3))
    with pytest.raises(NotImplementedError, match="KFRA.*cross terms"):
        _run(model, torch.randn(3, 6), torch.randint(3, (3,)), KFRA())


def test_residual_connection_is_fine_for_first_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), Residual(4), nn.Linear(4, 3))
    X, y = torch.randn(3, 6), torch.randint(3, (3,))
    expected = reference.first_order(model, nn.CrossEntropyLoss(), X, y)
    model = _run(model, X, y, BatchGrad(), Variance())
    for name, p in model.named_parameters():
        assert_close(p.grad_batch, expected["grad_batch"][name])
        assert_close(p.variance, expected["variance"][name])


# --------------------------------------------------------------------------------------------
# memory: nothing of old steps is kept
# --------------------------------------------------------------------------------------------
def _count_tensors():
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_training_without_extensions_keeps_nothing_of_old_steps():
    torch.manual_seed(0)
    model = extend(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)))
    lossfunc = extend(nn.CrossEntropyLoss())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        X, y = torch.randn(4, 8), torch.randint(3, (4,))
        optimizer.zero_grad()
        lossfunc(model(X), y).backward()
        optimizer.step()
        with torch.no_grad():
            lossfunc(model(X), y)
        return weakref.ref(X)

    previous = step()
    count_before = None
    for iteration in range(1000):
        current = step()
        assert previous() is None, f"input of step {iteration} still alive after the next"
        previous = current
        if iteration == 10:
            count_before = _count_tensors()
    assert _count_tensors() <= count_before


def test_stored_inputs_are_freed_after_a_backward_with_extensions():
    model, lossfunc, X, y = _linear_problem()
    model, lossfunc = extend(model), extend(lossfunc)
    X = X.clone()
    alive = weakref.ref(X)
    with backpack(BatchGrad(), DiagGGNExact()):
        lossfunc(model(X), y).backward()
    del X
    gc.collect()
    assert alive() is None


def test_training_with_extensions_keeps_nothing_of_old_steps():
    model, lossfunc, _, _ = _linear_problem()
    model, lossfunc = extend(model), extend(lossfunc)
    inputs = []
    for _ in range(20):
        X, y = torch.randn(5, 6), torch.randint(3, (5,))
        model.zero_grad()
        with backpack(BatchGrad(), DiagGGNExact(), KFLR()):
            lossfunc(model(X), y).backward()
        inputs.append(weakref.ref(X))
    del X
    gc.collect()
    assert all(alive() is None for alive in inputs)


def test_evaluation_under_no_grad_stores_no_inputs():
    model, lossfunc, X, y = _linear_problem()
    model, lossfunc = extend(model), extend(lossfunc)
    X = X.clone()
    alive = weakref.ref(X)
    with torch.no_grad():
        lossfunc(model(X), y)
    del X
    gc.collect()
    assert alive() is None


def test_second_step_uses_the_second_batch():
    setting = _setting("mlp-sigmoid-ce-mean")
    model, lossfunc, X, y = setting.build()
    X2, y2 = torch.randn_like(X[:2]), y[:2].flip(0)
    expected = reference.ggn_diagonal(model, lossfunc, X2, y2)
    expected_grad_batch = reference.first_order(model, lossfunc, X2, y2)["grad_batch"]
    model, lossfunc = extend(model), extend(lossfunc)
    for inputs, targets in ((X, y), (X2, y2)):
        model.zero_grad()
        with backpack(DiagGGNExact(), BatchGrad()):
            lossfunc(model(inputs), targets).backward()
    for name, p in model.named_parameters():
        assert_close(p.diag_ggn_exact, expected[name], **setting.tolerances)
        assert_close(p.grad_batch, expected_grad_batch[name], **setting.tolerances)


def _two_losses(*extensions):
    torch.manual_seed(0)
    model = extend(nn.Sequential(nn.Linear(4, 3)).double())
    cross_entropy, mse = extend(nn.CrossEntropyLoss()), extend(nn.MSELoss())
    inputs = torch.randn(5, 4, dtype=torch.float64)
    labels, targets = torch.randint(0, 3, (5,)), torch.randn(5, 3, dtype=torch.float64)
    outputs = model(inputs)
    with backpack(*extensions):
        (cross_entropy(outputs, labels) + mse(outputs, targets)).backward()
    return model, inputs, labels, targets


def test_two_extended_losses_in_one_backward_are_refused_for_curvature():
    """Their GGN needs both losses' factors; one must not silently replace the other."""
    with pytest.raises(NotImplementedError, match="one extended loss per backward pass"):
        _two_losses(DiagGGNExact())


def test_two_extended_losses_in_one_backward_work_for_first_order():
    model, inputs, labels, targets = _two_losses(BatchGrad())
    layer = model[0]
    params = {name: p.detach() for name, p in layer.named_parameters()}

    def sample_loss(params, x, y, t):
        out = torch.func.functional_call(layer, params, (x.unsqueeze(0),))
        return (
            nn.functional.cross_entropy(out, y.unsqueeze(0))
            + nn.functional.mse_loss(out, t.unsqueeze(0))
        ) / inputs.shape[0]

    expected = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0, 0))(
        params, inputs, labels, targets
    )
    for name, param in layer.named_parameters():
        torch.testing.assert_close(param.grad_batch, expected[name])


def test_two_backward_passes_in_one_context_each_start_once():
    torch.manual_seed(0)
    model = extend(nn.Sequential(nn.Linear(4, 3)))
    loss_function = extend(nn.CrossEntropyLoss())
    inputs, labels = torch.randn(5, 4), torch.randint(0, 3, (5,))
    with backpack(DiagGGNExact()):
        loss_function(model(inputs), labels).backward()
        first = model[0].weight.diag_ggn_exact.clone()
        loss_function(model(inputs), labels).backward()
    torch.testing.assert_close(model[0].weight.diag_ggn_exact, first)
