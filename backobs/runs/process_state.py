"""Process-wide state that a run changes for its duration, and restores afterwards.

DeepOBS keeps its settings (device, data directory), its problem lookup and its random
generators at module level; a run sets what it needs for a block (``with``) so that one
run's choices do not leak into the next run in the same process (a sweep worker runs many).
"""

import importlib
import random
from contextlib import contextmanager

from backobs.adapter import deepobs as _deepobs

__all__ = ["deepobs_private_python_random", "scoped", "problem_lookup"]

# DeepOBS 1.1.2 seeds Python's global generator and splits training from validation data
# with it (``from random import seed`` in its runner, ``from random import shuffle`` in its
# data sets). Any other thread drawing from that generator during a run (a Dask worker's event
# loop samples frames with ``random.randint``; seen there in about one run in seven) changes
# the split and every number after it. During a run DeepOBS gets a generator of its own:
# seeded with the same seed and drawn in the same order, it gives a lone run's numbers.
_DEEPOBS_RANDOM_USERS = (
    ("deepobs.pytorch.runners.runner", "seed"),
    ("deepobs.pytorch.datasets.dataset", "shuffle"),
)


@contextmanager
def deepobs_private_python_random():
    """Give DeepOBS's ``seed`` and ``shuffle`` a private ``random.Random`` for a block."""
    private = random.Random()
    saved = []
    for module_name, name in _DEEPOBS_RANDOM_USERS:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, getattr(private, name))
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


@contextmanager
def scoped(get, set_value, value):
    """``set_value(value)`` for a block, the previous value restored after; ``None`` keeps it."""
    if value is None:
        yield
        return
    previous = get()
    set_value(value)
    try:
        yield
    finally:
        set_value(previous)


@contextmanager
def problem_lookup(name, problem_class):
    """Let DeepOBS's ``create_testproblem`` find ``name`` for the duration of the call."""
    testproblems = _deepobs.testproblems
    missing = object()
    previous = getattr(testproblems, name, missing)
    setattr(testproblems, name, problem_class)
    try:
        yield
    finally:
        if previous is missing:
            delattr(testproblems, name)
        else:
            setattr(testproblems, name, previous)
