"""backpack_core: a BackPACK-style engine of backprop extensions for ``torch.nn`` models.

Usage::

    from backpack_core import backpack, extend
    from backpack_core.extensions import BatchGrad

    model, lossfunc = extend(model), extend(torch.nn.CrossEntropyLoss())
    with backpack(BatchGrad()):
        lossfunc(model(X), y).backward()
    # every parameter p now has p.grad_batch, shape [N, *p.shape]
"""

from backpack_core.config import memory_limit, set_conv_individual_gradients, set_memory_limit
from backpack_core.derivatives import register_derivatives, supported_modules
from backpack_core.engine import backpack, extend, no_records

__all__ = [
    "backpack",
    "extend",
    "memory_limit",
    "no_records",
    "register_derivatives",
    "set_conv_individual_gradients",
    "set_memory_limit",
    "supported_modules",
]
