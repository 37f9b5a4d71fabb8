"""Engine-wide settings."""

import os
from typing import Optional, Union

import torch


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


_DEFAULT_LIMIT = (_physical_memory() or 32 * 2**30) // 2
_memory_limit: Optional[int] = None  # None: the default of each device


def set_memory_limit(num_bytes: Optional[int]) -> None:
    """Bound the size of any single backpropagated quantity (per module).

    Curvature extensions pass matrices backward whose size grows with the number of
    columns per sample (the exact GGN of a 100-class problem: 100) and the features of
    each layer. Before the engine forms one larger than the limit it raises a
    ``MemoryError`` that names the layer, the size, and the ways out, instead of letting
    the operating system kill the process.

    Args:
        num_bytes: The limit in bytes, for tensors on any device; ``None`` restores the
            default, which follows the tensors' device: half the physical memory of this
            machine for CPU tensors, the free memory of the GPU for CUDA tensors.
    """
    global _memory_limit
    _memory_limit = None if num_bytes is None else int(num_bytes)


def format_bytes(num_bytes: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GiB"


def memory_limit(device: Union[torch.device, str, None] = None) -> int:
    """The current limit in bytes for tensors on ``device`` (see :func:`set_memory_limit`).

    Args:
        device: Where the quantity lives; ``None``: the CPU.
    """
    if _memory_limit is not None:
        return _memory_limit
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return _DEFAULT_LIMIT


#: The kernels for a convolution's per-sample weight gradients (see
#: :func:`set_conv_individual_gradients`).
CONV_INDIVIDUAL_GRADIENTS = ("auto", "unfold", "grouped")
_conv_individual_gradients = "auto"


def set_conv_individual_gradients(method: str = "auto") -> None:
    """Choose how convolutions compute per-sample weight gradients.

    Both give the same numbers; their speed differs by orders of magnitude with the
    layer's shape. ``"unfold"`` multiplies the output gradient of each sample with its
    unfolded input (fast with few input channels); ``"grouped"`` runs one weight-gradient
    convolution with the samples as groups (fast on large feature maps with many
    channels, and without the unfolded input's memory). ``"auto"`` (the default) picks by
    a fixed rule of the layer's shape (``backpack_core.derivatives.convolution``), the
    same choice in every process.

    Args:
        method: ``"auto"``, ``"unfold"`` or ``"grouped"``.

    Raises:
        ValueError: For any other value.
    """
    global _conv_individual_gradients
    if method not in CONV_INDIVIDUAL_GRADIENTS:
        choices = ", ".join(repr(choice) for choice in CONV_INDIVIDUAL_GRADIENTS)
        raise ValueError(f"method must be one of {choices}, got {method!r}")
    _conv_individual_gradients = method


def conv_individual_gradients() -> str:
    """The current choice (see :func:`set_conv_individual_gradients`)."""
    return _conv_individual_gradients
