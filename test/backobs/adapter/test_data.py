"""Data: synthetic stand-ins with DeepOBS's shapes and splits, real idx files, the offline error."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import backobs
from backobs.adapter import data
from backobs.adapter import deepobs as _deepobs

# DeepOBS data set class -> (torchvision name, train size, test size, image shape, classes,
# train-eval/validation size)
DATASETS = {
    "mnist": ("MNIST", 60_000, 10_000, (1, 28, 28), 10, 10_000),
    "fmnist": ("FashionMNIST", 60_000, 10_000, (1, 28, 28), 10, 10_000),
    "cifar10": ("CIFAR10", 50_000, 10_000, (3, 32, 32), 10, 10_000),
    "cifar100": ("CIFAR100", 50_000, 10_000, (3, 32, 32), 100, 10_000),
    "svhn": ("SVHN", 73_257, 26_032, (3, 32, 32), 10, 26_032),
}


@pytest.fixture
def data_dir(tmp_path):
    previous = _deepobs.config.get_data_dir()
    _deepobs.config.set_data_dir(str(tmp_path))
    yield tmp_path
    _deepobs.config.set_data_dir(previous)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_synthetic_data_has_deepobs_shapes_and_splits(name):
    _, train_size, test_size, image_shape, num_classes, eval_size = DATASETS[name]
    dataset = getattr(_deepobs.datasets, name)(batch_size=7)

    assert isinstance(dataset._train_dataloader.dataset, data.SyntheticImageDataset)
    assert len(dataset._train_dataloader.dataset) == train_size
    assert len(dataset._test_dataloader.dataset) == test_size
    assert len(dataset._train_dataloader.sampler) == train_size - eval_size
    assert len(dataset._valid_dataloader.sampler) == eval_size
    assert len(dataset._train_eval_dataloader.sampler) == eval_size
    for loader in (dataset._train_dataloader, dataset._test_dataloader):
        assert loader.batch_size == 7 and loader.drop_last
        images, labels = next(iter(loader))
        assert images.shape == (7, *image_shape) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert 0 <= labels.min() and labels.max() < num_classes


@pytest.mark.parametrize("name", sorted(data.SYNTHETIC_SPECS))
def test_synthetic_items_are_deterministic_and_show_their_class(name):
    spec = data.SYNTHETIC_SPECS[name]
    dataset = data.SyntheticImageDataset(spec, "test", seed=3)
    again = data.SyntheticImageDataset(spec, "test", seed=3)
    other_seed = data.SyntheticImageDataset(spec, "test", seed=4)
    train = data.SyntheticImageDataset(spec, "train", seed=3)
    pixels, label = dataset.raw_item(5)
    assert pixels.shape == (*spec.image_size, spec.channels) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(again.raw_item(5)[0], pixels)
    assert not np.array_equal(other_seed.raw_item(5)[0], pixels)
    assert not np.array_equal(train.raw_item(5)[0], pixels)
    with pytest.raises(IndexError):
        dataset.raw_item(len(dataset))

    # all classes occur, and the nearest class pattern recovers the label
    patterns = data._class_patterns(name, 3).reshape(spec.num_classes, -1)
    items = [dataset.raw_item(i) for i in range(20 * spec.num_classes)]
    labels = np.array([label for _, label in items])
    assert set(labels) == set(range(spec.num_classes))
    images = np.stack([pixels.reshape(-1) for pixels, _ in items]).astype(np.float64) - 127.5
    predicted = (images @ patterns.T).argmax(axis=1)
    assert (predicted == labels).mean() > 0.95


def test_training_on_synthetic_data_lowers_loss_and_raises_accuracy():
    torch.manual_seed(0)
    tproblem = backobs.get_problem_class("fmnist_logreg")(64)
    tproblem.set_up()

    def evaluate():
        tproblem.test_init_op()
        results = [tproblem.get_batch_loss_and_accuracy() for _ in range(4)]
        return np.mean([r[0].item() for r in results]), np.mean([r[1] for r in results])

    loss_before, accuracy_before = evaluate()
    optimizer = torch.optim.SGD(tproblem.net.parameters(), lr=0.1, momentum=0.9)
    tproblem.train_init_op()
    for _ in range(30):
        optimizer.zero_grad()
        tproblem.get_batch_loss_and_accuracy()[0].backward()
        optimizer.step()
    loss_after, accuracy_after = evaluate()
    assert loss_after < 0.7 * loss_before
    assert accuracy_after > accuracy_before + 0.3


def test_switch_and_environment_variable(monkeypatch):
    data._reset_synthetic_switch()
    monkeypatch.delenv(data.ENVIRONMENT_VARIABLE, raising=False)
    assert not backobs.synthetic_data_enabled()
    monkeypatch.setenv(data.ENVIRONMENT_VARIABLE, "1")
    assert backobs.synthetic_data_enabled()
    backobs.use_synthetic_data(False)  # the library call overrides the variable
    assert not backobs.synthetic_data_enabled()
    backobs.use_synthetic_data(True, seed=7)
    assert backobs.synthetic_data_enabled() and data.synthetic_data_seed() == 7


def test_environment_variable_in_a_fresh_process(tmp_path):
    code = (
        "import backobs\n"
        "from backobs.adapter import deepobs as _deepobs\n"
        f"_deepobs.config.set_data_dir({str(tmp_path)!r})\n"
        "p = backobs.get_problem_class('mnist_logreg')(4)\n"
        "p.set_up(); p.train_init_op()\n"
        "print(type(p.data._train_dataloader.dataset).__name__)\n"
    )
    environment = dict(os.environ, **{data.ENVIRONMENT_VARIABLE: "1"})
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SyntheticImageDataset"


def test_missing_data_offline_gives_one_clear_error(data_dir):
    backobs.use_synthetic_data(False)
    tproblem = backobs.get_problem_class("cifar10_3c3d")(3, 0.0)
    with pytest.raises(backobs.DataUnavailableError) as error:
        tproblem.set_up()
    message = str(error.value)
    assert isinstance(error.value, RuntimeError)
    assert "CIFAR10" in message and str(data_dir) in message
    assert "use_synthetic_data" in message and "BACKOBS_SYNTHETIC_DATA=1" in message
    assert "set_data_dir" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert error.value.dataset == "CIFAR10" and error.value.data_dir == str(data_dir)


def _write_idx(path, array):
    """Write an uint8 array in the idx format of (Fashion-)MNIST (big-endian header)."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(
    "folder, problem", [("MNIST", "mnist_logreg"), ("FashionMNIST", "fmnist_2c2d")]
)
def test_real_loading_path_reads_idx_files(data_dir, folder, problem):
    backobs.use_synthetic_data(False)
    raw = data_dir / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    test_images = rng.integers(0, 256, size=(10_000, 28, 28), dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=10_000, dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", np.zeros((60_000, 28, 28), np.uint8))
    _write_idx(raw / "train-labels-idx1-ubyte", np.zeros(60_000, np.uint8))
    _write_idx(raw / "t10k-images-idx3-ubyte", test_images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", test_labels)

    tproblem = backobs.get_problem_class(problem)(5)
    tproblem.set_up()
    assert not isinstance(tproblem.data._test_dataloader.dataset, data.SyntheticImageDataset)
    tproblem.test_init_op()
    images, labels = tproblem._get_next_batch()  # the test loader keeps the file order
    expected = torch.from_numpy(test_images[:5]).float().div(255).unsqueeze(1)
    torch.testing.assert_close(images, expected)
    torch.testing.assert_close(labels, torch.from_numpy(test_labels[:5]).long())
    assert len(tproblem.data._train_dataloader.sampler) == 50_000
