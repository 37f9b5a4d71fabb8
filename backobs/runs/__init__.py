"""One run: (problem, optimizer, hyperparameters, seed, settings) in, one results file out.

- :mod:`~backobs.runs.options`: the options of a run, checked once before any work;
- :mod:`~backobs.runs.runner`: :class:`~backobs.runs.runner.BackpackRunner`, DeepOBS's PyTorch
  runner with the extensions active;
- :mod:`~backobs.runs.training`: the epoch loop (training, evaluation, Ctrl-C, divergence);
- :mod:`~backobs.runs.steplog`: the per-step log of the extensions' outputs;
- :mod:`~backobs.runs.run`: :class:`Run` as data, and :func:`execute`, what a sweep worker
  calls.

The names of :mod:`~backobs.runs.run` are importable from here (``from backobs.runs import Run,
execute``), imported when first used.
"""

import importlib

_RUN_NAMES = ("Run", "execute", "make_runner", "settings_directory", "existing_result")

__all__ = list(_RUN_NAMES)


def __getattr__(name):
    if name in _RUN_NAMES:
        return getattr(importlib.import_module("backobs.runs.run"), name)
    raise AttributeError(f"module 'backobs.runs' has no attribute {name!r}")
