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

The colour ops, with Pillow's arithmetic, live in :mod:`backobs.adapter.color_jitter`;
their public names are re-exported here.

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

from backobs.adapter._images import Size, _check_images, _check_per_image, _devices, _size_pair
from backobs.adapter.color_jitter import (
    JITTER_OPS,
    JitterParameters,
    adjust,
    color_jitter,
    jitter_range,
    sample_jitter,
)

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

Padding = Union[int, Sequence[int]]
Fill = Union[int, Sequence[int]]
Range = Optional[Tuple[float, float]]


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
