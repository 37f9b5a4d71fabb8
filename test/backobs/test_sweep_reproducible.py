"""A run's numbers depend only on its settings, not on what its process ran before.

A sweep worker runs many runs in one process. DeepOBS 1.1.2's quadratic_deep draws its
Hessian's rotation from a module-level ``RandomState(42)``, so without care every later
instance in a process is another problem.
"""

import subprocess
import sys
import textwrap

import numpy as np
import torch

import backobs
from backobs import _deepobs


def _first_instance_hessian_of_a_fresh_process(tmp_path):
    """DeepOBS's own quadratic_deep, set up first in a new interpreter: the intended Hessian."""
    target = tmp_path / "hessian.npy"
    code = f"""
        import numpy as np
        from backobs import _deepobs
        tproblem = _deepobs.testproblems.quadratic_deep(4)
        tproblem.set_up()
        np.save({str(target)!r}, tproblem.net.Hessian.cpu().numpy())
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True)
    return torch.from_numpy(np.load(target))


def test_quadratic_deep_instances_share_the_first_instance_hessian(tmp_path):
    reference = _first_instance_hessian_of_a_fresh_process(tmp_path)
    problem_class = backobs.get_problem_class("quadratic_deep")
    # DeepOBS's own class advances the module-level generator in this process ...
    drifted = _deepobs.testproblems.quadratic_deep(4)
    drifted.set_up()
    drifted.set_up()
    assert not torch.equal(drifted.net.Hessian.cpu(), reference)
    # ... BackOBS's instances do not depend on it.
    hessians = []
    for _ in range(2):
        tproblem = problem_class(4)
        tproblem.set_up()
        hessians.append(tproblem.net.Hessian.cpu())
    assert torch.equal(hessians[0], reference)
    assert torch.equal(hessians[1], reference)


def test_quadratic_deep_leaves_deepobs_generator_alone():
    module = sys.modules[_deepobs.testproblems.quadratic_deep.__module__]
    before = module.rng.get_state()[1].copy(), module.rng.get_state()[2]
    backobs.get_problem_class("quadratic_deep")(4).set_up()
    after = module.rng.get_state()[1], module.rng.get_state()[2]
    assert np.array_equal(before[0], after[0]) and before[1] == after[1]
