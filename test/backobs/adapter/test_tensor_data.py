"""The tensor data path serves DeepOBS's batches: same order, same values, same draws.

Each comparison runs DeepOBS's own ``DataLoader`` and BackOBS's :class:`TensorLoader` from
the same state of torch's generator and checks the batches and the generator's state after
them; on the run level, whole runs with either loader give the same metric lists.
"""

import json
import random

import numpy as np
import pytest
import torch
from torch.utils.data import (
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
)
from torchvision import datasets as torchvision_datasets
from torchvision import transforms as T

import backobs
import backpack_core
from backobs import runs
from backobs.adapter import data, tensor_data
from backobs.adapter import deepobs as _deepobs
from backobs.adapter.transforms import UnsupportedTransform, compile_transform
from backobs.runs.training import METRICS

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOADERS = ("_train_dataloader", "_valid_dataloader", "_train_eval_dataloader", "_test_dataloader")
# Loaders without random augmentation, per DeepOBS data set (CIFAR's and SVHN's training
# set, which the train-eval loader reads too, is augmented).
UNAUGMENTED = {
    "mnist": LOADERS,
    "fmnist": LOADERS,
    "cifar10": ("_valid_dataloader", "_test_dataloader"),
    "cifar100": ("_valid_dataloader", "_test_dataloader"),
    "svhn": ("_valid_dataloader", "_test_dataloader"),
}


@pytest.fixture(autouse=True)
def fresh_cache():
    tensor_data.clear_cache()
    yield
    tensor_data.clear_cache()
    backpack_core.set_memory_limit(None)


def _assert_same_batches(deepobs_loader, tensor_loader, batches, device):
    """The first ``batches`` batches of both, each started from the same generator state."""
    state = torch.get_rng_state()
    expected = [batch for batch, _ in zip(deepobs_loader, range(batches))]
    after_expected = torch.get_rng_state()
    torch.set_rng_state(state)
    served = [batch for batch, _ in zip(tensor_loader, range(batches))]
    assert torch.equal(torch.get_rng_state(), after_expected), "different draws"
    assert len(served) == len(expected) == min(batches, len(deepobs_loader))
    for want, got in zip(expected, served):
        assert len(want) == len(got)
        for want_field, got_field in zip(want, got):
            assert got_field.device.type == torch.device(device).type
            assert got_field.dtype == want_field.dtype
            assert torch.equal(got_field.cpu(), want_field), "different values"


# Synthetic data computed batched --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(data.SYNTHETIC_SPECS))
def test_batched_synthetic_items_equal_the_items_one_by_one(name):
    spec = data.SYNTHETIC_SPECS[name]
    for split in ("train", "test"):
        dataset = data.SyntheticImageDataset(spec, split, seed=7, transform=T.ToTensor())
        indices = [0, 1, 4095, 4096, len(dataset) - 1, 12345 % len(dataset)]
        images, labels = dataset.items(torch.tensor(indices))
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape == (len(indices), spec.channels, *spec.image_size)
        for row, index in enumerate(indices):
            pixels, label = dataset.raw_item(index)
            assert np.array_equal(images[row].permute(1, 2, 0).numpy(), pixels)
            assert labels[row] == label
            image, item_label = dataset[index]  # through PIL and ToTensor, as DeepOBS reads it
            assert torch.equal(image, images[row].float().div(255)) and item_label == label
    with pytest.raises(IndexError, match="out of range"):
        dataset.items([len(dataset)])


def test_synthetic_items_are_spread_like_the_noise_promises():
    spec = data.SYNTHETIC_SPECS["MNIST"]
    images, labels = data.synthetic_items(spec, "train", 0, torch.arange(6000))
    counts = torch.bincount(labels, minlength=10).float()
    assert counts.min() > 500 and counts.max() < 700  # about 600 per class
    patterns = torch.as_tensor(data._class_patterns("MNIST", 0)).permute(0, 3, 1, 2)
    noise = images.double() - 127.5 - data._PATTERN_SCALE * patterns[labels]
    unclipped = (images > 0) & (images < 255)
    # uniform noise of standard deviation 45, rounded to integers
    assert abs(noise[unclipped].std().item() - data._NOISE_SCALE) < 1.5
    assert abs(noise[unclipped].mean().item()) < 1.0


# Index order ------------------------------------------------------------------------------


class _EveryOther(Sampler):
    def __init__(self, size):
        self.size = size

    def __iter__(self):
        return iter(torch.randperm(self.size)[::2].tolist())

    def __len__(self):
        return (self.size + 1) // 2


SAMPLERS = {
    "sequential": lambda: SequentialSampler(range(23)),
    "subset random": lambda: SubsetRandomSampler(list(range(5, 40, 3))),
    "train eval": lambda: _deepobs.datasets.datasets_utils.train_eval_sampler(50, 17),
    "random": lambda: RandomSampler(range(19)),
    "random, more samples than items": lambda: RandomSampler(range(7), num_samples=17),
    "another sampler": lambda: _EveryOther(21),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_order_makes_the_samplers_draws(name):
    sampler = SAMPLERS[name]()
    torch.manual_seed(3)
    expected = list(sampler)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    order = tensor_data.sampler_order(sampler)
    assert order.tolist() == expected
    assert torch.equal(torch.get_rng_state(), after)
    assert tensor_data.sampler_order(sampler).tolist() != expected or name == "sequential"


# Loaders, batch by batch -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(UNAUGMENTED))
def test_tensor_loaders_serve_deepobs_batches(name, device):
    random.seed(1)
    dataset = getattr(_deepobs.datasets, name)(batch_size=32)
    originals = {loader: getattr(dataset, loader) for loader in LOADERS}

    class Problem:
        data = dataset
        _device = torch.device(device)

    announced = []
    reason = tensor_data.attach(Problem, announce=announced.append)
    expect_augmentation = name in ("cifar10", "cifar100", "svhn")
    assert reason is None and announced == [], announced
    for loader_name in UNAUGMENTED[name]:
        served = getattr(dataset, loader_name)
        assert isinstance(served, tensor_data.TensorLoader)
        assert len(served) == len(originals[loader_name])
        torch.manual_seed(11)
        _assert_same_batches(originals[loader_name], served, 3, device)
    if expect_augmentation:  # the augmented ones are batched: same shapes, not the same values
        images, labels = next(iter(dataset._train_dataloader))
        assert images.shape == next(iter(originals["_train_dataloader"]))[0].shape


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_loaders_serve_a_whole_epoch_with_drop_last(device):
    features = torch.randn(103, 4)
    targets = torch.randint(3, (103,))
    for drop_last in (True, False):
        loader = DataLoader(
            TensorDataset(features, targets), batch_size=10, shuffle=True, drop_last=drop_last
        )
        split = tensor_data.TensorSplit.from_tensors([features, targets], device)
        served = tensor_data.TensorLoader(loader, split, transform=None)
        assert len(served) == len(loader) == (10 if drop_last else 11)
        torch.manual_seed(5)
        _assert_same_batches(loader, served, 20, device)


def test_real_mnist_files_are_decoded_like_torchvision_reads_them(tmp_path):
    """The torchvision MNIST class on idx files of BackOBS's making, through both loaders."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = generator.integers(0, 10, size=40, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0x803, 40, 28, 28], dtype=">i4").tobytes() + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0x801, 40], dtype=">i4").tobytes() + labels.tobytes()
        )
    dataset = torchvision_datasets.MNIST(str(tmp_path), train=True, transform=T.ToTensor())
    loader = DataLoader(
        dataset, batch_size=8, drop_last=True, sampler=SubsetRandomSampler(list(range(3, 35)))
    )
    source = tensor_data._source(dataset)
    assert source.key[:2] == ("torchvision", "MNIST")
    split = source.build(torch.device("cpu"))
    assert torch.equal(split.fields[0][:, 0], torch.from_numpy(images))
    served = tensor_data.TensorLoader(loader, split, compile_transform(dataset.transform))
    _assert_same_batches(loader, served, 4, "cpu")


@pytest.mark.parametrize("cls", [torchvision_datasets.CIFAR10, torchvision_datasets.SVHN])
def test_cifar_and_svhn_arrays_are_decoded_in_their_layouts(cls):
    """CIFAR-10's and SVHN's arrays, in their layouts, through both loaders.

    Both classes read their arrays in ``__getitem__``; their files carry checksums, so the
    instances here get their arrays directly.
    """
    generator = np.random.default_rng(1)
    dataset = cls.__new__(cls)
    dataset.root, dataset.transform, dataset.target_transform = "/nowhere", T.ToTensor(), None
    if cls is torchvision_datasets.SVHN:
        dataset.data = generator.integers(0, 256, size=(30, 3, 32, 32), dtype=np.uint8)
        dataset.labels = generator.integers(0, 10, size=30)
        dataset.split = "test"
    else:
        dataset.data = generator.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
        dataset.targets = generator.integers(0, 10, size=30).tolist()
        dataset.train = False
    loader = DataLoader(dataset, batch_size=7, drop_last=True)
    split = tensor_data._source(dataset).build(torch.device("cpu"))
    served = tensor_data.TensorLoader(loader, split, compile_transform(dataset.transform))
    _assert_same_batches(loader, served, 4, "cpu")


# Transforms --------------------------------------------------------------------------------


def test_to_tensor_and_normalize_are_the_same_bits_as_torchvision():
    transform = T.Compose([T.ToTensor(), T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    images = torch.randint(0, 256, (6, 3, 5, 4), dtype=torch.uint8)
    batched = compile_transform(transform)(images)
    for image, result in zip(images, batched):
        pil = T.functional.to_pil_image(image)
        assert torch.equal(transform(pil), result)


@pytest.mark.parametrize(
    "transform, message",
    [
        (None, "no transform"),
        (T.Lambda(lambda image: image), "does not know the transform Lambda"),
        (T.Compose([T.Normalize((0.5,), (0.5,))]), "cannot batch Normalize"),
        (T.Compose([T.ToTensor(), T.ToTensor()]), "ToTensor twice"),
        (T.Compose([T.ToTensor(), T.CenterCrop(3)]), "cannot batch CenterCrop"),
    ],
)
def test_unknown_transforms_are_refused_by_name(transform, message):
    with pytest.raises(UnsupportedTransform, match=message):
        compile_transform(transform)


# Falling back, the cache ------------------------------------------------------------------


def _mnist_problem(batch_size=16):
    random.seed(2)
    tproblem = backobs.get_problem_class("mnist_logreg")(batch_size)
    tproblem.set_up()
    return tproblem


def test_an_unknown_transform_keeps_deepobs_loaders_with_one_line():
    tproblem = _mnist_problem()
    tproblem.data._test_dataloader.dataset.transform = T.Compose([T.ToTensor(), T.Lambda(abs)])
    originals = {name: getattr(tproblem.data, name) for name in LOADERS}
    lines = []
    reason = tensor_data.attach(tproblem, announce=lines.append)
    assert "Lambda" in reason and len(lines) == 1
    assert lines[0].startswith("[backobs] Using DeepOBS's data loaders: ") and "Lambda" in lines[0]
    assert all(getattr(tproblem.data, name) is originals[name] for name in LOADERS)


def test_data_larger_than_the_memory_limit_keep_deepobs_loaders():
    tproblem = _mnist_problem()
    backpack_core.set_memory_limit(10 * 2**20)
    lines = []
    reason = tensor_data.attach(tproblem, announce=lines.append)
    # 70,000 images of 784 bytes and their int64 labels: 55,440,000 bytes
    assert "needs 52.9 MiB" in reason and "memory limit of 10.0 MiB" in reason
    assert len(lines) == 1 and "set_memory_limit" in lines[0]
    assert not isinstance(tproblem.data._train_dataloader, tensor_data.TensorLoader)
    assert tensor_data.cached_splits() == []


def test_splits_are_decoded_once_and_shared():
    first, second = _mnist_problem(), _mnist_problem()
    assert tensor_data.attach(first) is None and tensor_data.attach(second) is None
    train = first.data._train_dataloader.split
    # train, validation and train-eval read the training split; all problems share it
    assert first.data._valid_dataloader.split is train
    assert first.data._train_eval_dataloader.split is train
    assert second.data._train_dataloader.split is train
    assert first.data._test_dataloader.split is not train
    assert len(tensor_data.cached_splits()) == 2


def test_the_cache_drops_the_oldest_split_beyond_its_budget():
    mnist = _mnist_problem()
    tensor_data.attach(mnist)
    assert len(tensor_data.cached_splits()) == 2  # MNIST's train (45.3 MiB) and test split
    backpack_core.set_memory_limit(120 * 2**20)  # the cache may hold half: 60 MiB
    random.seed(2)
    fmnist = backobs.get_problem_class("fmnist_logreg")(16)
    fmnist.set_up()
    assert tensor_data.attach(fmnist) is None
    kept = [key[0][1] for key in tensor_data.cached_splits()]
    assert kept.count("FashionMNIST") == 2
    assert kept.count("MNIST") <= 1  # MNIST's training split went
    assert ("MNIST", "train") not in [(key[0][1], key[0][2]) for key in tensor_data.cached_splits()]


def test_a_split_computes_only_the_items_a_short_run_reads():
    tproblem = _mnist_problem(batch_size=16)
    tensor_data.attach(tproblem)
    tproblem.train_init_op()
    batches = [next(tproblem._iterator) for _ in range(2)]
    split = tproblem.data._train_dataloader.split
    assert not split.complete and split._filled.sum() == 32
    split.fill_all()
    assert split.complete
    # the items computed on first use are those of the whole split computed at once
    whole, labels = data.synthetic_items(data.SYNTHETIC_SPECS["MNIST"], "train", 0, range(60_000))
    assert torch.equal(split.fields[0], whole) and torch.equal(split.fields[1], labels)
    assert all(images.shape == (16, 1, 28, 28) for images, _ in batches)


# Whole runs ---------------------------------------------------------------------------------

UNAUGMENTED_PROBLEMS = [
    ("mnist_logreg", "sgd"),
    ("mnist_mlp", "sgd"),
    ("mnist_2c2d", "sgd"),
    ("fmnist_logreg", "diag_ggn_mc"),  # Monte-Carlo samples: the draws after the batches
    ("fmnist_mlp", "sgd"),
    ("fmnist_2c2d", "sgd"),
    ("quadratic_deep", "sgd"),
]


def _run(problem, optimizer, loader, output_dir, **settings):
    run = runs.Run(
        problem,
        optimizer,
        {"lr": 0.05},
        seed=3,
        batch_size=8,
        num_epochs=2,
        steps_per_epoch=4,
        eval_batches=3,
        synthetic_data=True,
        output_dir=str(output_dir),
        data_loader=loader,
        **settings,
    )
    outcome = runs.execute(run, verbose=False)
    with open(outcome["path"], encoding="utf-8") as file:
        return json.load(file)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("problem, optimizer", UNAUGMENTED_PROBLEMS)
def test_runs_give_deepobs_numbers_metric_by_metric(problem, optimizer, device, tmp_path):
    deepobs = _run(problem, optimizer, "deepobs", tmp_path / "deepobs", device=device)
    tensor = _run(problem, optimizer, "tensor", tmp_path / "tensor", device=device)
    assert deepobs["data_loader"] == "deepobs" and tensor["data_loader"] == "tensor"
    assert tensor["data_loader_fallback"] is None
    compared = [key for key in METRICS if key in deepobs]
    assert "train_losses" in compared and len(deepobs["train_losses"]) == 3
    for key in compared:
        np.testing.assert_allclose(tensor[key], deepobs[key], rtol=1e-6, atol=0, err_msg=key)


def test_augmented_runs_evaluate_validation_and_test_sets_as_deepobs(tmp_path):
    """The first evaluation of an augmented problem: the same test numbers.

    Before training the net is the same, and the test set is neither augmented nor shuffled.
    (The train-eval set reads the augmented training set; its draws differ from the
    per-image ones, so the validation sampler's permutation after them differs too.)
    """
    deepobs = _run("cifar10_3c3d", "sgd", "deepobs", tmp_path / "deepobs")
    tensor = _run("cifar10_3c3d", "sgd", "tensor", tmp_path / "tensor")
    assert tensor["data_loader"] == "tensor" and tensor["data_loader_fallback"] is None
    for key in ("test_losses", "test_accuracies"):
        np.testing.assert_allclose(tensor[key][0], deepobs[key][0], rtol=1e-6, err_msg=key)
    assert all(np.isfinite(tensor["train_losses"]))
