"""Cases outside a plain chain of modules: the engine is right or it refuses, never wrong.

Each case is a network or loss that a layer-by-layer engine can easily get silently wrong
(an operation between modules that is no module, a module called twice, a loss that is not
extended, unusual losses). A refusal must be a clear exception that names the extension or
the module; returned numbers must match the reference. Which of the two each case gives is
pinned in ``EXPECTED_REFUSALS``: a case that starts being refused (or stops) fails.
"""

import copy

import pytest
import reference
import torch
from torch import nn
from torch.testing import assert_close

from backpack_core import backpack, extend
from backpack_core.extensions import (
    BatchDiagGGNExact,
    BatchGrad,
    DiagGGNExact,
    DiagHessian,
    Variance,
)

REFUSALS = (NotImplementedError, ValueError, RuntimeError, TypeError)
TOLERANCES = {"rtol": 1e-7, "atol": 1e-10}


# the test ids (and, for a test looping over extensions, "/<extension>") that are refused;
# every other case must give the reference's numbers
EXPECTED_REFUSALS = {
    "test_batchnorm_in_eval_mode_is_refused_or_correct[BatchGrad-grad_batch]",
    "test_batchnorm_in_eval_mode_is_refused_or_correct[DiagGGNExact-diag_ggn_exact]",
    "test_convolution_padding_modes_are_refused_or_correct[BatchGrad-grad_batch-circular]",
    "test_convolution_padding_modes_are_refused_or_correct[BatchGrad-grad_batch-reflect]",
    "test_convolution_padding_modes_are_refused_or_correct[BatchGrad-grad_batch-replicate]",
    "test_convolution_padding_modes_are_refused_or_correct[DiagGGNExact-diag_ggn_exact-circular]",
    "test_convolution_padding_modes_are_refused_or_correct[DiagGGNExact-diag_ggn_exact-reflect]",
    "test_convolution_padding_modes_are_refused_or_correct[DiagGGNExact-diag_ggn_exact-replicate]",
    "test_convolution_padding_modes_are_refused_or_correct[DiagHessian-diag_h-circular]",
    "test_convolution_padding_modes_are_refused_or_correct[DiagHessian-diag_h-reflect]",
    "test_convolution_padding_modes_are_refused_or_correct[DiagHessian-diag_h-replicate]",
    "test_correct_or_refused[crossentropy-class-weights-DiagGGNExact-diag_ggn_exact]",
    "test_correct_or_refused[functional-tanh-between-modules-DiagGGNExact-diag_ggn_exact]",
    "test_correct_or_refused[module-called-twice-BatchGrad-grad_batch]",
    "test_correct_or_refused[module-called-twice-DiagGGNExact-diag_ggn_exact]",
    "test_correct_or_refused[output-scaled-outside-modules-DiagGGNExact-diag_ggn_exact]",
    "test_correct_or_refused[relu-inplace-BatchGrad-grad_batch]",
    "test_correct_or_refused[relu-inplace-DiagGGNExact-diag_ggn_exact]",
    "test_crossentropy_over_positions_is_refused_or_correct/DiagGGNExact",
    "test_loss_not_extended_is_refused_or_correct[DiagGGNExact-diag_ggn_exact]",
    "test_loss_not_extended_is_refused_or_correct[DiagHessian-diag_h]",
    "test_unreduced_loss_summed_by_hand_is_refused_or_correct[DiagGGNExact-diag_ggn_exact]",
}
_CURRENT = {}


@pytest.fixture(autouse=True)
def _current_test(request):
    _CURRENT["id"] = request.node.name
    yield


def _key(part: str = "") -> str:
    return f"{_CURRENT['id']}/{part}" if part else _CURRENT["id"]


def _refused(error: Exception, extension, module_classes=(), part: str = "") -> None:
    """The case was refused: it must be expected to be, and the error must name something."""
    assert _key(part) in EXPECTED_REFUSALS, f"{_key(part)} is refused: {error}"
    _assert_names_extension(error, extension, module_classes)


def _correct(part: str = "") -> None:
    """The case returned numbers (checked against the reference by the caller)."""
    assert _key(part) not in EXPECTED_REFUSALS, f"{_key(part)} is no longer refused"


def _assert_names_extension(error: Exception, extension, module_classes=()) -> None:
    """A refusal names the extension that cannot run, or a module that it cannot handle."""
    if isinstance(module_classes, str):
        module_classes = (module_classes,) if module_classes else ()
    names = (type(extension).__name__, *module_classes)
    assert any(name in str(error) for name in names), f"refusal names none of {names}: {error}"


class FunctionalTanh(nn.Module):
    """Two Linear layers with ``torch.tanh`` (no module) between them."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class CalledTwice(nn.Module):
    """One Linear layer applied twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.fc(self.act(self.fc(x))))


class ScaledOutput(nn.Module):
    """A chain whose output is scaled by an operation that is no module."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3))

    def forward(self, x):
        return 2.0 * self.net(x)


def _problem(make_model, lossfunc, N=4, classes=3):
    torch.manual_seed(0)
    model = make_model().double()
    X = torch.randn(N, 6, dtype=torch.float64)
    y = torch.randint(classes, (N,))
    return model, lossfunc, X, y


CASES = {
    "functional-tanh-between-modules": lambda: _problem(FunctionalTanh, nn.CrossEntropyLoss()),
    "module-called-twice": lambda: _problem(CalledTwice, nn.CrossEntropyLoss()),
    "output-scaled-outside-modules": lambda: _problem(ScaledOutput, nn.CrossEntropyLoss()),
    "crossentropy-class-weights": lambda: _problem(
        lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)),
        nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)),
    ),
    "relu-inplace": lambda: _problem(
        lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)),
        nn.CrossEntropyLoss(),
    ),
}

# cases where a module's configuration is what cannot be handled: the refusal may name it
_NAMED_CLASS = {"crossentropy-class-weights": "CrossEntropyLoss", "relu-inplace": "ReLU"}
# cases no extension can handle: a refusal must name this module class
REFUSED_FOR_EVERY_EXTENSION = {"module-called-twice": "Linear"}


def _expected(case: str) -> dict:
    return _expected_for(*CASES[case]())


def _expected_for(model, lossfunc, X, y) -> dict:
    return {
        "grad_batch": reference.individual_gradients_any_loss(model, lossfunc, X, y),
        "diag_ggn_exact": reference.ggn_diagonal_any_loss(model, lossfunc, X, y),
    }


def _run(model, lossfunc, X, y, extension, extend_loss=True):
    model = extend(model)
    if extend_loss:
        lossfunc = extend(lossfunc)
    loss = lossfunc(model(X), y)
    with backpack(extension):
        loss.backward()
    return dict(model.named_parameters())


@pytest.mark.parametrize(
    "extension, savefield", [(BatchGrad, "grad_batch"), (DiagGGNExact, "diag_ggn_exact")]
)
@pytest.mark.parametrize("case", list(CASES))
def test_correct_or_refused(case, extension, savefield):
    expected = _expected(case)[savefield]
    try:
        params = _run(*CASES[case](), extension())
    except REFUSALS as error:
        if case in REFUSED_FOR_EVERY_EXTENSION:  # then naming the module is enough
            assert _key() in EXPECTED_REFUSALS, f"{_key()} is refused: {error}"
            assert REFUSED_FOR_EVERY_EXTENSION[case] in str(error)
            return
        return _refused(error, extension(), _NAMED_CLASS.get(case, ""))
    _correct()
    for name, p in params.items():
        assert hasattr(p, savefield), f"{name}: no {savefield} and no error"
        assert_close(getattr(p, savefield), expected[name], **TOLERANCES)


@pytest.mark.parametrize(
    "extension, savefield", [(DiagGGNExact, "diag_ggn_exact"), (DiagHessian, "diag_h")]
)
def test_loss_not_extended_is_refused_or_correct(extension, savefield):
    problem = CASES["crossentropy-class-weights"]()
    model, _, X, y = problem
    lossfunc = nn.CrossEntropyLoss()
    expected = getattr(
        reference, "ggn_diagonal" if savefield == "diag_ggn_exact" else "hessian_diagonal"
    )(model, lossfunc, X, y)
    try:
        params = _run(model, lossfunc, X, y, extension(), extend_loss=False)
    except REFUSALS as error:
        return _refused(error, extension())
    _correct()
    for name, p in params.items():
        assert hasattr(p, savefield), f"{name}: no {savefield} and no error"
        assert_close(getattr(p, savefield), expected[name], **TOLERANCES)


def test_crossentropy_over_positions_is_refused_or_correct():
    # output [N, C, L]: mean reduction averages over N * L
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 3, 1)).double()
    X, y = torch.randn(3, 2, 4, dtype=torch.float64), torch.randint(3, (3, 4))
    lossfunc = nn.CrossEntropyLoss()
    expected = {
        "grad_batch": reference.individual_gradients(model, lossfunc, X, y),
        "diag_ggn_exact": reference.ggn_diagonal(model, lossfunc, X, y),
    }
    for extension, savefield in ((BatchGrad, "grad_batch"), (DiagGGNExact, "diag_ggn_exact")):
        try:
            params = _run(copy.deepcopy(model), lossfunc, X, y, extension())
        except REFUSALS as error:
            _refused(error, extension(), "CrossEntropyLoss", part=extension.__name__)
            continue
        _correct(part=extension.__name__)
        for name, p in params.items():
            assert_close(getattr(p, savefield), expected[savefield][name], **TOLERANCES)


# --------------------------------------------------------------------------------------------
# Dropout in train mode: the reference replays the engine run's mask
# --------------------------------------------------------------------------------------------
class FixedMask(nn.Module):
    """Multiplication by a fixed tensor: a Dropout whose mask is known."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


@pytest.mark.parametrize(
    "extension, savefield, quantity",
    [
        (BatchGrad, "grad_batch", "individual_gradients"),
        (Variance, "variance", None),
        (BatchDiagGGNExact, "diag_ggn_exact_batch", "batch_ggn_diagonal"),
        (DiagHessian, "diag_h", "batch_hessian_diagonal"),
    ],
    ids=["BatchGrad", "Variance", "BatchDiagGGNExact", "DiagHessian"],
)
def test_dropout_in_train_mode_uses_the_forward_mask(extension, savefield, quantity):
    p_drop = 0.4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Dropout(p_drop), nn.Tanh(), nn.Linear(5, 3))
    model = model.double().train()
    unextended = copy.deepcopy(model)
    X, y = torch.randn(4, 6, dtype=torch.float64), torch.randint(3, (4,))
    seen = {}

    def keep_mask(module, inputs, output):
        # the factor the forward really applied (torch's 1/(1-p) is not exactly rounded)
        ratio = output.detach() / inputs[0].detach()
        seen["mask"] = torch.where(output != 0, ratio, torch.zeros_like(ratio))

    model[1].register_forward_hook(keep_mask)
    params = _run(model, nn.CrossEntropyLoss(), X, y, extension())
    mask = seen["mask"]
    assert 0 < (mask == 0).sum() < mask.numel(), "dropout dropped nothing or everything"

    # per sample: the same network with the sample's mask, its loss summand scaled by 1/N
    per_sample = []
    for i in range(X.shape[0]):
        net = copy.deepcopy(unextended)
        net[1] = FixedMask(mask[i : i + 1])
        args = (net, nn.CrossEntropyLoss(reduction="sum"), X[i : i + 1], y[i : i + 1])
        function = getattr(reference, quantity or "individual_gradients")
        per_sample.append({n: v[0] / X.shape[0] for n, v in function(*args).items()})
    for name, p in params.items():
        stacked = torch.stack([values[name] for values in per_sample])
        if savefield == "variance":
            expected = (stacked**2).mean(0) - stacked.mean(0) ** 2
        elif savefield == "diag_h":
            expected = stacked.sum(0)
        else:
            expected = stacked
        assert_close(getattr(p, savefield), expected, **TOLERANCES)


def test_backward_twice_on_a_retained_graph_is_refused_or_correct():
    model, lossfunc, X, y = CASES["functional-tanh-between-modules"]()
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    expected = reference.first_order(model, lossfunc, X, y)["grad_batch"]
    model, lossfunc = extend(model), extend(lossfunc)
    loss = lossfunc(model(X), y)
    with backpack(BatchGrad()):
        loss.backward(retain_graph=True)
        try:
            loss.backward()
        except REFUSALS as error:
            return _refused(error, BatchGrad())
    _correct()
    for name, p in model.named_parameters():
        assert_close(p.grad_batch, expected[name], **TOLERANCES)


@pytest.mark.parametrize(
    "extension, savefield", [(BatchGrad, "grad_batch"), (DiagGGNExact, "diag_ggn_exact")]
)
def test_unreduced_loss_summed_by_hand_is_refused_or_correct(extension, savefield):
    # reduction="none" and .sum() outside the loss module: the same numbers as reduction="sum"
    model, _, X, y = CASES["crossentropy-class-weights"]()
    expected = _expected_for(model, nn.CrossEntropyLoss(reduction="sum"), X, y)[savefield]
    model, lossfunc = extend(model), extend(nn.CrossEntropyLoss(reduction="none"))
    loss = lossfunc(model(X), y).sum()
    try:
        with backpack(extension()):
            loss.backward()
    except REFUSALS as error:
        return _refused(error, extension(), "CrossEntropyLoss")
    _correct()
    for name, p in model.named_parameters():
        assert hasattr(p, savefield), f"{name}: no {savefield} and no error"
        assert_close(getattr(p, savefield), expected[name], **TOLERANCES)


def _padding_net():
    from settings import tf_same_conv

    torch.manual_seed(0)
    return nn.Sequential(tf_same_conv(2, 2), nn.Flatten()).double()


@pytest.mark.parametrize(
    "extension, savefield", [(BatchGrad, "grad_batch"), (DiagGGNExact, "diag_ggn_exact")]
)
def test_padding_changed_by_a_later_forward_pass_is_refused_or_correct(extension, savefield):
    # the pre-hook sets a different padding for 6x6 than for 5x5 inputs; the first loss's
    # backward pass must use the padding of its own forward pass
    model = _padding_net()
    X1, X2 = (
        torch.randn(2, 2, 5, 5, dtype=torch.float64),
        torch.randn(2, 2, 6, 6, dtype=torch.float64),
    )
    lossfunc = nn.MSELoss(reduction="sum")
    y1, y2 = torch.randn(2, 18, dtype=torch.float64), torch.randn(2, 18, dtype=torch.float64)
    expected = _expected_for(copy.deepcopy(model), lossfunc, X1, y1)[savefield]
    model, lossfunc = extend(model), extend(lossfunc)
    first, second = lossfunc(model(X1), y1), lossfunc(model(X2), y2)
    try:
        with backpack(extension()):
            first.backward()
    except REFUSALS as error:
        return _refused(error, extension(), ("ZeroPad2d", "Conv2d", "Flatten"))
    del second
    _correct()
    for name, p in model.named_parameters():
        assert_close(getattr(p, savefield), expected[name], **TOLERANCES)


@pytest.mark.parametrize(
    "extension, savefield", [(BatchGrad, "grad_batch"), (DiagGGNExact, "diag_ggn_exact")]
)
def test_batchnorm_in_eval_mode_is_refused_or_correct(extension, savefield):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).double()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    X, y = torch.randn(3, 6, dtype=torch.float64), torch.randint(3, (3,))
    expected = _expected_for(copy.deepcopy(model), nn.CrossEntropyLoss(), X, y)[savefield]
    try:
        params = _run(model, nn.CrossEntropyLoss(), X, y, extension())
    except REFUSALS as error:
        return _refused(error, extension(), "BatchNorm1d")
    _correct()
    for name, p in params.items():
        assert hasattr(p, savefield), f"{name}: no {savefield} and no error"
        assert_close(getattr(p, savefield), expected[name], **TOLERANCES)


@pytest.mark.parametrize("padding_mode", ["reflect", "circular", "replicate"])
@pytest.mark.parametrize(
    "extension, savefield",
    [(BatchGrad, "grad_batch"), (DiagGGNExact, "diag_ggn_exact"), (DiagHessian, "diag_h")],
)
def test_convolution_padding_modes_are_refused_or_correct(padding_mode, extension, savefield):
    # a layer-wise engine that unfolds with zero padding would be silently wrong here
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode=padding_mode)
    model = nn.Sequential(conv, nn.Sigmoid(), nn.Flatten(), nn.Linear(32, 3)).double()
    X, y = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randint(3, (3,))
    lossfunc = nn.CrossEntropyLoss()
    quantity = {"grad_batch": "first_order", "diag_ggn_exact": "ggn_diagonal"}.get(
        savefield, "hessian_diagonal"
    )
    expected = getattr(reference, quantity)(model, lossfunc, X, y)
    if quantity == "first_order":
        expected = expected["grad_batch"]
    try:
        params = _run(model, lossfunc, X, y, extension())
    except REFUSALS as error:
        return _refused(error, extension(), "Conv2d")
    _correct()
    for name, p in params.items():
        assert_close(getattr(p, savefield), expected[name], **TOLERANCES)


POOLS = {
    "maxpool-padding-dilation": lambda: nn.MaxPool2d(3, stride=2, padding=1, dilation=1),
    "maxpool-ceil-mode": lambda: nn.MaxPool2d(2, stride=2, ceil_mode=True),
    "maxpool-dilation": lambda: nn.MaxPool2d(2, stride=1, dilation=2),
    "avgpool-padding-exclude-pad": lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
    "avgpool-ceil-mode": lambda: nn.AvgPool2d(2, stride=2, ceil_mode=True),
    "avgpool-divisor-override": lambda: nn.AvgPool2d(2, divisor_override=3),
}


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize(
    "extension, savefield",
    [(BatchGrad, "grad_batch"), (DiagGGNExact, "diag_ggn_exact"), (DiagHessian, "diag_h")],
)
def test_pooling_options_are_refused_or_correct(pool, extension, savefield):
    torch.manual_seed(0)
    pooling = POOLS[pool]()
    head = nn.Sequential(nn.Conv2d(2, 2, 2), nn.Sigmoid(), pooling, nn.Flatten())
    features = head.double()(torch.zeros(1, 2, 6, 6, dtype=torch.float64)).shape[1]
    model = nn.Sequential(*head, nn.Linear(features, 3)).double()
    X, y = torch.randn(3, 2, 6, 6, dtype=torch.float64), torch.randint(3, (3,))
    lossfunc = nn.CrossEntropyLoss()
    if savefield == "grad_batch":
        expected = reference.first_order(model, lossfunc, X, y)["grad_batch"]
    elif savefield == "diag_ggn_exact":
        expected = reference.ggn_diagonal(model, lossfunc, X, y)
    else:
        expected = reference.hessian_diagonal(model, lossfunc, X, y)
    try:
        params = _run(model, lossfunc, X, y, extension())
    except REFUSALS as error:
        return _refused(error, extension(), type(pooling).__name__)
    _correct()
    for name, p in params.items():
        assert_close(getattr(p, savefield), expected[name], **TOLERANCES)
