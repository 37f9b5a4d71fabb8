"""Import the PyTorch half of DeepOBS without TensorFlow.

DeepOBS 1.1.2's ``deepobs/__init__.py`` runs ``from . import tensorflow``, which imports
TensorFlow, although the PyTorch half (``deepobs.pytorch``, ``deepobs.config``,
``deepobs.abstract_runner``) never uses it. We register the ``deepobs`` package in
``sys.modules`` *without executing its ``__init__``*, so that importing its subpackages
works with TensorFlow absent. If ``deepobs`` was already imported (TensorFlow installed and
the user imported it first), that module is used as it is.
"""

import importlib
import importlib.util
import sys

__all__ = ["deepobs", "pytorch", "testproblems", "datasets", "runners", "config", "L2_ATTRIBUTES"]


def _import_deepobs_without_tensorflow():
    if "deepobs" in sys.modules:
        return sys.modules["deepobs"]
    spec = importlib.util.find_spec("deepobs")
    if spec is None:
        raise ImportError(
            "DeepOBS is not installed. Install it with 'pip install deepobs==1.1.2' "
            "(or 'make install' in the BackOBS repository)."
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["deepobs"] = module
    return module


deepobs = _import_deepobs_without_tensorflow()
pytorch = importlib.import_module("deepobs.pytorch")
config = importlib.import_module("deepobs.config")
testproblems = pytorch.testproblems
datasets = pytorch.datasets
runners = pytorch.runners

# The l2 factor of a test problem: 1.1.2 calls it ``_weight_decay``, DeepOBS's develop
# branch ``_l2_reg``.
L2_ATTRIBUTES = ("_weight_decay", "_l2_reg")
