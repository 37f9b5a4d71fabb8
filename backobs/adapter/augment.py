"""Batched, on-device random image augmentation of uint8 images ``[N, C, H, W]``.

The random, uint8 image-domain part of DeepOBS's training transforms, for a whole mini-batch
at once on the batch's device (CPU or CUDA), with per-image random parameters drawn from the
distributions of the torchvision transforms DeepOBS uses:

=====================================  ========================================================
torchvision (per PIL image)             here (per batch)
=====================================  ========================================================
``Pad(padding, fill)``                  :func:`pad` (constant mode only)
``RandomCrop(size)``                    :func:`random_crop`; fixed offsets: :func:`crop`
``RandomHorizontalFlip(p)``             :func:`random_horizontal_flip`; fixed:
                                        :func:`horizontal_flip`
``ColorJitter(b, c, s)``                :func:`color_jitter`; fixed factors and orders:
                                        :func:`adjust`
the whole chain                         :class:`Augmentation`
=====================================  ========================================================

Parameter distributions (those of torchvision's ``get_params``): crop offsets uniform on
``{0, ..., H - h}`` x ``{0, ..., W - w}``; a flip with probability ``p``; jitter factors
uniform on their ranges (float32 draws, as ``torch.empty(1).uniform_``); a uniformly random
order of the four ColorJitter ops per image (``torch.randperm(4)``), ops not set skipped. The
random ops draw through the ``sample_*`` functions and then call the fixed-parameter op, so
the same generator state gives the same result either way.

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

Images: uint8 tensors ``[N, C, H, W]``; ``C`` is 3 (RGB) or 1 (greyscale, as a PIL ``"L"``
image: saturation is then the identity) for the colour ops, anything for pad/crop/flip.
Outputs are uint8 on the input's device. Random ops take one ``generator``: a
``torch.Generator`` (parameters are drawn on its device and moved to the images' device) or
``None`` (torch's default generator of the images' device).
"""

from dataclasses import dataclass, field
from numbers import Integral, Number
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "JITTER_OPS",
    "Augmentation",
    "AugmentationParameters",
    "JitterParameters",
    "adjust",
    "color_jitter",
    "crop",
    "horizontal_flip",
    "jitter_range",
    "pad",
    "padding_sides",
    "random_crop",
    "random_horizontal_flip",
    "sample_crop_offsets",
    "sample_flips",
    "sample_jitter",
]

#: The ColorJitter ops in torchvision's numbering (``fn_idx`` of ``ColorJitter.get_params``).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)

# Pillow's RGB -> L weights (libImaging/Convert.c, L24): they sum to 2**16.
_L_WEIGHTS = (19595.0, 38470.0, 7471.0)
_L_ROUND = 32768.0
_L_SCALE = 1.0 / 65536.0

Padding = Union[int, Sequence[int]]
Fill = Union[int, Sequence[int]]
Size = Union[int, Sequence[int]]
Range = Optional[Tuple[float, float]]


# --------------------------------------------------------------------------------------------
# Checks and small helpers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Pad
# --------------------------------------------------------------------------------------------


def padding_sides(padding: Padding) -> Tuple[int, int, int, int]:
    """Torchvision's ``Pad`` padding as ``(left, top, right, bottom)``.

    Args:
        padding: An int (all four sides), a 1-sequence (the same), a 2-sequence
            ``(left/right, top/bottom)`` or a 4-sequence ``(left, top, right, bottom)``.

    Returns:
        The four non-negative paddings.

    Raises:
        TypeError: If ``padding`` is neither an int nor a sequence of ints.
        ValueError: For another sequence length or a negative padding.
    """
    if isinstance(padding, bool) or not isinstance(padding, (Integral, Sequence)):
        raise TypeError(f"padding must be an int or a sequence of 1, 2 or 4 ints, got {padding!r}")
    if isinstance(padding, Integral):
        sides = (padding,) * 4
    elif len(padding) == 1:
        sides = (padding[0],) * 4
    elif len(padding) == 2:
        sides = (padding[0], padding[1], padding[0], padding[1])
    elif len(padding) == 4:
        sides = tuple(padding)
    else:
        raise ValueError(
            f"padding must be an int or a 1, 2 or 4 element sequence, not {len(padding)} elements"
        )
    if not all(isinstance(p, Integral) and not isinstance(p, bool) for p in sides):
        raise TypeError(f"padding must hold ints, got {padding!r}")
    sides = tuple(int(p) for p in sides)
    if min(sides) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return sides


def _fill_values(fill: Fill, channels: int) -> Tuple[int, ...]:
    """Torchvision's constant ``fill``: one value for all channels, or one per channel."""
    values = (fill,) * channels if isinstance(fill, Number) else tuple(fill)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"fill must be one value or one per channel ({channels}), got {fill!r}")
    if not all(isinstance(v, Number) and 0 <= v <= 255 for v in values):
        raise ValueError(f"fill values must be in 0..255 for uint8 images, got {fill!r}")
    return tuple(int(v) for v in values)


def pad(images: Tensor, padding: Padding, fill: Fill = 0, padding_mode: str = "constant") -> Tensor:
    """Constant padding, as torchvision's ``Pad`` (``ImageOps.expand`` on PIL images).

    Args:
        images: uint8 ``[N, C, H, W]``.
        padding: See :func:`padding_sides`.
        fill: The constant: one value, or one per channel (0..255).
        padding_mode: Only ``"constant"`` (what DeepOBS uses).

    Returns:
        uint8 ``[N, C, top + H + bottom, left + W + right]``.

    Raises:
        ValueError: For another padding mode, bad padding or fill.
    """
    if padding_mode != "constant":
        raise ValueError(
            f"padding_mode {padding_mode!r} is not supported: only 'constant' padding "
            "(torchvision's default, what DeepOBS uses)"
        )
    _check_images(images)
    left, top, right, bottom = padding_sides(padding)
    n, c, h, w = images.shape
    values = _fill_values(fill, c)
    if left == top == right == bottom == 0:
        return images.clone()
    out = images.new_empty((n, c, top + h + bottom, left + w + right))
    if len(set(values)) == 1:
        out.fill_(values[0])
    else:
        out.copy_(torch.tensor(values, dtype=torch.uint8, device=images.device).view(1, c, 1, 1))
    out[:, :, top : top + h, left : left + w] = images
    return out


# --------------------------------------------------------------------------------------------
# Crop
# --------------------------------------------------------------------------------------------


def sample_crop_offsets(
    n: int,
    image_size: Sequence[int],
    size: Size,
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device, None] = None,
) -> Tuple[Tensor, Tensor]:
    """Per-image crop offsets as ``RandomCrop.get_params``: uniform on all positions.

    Args:
        n: Number of images.
        image_size: ``(H, W)`` of the images to crop.
        size: Crop size ``(h, w)`` (an int: square).
        generator: Source of randomness (None: torch's default for ``device``).
        device: Where the offsets live (default: the generator's device, else CPU).

    Returns:
        ``(tops, lefts)``: int64 ``[n]``, uniform on ``{0..H-h}`` and ``{0..W-w}``; zeros when
        the crop is the whole image (torchvision draws nothing then either).

    Raises:
        ValueError: If the crop is larger than the images.
    """
    (H, W), (h, w) = image_size[-2:], _size_pair(size)
    if h > H or w > W:
        raise ValueError(f"Required crop size {(h, w)} is larger than input image size {(H, W)}")
    draw, target = _devices(generator, device)
    if (h, w) == (H, W):
        zeros = torch.zeros(n, dtype=torch.int64, device=target)
        return zeros, zeros.clone()
    tops = torch.randint(0, H - h + 1, (n,), generator=generator, device=draw)
    lefts = torch.randint(0, W - w + 1, (n,), generator=generator, device=draw)
    return tops.to(target), lefts.to(target)


def crop(images: Tensor, tops, lefts, size: Size, flips=None) -> Tensor:
    """Crop each image at its own offset, as torchvision's ``crop(img, top, left, h, w)``.

    Args:
        images: uint8 ``[N, C, H, W]``.
        tops: Integer tensor ``[N]``, rows of the crops' top edges, in ``0..H-h``.
        lefts: Integer tensor ``[N]``, columns of the crops' left edges, in ``0..W-w``.
        size: Crop size ``(h, w)`` (an int: square).
        flips: Optional bool ``[N]``: mirror those crops left-right too (the same as
            :func:`horizontal_flip` after the crop, in the same gather).

    Returns:
        uint8 ``[N, C, h, w]``.

    Raises:
        ValueError: If the crop is larger than the images or an offset leaves them.
    """
    _check_images(images)
    n, _, H, W = images.shape
    h, w = _size_pair(size)
    if h > H or w > W:
        raise ValueError(f"Required crop size {(h, w)} is larger than input image size {(H, W)}")
    tops = _check_per_image(tops, n, "tops").to(device=images.device, dtype=torch.int64)
    lefts = _check_per_image(lefts, n, "lefts").to(device=images.device, dtype=torch.int64)
    if n == 0:
        return images.new_empty((0, images.shape[1], h, w))
    # Checked on CPU only: on CUDA it would synchronize (an offset out of range asserts there).
    if images.device.type == "cpu" and (
        int(tops.min()) < 0
        or int(lefts.min()) < 0
        or int(tops.max()) > H - h
        or int(lefts.max()) > W - w
    ):
        raise ValueError(f"crop offsets must lie in 0..{H - h} (tops) and 0..{W - w} (lefts)")
    if flips is not None:
        flips = _check_per_image(flips, n, "flips").to(images.device, torch.bool)
    return _crop(images, tops, lefts, h, w, flips)


def _crop(images: Tensor, tops: Tensor, lefts: Tensor, h: int, w: int, flips=None) -> Tensor:
    """Crop (and mirror, where ``flips``) with one gather from the flattened images."""
    n, c, H, W = images.shape
    device = images.device
    rows = torch.arange(h, device=device).mul_(W).view(1, h, 1)
    columns = torch.arange(w, device=device)
    if flips is None:
        columns = columns.view(1, 1, w)
    else:  # mirrored crops read their columns right to left
        columns = torch.where(flips.view(n, 1), columns.flip(0), columns).view(n, 1, w)
    index = (tops * W + lefts).view(n, 1, 1) + rows + columns  # [N, h, w]
    index = index.view(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, H * W).gather(2, index).view(n, c, h, w)


def random_crop(images: Tensor, size: Size, generator: Optional[torch.Generator] = None) -> Tensor:
    """``RandomCrop(size)`` per image: :func:`sample_crop_offsets`, then :func:`crop`."""
    _check_images(images)
    tops, lefts = sample_crop_offsets(
        images.shape[0], images.shape[-2:], size, generator, device=images.device
    )
    return crop(images, tops, lefts, size)


# --------------------------------------------------------------------------------------------
# Horizontal flip
# --------------------------------------------------------------------------------------------


def sample_flips(
    n: int,
    p: float = 0.5,
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device, None] = None,
) -> Tensor:
    """Per-image flip decisions as ``RandomHorizontalFlip``: ``torch.rand(1) < p``.

    Returns:
        bool ``[n]`` on ``device`` (default: the generator's device, else CPU).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"flip probability p must be in [0, 1], got {p}")
    draw, target = _devices(generator, device)
    return (torch.rand(n, generator=generator, device=draw) < p).to(target)


def horizontal_flip(images: Tensor, flags) -> Tensor:
    """Mirror the images with ``flags`` set (bool ``[N]``) left-right; keep the others."""
    _check_images(images)
    flags = _check_per_image(flags, images.shape[0], "flags").to(images.device, torch.bool)
    # Exact in uint8 (one term is 0), and faster than torch.where on CPU.
    mask = flags.to(torch.uint8).view(-1, 1, 1, 1)
    return images.flip(-1).mul_(mask).add_(images * (1 - mask))


def random_horizontal_flip(
    images: Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None
) -> Tensor:
    """``RandomHorizontalFlip(p)`` per image: :func:`sample_flips`, then :func:`horizontal_flip`."""
    _check_images(images)
    flags = sample_flips(images.shape[0], p, generator, device=images.device)
    return horizontal_flip(images, flags)


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


# --------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------


@dataclass
class AugmentationParameters:
    """Per-image parameters of one :class:`Augmentation` call.

    Attributes:
        tops: int64 ``[N]`` crop offsets (rows), or None (no crop).
        lefts: int64 ``[N]`` crop offsets (columns), or None.
        flips: bool ``[N]``, or None (no flip).
        jitter: :class:`JitterParameters`, or None (no jitter).
    """

    tops: Optional[Tensor] = None
    lefts: Optional[Tensor] = None
    flips: Optional[Tensor] = None
    jitter: Optional[JitterParameters] = None


@dataclass(frozen=True)
class Augmentation:
    """Pad, random crop, random horizontal flip, colour jitter: torchvision's order.

    The batched counterpart of ``Compose([Pad(padding, fill), RandomCrop(crop_size),
    RandomHorizontalFlip(flip_p), ColorJitter(brightness, contrast, saturation)])``; each
    step is left out when not set (padding 0, crop_size None, flip_p 0, no jitter ranges).
    DeepOBS's CIFAR-10/100 training augmentation is
    ``Augmentation(padding=2, crop_size=(32, 32), flip_p=0.5, brightness=63 / 255,
    contrast=(0.2, 1.8), saturation=(0.5, 1.5))``; SVHN's the same with ``flip_p=0``.

    Attributes:
        padding: As ``Pad``'s (constant mode).
        fill: As ``Pad``'s.
        crop_size: ``(h, w)`` (an int: square) of the random crop, or None.
        flip_p: Probability of a horizontal flip.
        brightness: As ColorJitter's (normalized with :func:`jitter_range` on construction).
        contrast: As ColorJitter's.
        saturation: As ColorJitter's.
    """

    padding: Padding = 0
    fill: Fill = 0
    crop_size: Optional[Size] = None
    flip_p: float = 0.0
    brightness: object = None
    contrast: object = None
    saturation: object = None
    _sides: Tuple[int, int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_sides", padding_sides(self.padding))
        if self.crop_size is not None:
            object.__setattr__(self, "crop_size", _size_pair(self.crop_size, "crop_size"))
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")
        for name in JITTER_OPS[:3]:
            object.__setattr__(self, name, jitter_range(getattr(self, name), name))

    @property
    def jitters(self) -> bool:
        """Whether any colour op is set."""
        return any(r is not None for r in (self.brightness, self.contrast, self.saturation))

    def padded_size(self, image_size: Sequence[int]) -> Tuple[int, int]:
        """``(H, W)`` after padding images of ``image_size`` (``(..., H, W)``)."""
        left, top, right, bottom = self._sides
        return top + int(image_size[-2]) + bottom, left + int(image_size[-1]) + right

    def sample_parameters(
        self,
        n: int,
        image_size: Sequence[int],
        generator: Optional[torch.Generator] = None,
        device: Union[str, torch.device, None] = None,
    ) -> AugmentationParameters:
        """Draw the parameters for ``n`` images of ``image_size`` (before padding).

        Drawn in this order: crop tops, crop lefts, flips, jitter (see :func:`sample_jitter`).
        """
        params = AugmentationParameters()
        if self.crop_size is not None:
            params.tops, params.lefts = sample_crop_offsets(
                n, self.padded_size(image_size), self.crop_size, generator, device
            )
        if self.flip_p > 0:
            params.flips = sample_flips(n, self.flip_p, generator, device)
        if self.jitters:
            params.jitter = sample_jitter(
                n, self.brightness, self.contrast, self.saturation, None, generator, device
            )
        return params

    def apply(self, images: Tensor, params: AugmentationParameters) -> Tensor:
        """The chain with fixed per-image parameters (from :meth:`sample_parameters`)."""
        _check_images(images)
        if any(self._sides):
            images = pad(images, self._sides, self.fill)
        if self.crop_size is not None:  # crop and flip in one gather
            images = crop(images, params.tops, params.lefts, self.crop_size, params.flips)
        elif params.flips is not None:
            images = horizontal_flip(images, params.flips)
        if params.jitter is not None:
            j = params.jitter
            images = adjust(images, j.brightness, j.contrast, j.saturation, j.orders)
        return images

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Augment a batch: :meth:`sample_parameters`, then :meth:`apply`.

        Args:
            images: uint8 ``[N, C, H, W]``.
            generator: Source of randomness (None: torch's default for the images' device).

        Returns:
            uint8 ``[N, C, h, w]`` on the images' device.
        """
        _check_images(images)
        params = self.sample_parameters(
            images.shape[0], images.shape[-2:], generator, device=images.device
        )
        return self.apply(images, params)
