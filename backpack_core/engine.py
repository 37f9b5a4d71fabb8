"""``extend`` and ``backpack``: hooks that keep each module call and run the extensions.

How a backward pass flows. ``extend`` installs a forward hook on every leaf module. When a
module is called with gradients enabled, the hook keeps a *record* of that call (input,
output, what the module's derivatives capture) and registers a tensor hook on the output.
During ``backward()`` the tensor hooks fire from the loss towards the input, each with the
gradient w.r.t. that output. Inside ``with backpack(...)`` each firing

1. takes the backpropagated quantities that the next module deposited on this output
   (the loss starts them instead),
2. writes every active extension's value onto the module's parameters,
3. passes the quantities on to its input (``jac_t_mat_prod``) and deposits them there,

and frees the record. Outside the context it only frees the record, so an extended model
that trains without extensions, or evaluates under ``torch.no_grad()``, keeps nothing.

Quantities can only be passed on along a chain of modules. The loss's forward hook walks
the autograd graph behind it and remembers whether any intermediate result is used twice
(e.g. a residual connection); a module whose output was not consumed by an extended module
finds no deposit. Either is an error for extensions that backpropagate, never a silent
wrong number.
"""

import weakref
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module
from torch.nn.modules.batchnorm import _BatchNorm

from backpack_core.derivatives import LossDerivatives, ModuleIO, derivatives_for
from backpack_core.derivatives.base import UnsupportedOperation
from backpack_core.extensions.base import BackpropExtension

_EXTENDED = "_backpack_core_extended"


class _Record(ModuleIO):
    """A module call, plus what the engine needs to chain calls during backward."""

    def __init__(self, module: Module, inputs: tuple, output: Tensor, derivatives):
        target = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], Tensor) else None
        extra = derivatives.capture(module, inputs[0], output) if derivatives else None
        super().__init__(module, inputs[0], output.detach(), target=target, extra=extra)
        self.derivatives = derivatives
        self.output_id = id(output)
        self.output_ref = weakref.ref(output)
        self.pending = True
        self.branching: Optional[str] = None

    def release(self) -> None:
        """Drop the tensors: the backward pass is done with this call."""
        self.pending = False
        self.input = self.output = self.target = self.extra = None
        self.memo = {}


class _ActivePass:
    """The state of one ``with backpack(...)`` block."""

    def __init__(self, extensions: Tuple[BackpropExtension, ...], debug: bool):
        self.extensions = extensions
        self.debug = debug
        quantities = {}
        for extension in extensions:
            for quantity in extension.quantities():
                quantities.setdefault(quantity.key, quantity)
        self.quantities = list(quantities.values())
        self.individual_gradients_wanted = any(e.savefield == "grad_batch" for e in extensions)
        # id(tensor) -> (tensor, {quantity key: value}) deposited on a module's input
        self.deposits: Dict[int, Tuple[Tensor, dict]] = {}

    # ------------------------------------------------------------------ helpers
    def _names(self) -> str:
        return ", ".join(type(e).__name__ for e in self.extensions)

    def _backpropagating_names(self) -> str:
        names = ", ".join(type(e).__name__ for e in self.extensions if e.quantities())
        return f"The curvature extensions ({names})"

    def _deposit(self, tensor: Tensor, values: dict) -> None:
        self.deposits[id(tensor)] = (tensor, values)

    def _take(self, record: _Record) -> dict:
        entry = self.deposits.pop(record.output_id, None)
        if entry is None or entry[0] is not record.output_ref():
            raise NotImplementedError(
                f"{self._backpropagating_names()} need a network that is a chain of "
                f"extended modules, but the output of {record.module} was not passed "
                "directly to an extended module (an operation outside the modules, e.g. "
                "torch.relu(x) or x.view(...) in a forward method, sits in between). "
                "Replace it with a module (nn.ReLU, nn.Flatten, ...) or use first-order "
                "extensions only."
            )
        return entry[1]

    # ------------------------------------------------------------------ the backward step
    def run(self, record: _Record, grad_output: Tensor) -> None:
        module, derivatives = record.module, record.derivatives
        if self.debug:
            for extension in self.extensions:
                print(f"[DEBUG] Running extension {type(extension).__name__} on {module}")
        if isinstance(derivatives, LossDerivatives):
            self._start(record, derivatives, grad_output)
            return
        if isinstance(module, _BatchNorm) and module.training:
            raise NotImplementedError(
                f"{self._names()} cannot run on {type(module).__name__} in training mode: "
                "there, one sample's output depends on the whole batch, so per-sample and "
                "curvature quantities are undefined. Call .eval() on it or remove it."
            )
        params = [
            (name, p) for name, p in module._parameters.items() if p is not None and p.requires_grad
        ]
        if params:
            self._check_called_once(module)
        incoming = self._take(record) if self.quantities else {}
        propagate = bool(self.quantities) and record.input.requires_grad
        if derivatives is None and (params or propagate):
            raise NotImplementedError(
                f"{self._names()} cannot run on {type(module).__name__} ({module}): "
                "backpack_core does not know this layer. Supported layers: "
                f"{', '.join(_supported())}. Register its derivatives with "
                "backpack_core.register_derivatives(...) or replace the layer."
            )
        from backpack_core.extensions.base import ModuleContext

        ctx = ModuleContext(
            record, derivatives, grad_output, incoming, self.individual_gradients_wanted
        )
        for extension in self.extensions:
            for name, param in params:
                try:
                    value = extension.compute(ctx, name)
                except UnsupportedOperation as error:
                    raise NotImplementedError(
                        f"{type(extension).__name__} does not support {module}: {error}"
                    ) from None
                setattr(param, extension.savefield, value)
        if propagate:
            outgoing = {}
            for quantity in self.quantities:
                try:
                    outgoing[quantity.key] = quantity.backpropagate(
                        derivatives, record, incoming[quantity.key], grad_output
                    )
                except UnsupportedOperation as error:
                    raise NotImplementedError(
                        f"{self._backpropagating_names()} cannot pass through {module}: {error}"
                    ) from None
            self._deposit(record.input, outgoing)

    def _check_called_once(self, module: Module) -> None:
        """Refuse a module with parameters that this backward pass reaches twice."""
        task = _graph_task_id()
        if task is None:
            return
        if getattr(module, "_backpack_core_task", None) == task:
            raise NotImplementedError(
                f"{self._names()}: {module} was called more than once in the graph this "
                "backward pass differentiates (weight sharing); its per-parameter results "
                "would need summing over the calls, which backpack_core does not do. Use a "
                "separate module per call."
            )
        module._backpack_core_task = task

    def _start(self, record: _Record, derivatives: LossDerivatives, grad_output: Tensor) -> None:
        if not self.quantities:
            return
        try:
            derivatives.check(record)
        except UnsupportedOperation as error:
            raise NotImplementedError(
                f"{self._backpropagating_names()} cannot start at {error}"
            ) from None
        if grad_output.numel() != 1:
            raise ValueError(f"the output of {record.module} must be a scalar loss")
        scale = float(grad_output)
        if scale < 0:
            raise ValueError(
                f"{self._backpropagating_names()}: The loss of {record.module} enters the "
                f"objective multiplied by {scale} < 0; curvature factors need a non-negative "
                "factor (minimise the loss, do not maximise it)."
            )
        if record.branching is not None:
            raise NotImplementedError(
                f"{self._backpropagating_names()} need a network that is a chain of modules, "
                f"but in the graph behind {record.module} {record.branching} (e.g. a residual "
                "connection). First-order extensions work on such graphs."
            )
        self.deposits.clear()
        values = {q.key: q.start(derivatives, record, scale) for q in self.quantities}
        self._deposit(record.input, values)


_ACTIVE: List[_ActivePass] = []


def _supported() -> List[str]:
    from backpack_core.derivatives import supported_modules

    return supported_modules()


def _graph_task_id() -> Optional[int]:
    """An id of the running backward pass (``None`` where torch does not expose one)."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return None if current is None else current()


def _branching(root) -> Optional[str]:
    """Describe an intermediate result of the graph behind ``root`` that is used twice."""
    uses: Dict[object, int] = {}
    stack, seen = [root], {root}
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None or type(child).__name__ == "AccumulateGrad":
                continue
            uses[child] = uses.get(child, 0) + 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    for node, count in uses.items():
        if count > 1:
            return f"the result of {node.name()} is used {count} times"
    return None


def _on_output_grad(record: _Record, grad_output: Tensor) -> None:
    if not record.pending:
        return
    try:
        if _ACTIVE:
            with torch.no_grad():
                _ACTIVE[-1].run(record, grad_output)
    finally:
        record.release()


def _forward_hook(module: Module, inputs: tuple, output) -> None:
    if not torch.is_grad_enabled() or not isinstance(output, Tensor) or not output.requires_grad:
        return
    if not inputs or not isinstance(inputs[0], Tensor) or output is inputs[0]:
        return  # a module that returned its input unchanged computed the identity
    derivatives = derivatives_for(module)
    record = _Record(module, inputs, output, derivatives)
    if isinstance(derivatives, LossDerivatives) and output.grad_fn is not None:
        record.branching = _branching(output.grad_fn)
    output.register_hook(lambda grad: _on_output_grad(record, grad))


def _needs_hook(module: Module) -> bool:
    has_children = next(module.children(), None) is not None
    return not has_children or any(p is not None for p in module._parameters.values())


def extend(module: Module, debug: bool = False) -> Module:
    """Make ``module`` and its children work with extensions.

    Installs a forward hook on every leaf module (and every module with parameters of its
    own). Calling it again on the same module does nothing more.

    Args:
        module: The network or loss module.
        debug: Print one line for each module that gets extended.

    Returns:
        The same module.

    Raises:
        TypeError: If ``module`` is not a ``torch.nn.Module``.
        ValueError: If a module works in place (e.g. ``ReLU(inplace=True)``), which
            overwrites what the backward pass of the module before it needs.
    """
    if not isinstance(module, Module):
        raise TypeError(f"extend expects a torch.nn.Module, got {type(module).__name__}")
    for child in module.modules():
        if getattr(child, "inplace", False):
            raise ValueError(
                f"{child} works in place, which backpack_core does not support: construct "
                "it with inplace=False."
            )
    for child in module.modules():
        if getattr(child, _EXTENDED, False) or not _needs_hook(child):
            continue
        child.register_forward_hook(_forward_hook)
        setattr(child, _EXTENDED, True)
        if debug:
            print(f"[DEBUG] Extending {child}")
    return module


class backpack:  # noqa: N801 (a context manager named like BackPACK's)
    """Activate extensions for the ``backward()`` calls inside the ``with`` block.

    Example:
        >>> model, lossfunc = extend(model), extend(torch.nn.CrossEntropyLoss())
        >>> with backpack(BatchGrad(), DiagGGNMC()):
        ...     lossfunc(model(X), y).backward()
        >>> model[0].weight.grad_batch.shape  # [N, *weight.shape]

    Args:
        *extensions: Instances of extensions (``BatchGrad()``, not ``BatchGrad``).
        debug: Print one line per extension and module as the backward pass reaches it.

    Raises:
        ValueError: If an argument is not an extension instance, or two extensions would
            write the same attribute.
    """

    def __init__(self, *extensions: BackpropExtension, debug: bool = False):
        for extension in extensions:
            if isinstance(extension, type) and issubclass(extension, BackpropExtension):
                raise ValueError(
                    f"backpack() expects extension instances, got the class "
                    f"{extension.__name__}: write {extension.__name__}() instead."
                )
            if not isinstance(extension, BackpropExtension):
                raise ValueError(
                    f"backpack() expects extension instances such as BatchGrad(), got "
                    f"{extension!r} of type {type(extension).__name__}."
                )
        fields = [e.savefield for e in extensions]
        duplicates = sorted({f for f in fields if fields.count(f) > 1})
        if duplicates:
            raise ValueError(
                f"backpack() got several extensions that write {', '.join(duplicates)}: "
                "pass each extension once."
            )
        self._pass = _ActivePass(tuple(extensions), debug)

    def __enter__(self):
        _ACTIVE.append(self._pass)
        return self

    def __exit__(self, *exc_info):
        _ACTIVE.remove(self._pass)
        self._pass.deposits.clear()
        return False
