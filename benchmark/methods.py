"""One forward+backward step per library: plain, backpack_core, BackPACK, torch.func, Opacus.

Each method owns its copy of the net (identical weights), runs one step on a mini-batch with
:meth:`Method.step` and hands its result, one entry per parameter in ``net.parameters()``
order, to :meth:`Method.result`. Per-sample gradients are returned in BatchGrad's
convention (the i-th summand of the mean loss's gradient) by every library.
"""

import importlib
from typing import Any, Dict, List, Optional

import torch
from catalog import MODULES
from torch import Tensor, nn


def _clear(params: List[nn.Parameter], fields: List[str]) -> None:
    for p in params:
        p.grad = None
        for field in fields:
            if hasattr(p, field):
                delattr(p, field)


#: The one (library, extension) built with ``reuse_buffer=True``.
REUSING = ("backpack_core", "BatchGrad")


class Method:
    """A way to run one forward+backward step.

    Args:
        net: The net; the method works on its own deep copy.
        loss_factory: Builds the loss module.
        extension: Name of the extension (unused by the plain method).
    """

    def __init__(self, net: nn.Module, loss_factory, extension: Optional[str] = None):
        import copy

        self.net = copy.deepcopy(net)
        self.loss = loss_factory()
        self.extension = extension
        self.params = list(self.net.parameters())
        self._fields: List[str] = []

    def step(self, x: Tensor, y: Tensor) -> None:
        """Forward and backward on ``(x, y)``, with the method's extra work."""
        _clear(self.params, self._fields)
        self.loss(self.net(x), y).backward()

    def result(self) -> List[Any]:
        """The step's output per parameter (tensors or lists of tensors)."""
        return [p.grad for p in self.params]


class PlainMethod(Method):
    """Plain forward+backward on a net that no library touched: the baseline."""


class BackpackLikeMethod(Method):
    """``extend`` + ``with backpack(extension)``: backpack_core or BackPACK 1.7.1.

    Args:
        library: ``"backpack_core"`` or ``"backpack"``.
        net: The net.
        loss_factory: Builds the loss module.
        extension: Name of a class in ``<library>.extensions``.
    """

    def __init__(self, library: str, net: nn.Module, loss_factory, extension: str):
        super().__init__(net, loss_factory, extension)
        package = importlib.import_module(MODULES[library])
        extensions = importlib.import_module(f"{MODULES[library]}.extensions")
        if not hasattr(extensions, extension):
            raise NotImplementedError(f"{library} has no extension {extension}")
        self._backpack = package.backpack
        # As an optimizer loop that keeps no grad_batch across steps would construct it:
        # backpack_core writes each step's individual gradients into the previous tensor.
        options = {"reuse_buffer": True} if (library, extension) == REUSING else {}
        self._ext = getattr(extensions, extension)(**options)
        self.net = package.extend(self.net)
        self.loss = package.extend(self.loss)
        self.params = list(self.net.parameters())
        self._fields = [self._ext.savefield]
        self._reuses_results = library == "backpack_core"

    def step(self, x: Tensor, y: Tensor) -> None:
        """Forward and backward with the extension active.

        As in a training loop (``optimizer.zero_grad()``, then the next step), backpack_core
        finds the previous step's results still on the parameters; its BatchGrad, built with
        ``reuse_buffer=True``, writes into them. BackPACK's are cleared first.
        """
        # BackPACK allocates afresh anyway; clearing first spares it holding two results.
        _clear(self.params, [] if self._reuses_results else self._fields)
        with self._backpack(self._ext):
            self.loss(self.net(x), y).backward()

    def result(self) -> List[Any]:
        """The extension's value on each parameter."""
        return [getattr(p, self._ext.savefield, None) for p in self.params]


class FuncMethod(Method):
    """Per-sample gradients by ``torch.func.vmap(grad(...))`` over ``functional_call``."""

    def __init__(self, net: nn.Module, loss_factory, extension: str = "BatchGrad"):
        super().__init__(net, loss_factory, extension)
        from torch.func import functional_call, grad, vmap

        net_, loss_ = self.net, self.loss
        self._names = [name for name, _ in net_.named_parameters()]

        def loss_one(params: Dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(net_, params, (x.unsqueeze(0),))
            return loss_(out, y.unsqueeze(0))

        self._per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")
        self._grads: Dict[str, Tensor] = {}
        self._n = 1

    def step(self, x: Tensor, y: Tensor) -> None:
        """Per-sample gradients of the per-sample losses (nothing else)."""
        self._grads = {}
        params = {name: p.detach() for name, p in self.net.named_parameters()}
        self._grads = self._per_sample(params, x, y)
        self._n = x.shape[0]

    def result(self) -> List[Any]:
        """Per-sample gradients scaled by 1/N (the mean loss's summands)."""
        return [self._grads[name] / self._n for name in self._names]


class OpacusMethod(Method):
    """Per-sample gradients by Opacus's ``GradSampleModule`` (hooks mode, mean loss)."""

    def __init__(self, net: nn.Module, loss_factory, extension: str = "BatchGrad"):
        super().__init__(net, loss_factory, extension)
        from opacus import GradSampleModule

        self.net = GradSampleModule(self.net, loss_reduction="mean")
        self.params = list(self.net.parameters())
        self._fields = ["grad_sample"]
        self._n = 1

    def step(self, x: Tensor, y: Tensor) -> None:
        """Forward and backward; Opacus fills ``p.grad_sample``."""
        for p in self.params:
            p.grad = None
            p.grad_sample = None
        self.loss(self.net(x), y).backward()
        self._n = x.shape[0]

    def result(self) -> List[Any]:
        """``grad_sample`` (per-sample losses' gradients) scaled by 1/N."""
        return [None if p.grad_sample is None else p.grad_sample / self._n for p in self.params]


def make_method(library: str, net: nn.Module, loss_factory, extension: str) -> Method:
    """The method of ``library`` for ``extension`` on a copy of ``net``.

    Args:
        library: ``"plain"`` or a name of :data:`LIBRARIES`.
        net: The net (not modified).
        loss_factory: Builds the loss module.
        extension: The extension's name.

    Returns:
        The method.

    Raises:
        NotImplementedError: If the library does not offer the extension.
    """
    if library == "plain":
        return PlainMethod(net, loss_factory)
    if library in ("backpack_core", "backpack"):
        return BackpackLikeMethod(library, net, loss_factory, extension)
    if extension != "BatchGrad":
        raise NotImplementedError(f"{library} computes per-sample gradients only")
    if library == "torch.func":
        return FuncMethod(net, loss_factory)
    if library == "opacus":
        return OpacusMethod(net, loss_factory)
    raise ValueError(f"unknown library {library!r}")


def _flat(value: Any) -> List[Tensor]:
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    return [] if value is None else [value]


def compare(
    result: List[Any], reference: List[Any], shapes_only: bool, names: Optional[List[str]] = None
) -> Dict[str, Any]:
    """Compare two results parameter by parameter.

    Args:
        result: One library's result, one entry per parameter.
        reference: The reference library's result.
        shapes_only: Compare shapes only (Monte-Carlo extensions).
        names: The parameters' names, to say where the largest difference is.

    Returns:
        ``{"shapes_equal", "max_abs_diff", "rel_diff", "max_abs_ref", "worst"}``; the
        differences are ``None`` when shapes differ or only shapes were compared.
        ``rel_diff`` is the largest absolute difference over the largest absolute reference
        entry, per tensor, maximised over tensors; ``worst`` names that tensor
        (``param[i]``: the i-th tensor of a list such as a Kronecker factorisation).
    """
    names = names or [str(i) for i in range(len(reference))]
    pairs = []
    shapes_equal = len(result) == len(reference)
    for name, a_value, b_value in zip(names, result, reference):
        a_list, b_list = _flat(a_value), _flat(b_value)
        shapes_equal &= len(a_list) == len(b_list)
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            shapes_equal &= a.shape == b.shape
            label = name if not isinstance(b_value, (list, tuple)) else f"{name}[{i}]"
            pairs.append((label, a, b))
    out: Dict[str, Any] = {
        "shapes_equal": bool(shapes_equal),
        "max_abs_diff": None,
        "rel_diff": None,
        "max_abs_ref": None,
        "worst": None,
    }
    if not shapes_equal or shapes_only:
        return out
    max_abs, rel, ref_max, worst = 0.0, 0.0, 0.0, None
    with torch.no_grad():
        for label, a, b in pairs:
            diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
            scale = b.double().abs().max().item() if b.numel() else 0.0
            this = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
            max_abs, ref_max = max(max_abs, diff), max(ref_max, scale)
            if this > rel or worst is None:
                rel, worst = max(rel, this), label
    out.update(max_abs_diff=max_abs, rel_diff=rel, max_abs_ref=ref_max, worst=worst)
    return out
