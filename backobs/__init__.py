"""BackOBS: BackPACK-style backprop extensions on DeepOBS test problems.

Importing ``backobs`` imports DeepOBS's PyTorch half without TensorFlow, registers the
problems DeepOBS 1.1.2 lacks under ``deepobs.pytorch.testproblems``, and routes DeepOBS's
image data sets through :mod:`backobs.data` (real data with one clear error when it is
missing, or synthetic stand-ins).
"""

from backobs import _deepobs  # noqa: F401  (imports DeepOBS's PyTorch half, no TensorFlow)
from backobs.data import (
    DataUnavailableError,
    synthetic_data_enabled,
    use_synthetic_data,
)
from backobs.data import install as _install_data_sources
from backobs.extend import extend, extend_problem, extend_with_access_unreduced_loss
from backobs.problems import (
    ALL,
    REGULARIZED,
    SUPPORT_TABLE,
    SUPPORTED,
    UNSUPPORTED,
    ProblemSupport,
    format_support_table,
    get_problem_class,
)
from backobs.testproblems import register_with_deepobs as _register_with_deepobs

_register_with_deepobs()
_install_data_sources()

# Last: the runner uses the adapter above.
from backobs.runner import BackpackRunner  # noqa: E402

__all__ = [
    "extend_problem",
    "extend",
    "extend_with_access_unreduced_loss",
    "ALL",
    "SUPPORTED",
    "UNSUPPORTED",
    "REGULARIZED",
    "SUPPORT_TABLE",
    "ProblemSupport",
    "format_support_table",
    "get_problem_class",
    "DataUnavailableError",
    "use_synthetic_data",
    "synthetic_data_enabled",
    "BackpackRunner",
]
