"""What the benchmark measures, without importing torch (the parent process stays light).

Nets of DeepOBS 1.1.2 with their input shapes and default batch sizes, the extensions of
the anchor table of issue 7, the libraries, and the cells known not to finish.
"""

import importlib.util
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class NetSpec:
    """A DeepOBS net as the benchmark uses it.

    Attributes:
        name: The DeepOBS test-problem name.
        factory: Name of the class in DeepOBS's ``testproblems_modules``.
        kwargs: Its keyword arguments.
        input_shape: Shape of one sample.
        num_classes: Number of classes of the cross-entropy loss.
        batch_size: Default mini-batch size (as in the anchor table of issue 7).
    """

    name: str
    factory: str
    kwargs: Tuple[Tuple[str, int], ...]
    input_shape: Tuple[int, ...]
    num_classes: int
    batch_size: int


_MNIST, _CIFAR, _TEN = (1, 28, 28), (3, 32, 32), (("num_outputs", 10),)
NETS: Dict[str, NetSpec] = {
    spec.name: spec
    for spec in [
        NetSpec("mnist_logreg", "net_mnist_logreg", _TEN, _MNIST, 10, 128),
        NetSpec("mnist_mlp", "net_mlp", _TEN, _MNIST, 10, 128),
        NetSpec("mnist_2c2d", "net_mnist_2c2d", _TEN, _MNIST, 10, 128),
        NetSpec("cifar10_3c3d", "net_cifar10_3c3d", _TEN, _CIFAR, 10, 64),
        NetSpec("cifar100_allcnnc", "net_cifar100_allcnnc", (), _CIFAR, 100, 64),
    ]
}

# The extensions of the anchor table, in its column order, with their column titles.
EXTENSIONS: Dict[str, str] = {
    "BatchGrad": "BatchGrad",
    "BatchL2Grad": "BatchL2",
    "SumGradSquared": "SumGradSq",
    "Variance": "Variance",
    "DiagGGNExact": "DiagGGN",
    "DiagGGNMC": "DiagGGN-MC",
    "DiagHessian": "DiagH",
    "KFAC": "KFAC",
    "KFLR": "KFLR",
    "KFRA": "KFRA",
}

# Extensions whose result is random (Monte-Carlo): only shapes are compared across libraries.
MONTE_CARLO = {"DiagGGNMC", "KFAC", "BatchDiagGGNMC"}

# Library names on the command line; the last two only compute per-sample gradients.
LIBRARIES = ("backpack_core", "backpack", "torch.func", "opacus")
PER_SAMPLE_ONLY = ("torch.func", "opacus")
LABELS = {
    "plain": "plain",
    "backpack_core": "backpack_core",
    "backpack": "BackPACK",
    "torch.func": "torch.func vmap(grad)",
    "opacus": "Opacus GradSampleModule",
}
MODULES = {"backpack_core": "backpack_core", "backpack": "backpack", "opacus": "opacus"}
_DISTRIBUTIONS = {
    "backpack_core": "backobs",
    "backpack": "backpack-for-pytorch",
    "torch.func": "torch",
    "opacus": "opacus",
}

_KFRA_KNOWN = {
    "mnist_2c2d": "skipped (known: 6 GB held, no step done in 9 CPU-min)",
    "cifar10_3c3d": "skipped (known: killed at 24 GiB)",
    "cifar100_allcnnc": "skipped (known: killed at 24 GiB on the smaller cifar10_3c3d)",
}


def known_failure(library: str, net: str, extension: str) -> Optional[str]:
    """Why a cell is not run by default, or ``None`` if it is run.

    Args:
        library: Library name (``"backpack"`` is BackPACK 1.7.1).
        net: Net name.
        extension: Extension name.

    Returns:
        The text reported in the cell instead of a measurement, or ``None``.
    """
    if library == "backpack" and extension == "KFRA":
        return _KFRA_KNOWN.get(net)
    return None


def unavailable_reason(library: str) -> Optional[str]:
    """Why ``library`` cannot be measured here, or ``None`` if it can.

    Only looks the package up; does not import it.

    Args:
        library: A name of :data:`LIBRARIES`.

    Returns:
        A short note, or ``None``.
    """
    if library == "torch.func":
        found = importlib.util.find_spec("torch") is not None
        return None if found else "torch missing"
    if importlib.util.find_spec(MODULES[library]) is None:
        extra = " (pip install -e '.[bench]')" if library in ("backpack", "opacus") else ""
        return f"{MODULES[library]} not importable{extra}"
    return None


def distribution_version(name: str) -> Optional[str]:
    """The installed version of a library of :data:`LIBRARIES` (or of ``"torch"``)."""
    from importlib import metadata

    try:
        return metadata.version(_DISTRIBUTIONS.get(name, name))
    except metadata.PackageNotFoundError:
        return None
