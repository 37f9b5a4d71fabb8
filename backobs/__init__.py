"""BackOBS: BackPACK-style backprop extensions on DeepOBS test problems.

The package has three layers, each importing only the ones below it:

- :mod:`backobs.adapter`: DeepOBS's PyTorch half without TensorFlow, :func:`extend_problem`,
  the support table, the 8 problems DeepOBS 1.1.2 lacks, and the data sources;
- :mod:`backobs.runs`: one run (its options, :class:`BackpackRunner`, the epoch loop, the step
  log, and :class:`backobs.runs.Run` as data);
- the benchmark on top: :mod:`backobs.optim` (optimizers), :mod:`backobs.sweep` (grids of runs on
  Dask) and :mod:`backobs.report` (results folders to tables and figures).

The public names below are imported when first used (PEP 562), so that ``import backobs`` and
the commands that need neither (``backobs report``, ``backobs --help``) do not pay for torch
and DeepOBS. Importing DeepOBS through BackOBS changes nothing in DeepOBS. What does, happens
when asked for: :func:`register_problems` makes the 8 added problems reachable under
``deepobs.pytorch.testproblems`` (for DeepOBS's own runners), and :func:`use_synthetic_data`,
a run of the runner, or the environment variable ``BACKOBS_SYNTHETIC_DATA=1`` routes DeepOBS's
image data sets through :mod:`backobs.adapter.data`.
"""

import importlib

_PUBLIC = {
    "extend_problem": ("backobs.adapter.extend", "extend_problem"),
    "extend": ("backobs.adapter.extend", "extend"),
    "extend_with_access_unreduced_loss": (
        "backobs.adapter.extend",
        "extend_with_access_unreduced_loss",
    ),
    "ALL": ("backobs.adapter.problems", "ALL"),
    "SUPPORTED": ("backobs.adapter.problems", "SUPPORTED"),
    "UNSUPPORTED": ("backobs.adapter.problems", "UNSUPPORTED"),
    "REGULARIZED": ("backobs.adapter.problems", "REGULARIZED"),
    "SUPPORT_TABLE": ("backobs.adapter.problems", "SUPPORT_TABLE"),
    "ProblemSupport": ("backobs.adapter.problems", "ProblemSupport"),
    "format_support_table": ("backobs.adapter.problems", "format_support_table"),
    "get_problem_class": ("backobs.adapter.problems", "get_problem_class"),
    "DataUnavailableError": ("backobs.adapter.data", "DataUnavailableError"),
    "use_synthetic_data": ("backobs.adapter.data", "use_synthetic_data"),
    "synthetic_data_enabled": ("backobs.adapter.data", "synthetic_data_enabled"),
    "BackpackRunner": ("backobs.runs.runner", "BackpackRunner"),
    "StepLog": ("backobs.runs.steplog", "StepLog"),
    "register_problems": ("backobs.adapter.testproblems", "register_with_deepobs"),
}

_SUBPACKAGES = ("adapter", "checks", "cli", "optim", "report", "runs", "sweep")

__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"backobs.{name}")
    raise AttributeError(f"module 'backobs' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC) | set(_SUBPACKAGES))
