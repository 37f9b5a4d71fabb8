"""The 20 DeepOBS PyTorch problems, which of them BackOBS supports, and why not.

``ALL`` holds the problem classes in the order of the support table (supported first, each
group by name); ``SUPPORTED`` and ``UNSUPPORTED`` split it; ``REGULARIZED`` holds the classes
whose default l2 factor is positive (they work when constructed with weight decay ``0``).
"""

import inspect
from collections import namedtuple

from backobs.adapter import deepobs as _deepobs
from backobs.adapter import testproblems as _backobs_problems

__all__ = [
    "ALL",
    "SUPPORTED",
    "UNSUPPORTED",
    "REGULARIZED",
    "SUPPORT_TABLE",
    "ProblemSupport",
    "UNSUPPORTED_REASONS",
    "get_problem_class",
    "default_l2_factor",
    "format_support_table",
]

_VAE_REASON = (
    "variational autoencoder: its loss is not a loss module applied to the network output "
    "(it also takes the encoder's mean and standard deviation and a random sample)"
)
_BATCHNORM_REASON = (
    "batch normalization: in training mode it couples the samples of a mini-batch, so "
    "per-sample quantities are not defined"
)

_VAE_SHORT = "variational autoencoder (its loss is not a module of the net output)"
_BATCHNORM_SHORT = "batch normalization (couples the samples of a mini-batch)"
_SHORT_REASONS = {_VAE_REASON: _VAE_SHORT, _BATCHNORM_REASON: _BATCHNORM_SHORT}

UNSUPPORTED_REASONS = {
    "cifar100_wrn164": _BATCHNORM_REASON,
    "cifar100_wrn404": _BATCHNORM_REASON,
    "fmnist_vae": _VAE_REASON,
    "mnist_vae": _VAE_REASON,
    "svhn_wrn164": _BATCHNORM_REASON,
}

_SUPPORTED_NAMES = (
    "cifar10_3c3d",
    "cifar10_vgg16",
    "cifar10_vgg19",
    "cifar100_3c3d",
    "cifar100_allcnnc",
    "cifar100_vgg16",
    "cifar100_vgg19",
    "fmnist_2c2d",
    "fmnist_logreg",
    "fmnist_mlp",
    "mnist_2c2d",
    "mnist_logreg",
    "mnist_mlp",
    "quadratic_deep",
    "svhn_3c3d",
)


def _problem_class(name):
    """BackOBS's class where BackOBS defines one (quadratic_deep, the 8 missing), else DeepOBS's."""
    if hasattr(_backobs_problems, name) and name in _backobs_problems.__all__:
        own = getattr(_backobs_problems, name)
        deepobs_class = getattr(_deepobs.testproblems, name, None)
        # A DeepOBS version that ships one of the missing problems keeps its own.
        if name != "quadratic_deep" and deepobs_class is not None:
            return deepobs_class
        return own
    return getattr(_deepobs.testproblems, name)


def default_l2_factor(problem_class):
    """The default l2 factor of a problem class (its constructor's default), or ``None``.

    Args:
        problem_class (type): A DeepOBS test problem class.

    Returns:
        float or None: The default of ``weight_decay`` (1.1.2) or ``l2_reg`` (develop).
    """
    parameters = inspect.signature(problem_class.__init__).parameters
    for argument in ("weight_decay", "l2_reg"):
        if argument in parameters:
            default = parameters[argument].default
            return None if default is inspect.Parameter.empty else default
    return None


ProblemSupport = namedtuple("ProblemSupport", ["name", "supported", "reason"])
ProblemSupport.__doc__ = """A row of the support table: problem name, supported?, reason (or "")."""

SUPPORT_TABLE = [ProblemSupport(name, True, "") for name in _SUPPORTED_NAMES] + [
    ProblemSupport(name, False, _SHORT_REASONS[reason])
    for name, reason in sorted(UNSUPPORTED_REASONS.items())
]

ALL = [_problem_class(row.name) for row in SUPPORT_TABLE]
SUPPORTED = [cls for cls, row in zip(ALL, SUPPORT_TABLE) if row.supported]
UNSUPPORTED = [cls for cls, row in zip(ALL, SUPPORT_TABLE) if not row.supported]
REGULARIZED = [cls for cls in ALL if (default_l2_factor(cls) or 0.0) > 0.0]

_BY_NAME = {row.name: cls for cls, row in zip(ALL, SUPPORT_TABLE)}


def get_problem_class(name):
    """Return the problem class of that name.

    Args:
        name (str): A DeepOBS problem name, e.g. ``"mnist_logreg"``.

    Returns:
        type: The class (BackOBS's for quadratic_deep and the problems DeepOBS 1.1.2 lacks).

    Raises:
        ValueError: For an unknown name; the message lists the known ones.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"Unknown DeepOBS problem {name!r}. Known problems: {', '.join(sorted(_BY_NAME))}."
        ) from None


def format_support_table():
    """Render the support table as text (an org-mode table, as in BackOBS's README).

    Returns:
        str: One header line and one line per problem: mark, name, reason if unsupported.
    """
    width = max(len(row.name) for row in SUPPORT_TABLE) + 2
    lines = [f"| *Support* | {'*Problem*':<{width}} | *Reason* |"]
    for row in SUPPORT_TABLE:
        mark = "✔" if row.supported else "❌"
        lines.append(f"| {mark:<9} | {'~' + row.name + '~':<{width}} | {row.reason} |")
    return "\n".join(lines)
