"""A run's numbers depend only on its settings, not on what its process ran before.

A sweep worker runs many runs in one process. DeepOBS 1.1.2's quadratic_deep draws its
Hessian's rotation from a module-level ``RandomState(42)``, so without care every later
instance in a process is another problem.
"""

import json
import random
import subprocess
import sys
import textwrap
import threading

import numpy as np
import torch

import backobs
from backobs import runs
from backobs.adapter import deepobs as _deepobs
from backobs.sweep.execute import _run_on_worker


def _first_instance_hessian_of_a_fresh_process(tmp_path):
    """DeepOBS's own quadratic_deep, set up first in a new interpreter: the intended Hessian."""
    target = tmp_path / "hessian.npy"
    code = f"""
        import numpy as np
        from backobs.adapter import deepobs as _deepobs
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


def _losses(outcome):
    with open(outcome["path"]) as stream:
        results = json.load(stream)
    return results["train_losses"], results["valid_losses"], results["minibatch_train_losses"]


def test_a_run_repeated_in_one_process_gives_the_same_numbers(tmp_path):
    # as in a sweep worker: a run, another run, then the first again (another output folder)
    settings = dict(batch_size=4, num_epochs=1, steps_per_epoch=2, eval_batches=2)
    settings["synthetic_data"] = True

    def run(lr, folder):
        return runs.Run(
            "quadratic_deep", "sgd", {"lr": lr}, output_dir=str(tmp_path / folder), **settings
        )

    first = _losses(runs.execute(run(0.01, "first"), verbose=False))
    runs.execute(run(0.1, "other"), verbose=False)
    again = _losses(runs.execute(run(0.01, "again"), verbose=False))
    assert first == again
    assert all(first)


def test_a_worker_run_ignores_other_threads_drawing_from_pythons_random(tmp_path):
    # A Dask worker's event loop draws from Python's global generator while a run trains
    # (distributed.protocol.compression's random.randint); DeepOBS seeds that generator and
    # splits its data with it. Here a thread draws all the time.
    settings = dict(batch_size=4, num_epochs=1, steps_per_epoch=2, eval_batches=2)

    def run(folder):
        return runs.Run(
            "mnist_logreg",
            "sgd",
            {"lr": 0.1},
            synthetic_data=True,
            output_dir=str(tmp_path / folder),
            **settings,
        )

    alone = _losses(runs.execute(run("alone"), verbose=False))
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            random.randint(0, 1000)

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        record = _run_on_worker(run("busy").to_dict())
    finally:
        stop.set()
        thread.join()
    assert record["status"] == "finished", record["error"]
    assert _losses(record) == alone
