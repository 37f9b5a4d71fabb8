"""``extend`` and ``backpack``: hooks that keep each module call and run the extensions.

How a backward pass flows. ``extend`` installs a forward hook on every leaf module. When a
module is called with gradients enabled, the hook keeps a *record* of that call (the input
and output if the module's derivatives read them, their shapes, what the derivatives
capture) and registers a tensor hook on the output.
During ``backward()`` the tensor hooks fire from the loss towards the input, each with the
gradient w.r.t. that output. Inside ``with backpack(...)`` each firing

1. takes the backpropagated quantities that the next module deposited on this output
   (the loss starts them instead),
2. writes every active extension's value onto the module's parameters,
3. passes the quantities on to its input (``jac_t_mat_prod``) and deposits them there,

and frees the record. Outside the context it only frees the record, so an extended model
that trains without extensions, or evaluates under ``torch.no_grad()``, keeps nothing
autograd does not keep too (``Derivatives.reads_input``/``reads_output`` say what a record
keeps: ReLU's output, which autograd saves, but not its input, the pre-activation).

Where a tensor feeds several modules (a residual connection ``y = f(x) + x``, an output
used twice), the quantities arriving from its consumers are summed. The loss's forward hook
walks the autograd graph behind it *between* extended modules (a module's own forward is
not looked into: reusing a tensor there is no branching), counts the consumers of every
module output, and notes the additions and subtractions it passes (``a + b``, ``a - b``),
which pass quantities on to both operands. Any other operation between extended modules is
an error for extensions that backpropagate, never a silent wrong number: put it into a
module of its own (a parameter-free module needs no registered derivatives).
"""

import weakref
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from backpack_core import _torch_private
from backpack_core.derivatives import LossDerivatives, ModuleIO, derivatives_for
from backpack_core.derivatives import autograd as autograd_fallback
from backpack_core.derivatives.base import UnsupportedOperation
from backpack_core.extensions.base import BackpropExtension, ModuleContext

_EXTENDED = "_backpack_core_extended"


class _Record(ModuleIO):
    """A module call, plus what the engine needs to chain calls during backward.

    The input (output) is kept only if the module's derivatives read it (``reads_input``,
    ``reads_output``): an extended model then holds no tensor beyond what autograd holds
    for its own backward. What the engine itself needs of the input (whether it requires
    gradients, its place in the autograd graph) is read at forward time.
    """

    def __init__(self, module: Module, inputs: tuple, output: Tensor, derivatives):
        x = inputs[0]
        target = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], Tensor) else None
        extra = derivatives.capture(module, x, output) if derivatives else None
        # A module without derivatives is refused before anything reads its call.
        keep_input = derivatives is not None and derivatives.reads_input
        keep_output = derivatives is not None and derivatives.reads_output
        super().__init__(
            module,
            x.detach() if keep_input else None,
            output.detach() if keep_output else None,
            target=target,
            extra=extra,
            input_shape=x.shape,
            output_shape=output.shape,
            reader=type(derivatives).__name__ if derivatives is not None else None,
        )
        self.derivatives = derivatives
        self.output_key = _edge_key(output.grad_fn, output.output_nr)
        self.input_requires_grad = x.requires_grad
        # The node that produced the input, for the loss's walk of the graph (``_plan``).
        self.input_grad_fn = x.grad_fn
        self.input_output_nr = x.output_nr
        grad_fn = self.input_grad_fn
        self.input_key = None if grad_fn is None else _edge_key(grad_fn, x.output_nr)
        self.several_inputs = (
            len(inputs) > 1
            and sum(isinstance(x, Tensor) and x.requires_grad for x in inputs) > 1
            and not isinstance(derivatives, LossDerivatives)
        )
        self.pending = True
        self.plan: Optional[_Plan] = None

    def release(self) -> None:
        """Drop the tensors: the backward pass is done with this call."""
        self.pending = False
        super().release()
        self.input_grad_fn = None


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
        self.storing_extension = next(
            (e for e in extensions if e.stores_individual_gradients), None
        )
        # edge key -> [number of deposits, {quantity key: value}] (summed over consumers)
        self.deposits: Dict[Tuple[int, int], list] = {}
        self.plan: Optional[_Plan] = None
        # the backward pass (graph task) in which a loss last started the quantities
        self.loss_task: Optional[int] = None

    # ------------------------------------------------------------------ helpers
    def _names(self) -> str:
        return ", ".join(type(e).__name__ for e in self.extensions)

    def _backpropagating_names(self) -> str:
        names = ", ".join(type(e).__name__ for e in self.extensions if e.quantities())
        return f"The curvature extensions ({names})"

    def _deposit(self, key: Tuple[int, int], values: dict, coefficient: float = 1.0) -> None:
        """Add ``coefficient * values`` to what was deposited on edge ``key``.

        An addition's result passes the sum on to its operands once all its consumers have
        deposited.
        """
        if coefficient != 1.0:
            values = {q.key: q.scale(values[q.key], coefficient) for q in self.quantities}
        entry = self.deposits.get(key)
        if entry is None:
            entry = self.deposits[key] = [0, values]
        else:
            entry[1] = {q.key: q.add(entry[1][q.key], values[q.key]) for q in self.quantities}
        entry[0] += 1
        operands = self.plan.sums.get(key) if self.plan is not None else None
        if operands is not None and entry[0] == self.plan.consumers[key]:
            del self.deposits[key]
            for operand, operand_coefficient in operands:
                self._deposit(operand, entry[1], operand_coefficient)

    def _take(self, record: _Record) -> dict:
        entry = self.deposits.pop(record.output_key, None)
        expected = self.plan.consumers.get(record.output_key) if self.plan is not None else None
        if entry is None or entry[0] != expected:
            raise NotImplementedError(
                f"{self._backpropagating_names()} could not collect the quantities at the "
                f"output of {record.module}: not every consumer of it is an extended module "
                "or an addition (an operation outside the modules, e.g. torch.relu(x) or "
                "x.view(...) in a forward method, sits in between). Put it into a module of "
                "its own (nn.ReLU, nn.Flatten, or your own parameter-free module) or use "
                "first-order extensions only."
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
        if derivatives is not None:
            try:
                derivatives.check(record)
            except UnsupportedOperation as error:
                raise NotImplementedError(f"{self._names()} cannot run on {error}") from None
        params = [
            (name, p) for name, p in module._parameters.items() if p is not None and p.requires_grad
        ]
        if params:
            self._check_called_once(module)
        incoming = self._take(record) if self.quantities else {}
        propagate = bool(self.quantities) and record.input_requires_grad
        if derivatives is None and (params or propagate):
            raise NotImplementedError(
                f"{self._names()} cannot run on {type(module).__name__} ({module}): "
                "backpack_core does not know this layer. Supported layers: "
                f"{', '.join(_supported())}. Register its derivatives with "
                "backpack_core.register_derivatives(...) or replace the layer."
            )
        ctx = ModuleContext(record, derivatives, grad_output, incoming, self.storing_extension)
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
            self._deposit(record.input_key, outgoing)

    def _check_called_once(self, module: Module) -> None:
        """Refuse a module with parameters that this backward pass reaches twice."""
        task = _torch_private.graph_task_id()
        # the instance dictionary directly: nn.Module's __getattr__/__setattr__ are slow
        if module.__dict__.get("_backpack_core_task") == task:
            raise NotImplementedError(
                f"{self._names()}: {module} was called more than once in the graph this "
                "backward pass differentiates (weight sharing); its per-parameter results "
                "would need summing over the calls, which backpack_core does not do. Use a "
                "separate module per call."
            )
        module.__dict__["_backpack_core_task"] = task

    def _start(self, record: _Record, derivatives: LossDerivatives, grad_output: Tensor) -> None:
        if not self.quantities:
            return
        task = _torch_private.graph_task_id()
        if self.loss_task == task:
            raise NotImplementedError(
                f"{self._backpropagating_names()} start at one extended loss per backward "
                f"pass, and this one reaches a second ({record.module}). Their curvature "
                "would need the two losses' factors side by side, not one in place of the "
                "other. Call backward() on each loss separately and add the results (they "
                "are sums over the loss terms), or extend only the loss whose curvature you "
                "want. First-order extensions work with several losses."
            )
        self.loss_task = task
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
        plan = record.plan
        if plan.problem is not None:
            raise NotImplementedError(
                f"{self._backpropagating_names()} pass quantities through extended modules "
                "and through additions between them, but in the graph behind "
                f"{record.module} {plan.problem}. Put that operation into a module of its "
                "own (a parameter-free module needs no registered derivatives: autograd "
                "provides them). First-order extensions work on such graphs."
            )
        if plan.branches:
            for quantity in self.quantities:
                if not quantity.supports_branching:
                    raise NotImplementedError(
                        f"{quantity.name} cannot run where a tensor feeds several modules "
                        f"or a sum (in the graph behind {record.module}): "
                        f"{quantity.branching_refusal} Use KFLR or KFAC on such networks."
                    )
        self.deposits.clear()
        self.plan = plan
        values = {q.key: q.start(derivatives, record, scale) for q in self.quantities}
        if record.input_key is not None:
            self._deposit(record.input_key, values)


_ACTIVE: List[_ActivePass] = []


def _supported() -> List[str]:
    from backpack_core.derivatives import supported_modules

    return supported_modules()


def _edge_key(node, output_nr: int) -> Tuple[int, int]:
    """The key of a tensor in the autograd graph: its producing node and output number.

    Node ids are unique while the graph is alive, which is as long as a pass needs them.
    """
    return (id(node), output_nr)


# the calls of extended modules whose backward has not run yet, by the key of their output
_PENDING: "weakref.WeakValueDictionary[Tuple[int, int], _Record]" = weakref.WeakValueDictionary()


class _Plan:
    """The graph behind a loss, between extended modules (see the module docstring).

    Attributes:
        consumers: Edge key -> how many deposits arrive there (extended modules reading
            the tensor, plus sums with it as an operand).
        sums: Edge key of a sum's result -> ``[(operand key, coefficient), ...]``.
        branches: Whether some tensor has several consumers or a sum lies in between.
        problem: What prevents passing quantities back, or ``None``.
    """

    def __init__(self):
        self.consumers: Dict[Tuple[int, int], int] = {}
        self.sums: Dict[Tuple[int, int], List[Tuple[Tuple[int, int], float]]] = {}
        self.branches = False
        self.problem: Optional[str] = None

    def _consume(self, key: Tuple[int, int]) -> bool:
        """Count one consumer of ``key``; ``True`` the first time it is seen."""
        count = self.consumers.get(key, 0) + 1
        self.consumers[key] = count
        if count > 1:
            self.branches = True
        return count == 1


def _plan(loss_record: _Record) -> _Plan:
    """Walk the graph behind a loss's input, from extended module to extended module."""
    plan = _Plan()
    start = loss_record.input_grad_fn
    if start is None:
        return plan
    stack = [(start, loss_record.input_output_nr)]
    plan._consume(_edge_key(*stack[0]))
    while stack:
        node, output_nr = stack.pop()
        key = _edge_key(node, output_nr)
        record = _PENDING.get(key)
        if record is not None:
            if record.several_inputs:
                plan.problem = plan.problem or (
                    f"{record.module} takes several tensors that need gradients"
                )
            grad_fn = record.input_grad_fn
            if grad_fn is not None and plan._consume(record.input_key):
                stack.append((grad_fn, record.input_output_nr))
            continue
        coefficients = _torch_private.sum_coefficients(node)
        if coefficients is None:
            if type(node).__name__ != "AccumulateGrad":
                plan.problem = plan.problem or (
                    f"the result of {node.name()} (no extended module) lies in between"
                )
            continue
        plan.branches = True
        operands = plan.sums[key] = []
        for (child, child_nr), coefficient in zip(node.next_functions, coefficients):
            if child is None or type(child).__name__ == "AccumulateGrad":
                continue
            child_key = _edge_key(child, child_nr)
            operands.append((child_key, coefficient))
            if plan._consume(child_key):
                stack.append((child, child_nr))
    return plan


def _on_output_grad(record: _Record, grad_output: Tensor) -> None:
    if not record.pending:
        return
    try:
        if _ACTIVE and torch.is_grad_enabled():  # backward(create_graph=True)
            with torch.no_grad():
                _ACTIVE[-1].run(record, grad_output)
        elif _ACTIVE:  # autograd runs hooks without gradients unless it builds a graph
            _ACTIVE[-1].run(record, grad_output)
    finally:
        record.release()


_NO_RECORDS: List[bool] = []  # non-empty inside no_records()


@contextmanager
def no_records():
    """Forward passes inside the block keep nothing for extensions.

    For a forward pass whose backward runs with no extension active (plain training steps
    of an extended network): it then costs about what the network costs without
    :func:`extend`, and gives the same numbers. A backward pass of such a forward inside
    ``backpack(...)`` computes no quantities, so the extensions' attributes stay unset.
    """
    _NO_RECORDS.append(True)
    try:
        yield
    finally:
        _NO_RECORDS.pop()


def _forward_hook(module: Module, inputs: tuple, output) -> None:
    if _NO_RECORDS or autograd_fallback.evaluating():
        return  # the fallback differentiating a module: not a call of the network
    if not torch.is_grad_enabled() or not isinstance(output, Tensor) or not output.requires_grad:
        return
    if not inputs or not isinstance(inputs[0], Tensor) or output is inputs[0]:
        return  # a module that returned its input unchanged computed the identity
    derivatives = derivatives_for(module)
    record = _Record(module, inputs, output, derivatives)
    if isinstance(derivatives, LossDerivatives):
        record.plan = _plan(record)
    else:
        _PENDING[record.output_key] = record
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
        self._pass.plan = None
        self._pass.loss_task = None
        return False
