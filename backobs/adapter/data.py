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

Synthetic items are computed from ``(seed, data set, split, index)`` when they are read,
never held as a whole (full-size CIFAR-10 in float32 would be 0.7 GB). Each class has a fixed
smooth, left-right symmetric pattern; an item is its class's pattern plus pixel noise, so a
net can learn the classes (and random crops and flips keep the class visible).
"""

import importlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as torchvision_datasets

from backobs.adapter import deepobs as _deepobs

__all__ = [
    "DataUnavailableError",
    "SyntheticImageDataset",
    "SYNTHETIC_SPECS",
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


class SyntheticImageDataset(Dataset):
    """A learnable stand-in for one split of a torchvision image data set.

    Items are ``(PIL image, int label)`` pairs like torchvision's, so DeepOBS's transforms
    apply unchanged. Item ``i`` is computed from ``(seed, data set, split, i)`` when read.

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
        rng = np.random.default_rng((self.seed, spec.key, _SPLIT_KEYS[self.split], int(index)))
        label = int(rng.integers(spec.num_classes))
        noise = rng.standard_normal((*spec.image_size, spec.channels))
        pattern = _class_patterns(spec.name, self.seed)[label]
        pixels = 127.5 + _PATTERN_SCALE * pattern + _NOISE_SCALE * noise
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), label

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
