"""An extended model holds no tensor beyond what autograd holds (issue 15).

The engine keeps a module call's input (output) until the backward pass only if the
module's derivatives read it (``reads_input``/``reads_output``). These tests are exact, not
timing- or RSS-based: they follow each module output's storage with a weak reference
(a storage lives as long as any tensor viewing it, a detached alias included).
"""

import gc
import weakref

import pytest
import torch
from settings import module_call
from torch import nn
from torch.testing import assert_close

from backpack_core import backpack, extend, register_derivatives
from backpack_core.derivatives import TensorNotKept, derivatives_for
from backpack_core.derivatives.base import Derivatives
from backpack_core.derivatives.io import ModuleIO
from backpack_core.extensions import BatchGrad, DiagGGNExact


def _nets():
    return {
        "conv-relu-maxpool-linear": (
            lambda: nn.Sequential(
                nn.ZeroPad2d(1),
                nn.Conv2d(2, 4, 3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(4 * 3 * 3, 8),
                nn.ReLU(),
                nn.Linear(8, 3),
            ),
            (5, 2, 6, 6),
        ),
        "conv-sigmoid-avgpool-tanh-upsample": (
            lambda: nn.Sequential(
                nn.Conv2d(2, 3, 3),
                nn.Sigmoid(),
                nn.AvgPool2d(2),
                nn.Conv2d(3, 2, 1),
                nn.Tanh(),
                nn.UpsamplingNearest2d(scale_factor=2),
                nn.Flatten(),
                nn.Linear(2 * 8 * 8, 6),
                nn.LeakyReLU(0.1),
                nn.Dropout(0.3),
                nn.Linear(6, 3),
            ),
            (5, 2, 10, 10),
        ),
        "fallback-elu-gelu": (
            lambda: nn.Sequential(
                nn.Linear(6, 5), nn.ELU(), nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 3)
            ),
            (5, 6),
        ),
    }


NETS = _nets()


def _forward_and_liveness(net_id, extended):
    """Forward (loss not backpropagated); which module outputs' storages are still alive."""
    make, shape = NETS[net_id]
    torch.manual_seed(0)
    model, loss_function = make(), nn.CrossEntropyLoss()
    if extended:
        model, loss_function = extend(model), extend(loss_function)
    outputs = {}

    def track(name):
        def hook(module, inputs, output):
            outputs[name] = weakref.ref(output.untyped_storage())

        return hook

    for name, module in model.named_children():
        module.register_forward_hook(track(f"{name}:{type(module).__name__}"))
    X, y = torch.randn(shape), torch.randint(3, (shape[0],))
    loss = loss_function(model(X), y)
    gc.collect()
    alive = {name: ref() is not None for name, ref in outputs.items()}
    return model, loss, alive, outputs


@pytest.mark.parametrize("net_id", list(NETS))
def test_extended_model_keeps_the_same_module_outputs_alive_as_autograd(net_id):
    _, plain_loss, plain, _ = _forward_and_liveness(net_id, extended=False)
    _, extended_loss, extended, _ = _forward_and_liveness(net_id, extended=True)
    assert extended == plain
    assert any(plain.values()) and not all(plain.values())  # the test can tell them apart
    del plain_loss, extended_loss


def test_pre_activations_are_freed_after_the_forward_pass():
    _, loss, alive, _ = _forward_and_liveness("conv-relu-maxpool-linear", extended=True)
    assert loss.grad_fn is not None  # the graph is alive
    pre_activations = [name for name in alive if name.endswith(("Conv2d", "Linear"))]
    assert len(pre_activations) == 3
    assert not any(alive[name] for name in pre_activations), alive
    # ReLU's output is what autograd saves (and what ReLU's derivatives read): alive
    assert all(alive[name] for name in alive if name.endswith("ReLU")), alive


@pytest.mark.parametrize("net_id", list(NETS))
def test_everything_is_freed_after_a_plain_backward(net_id):
    _, loss, _, outputs = _forward_and_liveness(net_id, extended=True)
    loss.backward()
    del loss
    gc.collect()
    assert all(ref() is None for ref in outputs.values())


def test_extensions_are_unchanged_when_records_keep_less():
    # the same numbers as with derivatives that keep everything (the flags all True)
    make, shape = NETS["conv-relu-maxpool-linear"]
    X, y = torch.randn(shape), torch.randint(3, (shape[0],))
    results = []
    registered = [
        derivatives_for(module)
        for module in (nn.ReLU(), nn.MaxPool2d(2), nn.ZeroPad2d(1), nn.Flatten())
    ]
    assert not any(d.reads_input and d.reads_output for d in registered)
    for keep_everything in (False, True):
        try:
            if keep_everything:
                for derivatives in registered:
                    derivatives.reads_input = derivatives.reads_output = True
            torch.manual_seed(0)
            model, loss_function = extend(make()), extend(nn.CrossEntropyLoss())
            with backpack(BatchGrad(), DiagGGNExact()):
                loss_function(model(X), y).backward()
            results.append([(p.grad_batch, p.diag_ggn_exact) for p in model.parameters()])
        finally:
            for derivatives in registered:
                vars(derivatives).pop("reads_input", None)
                vars(derivatives).pop("reads_output", None)
    for kept_less, kept_all in zip(*results):
        assert_close(kept_less, kept_all)


# --------------------------------------------------------------------------------------------
# The error when derivatives read a tensor that was not kept
# --------------------------------------------------------------------------------------------
class Double(nn.Module):
    def forward(self, x):
        return 2 * x


class DoubleDerivatives(Derivatives):
    """Declares it reads nothing, yet reads the input."""

    reads_input = False
    reads_output = False

    def jac_t_mat_prod(self, io, mat):
        return mat * 2 * torch.ones_like(io.input)


def test_reading_an_input_that_was_not_kept_names_the_class_and_the_flag():
    register_derivatives(Double, DoubleDerivatives())
    model = extend(nn.Sequential(nn.Linear(4, 3), Double(), nn.Linear(3, 2)))
    loss_function = extend(nn.CrossEntropyLoss())
    X, y = torch.randn(5, 4), torch.randint(2, (5,))
    with pytest.raises(TensorNotKept) as error, backpack(DiagGGNExact()):
        loss_function(model(X), y).backward()
    message = str(error.value)
    assert "DoubleDerivatives" in message and "reads_input = True" in message
    # first-order extensions do not pass through it: they work
    with backpack(BatchGrad()):
        loss_function(model(X), y).backward()
    assert model[0].weight.grad_batch.shape == (5, 3, 4)


def test_module_io_without_tensors_has_shapes_and_refuses_the_tensors():
    io = ModuleIO(
        nn.ReLU(), None, None, input_shape=(3, 4), output_shape=(3, 4), reader="MyDerivatives"
    )
    assert io.batch_size == 3 and io.input_shape == (3, 4) and io.output_shape == (3, 4)
    for which in ("input", "output"):
        with pytest.raises(TensorNotKept, match=f"MyDerivatives.reads_{which} is False"):
            getattr(io, which)
    kept = ModuleIO(nn.ReLU(), torch.zeros(3, 4), torch.zeros(3, 4))
    kept.release()
    with pytest.raises(TensorNotKept, match="released"):
        _ = kept.input
    assert kept.input_shape == (3, 4)


# --------------------------------------------------------------------------------------------
# Each registered layer's flags: its methods give the same with only what it declares
# --------------------------------------------------------------------------------------------
LAYERS = {
    "relu": (lambda: nn.ReLU(), (3, 2, 4)),
    "leakyrelu": (lambda: nn.LeakyReLU(-0.5), (3, 2, 4)),
    "sigmoid": (lambda: nn.Sigmoid(), (3, 5)),
    "tanh": (lambda: nn.Tanh(), (3, 5)),
    "dropout": (lambda: nn.Dropout(0.4), (3, 5)),
    "maxpool2d": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (3, 2, 5, 5)),
    "maxpool1d": (lambda: nn.MaxPool1d(3, stride=2, padding=1), (3, 2, 7)),
    "avgpool2d": (lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), (3, 2, 5, 5)),
    "zeropad2d": (lambda: nn.ZeroPad2d((1, 0, 2, 1)), (3, 2, 4, 4)),
    "flatten": (lambda: nn.Flatten(), (3, 2, 4)),
    "upsample": (lambda: nn.Upsample(scale_factor=2, mode="bilinear"), (3, 2, 3, 3)),
    "elu-fallback": (lambda: nn.ELU(), (3, 2, 4)),
    "linear": (lambda: nn.Linear(4, 3), (3, 4)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), (3, 2, 5, 5)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_methods_read_only_what_the_flags_declare(name):
    module, x, output, full = module_call(*LAYERS[name])
    derivatives, extra = derivatives_for(module), full.extra
    partial = ModuleIO(
        module,
        x.detach() if derivatives.reads_input else None,
        output.detach() if derivatives.reads_output else None,
        extra=extra,
        input_shape=x.shape,
        output_shape=output.shape,
        reader=type(derivatives).__name__,
    )
    mat = torch.randn(2, *output.shape, dtype=torch.float64)
    assert_close(derivatives.jac_t_mat_prod(partial, mat), derivatives.jac_t_mat_prod(full, mat))
    grad_output = torch.randn_like(output)
    expected = derivatives.hessian_residual(full, grad_output)
    result = derivatives.hessian_residual(partial, grad_output)
    assert (result is None) == (expected is None)
    if expected is not None:
        assert_close(result, expected)
    for parameter_name, _ in module.named_parameters():
        for sum_batch in (True, False):
            assert_close(
                derivatives.param_jac_t_mat_prod(partial, parameter_name, mat, sum_batch),
                derivatives.param_jac_t_mat_prod(full, parameter_name, mat, sum_batch),
            )


def test_cross_entropy_keeps_autograds_log_probabilities_not_a_copy():
    # torch changing NllLossBackward0's saved input would make the loss keep a copy
    logits = torch.randn(4, 3, requires_grad=True)
    loss_function = nn.CrossEntropyLoss()
    loss = loss_function(logits, torch.randint(3, (4,)))
    captured = derivatives_for(loss_function).capture(loss_function, logits, loss)
    saved = loss.grad_fn.next_functions[0][0]._saved_result  # LogSoftmaxBackward0
    assert captured.untyped_storage().data_ptr() == saved.untyped_storage().data_ptr()
    assert_close(captured, torch.log_softmax(logits.detach(), 1))


@pytest.mark.parametrize("net_id", list(NETS))
def test_a_graph_dropped_without_backward_frees_everything_without_the_cycle_collector(net_id):
    # e.g. an evaluation with gradients enabled: the records must not form reference cycles
    gc.collect()
    gc.disable()
    try:
        _, loss, _, outputs = _forward_and_liveness(net_id, extended=True)
        del loss
        assert all(ref() is None for ref in outputs.values())
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "module, shape",
    [(nn.MaxPool1d(3, 2, padding=1), (3, 2, 7)), (nn.MaxPool2d(3, 2, padding=1), (3, 2, 5, 5))],
    ids=["1d", "2d"],
)
def test_max_pooling_keeps_autograds_indices_not_a_copy(module, shape):
    x = torch.randn(shape, requires_grad=True)
    output = module(x)
    captured = derivatives_for(module).capture(module, x, output)
    _, indices = torch.nn.functional.max_pool2d(
        x.detach().reshape(shape[0], shape[1], -1, shape[-1]) if len(shape) == 3 else x.detach(),
        (1, 3) if len(shape) == 3 else 3,
        (1, 2) if len(shape) == 3 else 2,
        (0, 1) if len(shape) == 3 else 1,
        return_indices=True,
    )
    assert torch.equal(captured, indices.reshape(output.shape))
    node = output.grad_fn if len(shape) == 4 else output.grad_fn.next_functions[0][0]
    saved = node._saved_result1
    assert captured.untyped_storage().data_ptr() == saved.untyped_storage().data_ptr()
