"""ColorJitter's brightness, contrast and saturation on batches of uint8 images.

Values: what DeepOBS's images get from torchvision's ``adjust_*`` on RGB PIL images, i.e.
Pillow's ``ImageEnhance.Brightness``/``Contrast``/``Color``. Each is
``Image.blend(degenerate, image, factor)``, and Pillow's ``Blend.c`` computes, per uint8
value and in float32 (``alpha`` is a C ``float``)::

    temp = (float) in1 + alpha * (float) (in2 - in1)      # in1: degenerate, in2: image
    out = temp <= 0 ? 0 : temp >= 255 ? 255 : (UINT8) temp   # truncation, not rounding

with ``degenerate`` black (brightness), the image's grey level ``L`` broadcast to all bands
(saturation), or one grey value, ``int(mean(L) + 0.5)`` (contrast; ``ImageStat``'s mean in
double precision). ``L`` is Pillow's RGB -> L conversion in 16-bit fixed point,
``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``. Every op's result is quantized to uint8
before the next op, as Pillow's images are. This module computes exactly that (the float32
product and sum rounded separately, no fused multiply-add; every other quantity is an integer
that float32 holds exactly), so it matches torchvision-on-PIL bit for bit (the tests check
at most 1 uint8 unit, the contract).
"""

from dataclasses import dataclass
from numbers import Number
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from backobs.adapter._images import _check_images, _check_per_image, _devices

__all__ = [
    "JITTER_OPS",
    "JitterParameters",
    "adjust",
    "color_jitter",
    "jitter_range",
    "sample_jitter",
]

#: The ColorJitter ops in torchvision's numbering (``fn_idx`` of ``ColorJitter.get_params``).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)

# Pillow's RGB -> L weights (libImaging/Convert.c, L24): they sum to 2**16.
_L_WEIGHTS = (19595.0, 38470.0, 7471.0)
_L_ROUND = 32768.0
_L_SCALE = 1.0 / 65536.0

Range = Optional[Tuple[float, float]]

# --------------------------------------------------------------------------------------------
# Colour jitter
# --------------------------------------------------------------------------------------------


def jitter_range(
    value, name: str, center: float = 1.0, bound=(0.0, float("inf")), clip_first_on_zero=True
) -> Range:
    """A ColorJitter argument as torchvision normalizes it (``ColorJitter._check_input``).

    Args:
        value: A number ``b`` (the range ``[max(0, center - b), center + b]``), a pair
            ``(min, max)`` (as is), or None (not set).
        name: The argument's name, for errors.
        center: The identity factor (1; 0 for hue).
        bound: The allowed interval.
        clip_first_on_zero: Clip the lower end of a number's range at 0.

    Returns:
        ``(min, max)``, or None when not set (None, 0 or ``(center, center)``).
    """
    if value is None:
        return None
    if isinstance(value, Number) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"If {name} is a single number, it must be non negative.")
        value = [center - float(value), center + float(value)]
        if clip_first_on_zero:
            value[0] = max(value[0], 0.0)
    elif isinstance(value, Sequence) and len(value) == 2:
        value = [float(value[0]), float(value[1])]
    else:
        raise TypeError(f"{name} should be a single number or a list/tuple with length 2.")
    if not bound[0] <= value[0] <= value[1] <= bound[1]:
        raise ValueError(f"{name} values should be between {bound}, but got {value}.")
    if value[0] == value[1] == center:
        return None
    return (value[0], value[1])


def _check_no_hue(hue) -> None:
    if jitter_range(hue, "hue", center=0.0, bound=(-0.5, 0.5), clip_first_on_zero=False):
        raise ValueError(
            f"hue jitter is not supported (got hue={hue!r}); only brightness, contrast and "
            "saturation (DeepOBS never sets hue)"
        )


@dataclass
class JitterParameters:
    """Per-image ColorJitter parameters.

    Attributes:
        brightness: float32 ``[N]`` factors, or None (op not set).
        contrast: float32 ``[N]`` factors, or None.
        saturation: float32 ``[N]`` factors, or None.
        orders: int64 ``[N, 4]``, a permutation of ``0..3`` per image
            (:data:`JITTER_OPS` numbering, as torchvision's ``fn_idx``).
    """

    brightness: Optional[Tensor]
    contrast: Optional[Tensor]
    saturation: Optional[Tensor]
    orders: Tensor


def sample_jitter(
    n: int,
    brightness=None,
    contrast=None,
    saturation=None,
    hue=None,
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device, None] = None,
) -> JitterParameters:
    """Per-image ColorJitter parameters, distributed as ``ColorJitter.get_params``.

    Args:
        n: Number of images.
        brightness: As ColorJitter's (normalized by :func:`jitter_range`).
        contrast: As ColorJitter's.
        saturation: As ColorJitter's.
        hue: Must be unset (None, 0 or ``(0, 0)``).
        generator: Source of randomness (None: torch's default for ``device``).
        device: Where the parameters live (default: the generator's device, else CPU).

    Returns:
        The orders (uniform over the 24 permutations) and the factors of the set ops (float32,
        uniform on their ranges), drawn in this order: orders, brightness, contrast,
        saturation.
    """
    _check_no_hue(hue)
    draw, target = _devices(generator, device)
    # argsort of iid uniforms: a uniformly random permutation per row (ties: probability ~0).
    orders = torch.rand((n, 4), generator=generator, device=draw).argsort(dim=1)
    factors = []
    for name, value in zip(JITTER_OPS[:3], (brightness, contrast, saturation)):
        bounds = jitter_range(value, name)
        if bounds is None:
            factors.append(None)
            continue
        drawn = torch.empty(n, dtype=torch.float32, device=draw)
        factors.append(drawn.uniform_(bounds[0], bounds[1], generator=generator).to(target))
    return JitterParameters(*factors, orders=orders.to(target))


def _grey(x: Tensor, out: Tensor) -> Tensor:
    """Pillow's RGB -> L, exactly, on float32 whole numbers: ``[N, 3, H, W] -> [N, 1, H, W]``.

    Every partial sum is a whole number below ``2**24``, so float32 holds it exactly (in any
    order, fused or not).
    """
    torch.mul(x[:, 0:1], _L_WEIGHTS[0], out=out)
    out.add_(x[:, 1:2], alpha=_L_WEIGHTS[1]).add_(x[:, 2:3], alpha=_L_WEIGHTS[2])
    return out.add_(_L_ROUND).mul_(_L_SCALE).floor_()


def _check_factors(factors, n: int, name: str, device) -> Optional[Tensor]:
    if factors is None:
        return None
    factors = _check_per_image(factors, n, name)
    if not factors.is_floating_point():
        factors = factors.to(torch.float64)
    if bool((factors < 0).any()):
        raise ValueError(f"{name} factors must be non-negative")
    # Pillow's blend takes alpha as a C float: round to float32, as (float) does.
    return factors.to(device=device, dtype=torch.float32)


def adjust(
    images: Tensor,
    brightness_factors=None,
    contrast_factors=None,
    saturation_factors=None,
    orders=None,
) -> Tensor:
    """Per-image brightness/contrast/saturation, in per-image order, as Pillow computes them.

    Image ``i`` gets torchvision's ``adjust_brightness``/``adjust_contrast``/
    ``adjust_saturation`` (on a PIL image) with its factors, in the order of ``orders[i]``
    (ops whose factors are None, and hue, skipped), each result quantized to uint8.

    Args:
        images: uint8 ``[N, C, H, W]``, ``C`` 3 (RGB) or 1 (greyscale).
        brightness_factors: ``[N]`` non-negative factors, or None (not applied).
        contrast_factors: ``[N]`` factors, or None.
        saturation_factors: ``[N]`` factors, or None.
        orders: Integer ``[N, 4]``, a permutation of ``0..3`` per image (:data:`JITTER_OPS`
            numbering); None: brightness, contrast, saturation for all.

    Returns:
        uint8 ``[N, C, H, W]``.
    """
    _check_images(images)
    n, c = images.shape[:2]
    if c not in (1, 3):
        raise ValueError(f"colour ops need 1 (L) or 3 (RGB) channels, got {c}")
    device = images.device
    factors = [
        _check_factors(f, n, f"{name}_factors", device)
        for f, name in zip(
            (brightness_factors, contrast_factors, saturation_factors), JITTER_OPS[:3]
        )
    ]
    if orders is None:
        orders = torch.arange(4, device=device).expand(n, 4)
    orders = torch.as_tensor(orders).to(device=device, dtype=torch.int64)
    if orders.shape != (n, 4):
        raise ValueError(f"orders must have shape [N, 4] = {(n, 4)}, got {tuple(orders.shape)}")
    if not bool((orders.sort(dim=1).values == torch.arange(4, device=device)).all()):
        raise ValueError("each row of orders must be a permutation of 0..3")
    return _adjust(images, *factors, orders)


def _adjust(images: Tensor, brightness, contrast, saturation, orders: Tensor) -> Tensor:
    """:func:`adjust` on checked arguments (float32 factors, int64 orders, on the device)."""
    n, c = images.shape[:2]
    device = images.device
    factors = (brightness, contrast, saturation)
    active = [f is not None for f in factors] + [False]
    if not any(active) or n == 0:
        return images.clone()
    # Keep each image's active ops in its order (a stable sort moves the inactive ones last).
    is_active = torch.tensor(active, device=device)[orders]
    position = (~is_active).to(torch.int64).sort(dim=1, stable=True).indices
    steps = orders.gather(1, position)[:, : sum(active)]
    # Each op's factor per image, [N, 4]; 1 (the identity, exact in Pillow's formula) if unset.
    table = torch.ones((n, 4), dtype=torch.float32, device=device)
    for op, f in enumerate(factors):
        if f is not None:
            table[:, op] = f
    needs_grey = active[_CONTRAST] or active[_SATURATION]

    x = images.to(torch.float32)
    hw = images.shape[-2] * images.shape[-1]
    # A float32 sum of whole numbers is exact while below 2**24 (images up to 256 x 256).
    sum_dtype = torch.float32 if 255 * hw < 2**24 else torch.float64
    # Work in place (each allocation of a batch-sized buffer costs page faults on CPU).
    grey = x.new_empty((n, 1) + x.shape[2:]) if needs_grey and c == 3 else None
    for k in range(steps.shape[1]):
        op = steps[:, k : k + 1]
        alpha = table.gather(1, op).view(n, 1, 1, 1)
        if needs_grey:
            # The degenerate image of each image's op: black (brightness), the grey level of
            # its mean L (contrast), its own L (saturation; an L image is its own: identity).
            degenerate = _grey(x, grey) if c == 3 else x.clone()
            # ImageEnhance.Contrast: int(mean of the L image + 0.5), the mean in double.
            mean = degenerate.sum(dim=(2, 3), keepdim=True, dtype=sum_dtype).double().div_(hw)
            mean = mean.add_(0.5).floor_().to(torch.float32)
            is_contrast = (op == _CONTRAST).to(torch.float32).view(n, 1, 1, 1)
            is_saturation = (op == _SATURATION).to(torch.float32).view(n, 1, 1, 1)
            degenerate.mul_(is_saturation).add_(mean.mul_(is_contrast))  # (where: slower)
            # Blend.c: in1 + alpha * (in2 - in1) in float32, the product rounded before the
            # sum (no fused multiply-add), then clipped and truncated.
            x.sub_(degenerate).mul_(alpha).add_(degenerate)
        else:
            x.mul_(alpha)  # brightness only: the degenerate image is black
        # Truncation of a value clipped to [0, 255] is its floor (floor_ is vectorized).
        x.clamp_(0.0, 255.0).floor_()
    # Whole numbers in [0, 255]; through int16, a faster conversion than float -> uint8.
    return x.to(torch.int16).to(torch.uint8)


def color_jitter(
    images: Tensor,
    brightness=None,
    contrast=None,
    saturation=None,
    hue=None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``ColorJitter(brightness, contrast, saturation)`` per image.

    :func:`sample_jitter`, then :func:`adjust`. Arguments as ColorJitter's; hue must be unset.
    """
    _check_images(images)
    params = sample_jitter(
        images.shape[0], brightness, contrast, saturation, hue, generator, device=images.device
    )
    return _adjust(images, params.brightness, params.contrast, params.saturation, params.orders)
