"""DeepOBS's torchvision transforms, applied to whole batches of ``uint8`` images.

:func:`compile_transform` maps a torchvision transform object (a ``Compose`` of the
transforms DeepOBS uses) to one function from a ``uint8`` batch ``[N, C, H, W]`` to the
batch DeepOBS's loader would collate:

- ``ToTensor`` and ``Normalize``: the same float operations on each element as torchvision
  applies to each image (a division by 255 in the default float dtype, then subtract and
  divide by the channel's mean and standard deviation), so the values are the same bits;
- ``Pad``, ``RandomCrop``, ``RandomHorizontalFlip``, ``ColorJitter``: batched on the device
  with per-image random parameters from the transforms' distributions
  (:mod:`backobs.adapter.augment`); equal in distribution to torchvision's per-image draws,
  not bit for bit.

Any other transform raises :class:`UnsupportedTransform` naming it; the run then keeps
DeepOBS's loaders.
"""

import torch
from torchvision import transforms as T

from backobs.adapter import augment

__all__ = ["UnsupportedTransform", "compile_transform"]


class UnsupportedTransform(ValueError):
    """A transform the tensor data path cannot apply to batches."""


def _to_tensor(images):
    return images.to(torch.get_default_dtype()).div(255)


def _normalize(transform):
    def normalize(batch):
        mean = torch.as_tensor(transform.mean, dtype=batch.dtype, device=batch.device)
        std = torch.as_tensor(transform.std, dtype=batch.dtype, device=batch.device)
        return batch.sub(mean.view(-1, 1, 1)).div(std.view(-1, 1, 1))

    return normalize


def _image_step(transform):
    """The batched ``uint8`` form of a transform that works on PIL images, or ``None``.

    Random parameters come from torch's default generator of the images' device.
    """
    if isinstance(transform, T.Pad):
        padding, fill, mode = transform.padding, transform.fill, transform.padding_mode
        if mode != "constant":
            raise UnsupportedTransform(
                f"the tensor data path pads with a constant only, not in {mode!r} mode"
            )
        return lambda images: augment.pad(images, padding, fill)
    if isinstance(transform, T.RandomCrop):
        if transform.padding is not None or transform.pad_if_needed:
            raise UnsupportedTransform(
                "the tensor data path does not know RandomCrop's own padding (use Pad before it)"
            )
        size = tuple(transform.size)
        return lambda images: augment.random_crop(images, size)
    if isinstance(transform, T.RandomHorizontalFlip):
        p = transform.p
        return lambda images: augment.random_horizontal_flip(images, p)
    if isinstance(transform, T.ColorJitter):
        if transform.hue is not None:
            raise UnsupportedTransform("the tensor data path does not know ColorJitter's hue")
        ranges = (transform.brightness, transform.contrast, transform.saturation)
        return lambda images: augment.color_jitter(images, *ranges)
    return None


def compile_transform(transform):
    """The batched form of a torchvision transform, ``uint8 [N, C, H, W] -> float``.

    Args:
        transform: A torchvision transform: ``ToTensor``, ``Normalize``, the augmentations
            DeepOBS uses before ``ToTensor``, or a ``Compose`` of them.

    Returns:
        Callable[[torch.Tensor], torch.Tensor]: The batched transform.

    Raises:
        UnsupportedTransform: For ``None`` (the images would stay PIL images), a transform
            the tensor data path does not know, or an order it cannot batch (an image
            operation after ``ToTensor``, no ``ToTensor``).
    """
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    image_steps, tensor_steps, converted = [], [], False
    for step in steps:
        if isinstance(step, T.ToTensor):
            if converted:
                raise UnsupportedTransform("the transform has ToTensor twice")
            converted = True
        elif isinstance(step, T.Normalize) and converted:
            tensor_steps.append(_normalize(step))
        elif not converted and step is not None and not isinstance(step, T.Normalize):
            batched = _image_step(step)
            if batched is None:
                raise UnsupportedTransform(
                    f"the tensor data path does not know the transform {type(step).__name__}"
                )
            image_steps.append(batched)
        else:
            name = "no transform" if step is None else type(step).__name__
            raise UnsupportedTransform(
                f"the tensor data path cannot batch {name} at that place of the transform"
            )
    if not converted:
        raise UnsupportedTransform(
            "the transform does not end in tensors (no ToTensor), so the batches would be images"
        )

    def apply(images):
        for step in image_steps:
            images = step(images)
        batch = _to_tensor(images)
        for step in tensor_steps:
            batch = step(batch)
        return batch

    return apply
