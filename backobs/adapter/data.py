"""Data for DeepOBS problems: real data with one clear error offline, or synthetic stand-ins.

DeepOBS's image data sets (``deepobs.pytorch.datasets.mnist``, ``fmnist``, ``cifar10``,
``cifar100``, ``svhn``) build their torchvision data sets through the module-level name
``datasets`` (``torchvision.datasets``). :func:`install` points that name, in those five
modules only, at a :class:`_DatasetSource` that decides at construction time:

- synthetic data on (:func:`use_synthetic_data`, or ``BACKOBS_SYNTHETIC_DATA=1``): a
  :class:`SyntheticImageDataset` with the size, image shape, image mode and number of classes
  of the real split. DeepOBS's transforms, samplers and loaders are used unchanged, so
  batch sizes, ``drop_last`` and the train-eval/validation subsets are those of the real data.
- otherwise: the torchvision class as DeepOBS calls it (download into
  ``deepobs.config.get_data_dir()``). If that fails (offline, files missing or corrupt),
  :class:`DataUnavailableError` says which data set, which directory, and the ways out.

Synthetic items are computed from ``(seed, data set, split, index)`` when they are read
(one at a time for DeepOBS's loaders, many at once for the tensor data path, with the same
values), never held as a whole by this module. Each class has a fixed smooth, left-right
symmetric pattern; an item is its class's pattern plus uniform pixel noise from a
counter-based hash, so a net can learn the classes (and random crops and flips keep the
class visible).
"""

import importlib
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as torchvision_datasets

from backobs.adapter import deepobs as _deepobs

__all__ = [
    "DataUnavailableError",
    "SyntheticImageDataset",
    "SYNTHETIC_SPECS",
    "synthetic_items",
    "use_synthetic_data",
    "synthetic_data_enabled",
    "synthetic_data_seed",
    "install",
    "data_source",
]

ENVIRONMENT_VARIABLE = "BACKOBS_SYNTHETIC_DATA"
_TRUE_STRINGS = {"1", "true", "yes", "on"}

# None: follow the environment variable; True/False: set by use_synthetic_data.
_synthetic_enabled = None
_synthetic_seed = 0


class DataUnavailableError(RuntimeError):
    """A DeepOBS data set is neither in the data directory nor downloadable.

    Attributes:
        dataset: Name of the data set (torchvision's class name, e.g. ``"CIFAR10"``).
        data_dir: The data directory that was searched.
    """

    def __init__(self, dataset, data_dir, cause=None):
        self.dataset = dataset
        self.data_dir = os.path.abspath(data_dir)
        reason = ""
        if cause is not None:
            first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            reason = f" ({type(cause).__name__}: {first_line})"
        super().__init__(
            f"The {dataset} data set is not in the data directory '{self.data_dir}' and "
            f"could not be downloaded{reason}. Either put the {dataset} files there "
            "(torchvision's layout; choose the directory with the option --data_dir, or "
            "deepobs.config.set_data_dir in Python), "
            "or use synthetic data with the same shapes and sizes: "
            f"backobs.use_synthetic_data(), the environment variable {ENVIRONMENT_VARIABLE}=1, "
            "or the runner flag --synthetic-data."
        )


def use_synthetic_data(enabled=True, seed=0):
    """Switch synthetic stand-ins for DeepOBS's image data sets on or off.

    The switch acts on data sets built afterwards (``tproblem.set_up()``) and overrides the
    environment variable ``BACKOBS_SYNTHETIC_DATA``.

    Args:
        enabled (bool): Serve synthetic data (``True``) or real data (``False``).
        seed (int): Seed from which every synthetic item is computed.
    """
    global _synthetic_enabled, _synthetic_seed
    install()
    _synthetic_enabled = bool(enabled)
    _synthetic_seed = int(seed)


def synthetic_data_enabled():
    """Whether DeepOBS problems set up now get synthetic data.

    Returns:
        bool: The value set by :func:`use_synthetic_data`, else whether the environment
        variable ``BACKOBS_SYNTHETIC_DATA`` is ``1`` (or ``true``, ``yes``, ``on``).
    """
    if _synthetic_enabled is not None:
        return _synthetic_enabled
    return os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() in _TRUE_STRINGS


def synthetic_data_seed():
    """Return the seed synthetic data sets are built with (see :func:`use_synthetic_data`)."""
    return _synthetic_seed


def _reset_synthetic_switch():
    """Forget the library-call setting, so the environment variable decides (for tests)."""
    global _synthetic_enabled, _synthetic_seed
    _synthetic_enabled = None
    _synthetic_seed = 0


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape facts of one real data set that a synthetic stand-in reproduces.

    Attributes:
        name: torchvision's class name, e.g. ``"MNIST"``.
        key: A small integer that separates the data sets' random streams.
        split_sizes: Number of items per split (``"train"``, ``"test"``).
        image_size: ``(height, width)``.
        mode: PIL image mode, ``"L"`` (1 channel) or ``"RGB"`` (3 channels).
        num_classes: Number of classes.
    """

    name: str
    key: int
    split_sizes: dict
    image_size: tuple
    mode: str
    num_classes: int

    @property
    def channels(self):
        """Number of image channels."""
        return 1 if self.mode == "L" else 3


SYNTHETIC_SPECS = {
    spec.name: spec
    for spec in (
        SyntheticSpec("MNIST", 1, {"train": 60_000, "test": 10_000}, (28, 28), "L", 10),
        SyntheticSpec("FashionMNIST", 2, {"train": 60_000, "test": 10_000}, (28, 28), "L", 10),
        SyntheticSpec("CIFAR10", 3, {"train": 50_000, "test": 10_000}, (32, 32), "RGB", 10),
        SyntheticSpec("CIFAR100", 4, {"train": 50_000, "test": 10_000}, (32, 32), "RGB", 100),
        SyntheticSpec("SVHN", 5, {"train": 73_257, "test": 26_032}, (32, 32), "RGB", 10),
    )
}
_SPLIT_KEYS = {"train": 0, "test": 1}
# The class patterns live on a grid 4x coarser than the image (smooth patterns survive the
# 2-pixel random crops of DeepOBS's augmentation).
_PATTERN_CELL = 4
_PATTERN_SCALE = 40.0
_NOISE_SCALE = 45.0
# Items are computed in pieces of this many, so that a large request holds at most a few
# hundred MB of int64 temporaries.
_GENERATION_CHUNK = 4096


@lru_cache(maxsize=None)
def _class_patterns(name, seed):
    """Return ``[num_classes, height, width, channels]`` zero-mean unit-variance patterns."""
    spec = SYNTHETIC_SPECS[name]
    height, width = spec.image_size
    coarse_shape = (
        spec.num_classes,
        -(-height // _PATTERN_CELL),
        -(-width // _PATTERN_CELL),
        spec.channels,
    )
    rng = np.random.default_rng((seed, spec.key, 2**31 - 1))
    coarse = rng.standard_normal(coarse_shape)
    coarse = coarse + coarse[:, :, ::-1, :]  # left-right symmetric: flips keep the class
    patterns = coarse.repeat(_PATTERN_CELL, axis=1).repeat(_PATTERN_CELL, axis=2)
    patterns = patterns[:, :height, :width, :]
    patterns = patterns - patterns.mean(axis=(1, 2, 3), keepdims=True)
    return patterns / patterns.std(axis=(1, 2, 3), keepdims=True)


@lru_cache(maxsize=None)
def _salts(name, split, seed):
    """Two 32-bit salts (labels, pixels) that separate the random streams of one split."""
    spec = SYNTHETIC_SPECS[name]
    state = np.random.SeedSequence((seed, spec.key, _SPLIT_KEYS[split])).generate_state(2)
    return int(state[0]), int(state[1])


def _mix32(values):
    """A bijective 32-bit mixing function (MurmurHash3's finaliser), in place on uint32."""
    values ^= values >> 16
    values *= np.uint32(0x85EBCA6B)
    values ^= values >> 13
    values *= np.uint32(0xC2B2AE35)
    values ^= values >> 16
    return values


@lru_cache(maxsize=None)
def _pattern_table(name, seed):
    """``127.5 + scale * pattern`` per class as float32 ``[classes, channels * height * width]``."""
    spec = SYNTHETIC_SPECS[name]
    patterns = _PATTERN_SCALE * _class_patterns(name, seed).transpose(0, 3, 1, 2)
    return patterns.reshape(spec.num_classes, -1).astype(np.float32) + np.float32(127.5)


def _items(spec, split, seed, indices):
    """NumPy ``uint8`` images ``[n, channels * height * width]`` and labels of ``indices``."""
    label_salt, pixel_salt = (np.uint32(salt) for salt in _salts(spec.name, split, seed))
    patterns = _pattern_table(spec.name, seed)
    pixels_per_item = patterns.shape[1]
    pixel_offsets = np.arange(pixels_per_item, dtype=np.uint32)
    # Noise: the top 24 bits as a uniform number in (0, 1), centred, scaled to variance 1.
    noise_scale = np.float32(_NOISE_SCALE * math.sqrt(12.0) * 2.0**-24)
    noise_shift = np.float32(0.5 * 2**24 - 0.5)
    images = np.empty((indices.size, pixels_per_item), dtype=np.uint8)
    labels = np.empty(indices.size, dtype=np.int64)
    for start in range(0, indices.size, _GENERATION_CHUNK):
        chunk = indices[start : start + _GENERATION_CHUNK].astype(np.uint32)
        chunk_labels = _mix32(_mix32(chunk * np.uint32(0x9E3779B1) + label_salt))
        chunk_labels = (chunk_labels % np.uint32(spec.num_classes)).astype(np.int64)
        # Each split has fewer than 2**32 pixels, so the counters do not wrap.
        bits = chunk[:, None] * np.uint32(pixels_per_item) + pixel_offsets
        bits = _mix32(_mix32(bits) ^ pixel_salt)
        noise = (bits >> 8).astype(np.float32)
        noise -= noise_shift
        noise *= noise_scale
        noise += patterns[chunk_labels]
        np.rint(noise, out=noise)
        np.clip(noise, 0, 255, out=noise)
        images[start : start + len(chunk)] = noise
        labels[start : start + len(chunk)] = chunk_labels
    return images, labels


def _checked_indices(spec, split, indices):
    size = spec.split_sizes[split]
    if torch.is_tensor(indices):
        indices = indices.detach().cpu().numpy()
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        bad = indices[(indices < 0) | (indices >= size)][0]
        raise IndexError(f"index {bad} out of range for {size} items")
    return indices


def synthetic_items(spec, split, seed, indices, device=None):
    """Compute synthetic items, batched: the values that every item access returns.

    Item ``i`` depends only on ``(seed, data set, split, i)``: its label and each pixel's
    noise are a counter-based hash of these numbers, so a batch of items costs a few
    array operations and equals the items computed one by one. The arithmetic is NumPy's
    (uint32 and float32, the same bits on every machine); the result is moved to ``device``.

    Args:
        spec (SyntheticSpec): The data set.
        split (str): ``"train"`` or ``"test"``.
        seed (int): Seed of the whole data set.
        indices (torch.Tensor or Sequence[int]): Positions in the split, ``[n]``.
        device (torch.device or str, optional): Where the result goes (default: the CPU).

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``uint8`` images ``[n, channels, height,
        width]`` and ``int64`` labels ``[n]``, on ``device``.

    Raises:
        IndexError: An index is outside ``[0, size of the split)``.
    """
    images, labels = _items(spec, split, seed, _checked_indices(spec, split, indices))
    images = torch.from_numpy(images.reshape(-1, spec.channels, *spec.image_size))
    labels = torch.from_numpy(labels)
    if device is not None:
        images, labels = images.to(device), labels.to(device)
    return images, labels


class SyntheticImageDataset(Dataset):
    """A learnable stand-in for one split of a torchvision image data set.

    Items are ``(PIL image, int label)`` pairs like torchvision's, so DeepOBS's transforms
    apply unchanged. Item ``i`` is computed from ``(seed, data set, split, i)`` when read
    (:func:`synthetic_items`, which also computes many items at once for the tensor data
    path).

    Args:
        spec (SyntheticSpec): The data set to imitate (see ``SYNTHETIC_SPECS``).
        split (str): ``"train"`` or ``"test"``.
        seed (int): Seed of the whole data set (class patterns and items).
        transform (callable, optional): Applied to the PIL image, as in torchvision.
        target_transform (callable, optional): Applied to the label, as in torchvision.
    """

    def __init__(self, spec, split, seed=0, transform=None, target_transform=None):
        if split not in spec.split_sizes:
            raise ValueError(
                f"{spec.name} has the splits {sorted(spec.split_sizes)}, not {split!r}."
            )
        self.spec = spec
        self.split = split
        self.seed = int(seed)
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self):
        return self.spec.split_sizes[self.split]

    def items(self, indices, device=None):
        """Compute many items at once (see :func:`synthetic_items`), before any transform."""
        return synthetic_items(self.spec, self.split, self.seed, indices, device=device)

    def raw_item(self, index):
        """Compute item ``index`` before any transform.

        Args:
            index (int): Position in the split, ``0 <= index < len(self)``.

        Returns:
            tuple: ``uint8`` array ``[height, width, channels]`` and the label (int).
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        spec = self.spec
        images, labels = _items(spec, self.split, self.seed, np.array([index]))
        pixels = images.reshape(spec.channels, *spec.image_size).transpose(1, 2, 0)
        return pixels, int(labels[0])

    def __getitem__(self, index):
        pixels, label = self.raw_item(index)
        if self.spec.mode == "L":
            pixels = pixels[:, :, 0]
        image = Image.fromarray(pixels, self.spec.mode)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __repr__(self):
        return (
            f"SyntheticImageDataset({self.spec.name}, split={self.split!r}, "
            f"size={len(self)}, seed={self.seed})"
        )


class _DatasetSource:
    """Stands in for ``torchvision.datasets`` inside DeepOBS's data set modules."""

    def __getattr__(self, name):
        if name not in SYNTHETIC_SPECS:
            return getattr(torchvision_datasets, name)

        def build(root, train=True, split=None, transform=None, target_transform=None, **kwargs):
            split = split if split is not None else ("train" if train else "test")
            if synthetic_data_enabled():
                return SyntheticImageDataset(
                    SYNTHETIC_SPECS[name],
                    split,
                    seed=synthetic_data_seed(),
                    transform=transform,
                    target_transform=target_transform,
                )
            real_class = getattr(torchvision_datasets, name)
            split_arguments = {"split": split} if name == "SVHN" else {"train": split == "train"}
            created = _missing_folders(root, name)
            try:
                return real_class(
                    root=root,
                    transform=transform,
                    target_transform=target_transform,
                    **split_arguments,
                    **kwargs,
                )
            except Exception as error:  # download errors, missing or corrupt files
                # One message instead of torchvision's and urllib's tracebacks, and no empty
                # folders left behind by the failed download.
                _remove_if_empty(created)
                raise DataUnavailableError(name, root, error) from None

        build.__name__ = name
        return build


_DEEPOBS_DATASET_MODULES = ("mnist", "fmnist", "cifar10", "cifar100", "svhn")


def _missing_folders(root, name):
    """The folders a download of ``name`` into ``root`` may create, deepest first."""
    candidates = [os.path.join(root, name, "raw"), os.path.join(root, name), root]
    return [folder for folder in candidates if not os.path.exists(folder)]


def _remove_if_empty(folders):
    for folder in folders:
        try:
            os.rmdir(folder)  # only removes an empty folder
        except OSError:
            pass


@contextmanager
def data_source(synthetic):
    """Route DeepOBS's data sets through BackOBS, with synthetic data on or off, for a block.

    The switch of :func:`use_synthetic_data` is restored when the block ends, so one run's
    choice does not leak into the next run in the same process.

    Args:
        synthetic (bool): Whether problems set up inside the block get synthetic data.
    """
    global _synthetic_enabled, _synthetic_seed
    install()
    previous = (_synthetic_enabled, _synthetic_seed)
    _synthetic_enabled = bool(synthetic)
    try:
        yield
    finally:
        _synthetic_enabled, _synthetic_seed = previous


def install():
    """Route DeepOBS's image data sets through BackOBS (idempotent).

    Called by :func:`use_synthetic_data`, :func:`data_source` and the runner; importing
    ``backobs`` changes nothing in DeepOBS.
    """
    source = _DatasetSource()
    for module_name in _DEEPOBS_DATASET_MODULES:
        try:
            module = importlib.import_module(f"{_deepobs.datasets.__name__}.{module_name}")
        except ImportError:  # a DeepOBS version without this data set
            continue
        if getattr(module, "datasets", None) is torchvision_datasets:
            module.datasets = source
