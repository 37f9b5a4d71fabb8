"""Checks and small helpers shared by the batched image operations."""

from numbers import Number
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Size = Union[int, Sequence[int]]


def _check_images(images, name: str = "images") -> None:
    """Refuse anything but a uint8 tensor ``[N, C, H, W]``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"{name} must be uint8 (values 0..255, as decoded), got {images.dtype}; "
            "augment before ToTensor/Normalize"
        )
    if images.dim() != 4:
        raise ValueError(
            f"{name} must have 4 dimensions [N, C, H, W], got {images.dim()}: "
            f"shape {tuple(images.shape)}"
        )


def _check_per_image(values, n: int, name: str) -> Tensor:
    """A per-image parameter: a tensor (or sequence) of ``n`` values, flattened."""
    values = torch.as_tensor(values)
    if values.dim() != 1 or values.shape[0] != n:
        raise ValueError(
            f"{name} must hold one value per image ({n}), got shape {tuple(values.shape)}"
        )
    return values


def _devices(generator: Optional[torch.Generator], device) -> Tuple[torch.device, torch.device]:
    """Where to draw random numbers, and where the parameters go.

    Drawn on the generator's device, else ``device``, else CPU; moved to ``device`` if given.
    """
    draw = generator.device if generator is not None else torch.device(device or "cpu")
    return draw, (draw if device is None else torch.device(device))


def _size_pair(size: Size, name: str = "size") -> Tuple[int, int]:
    """``size`` as ``(h, w)``: an int is square, as torchvision's ``_setup_size``."""
    if isinstance(size, Number):
        size = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 1:
        size = (int(size[0]), int(size[0]))
    if not (isinstance(size, Sequence) and len(size) == 2):
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w
