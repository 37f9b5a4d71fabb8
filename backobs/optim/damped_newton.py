"""Damped Newton steps on the curvatures of ``backpack_core``.

:class:`DampedNewton` is the family that the BackPACK paper (Dangel, Kunstner & Hennig,
ICLR 2020) benchmarked on DeepOBS: ``θ ← θ − lr · (C + damping·I)⁻¹ ∇L`` with ``C`` one of

- ``"diag_ggn_exact"``: diagonal of the generalised Gauss-Newton (``DiagGGNExact``);
- ``"diag_ggn_mc"``: its Monte-Carlo estimate (``DiagGGNMC``);
- ``"kfac"``: Kronecker factors of the Monte-Carlo GGN (``KFAC``);
- ``"kflr"``: Kronecker factors of the exact GGN (``KFLR``);
- ``"kfra"``: recursively batch-averaged Kronecker factors (``KFRA``);
- ``"zero"``: ``C = 0``, SGD with the step ``lr / damping`` (the paper's control).

The optimizer reads the quantity from each parameter in ``step()``, so the backward pass
before it must run inside ``with backpack(*optimizer.extensions()):``; it works on any model
extended with :func:`backpack_core.extend`, in the runner or in a loop of your own.
"""

import math

import torch

from backobs.optim.hyperparameters import HYPERPARAMETER_TYPES, KFAC_APPROXIMATIONS, check_value
from backpack_core.extensions import KFAC, KFLR, KFRA, DiagGGNExact, DiagGGNMC

__all__ = ["CURVATURES", "KFAC_APPROXIMATIONS", "DampedNewton", "NonFiniteUpdateError"]

CURVATURES = ("diag_ggn_exact", "diag_ggn_mc", "kfac", "kflr", "kfra", "zero")
"""The curvature names :class:`DampedNewton` accepts."""


_DIAGONAL = ("diag_ggn_exact", "diag_ggn_mc")
_KRONECKER = ("kfac", "kflr", "kfra")
_MONTE_CARLO = ("diag_ggn_mc", "kfac")


class NonFiniteUpdateError(ArithmeticError):
    """A curvature or an update of :class:`DampedNewton` is not finite.

    Raised by ``step()`` before any parameter changes; the message names the parameter. A
    training loop treats it as divergence (as DeepOBS treats a non-finite loss) and records
    :attr:`quantity` and the parameter's name in the results.

    Args:
        message (str): What is not finite, and of which parameter.
        quantity (str): ``"update"``, ``"gradient"`` or ``"curvature .<savefield>"``.
        parameter (torch.nn.Parameter, optional): The parameter.
        parameter_name (str, optional): Its name, if the optimizer was given names.
    """

    def __init__(self, message, quantity="update", parameter=None, parameter_name=None):
        super().__init__(message)
        self.quantity = quantity
        self.parameter = parameter
        self.parameter_name = parameter_name


class DampedNewton(torch.optim.Optimizer):
    r"""Damped Newton steps ``θ ← θ − lr · (C + damping·I)⁻¹ ∇L`` with a curvature ``C`` by name.

    Diagonal curvatures divide the gradient elementwise by ``C + damping``. Kronecker
    curvatures (``p.kfac``, ``p.kflr``, ``p.kfra`` = ``[B, A]`` for a weight, ``B`` over its
    outputs, ``A`` over its inputs) are inverted factor by factor, never forming ``B ⊗ A``,
    with the factored Tikhonov damping of Martens & Grosse (2015, §6.3)::

        (B + damping^½ / π · I) ⊗ (A + π · damping^½ · I),
        π = sqrt((tr(A) / dim A) / (tr(B) / dim B)),

    so that the weight's step is ``(B + ...)⁻¹ G (A + ...)⁻¹`` for its gradient ``G`` shaped
    ``[out, in]`` (a convolution's ``[C_out, C_in·k·k]``). A bias (one factor ``B``) gets
    ``(B + damping·I)⁻¹ g``. ``π`` is 1 where a factor has a zero trace (no signal reached
    the layer). The factors' inverses are computed in float64 (Cholesky; an
    eigendecomposition with the negative round-off eigenvalues cut at zero when the
    Cholesky factorisation fails), so singular factors (the cross-entropy Hessian's factor
    always is; constant border pixels make ``A`` singular) survive any positive damping.

    With the defaults each step uses the current mini-batch's curvature only, exactly the
    formula above. Two options change that:

    - ``ema_decay = β > 0``: ``C`` is the bias-corrected exponential moving average of the
      curvatures seen so far, ``C̄_t = β C̄_{t-1} + (1 − β) C_t``, ``C = C̄_t / (1 − β^t)``
      (Kronecker curvatures: of each factor, ``π`` from the averaged factors);
    - ``inverse_interval = k > 1``: the damped inverse (``1 / (C + damping)`` for the
      diagonals) is recomputed only at steps 1, k + 1, 2k + 1, ... and reused in between
      with the current gradient. Without the moving average the steps in between need no
      curvature at all, and :meth:`extensions` returns none for them.

    ``step()`` consumes the quantity: it removes the attribute from the parameter, so a step
    after a backward pass outside ``backpack(*optimizer.extensions())`` raises instead of
    reusing an old curvature, and the default diagonal step computes the update in the
    curvature's memory (clone ``p.diag_ggn_mc`` before ``step()`` to keep it). A
    non-finite curvature or update raises :class:`NonFiniteUpdateError` before any
    parameter is changed.

    Example::

        optimizer = DampedNewton(model.parameters(), "kfac", lr=0.1, damping=1e-3)
        for inputs, labels in batches:
            optimizer.zero_grad()
            loss = lossfunc(model(inputs), labels)
            with backpack(*optimizer.extensions()):
                loss.backward()
            optimizer.step()

    Args:
        params: Parameters or parameter groups (``model.named_parameters()`` names them in
            error messages).
        curvature (str): One of :data:`CURVATURES`.
        lr (float): Step size, ``>= 0``.
        damping (float): Added to the curvature, ``> 0``.
        ema_decay (float): ``β`` of the moving average in ``[0, 1)``; 0 (default) uses the
            current curvature only.
        inverse_interval (int): Recompute the damped inverses every this many steps
            (default 1: every step).
        kfac_approx (str): For ``"kfac"`` and ``"kflr"``: the convention for layers with
            weight sharing passed to the extension, one of :data:`KFAC_APPROXIMATIONS`
            (default ``"expand"``, curvlinops' KFAC-expand: a convolution is a linear layer
            applied at N·positions samples). Ignored by the other curvatures.
        mc_samples (int): For ``"kfac"`` and ``"diag_ggn_mc"``: Monte-Carlo samples per
            data point (default 1).

    Raises:
        ValueError: For an unknown curvature or ``kfac_approx``, or a hyperparameter out
            of range or not finite; the message names it and what it accepts.
    """

    def __init__(
        self,
        params,
        curvature,
        lr,
        damping,
        ema_decay=0.0,
        inverse_interval=1,
        kfac_approx="expand",
        mc_samples=1,
    ):
        if curvature not in CURVATURES:
            raise ValueError(
                f"unknown curvature {curvature!r}; choose one of {', '.join(CURVATURES)}"
            )
        values = {
            "lr": lr,
            "damping": damping,
            "ema_decay": ema_decay,
            "inverse_interval": inverse_interval,
            "kfac_approx": kfac_approx,
            "mc_samples": mc_samples,
        }
        for name, value in values.items():
            values[name] = check_value(name, value, HYPERPARAMETER_TYPES[name])
        self.curvature = curvature
        self.kfac_approx = values.pop("kfac_approx")
        self.mc_samples = values.pop("mc_samples")
        super().__init__(params, values)

    def extensions(self):
        """Fresh instances of the extensions that the next ``step()`` needs.

        Call it before every backward pass (``with backpack(*optimizer.extensions()):``): with
        ``inverse_interval > 1`` and no moving average, the steps between two inverse
        computations need no curvature, and the list is empty.

        Returns:
            list: E.g. ``[KFAC(mc_samples=1, kfac_approx="expand")]``; ``[]`` for ``"zero"``.
        """
        if self.curvature == "zero" or not self._next_step_needs_curvature():
            return []
        if self.curvature == "diag_ggn_exact":
            return [DiagGGNExact()]
        if self.curvature == "diag_ggn_mc":
            return [DiagGGNMC(mc_samples=self.mc_samples)]
        if self.curvature == "kfac":
            return [KFAC(mc_samples=self.mc_samples, kfac_approx=self.kfac_approx)]
        if self.curvature == "kflr":
            return [KFLR(kfac_approx=self.kfac_approx)]
        return [KFRA()]

    def _next_step_needs_curvature(self):
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.requires_grad and _needs_curvature(
                    group, self.state[parameter].get("step", 0) + 1
                ):
                    return True
        return False

    @torch.no_grad()
    def step(self, closure=None):
        """Take one damped Newton step with the curvature of the last backward pass.

        Args:
            closure: Not supported (the curvature comes from the backward pass before).

        Returns:
            None

        Raises:
            RuntimeError: If a parameter with a gradient lacks the curvature attribute (the
                backward pass ran outside ``backpack(*optimizer.extensions())``).
            NonFiniteUpdateError: If a curvature or an update is not finite; no parameter
                has changed then.
        """
        if closure is not None:
            raise ValueError(
                "DampedNewton.step() takes no closure: run the backward pass inside "
                "backpack(*optimizer.extensions()), then call step()."
            )
        # Everything is computed and checked before the first parameter changes.
        updates, checks, total = [], [], None
        for group_index, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for index, parameter in enumerate(group["params"]):
                if parameter.grad is None:
                    continue
                where = (parameter, names[index] if names else None, index, group_index)
                new_state, update, parts = self._direction(parameter, group, where)
                updates.append((parameter, new_state, update, group["lr"]))
                for part in parts:
                    checks.append((where, *part))
                    total = part[1] if total is None else total + part[1]
        # A NaN or an infinity anywhere makes a sum (or a dot product) non-finite, and the
        # total of them: one synchronisation for all parameters.
        if total is not None and not math.isfinite(total.item()):
            self._raise_non_finite(checks)
        for parameter, new_state, update, lr in updates:
            self.state[parameter].update(new_state)
            if update[0] == "divide":  # θ ← θ − lr · g / (C + damping), in C's memory
                _, grad, diagonal, damping = update
                parameter.addcdiv_(grad, diagonal.add_(damping), value=-lr)
            else:
                _, direction, scale = update
                parameter.add_(direction, alpha=-lr * scale)

    def _raise_non_finite(self, checks):
        for where, tensors, total in checks:
            if torch.isfinite(total):
                continue
            for label, tensor in tensors:
                if not torch.isfinite(tensor).all():
                    raise _non_finite(self.curvature, where, label)
            raise _non_finite(self.curvature, where, "update")  # finite parts, overflow

    def _direction(self, parameter, group, where):
        """New state, the update (not yet applied) and what to check, for one parameter.

        The update is ``("add", direction, scale)`` for ``θ ← θ − lr · scale · direction`` or
        ``("divide", g, C, damping)`` for ``θ ← θ − lr · g / (C + damping)``; each check is
        ``(tensors by label, a scalar that is finite if they are)``.
        """
        state = self.state[parameter]
        step = state.get("step", 0) + 1
        new_state = {"step": step}
        damping = group["damping"]
        grad = parameter.grad
        if self.curvature == "zero":
            return new_state, ("add", grad, 1 / damping), [([("gradient", grad)], grad.sum())]
        if not _needs_curvature(group, step):
            if hasattr(parameter, self.curvature):
                delattr(parameter, self.curvature)  # not needed, but must not go stale
            direction = self._apply(state["inverse"], grad)
            return new_state, ("add", direction, 1.0), [([("update", direction)], direction.sum())]
        curvature = self._take_curvature(parameter, where)
        decay = group["ema_decay"]
        refresh = (step - 1) % group["inverse_interval"] == 0
        if self.curvature in _DIAGONAL and decay == 0 and group["inverse_interval"] == 1:
            # The default diagonal step, in the fewest passes over memory (on CPUs they cost
            # more than the arithmetic): C ≥ 0 and g finite give a finite update, and one dot
            # product is non-finite if either has a NaN or an infinity.
            (diagonal,) = curvature
            parts = [("curvature", diagonal), ("gradient", grad)]
            total = torch.dot(diagonal.flatten(), grad.flatten())
            return new_state, ("divide", grad, diagonal, damping), [(parts, total)]
        if decay > 0:
            previous = state.get("average")
            if previous is None:
                average = [(1 - decay) * c for c in curvature]
            else:
                average = [decay * p + (1 - decay) * c for p, c in zip(previous, curvature)]
            new_state["average"] = average
            correction = 1 - decay**step
            read, curvature = curvature, [a / correction for a in average]
        else:
            read = curvature
        if refresh:
            if self.curvature in _KRONECKER:
                for tensor in curvature:  # the factorisations need finite factors
                    if not torch.isfinite(tensor).all():
                        raise _non_finite(self.curvature, where, "curvature")
            inverse = self._damped_inverse(curvature, damping, parameter)
            new_state["inverse"] = inverse
        else:
            inverse = state["inverse"]
        direction = self._apply(inverse, grad)
        parts = [([("curvature", tensor)], tensor.sum()) for tensor in read]
        parts.append(([("update", direction)], direction.sum()))
        return new_state, ("add", direction, 1.0), parts

    def _take_curvature(self, parameter, where):
        """The curvature as a list of tensors (one for a diagonal), removed from ``parameter``."""
        savefield = self.curvature
        value = getattr(parameter, savefield, None)
        if value is None:
            extension = self.extensions() or "the curvature extension"
            raise RuntimeError(
                f"{_describe(*where)} has a gradient but no .{savefield}: the backward pass "
                f"ran without {extension}. Run it inside `with backpack(*optimizer.extensions()):`"
                " on a model (and loss) extended with backpack_core.extend, and call "
                "optimizer.extensions() again before every backward pass."
            )
        delattr(parameter, savefield)
        return [value] if self.curvature in _DIAGONAL else list(value)

    def _damped_inverse(self, curvature, damping, parameter):
        if self.curvature in _DIAGONAL:
            return [1.0 / (curvature[0] + damping)]
        if len(curvature) == 1:  # a bias: [B]
            return [_inverse(curvature[0], damping, parameter.dtype)]
        output_factor, input_factor = curvature
        pi = _pi(input_factor, output_factor)
        root = math.sqrt(damping)
        return [
            _inverse(output_factor, root / pi, parameter.dtype),
            _inverse(input_factor, root * pi, parameter.dtype),
        ]

    def _apply(self, inverse, grad):
        if self.curvature in _DIAGONAL:
            return grad * inverse[0]
        if len(inverse) == 1:
            return (inverse[0] @ grad.reshape(grad.shape[0], -1)).reshape(grad.shape)
        output_inverse, input_inverse = inverse
        matrix = grad.reshape(output_inverse.shape[0], input_inverse.shape[0])
        return (output_inverse @ matrix @ input_inverse).reshape(grad.shape)


def _needs_curvature(group, step):
    return group["ema_decay"] > 0 or (step - 1) % group["inverse_interval"] == 0


def _non_finite(savefield, where, label):
    if label == "update":
        problem = (
            "the update of {} is not finite (gradient or curvature too large, or damping too small)"
        )
    elif label == "gradient":
        problem = "the gradient of {} is not finite"
    else:
        label = f"curvature .{savefield}"
        problem = f"the {label} of {{}} is not finite"
    return NonFiniteUpdateError(
        problem.format(_describe(*where)) + "; no parameter was changed.",
        quantity=label,
        parameter=where[0],
        parameter_name=where[1],
    )


def _describe(parameter, name, index, group_index):
    shape = tuple(parameter.shape)
    if name is not None:
        return f"parameter {name!r} (shape {shape})"
    return f"parameter {index} of parameter group {group_index} (shape {shape})"


def _pi(input_factor, output_factor):
    """Martens & Grosse's π from the trace norms; 1 if a trace is not positive."""
    input_norm = input_factor.diagonal().sum().item() / input_factor.shape[0]
    output_norm = output_factor.diagonal().sum().item() / output_factor.shape[0]
    if input_norm <= 0 or output_norm <= 0:
        return 1.0
    return math.sqrt(input_norm / output_norm)


def _inverse(factor, shift, dtype):
    """``(factor + shift·I)⁻¹`` of a symmetric positive semi-definite factor, in float64."""
    matrix = factor.to(torch.float64)
    matrix = (matrix + matrix.T) / 2
    shifted = matrix + shift * torch.eye(matrix.shape[0], dtype=torch.float64, device=matrix.device)
    cholesky, info = torch.linalg.cholesky_ex(shifted)
    if info.item() == 0:
        inverse = torch.cholesky_inverse(cholesky)
    else:
        # Round-off made the factor slightly indefinite: drop its negative eigenvalues.
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        inverse = (eigenvectors / (eigenvalues.clamp(min=0) + shift)) @ eigenvectors.T
    return inverse.to(dtype)
