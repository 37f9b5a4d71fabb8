"""Every private torch (and CPython) API the engine uses, each behind one function.

A torch upgrade may rename or remove any of these. Each function fails loudly (a
``RuntimeError`` naming the API and the torch version) instead of silently changing what
the engine computes, and ``test/backpack_core/test_torch_private.py`` checks each one
against the installed torch.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor


def _missing(what: str) -> RuntimeError:
    return RuntimeError(
        f"backpack_core relies on {what}, which torch {torch.__version__} does not provide; "
        "please report this with your torch version."
    )


def graph_task_id() -> int:
    """An id of the running backward pass (``torch._C._current_graph_task_id``).

    The engine uses it to notice a module with parameters that one backward pass reaches
    twice (weight sharing).
    """
    current = getattr(torch._C, "_current_graph_task_id", None)
    if current is None:
        raise _missing("torch._C._current_graph_task_id")
    return current()


def saved_tensor(node, name: str) -> Optional[Tensor]:
    """A tensor autograd saved for ``node``'s backward (``node._saved_<name>``), or ``None``.

    Used to read a dropout mask and max-pooling indices instead of recomputing them; the
    callers check shape and fall back or refuse when it is missing.
    """
    saved = getattr(node, f"_saved_{name}", None)
    return saved if isinstance(saved, Tensor) else None


def sum_coefficients(node) -> Optional[Tuple[float, float]]:
    """``(a, b)`` if autograd node ``node`` computed ``a * first + b * second``, else ``None``.

    Recognises ``first + alpha * second`` and ``first - alpha * second`` (``AddBackward0``,
    ``SubBackward0``; ``alpha`` is read from ``node._saved_alpha``).
    """
    kind = type(node).__name__
    if kind not in ("AddBackward0", "SubBackward0"):
        return None
    if not hasattr(node, "_saved_alpha"):
        raise _missing(f"the attribute _saved_alpha of autograd's {kind}")
    alpha = float(node._saved_alpha)
    return (1.0, alpha) if kind == "AddBackward0" else (1.0, -alpha)
