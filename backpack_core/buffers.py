"""Reuse of a large result tensor from one backward pass to the next (an explicit option).

Per-sample results are large (``grad_batch`` of mnist_mlp: 128 x 1.3 M floats, 0.67 GB),
and allocating them afresh every step can cost more than computing them: the operating
system zeroes the pages of a new block on first touch. An extension constructed with
``reuse_buffer=True`` (``BatchGrad(reuse_buffer=True)``) writes its result into the
tensor that the previous step left in ``param.<savefield>`` when shape, dtype and device
match. The old values are then overwritten in place: any reference to them that the
caller kept changes too, which is why it is not the default.
"""

from typing import Optional

from torch import Tensor


def previous_result(owner, attribute: str, shape, dtype, device) -> Optional[Tensor]:
    """The tensor in ``owner.<attribute>`` if the new result can be written into it.

    Args:
        owner: The object holding the previous result (a parameter).
        attribute: The attribute name (e.g. ``"grad_batch"``).
        shape: The shape the new result needs.
        dtype: The dtype the new result needs.
        device: The device the new result needs.

    Returns:
        The previous tensor if it has the right shape, dtype and device, does not require
        gradients and is contiguous; otherwise ``None``.
    """
    value = owner.__dict__.get(attribute)
    if (
        not isinstance(value, Tensor)
        or value.shape != shape
        or value.dtype != dtype
        or value.device != device
        or value.requires_grad
        or not value.is_contiguous()
    ):
        return None
    return value
