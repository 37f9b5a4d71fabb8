"""A run: one optimizer with one setting on one problem and one seed, as data.

Everything above the runner passes runs around: ``backobs run`` executes one, a sweep a list
of them (in worker processes), a report reads what they wrote. A run's results land where
DeepOBS puts them (see :func:`settings_directory`):
``<output_dir>/<problem>/<optimizer>/<settings>/random_seed__<seed>__<date>.json``.

Example:
    >>> run = Run("mnist_logreg", "kfac", {"lr": 0.1, "damping": 0.01}, seed=42,
    ...           num_epochs=2, steps_per_epoch=50, synthetic_data=True)
    >>> outcome = execute(run)
    >>> outcome["status"], outcome["path"]
"""

import dataclasses
import glob
import json
import os
import time
from typing import Optional, Tuple

__all__ = ["Run", "execute", "settings_directory", "existing_result", "make_runner"]

DIVERGED_KEYS = ("diverged_at_step", "diverged_quantity", "diverged_reason")
"""What a results file records about a divergence (``None`` for a run that did not diverge)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """The settings of one training run.

    Attributes:
        problem (str): DeepOBS problem name, e.g. ``"mnist_logreg"``.
        optimizer (str): Name in :data:`backobs.optim.OPTIMIZERS`, e.g. ``"kfac"``, or a
            researcher's class as ``package.module:ClassName`` (imported where it runs).
        hyperparams (dict): The optimizer's hyperparameters, e.g. ``{"lr": 0.1}``; missing
            ones take their defaults.
        seed (int): DeepOBS's random seed.
        batch_size (int, optional): Mini-batch size (default: DeepOBS's for the problem).
        num_epochs (int, optional): Epochs (default: DeepOBS's for the problem).
        steps_per_epoch (int, optional): Stop each epoch after this many steps.
        eval_batches (int, optional): Evaluate on this many mini-batches per set.
        synthetic_data (bool): Train on synthetic stand-ins of the data.
        data_dir (str, optional): DeepOBS's data directory.
        output_dir (str): Root of the results folders.
        extensions (tuple[str, ...]): Extensions to log besides the optimizer's own.
        device (str, optional): Torch device.
        data_loader (str): ``"tensor"`` (BackOBS's tensor data path) or ``"deepobs"``
            (DeepOBS's per-image loaders).
        step_log_interval (int, optional): Write every this many steps to the step log
            (default: every step).
    """

    problem: str
    optimizer: str
    hyperparams: dict
    seed: int = 42
    batch_size: Optional[int] = None
    num_epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    eval_batches: Optional[int] = None
    synthetic_data: bool = False
    data_dir: Optional[str] = None
    output_dir: str = "results"
    extensions: Tuple[str, ...] = ()
    device: Optional[str] = None
    data_loader: str = "tensor"
    step_log_interval: Optional[int] = None

    def to_dict(self):
        """Return the run as a JSON-serialisable dict."""
        values = dataclasses.asdict(self)
        values["extensions"] = list(self.extensions)
        return values

    @classmethod
    def from_dict(cls, values):
        """Build a run from :meth:`to_dict`'s output.

        Args:
            values (dict): The fields.

        Returns:
            Run: The run.
        """
        values = dict(values)
        values["extensions"] = tuple(values.get("extensions") or ())
        return cls(**values)

    def label(self):
        """A short human-readable description, e.g. ``mnist_logreg kfac lr=0.1 seed=42``."""
        settings = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in sorted(self.hyperparams.items()))  # fmt: skip
        return f"{self.problem} {self.optimizer} {settings} seed={self.seed}".replace("  ", " ")


def make_runner(optimizer_name, progress_bar=False):
    """The :class:`~backobs.runs.runner.BackpackRunner` for an optimizer known by name.

    The optimizer's own extensions (e.g. KFAC's factors for ``"kfac"``) are active in every
    step; its results folder is named after it.

    Args:
        optimizer_name (str): A name in :data:`backobs.optim.OPTIMIZERS`, an import path
            ``package.module:ClassName`` or an entry point's name (see
            :func:`backobs.optim.resolve_optimizer`).
        progress_bar (bool): Show a progress bar over the steps of each epoch.

    Returns:
        BackpackRunner: The runner.

    Raises:
        backobs.runs.options.OptionError: For an unknown optimizer name, or a class that
            cannot be imported.
    """
    from backobs import optim
    from backobs.runs import options
    from backobs.runs.runner import BackpackRunner

    try:
        spec = optim.resolve_optimizer(optimizer_name)
    except ValueError as error:
        raise options.OptionError(str(error)) from None
    holder = {}

    def build(params, **hyperparams):
        holder["optimizer"] = spec.build(params, **hyperparams)
        return holder["optimizer"]

    def extensions():
        return optim.required_extensions(holder["optimizer"]) if "optimizer" in holder else []

    return BackpackRunner(
        build,
        spec.hyperparameters,
        make_extensions=extensions,
        progress_bar=progress_bar,
        optimizer_name=spec.folder_name,
    )


def _runner_arguments(run):
    return dict(
        testproblem=run.problem,
        hyperparams=dict(run.hyperparams),
        batch_size=run.batch_size,
        num_epochs=run.num_epochs,
        random_seed=run.seed,
        data_dir=run.data_dir,
        output_dir=run.output_dir,
        # l2 off where a problem has it (BackOBS supports none); None elsewhere, as DeepOBS.
        weight_decay=0.0 if _regularized(run.problem) else None,
        # DeepOBS's logging options, as BackpackRunner.run defaults them
        no_logs=False,
        train_log_interval=10,
        print_train_iter=False,
        tb_log=False,
        tb_log_dir="none",
        extensions=list(run.extensions),
        steps_per_epoch=run.steps_per_epoch,
        eval_batches=run.eval_batches,
        synthetic_data=run.synthetic_data,
        log_interval=0,
        device=run.device,
        data_loader=run.data_loader,
        step_log_interval=run.step_log_interval,
    )


def _regularized(problem):
    from backobs.adapter import problems

    try:
        return (problems.default_l2_factor(problems.get_problem_class(problem)) or 0.0) > 0.0
    except ValueError:  # an unknown problem: the checks name it
        return False


def _checked_arguments(run):
    """The runner and its arguments, validated as ``backobs run`` validates them."""
    from backobs import optim
    from backobs.runs import options

    runner = make_runner(run.optimizer)
    arguments = _runner_arguments(run)
    try:
        arguments["hyperparams"] = optim.check_hyperparameters(run.optimizer, run.hyperparams)
    except ValueError as error:
        raise options.OptionError(str(error)) from None
    runner._check(arguments)
    return runner, arguments


def settings_directory(run):
    """The folder DeepOBS's layout gives the run's results (it may not exist yet).

    Args:
        run (Run): The run.

    Returns:
        str: ``<output_dir>/<problem>/<optimizer>/<settings folder>``.
    """
    from backobs.adapter import deepobs as _deepobs

    runner, arguments = _checked_arguments(run)
    batch_size = (
        arguments["batch_size"]
        or _deepobs.config.get_testproblem_default_setting(run.problem)["batch_size"]
    )
    num_epochs = (
        arguments["num_epochs"]
        or _deepobs.config.get_testproblem_default_setting(run.problem)["num_epochs"]
    )
    training = {
        key: arguments[key]
        for key in ("extensions", "steps_per_epoch", "eval_batches", "synthetic_data")
    }
    directory, _ = runner.generate_output_directory_name(
        run.problem,
        batch_size,
        num_epochs,
        arguments["weight_decay"],
        run.seed,
        run.output_dir,
        arguments["hyperparams"],
        **training,
    )
    return directory


def existing_result(run):
    """The path of a results file this run already wrote, or ``None``.

    A results file counts if it parses as JSON (the runner writes them atomically, so a
    file under the final name is complete); an interrupted run's file does not count.

    Args:
        run (Run): The run.

    Returns:
        str or None: The newest matching results file.
    """
    pattern = os.path.join(settings_directory(run), f"random_seed__{run.seed}__*.json")
    for path in sorted(glob.glob(pattern), reverse=True):
        try:
            with open(path, encoding="utf-8") as file:
                status = json.load(file).get("status", "finished")
        except (OSError, ValueError):
            continue
        if status != "interrupted":
            return path
    return None


def execute(run, verbose=True):
    """Train the run with the runner and write its results.

    Args:
        run (Run): The run.
        verbose (bool): Print DeepOBS's evaluation lines (else they are discarded).

    Returns:
        dict: ``path`` (the results file), ``status`` (``"finished"`` or ``"diverged"``),
        ``seconds`` (wall-clock time of the whole run), and as in the results file
        ``diverged_at_step``, ``diverged_quantity`` and ``diverged_reason`` (``None`` unless
        diverged).

    Raises:
        backobs.runs.options.OptionError: A setting of the run is invalid (before any work).
        KeyboardInterrupt: After an interrupted run's results were written.
    """
    import contextlib
    import io

    runner, arguments = _checked_arguments(run)
    started = time.perf_counter()
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        output = runner._run(**arguments)
    return {
        "path": runner.last_results_path,
        "status": output.get("status", "finished"),
        "seconds": time.perf_counter() - started,
        **{key: output.get(key) for key in DIVERGED_KEYS},
    }
