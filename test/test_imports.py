"""The packages import, and BackOBS reaches DeepOBS's PyTorch half without TensorFlow."""

import os
import subprocess
import sys
import textwrap


def _run_isolated(code):
    """Run ``code`` in a fresh interpreter so that earlier imports cannot interfere."""
    environment = {k: v for k, v in os.environ.items() if k != "BACKOBS_SYNTHETIC_DATA"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
    )


def test_backobs_imports_without_tensorflow():
    # A None entry in sys.modules makes every "import tensorflow" fail, as on a machine
    # without it (find_spec answers "not installed" too, which torch itself asks).
    result = _run_isolated(
        """
        import sys
        sys.modules["tensorflow"] = None
        import backobs
        import backpack_core
        from backobs.adapter import deepobs as _deepobs
        assert sys.modules["tensorflow"] is None
        assert hasattr(_deepobs.testproblems, "mnist_logreg")
        assert hasattr(_deepobs.runners, "StandardRunner")
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_backobs_changes_nothing_in_deepobs():
    result = _run_isolated(
        """
        import importlib
        import torchvision
        import backobs
        from backobs.adapter import deepobs as _deepobs
        assert not hasattr(_deepobs.testproblems, "fmnist_logreg")
        for name in ("mnist", "fmnist", "cifar10", "cifar100", "svhn"):
            module = importlib.import_module("deepobs.pytorch.datasets." + name)
            assert module.datasets is torchvision.datasets, name
        backobs.register_problems()
        assert _deepobs.testproblems.fmnist_logreg is backobs.get_problem_class("fmnist_logreg")
        backobs.use_synthetic_data()
        assert importlib.import_module("deepobs.pytorch.datasets.mnist").datasets is not (
            torchvision.datasets
        )
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_deepobs_already_imported_is_reused():
    # As if the user had imported DeepOBS (with TensorFlow) before BackOBS.
    result = _run_isolated(
        """
        import importlib.util, sys, types
        spec = importlib.util.find_spec("deepobs")
        already = types.ModuleType("deepobs")
        already.__path__ = list(spec.submodule_search_locations)
        sys.modules["deepobs"] = already
        from backobs.adapter import deepobs as _deepobs
        assert _deepobs.deepobs is already
        assert _deepobs.pytorch.testproblems.mnist_logreg.__name__ == "mnist_logreg"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
