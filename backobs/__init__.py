"""BackOBS: BackPACK-style backprop extensions on DeepOBS test problems.

Importing ``backobs`` imports DeepOBS's PyTorch half without TensorFlow and changes nothing
in DeepOBS. What does, happens when asked for: :func:`register_problems` makes the 8
problems DeepOBS 1.1.2 lacks reachable under ``deepobs.pytorch.testproblems`` (for DeepOBS's
own runners; :func:`get_problem_class` and BackOBS's runner need no registration), and
:func:`use_synthetic_data`, a run of the runner, or the environment variable
``BACKOBS_SYNTHETIC_DATA=1`` routes DeepOBS's image data sets through :mod:`backobs.data`
(real data with one clear error when it is missing, or synthetic stand-ins).
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

# Last: the runner and the step log use the adapter above.
from backobs.runner import BackpackRunner  # noqa: E402
from backobs.steplog import StepLog  # noqa: E402
from backobs.testproblems import register_with_deepobs as register_problems

if synthetic_data_enabled():
    # BACKOBS_SYNTHETIC_DATA=1 asks for synthetic data in any script, also one that sets up
    # DeepOBS problems without BackOBS's runner: that request is the one import-time change.
    _install_data_sources()

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
    "StepLog",
    "register_problems",
]
