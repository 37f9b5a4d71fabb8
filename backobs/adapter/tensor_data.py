"""The tensor data path: each split decoded once into a tensor, mini-batches by indexing.

DeepOBS's loaders decode one image at a time (a PIL image, ``to_tensor``, a collate of 128
of them per batch); on mnist_logreg that costs about 18 times the epoch's compute. The
tensor path keeps everything DeepOBS decides and replaces only how the pixels get there:

- the split sizes, the train/validation split, the train-eval subset and ``drop_last`` are
  DeepOBS's, because the index order of every epoch is taken from DeepOBS's own sampler
  objects, with the same draws from torch's generator (:func:`sampler_order`);
- a loader's iterator draws the one int64 that a ``DataLoader`` iterator draws when it is
  created, and the sampler draws its permutation at the first batch, as in a
  ``DataLoader``; so the random streams after it (dropout, Monte-Carlo curvature) are the
  same too;
- the images of a split are ``uint8`` (as decoded) on the run's device, shared by the
  loaders that read the same split (train, validation and train-eval read the training
  split); DeepOBS's transforms are applied to whole batches (:mod:`.transforms`).

On data without random augmentation (MNIST, Fashion-MNIST, quadratic_deep, every
validation and test set) a run's numbers equal those of DeepOBS's loaders; CIFAR's and
SVHN's augmented training batches are equal in distribution, not bit for bit.

:func:`attach` puts tensor loaders into a set-up problem, or says in one line why it keeps
DeepOBS's. Decoded splits stay in a process-wide cache bounded by memory, so a sweep
worker decodes a data set once for all its runs of that data set.
"""

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import (
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
)
from torch.utils.data._utils.collate import default_collate
from torchvision import datasets as torchvision_datasets

from backobs.adapter import transforms as batch_transforms
from backobs.adapter.data import SyntheticImageDataset
from backpack_core.config import format_bytes, memory_limit

__all__ = [
    "DataPathUnavailable",
    "TensorSplit",
    "TensorLoader",
    "attach",
    "sampler_order",
    "clear_cache",
    "cached_splits",
    "from_cache",
]

_LOADER_NAMES = (
    "_train_dataloader",
    "_valid_dataloader",
    "_train_eval_dataloader",
    "_test_dataloader",
)
# The cache may hold this fraction of the engine's memory limit of the device.
_CACHE_FRACTION = 0.5


class DataPathUnavailable(Exception):
    """The tensor path cannot serve this problem's data; DeepOBS's loaders are used."""


class TensorSplit:
    """One split of a data set as tensors on a device, each item computed on first use.

    Args:
        size (int): Number of items.
        fill (Callable[[numpy.ndarray], list[torch.Tensor]]): Returns the fields (e.g.
            images and labels) of the items at the given indices, each ``[len(indices),
            ...]``.
        shapes (list[tuple]): Shape of one item of each field.
        dtypes (list[torch.dtype]): Dtype of each field.
        device (torch.device): Where the split lives.
    """

    def __init__(self, size, fill, shapes, dtypes, device):
        self.size = int(size)
        self.device = torch.device(device)
        self.fields = [
            torch.empty((self.size, *shape), dtype=dtype, device=self.device)
            for shape, dtype in zip(shapes, dtypes)
        ]
        self._fill = fill
        self._filled = np.zeros(self.size, dtype=bool)
        self._missing = self.size

    @classmethod
    def from_tensors(cls, tensors, device):
        """A split whose fields are given whole (moved to ``device`` once)."""
        split = cls(0, None, [], [], device)
        split.size = len(tensors[0])
        split.fields = [tensor.to(device) for tensor in tensors]
        return split

    @property
    def complete(self):
        """bool: Whether every item has been computed."""
        return self._missing == 0

    @property
    def nbytes(self):
        """Bytes the split's tensors take."""
        return sum(field.element_size() * field.numel() for field in self.fields)

    def fill_all(self):
        """Compute every item not yet computed."""
        if not self.complete:
            self._fill_items(np.flatnonzero(~self._filled))

    def take(self, indices):
        """The fields of the items ``indices`` (a tensor on the split's device).

        Returns:
            list[torch.Tensor]: One tensor per field, ``[len(indices), ...]``.
        """
        if not self.complete:
            wanted = indices.cpu().numpy()
            self._fill_items(np.unique(wanted[~self._filled[wanted]]))
        return [field.index_select(0, indices) for field in self.fields]

    def _fill_items(self, items):
        if len(items) == 0:
            return
        where = torch.from_numpy(items).to(self.device)
        for field, values in zip(self.fields, self._fill(items)):
            field.index_copy_(0, where, values.to(self.device))
        self._filled[items] = True
        self._missing -= len(items)


@dataclass(frozen=True)
class _Source:
    """How to decode one data set split: a cache key, its size in bytes and a builder."""

    key: object  # None: not cached (tensors already in memory)
    nbytes: int
    build: object  # Callable[[torch.device], TensorSplit]
    label_field: bool  # whether items are (image, label) pairs that need a transform


def _source(dataset):
    """Describe how to decode ``dataset``, or raise :class:`DataPathUnavailable`."""
    if isinstance(dataset, SyntheticImageDataset):
        spec, split, seed = dataset.spec, dataset.split, dataset.seed
        height, width = spec.image_size
        size = len(dataset)

        def build(device):
            shapes = [(spec.channels, height, width), ()]
            return TensorSplit(size, dataset.items, shapes, [torch.uint8, torch.int64], device)

        nbytes = size * (spec.channels * height * width + 8)
        return _Source(("synthetic", spec.name, split, seed), nbytes, build, True)
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        nbytes = sum(t.element_size() * t.numel() for t in tensors)
        build = lambda device: TensorSplit.from_tensors(tensors, device)  # noqa: E731
        return _Source(None, nbytes, build, False)
    images, labels, name = _torchvision_arrays(dataset)
    nbytes = images.numel() + 8 * len(labels)
    key = ("torchvision", name, os.path.abspath(dataset.root), _split_name(dataset))
    build = lambda device: TensorSplit.from_tensors([images, labels], device)  # noqa: E731
    return _Source(key, nbytes, build, True)


def _split_name(dataset):
    if hasattr(dataset, "split"):
        return dataset.split
    return "train" if getattr(dataset, "train", True) else "test"


def _torchvision_arrays(dataset):
    """``uint8`` images ``[N, C, H, W]`` and ``int64`` labels of a torchvision data set."""
    if getattr(dataset, "target_transform", None) is not None:
        raise DataPathUnavailable(
            f"the {type(dataset).__name__} data set has a target_transform, which the tensor "
            "data path does not apply"
        )
    if isinstance(dataset, torchvision_datasets.MNIST):  # FashionMNIST is one too
        images = torch.as_tensor(dataset.data, dtype=torch.uint8).unsqueeze(1)
        labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    elif isinstance(dataset, torchvision_datasets.CIFAR10):  # CIFAR100 is one too
        images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
        labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    elif isinstance(dataset, torchvision_datasets.SVHN):
        images = torch.from_numpy(np.ascontiguousarray(dataset.data))
        labels = torch.as_tensor(dataset.labels, dtype=torch.int64)
    else:
        raise DataPathUnavailable(
            f"the tensor data path does not know the data set class {type(dataset).__name__}"
        )
    return images, labels, type(dataset).__name__


# The cache --------------------------------------------------------------------------------

_cache = OrderedDict()  # (source key, device) -> TensorSplit, least recently used first


def clear_cache():
    """Forget every decoded split (frees their memory once no loader holds them)."""
    _cache.clear()


def cached_splits():
    """The keys ``(source key, device)`` of the decoded splits held now, oldest first."""
    return list(_cache)


def _split_for(source, device, keep):
    """The decoded split of ``source`` and whether it came from the cache."""
    if source.key is None:
        return source.build(device), False
    key = (source.key, str(device))
    split = _cache.get(key)
    if split is not None:
        _cache.move_to_end(key)
        return split, True
    budget = _CACHE_FRACTION * memory_limit(device)
    held = sum(s.nbytes for k, s in _cache.items() if k[1] == str(device))
    for old_key in [k for k in _cache if k[1] == str(device) and k not in keep]:
        if held + source.nbytes <= budget:
            break
        held -= _cache.pop(old_key).nbytes
    split = source.build(device)
    _cache[key] = split
    return split, False


# Index order ------------------------------------------------------------------------------


def sampler_order(sampler):
    """The indices one iteration of ``sampler`` yields, as an int64 tensor, drawn as it draws.

    DeepOBS's samplers (``SubsetRandomSampler`` for the train/validation split, its
    ``train_eval_sampler``, ``RandomSampler`` and ``SequentialSampler``) take a fast route
    that makes exactly their calls to torch's generator; any other sampler is iterated.

    Args:
        sampler (torch.utils.data.Sampler): The sampler.

    Returns:
        torch.Tensor: ``[len(sampler)]`` indices (CPU).
    """
    if type(sampler) is SequentialSampler:
        return torch.arange(len(sampler.data_source))
    if type(sampler) is SubsetRandomSampler:
        indices = getattr(sampler, "_backobs_indices", None)
        if indices is None:
            indices = torch.as_tensor(list(sampler.indices), dtype=torch.int64)
            sampler._backobs_indices = indices
        return indices[torch.randperm(len(indices), generator=sampler.generator)]
    if type(sampler).__name__ == "train_eval_sampler" and hasattr(sampler, "sub_size"):
        return torch.randperm(sampler.size)[: sampler.sub_size]
    if type(sampler) is RandomSampler and not sampler.replacement and sampler.generator is None:
        n = len(sampler.data_source)
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator()
        generator.manual_seed(seed)
        pieces = [torch.randperm(n, generator=generator) for _ in range(sampler.num_samples // n)]
        pieces.append(torch.randperm(n, generator=generator)[: sampler.num_samples % n])
        return torch.cat(pieces)
    return torch.as_tensor(list(sampler), dtype=torch.int64)


# Loaders ----------------------------------------------------------------------------------


class TensorLoader:
    """Serves one DeepOBS loader's mini-batches from a :class:`TensorSplit`.

    It has what DeepOBS uses of a ``DataLoader``: iteration, ``len``, ``dataset``,
    ``sampler``, ``batch_size`` and ``drop_last``.

    Args:
        loader (torch.utils.data.DataLoader): The DeepOBS loader it replaces.
        split (TensorSplit): The decoded data.
        transform (Callable, optional): Batched transform of the images (``uint8`` in),
            for (image, label) data.
    """

    def __init__(self, loader, split, transform):
        self.dataset = loader.dataset
        self.sampler = loader.sampler
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last
        self.generator = loader.generator
        self.split = split
        self.transform = transform
        self.from_cache = False  # whether the split was decoded by an earlier problem
        self._length = len(loader)

    def __len__(self):
        return self._length

    def __iter__(self):
        # A DataLoader iterator draws its workers' base seed when it is created.
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        return _TensorIterator(self)

    def batch(self, indices):
        """The collated batch of the items ``indices`` (a tensor on the split's device)."""
        fields = self.split.take(indices)
        if self.transform is not None:
            fields[0] = self.transform(fields[0])
        return fields


class _TensorIterator:
    def __init__(self, loader):
        self._loader = loader
        self._order = None
        self._position = 0

    def __iter__(self):
        return self

    def __next__(self):
        loader = self._loader
        if self._order is None:  # a DataLoader's sampler draws at the first batch
            self._order = sampler_order(loader.sampler).to(loader.split.device)
        start, total = self._position, len(self._order)
        stop = min(start + loader.batch_size, total)
        if start >= total or (loader.drop_last and stop - start < loader.batch_size):
            raise StopIteration
        self._position = stop
        return loader.batch(self._order[start:stop])


def _check_loader(loader):
    if loader.collate_fn is not default_collate:
        raise DataPathUnavailable(
            "a loader has its own collate_fn (the tensor data path collates as by default)"
        )
    if getattr(loader, "_auto_collation", True) is False or loader.batch_size is None:
        raise DataPathUnavailable(
            "a loader has its own batch sampler (the tensor data path batches a sampler's order)"
        )


def attach(tproblem, device=None, announce=print):
    """Serve a set-up DeepOBS problem's data from tensors on ``device``.

    The problem's four loaders (``tproblem.data._train_dataloader``, ...) are replaced by
    :class:`TensorLoader` objects. Before anything is decoded, the size of the splits is
    checked against the engine's memory limit of the device
    (:func:`backpack_core.set_memory_limit`).

    Args:
        tproblem: A set-up DeepOBS test problem.
        device (torch.device or str, optional): Where the data lives (default: the
            problem's device).
        announce (Callable[[str], None]): Where the line that says why DeepOBS's loaders
            stay goes.

    Returns:
        str or None: ``None`` if the tensor path serves the problem, else the reason
        (DeepOBS's loaders then stay in place, and ``announce`` got one line saying so).
        :func:`from_cache` tells whether the data were decoded before (by an earlier
        problem in this process, e.g. an earlier run of a sweep worker).
    """
    data = getattr(tproblem, "data", None)
    device = torch.device(device if device is not None else getattr(tproblem, "_device", "cpu"))
    try:
        if data is None or not all(hasattr(data, name) for name in _LOADER_NAMES):
            raise DataPathUnavailable("the problem has no DeepOBS data set with four loaders")
        loaders = {name: getattr(data, name) for name in _LOADER_NAMES}
        plans = {}
        for name, loader in loaders.items():
            if isinstance(loader, TensorLoader):
                continue
            _check_loader(loader)
            source = _source(loader.dataset)
            transform = None
            if source.label_field:
                transform = batch_transforms.compile_transform(loader.dataset.transform)
            plans[name] = (loader, source, transform)
        sources = {source.key or id(source): source for _, source, _ in plans.values()}
        needed = sum(s.nbytes for s in sources.values() if (s.key, str(device)) not in _cache)
        limit = memory_limit(device)
        if needed > limit:
            raise DataPathUnavailable(
                f"the tensor data path needs {format_bytes(needed)} for this problem's data on "
                f"{device}, more than the memory limit of {format_bytes(limit)} "
                "(backpack_core.set_memory_limit)"
            )
    except (DataPathUnavailable, batch_transforms.UnsupportedTransform) as reason:
        message = str(reason)
        announce(f"[backobs] Using DeepOBS's data loaders: {message}.")
        return message
    keep = {(key, str(device)) for key in sources}
    for name, (loader, source, transform) in plans.items():
        split, cached = _split_for(source, device, keep)
        served = TensorLoader(loader, split, transform)
        served.from_cache = cached
        setattr(data, name, served)
    return None


def from_cache(tproblem):
    """Whether every loader of a problem served by :func:`attach` found its split decoded.

    Returns:
        bool or None: ``None`` if the problem is not served by the tensor path.
    """
    loaders = [getattr(tproblem.data, name, None) for name in _LOADER_NAMES]
    if not all(isinstance(loader, TensorLoader) for loader in loaders):
        return None
    return all(loader.from_cache for loader in loaders)
