"""``BackpackRunner``: DeepOBS's PyTorch runner with backprop extensions in every step.

The runner is a :class:`deepobs.pytorch.runners.runner.PTRunner`: it prints the same
evaluation lines, aborts on a non-finite loss in the same way and writes the same results
JSON into DeepOBS's output layout (``<output_dir>/<problem>/<optimizer>/<settings>/
random_seed__<seed>__<date>.json``). What it adds:

- the problem is extended (:func:`backobs.extend_problem`) before training, and every
  training backward pass runs inside ``backpack(*extensions)``; the optimizer's ``step()``
  is called while the quantities are on the parameters, so a second-order optimizer can read
  them (e.g. ``p.diag_ggn_mc``);
- a log of the extension outputs for every step, written as JSON lines beside the results
  file while the run goes (``<results file stem>.steps.jsonl``), one line per step::

      {"epoch": 0, "step": 2, "global_step": 2, "loss": 2.30,
       "extensions": {"BatchGrad": {"savefield": "grad_batch", "parameters": {
           "dense.weight": {"shape": [3, 10, 784], "norm": 0.41, "mean": 1e-09,
                            "sample_norms": {"mean": 0.23, "std": 0.05,
                                             "min": 0.18, "max": 0.29}}, ...}}}}

  ``norm`` is the Euclidean norm of the whole quantity and ``mean`` the mean of its entries.
  Per-sample quantities (``grad_batch`` and the ``*_batch`` diagonals) also get the spread of
  their per-sample norms over the mini-batch (``sample_norms``), ``batch_l2`` the spread of
  its values (``sample_values``). Kronecker factors (lists of tensors) get one ``shape``,
  ``norm`` and ``mean`` per factor;
- every ``log_interval`` steps the shapes of the quantities are printed as the original
  BackOBS did (``[backobs] Extension: BatchGrad``, then one ``Parameter 0: Shape (3, 10, 784)``
  line per parameter);
- command-line options for demos and small machines: ``--extensions``, ``--steps_per_epoch``,
  ``--eval_batches``, ``--log_interval``, ``--synthetic_data``, ``--device``, and
  ``--l2_reg`` as another name for DeepOBS 1.1.2's ``--weight_decay``.
"""

import argparse
import json
import math
import os
import sys
import warnings

import torch
from tqdm import tqdm

import backobs
from backobs._deepobs import pytorch as deepobs_pytorch
from backobs._deepobs import runners, testproblems
from backpack_core import backpack
from backpack_core import extensions as extensions_module

__all__ = ["BackpackRunner", "EXTENSION_NAMES", "summarize_quantity"]

EXTENSION_NAMES = tuple(name for name in extensions_module.__all__ if name != "BackpropExtension")
"""The extensions that ``--extensions`` accepts, by class name."""

# Training parameters that change the numbers in the results file and therefore belong
# in the name of DeepOBS's settings folder (the others only change what is logged).
_RESULT_CHANGING_OPTIONS = ("steps_per_epoch", "eval_batches", "synthetic_data")


class BackpackRunner(runners.PTRunner):
    """DeepOBS's PyTorch runner, training with backprop extensions active.

    Use it as DeepOBS's ``StandardRunner``: ``runner.run()`` reads the problem name and the
    settings from the command line (or takes them as arguments) and returns the results
    dictionary that it also writes to the output directory.

    Example:
        >>> from torch.optim import SGD
        >>> runner = BackpackRunner(SGD, {"lr": {"type": float}})
        >>> runner.run(testproblem="mnist_logreg", hyperparams={"lr": 0.1},
        ...            batch_size=32, num_epochs=1, steps_per_epoch=10)

    Args:
        optimizer_class: A ``torch.optim.Optimizer`` subclass. Its ``step()`` runs while the
            extension quantities are on the parameters.
        hyperparameter_names: DeepOBS's description of the optimizer's hyperparameters,
            ``{name: {"type": type, "default": value}}``; each becomes a ``--name`` option.
        extensions: A callable returning a fresh list of extension instances for each step
            (e.g. ``lambda: [DiagGGNMC(mc_samples=1)]``); it fixes the extensions, and the
            command line has no ``--extensions`` option. ``None``: the extensions are chosen
            by name with the ``extensions`` training parameter or ``--extensions`` on the
            command line, ``BatchGrad`` if neither is given.
        cli_defaults: Defaults for command-line options, e.g. ``{"batch_size": 3,
            "num_epochs": 1, "steps_per_epoch": 3}`` for a demo script. If given, the option
            ``--full`` ignores them (and falls back to DeepOBS's defaults).
        progress_bar: Show a tqdm progress bar over the steps of each epoch (only on a
            terminal).
    """

    def __init__(
        self,
        optimizer_class,
        hyperparameter_names,
        extensions=None,
        cli_defaults=None,
        progress_bar=False,
    ):
        super().__init__(optimizer_class, hyperparameter_names)
        self._extensions_factory = extensions
        self._cli_defaults = dict(cli_defaults or {})
        self._progress_bar = progress_bar
        self._eval_batches = None
        self._output_location = None
        self._write_logs = True

    def main(self, **run_kwargs):
        """Run from a script: like :meth:`run`, but configuration errors end the process.

        An unsupported problem, active l2 regularisation, an unknown problem name, an
        unavailable device or missing data ends the process with one line on stderr and exit
        code 2, not a traceback.

        Args:
            **run_kwargs: Passed on to :meth:`run`; what is not given is read from the
                command line.

        Returns:
            dict: The results, as :meth:`run` returns them.
        """
        try:
            return self.run(**run_kwargs)
        except (NotImplementedError, ValueError, backobs.DataUnavailableError) as error:
            message = " ".join(str(error).split())
            print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
            sys.exit(2)

    # Command line --------------------------------------------------------------------

    def _add_training_params_to_argparse(self, parser, args, training_params):
        """Add the runner's options to DeepOBS's parser, unless given to ``run()``."""

        def add(name, *aliases, **kwargs):
            if name in training_params:
                args[name] = training_params[name]
            else:
                parser.add_argument(f"--{name}", *aliases, dest=name, **kwargs)

        if self._extensions_factory is None:
            add(
                "extensions",
                nargs="+",
                choices=EXTENSION_NAMES,
                default=["BatchGrad"],
                metavar="NAME",
                help="Extensions active in every training step (default: BatchGrad). "
                f"One or more of: {', '.join(EXTENSION_NAMES)}.",
            )
        add(
            "steps_per_epoch",
            "--steps-per-epoch",
            type=int,
            default=None,
            help="Stop each epoch after this many steps (default and 0: the whole epoch).",
        )
        add(
            "eval_batches",
            "--eval-batches",
            type=int,
            default=None,
            help="Evaluate on the first N mini-batches of the train-eval, validation and "
            "test sets (default and 0: on all of them, as DeepOBS).",
        )
        add(
            "log_interval",
            "--log-interval",
            type=int,
            default=1,
            help="Print the shapes of the extension quantities every N steps (0: never). "
            "The JSON-lines log keeps every step.",
        )
        add(
            "synthetic_data",
            "--synthetic-data",
            action="store_true",
            default=False,
            help="Train on synthetic stand-ins of the data sets (no download needed).",
        )
        add(
            "device",
            type=str,
            default=None,
            help="Device to train on, e.g. cpu or cuda:0 (default: DeepOBS's choice, cuda "
            "if available).",
        )
        if "weight_decay" not in args:
            parser.add_argument(
                "--l2_reg",
                "-wd",
                dest="weight_decay",
                type=float,
                help="Same as --weight_decay (the name in the original BackOBS and in "
                "DeepOBS's develop branch). BackOBS supports no l2 regularisation: problems "
                "that use it run only with --l2_reg 0.0.",
            )
        if "batch_size" not in args:
            parser.add_argument("-bs", dest="batch_size", type=int, help=argparse.SUPPRESS)

        if self._cli_defaults:
            parser.add_argument(
                "--full",
                action="store_true",
                help="Ignore this script's demo defaults "
                f"({', '.join(f'{k}={v}' for k, v in self._cli_defaults.items())}): "
                "DeepOBS's batch size and number of epochs, whole epochs, full evaluation.",
            )
            # parse_args reads sys.argv; the demo defaults only apply without --full.
            if "--full" not in sys.argv[1:]:
                parser.set_defaults(
                    **{k: v for k, v in self._cli_defaults.items() if k not in args}
                )

    def _add_training_params_to_output_dir_name(self, training_params, run_folder_name):
        """Name only the options that change the results, so logging flags share a folder."""
        relevant = {
            name: value
            for name, value in training_params.items()
            if name in _RESULT_CHANGING_OPTIONS and value
        }
        return super()._add_training_params_to_output_dir_name(relevant, run_folder_name)

    def _post_process_output(self, output, *args, **kwargs):
        """DeepOBS's post-processing, keeping accuracies that are zero only sometimes.

        DeepOBS 1.1.2 drops all accuracies when *any* test accuracy is 0 (meant for problems
        without accuracies, where all are 0); with a few evaluation batches an accuracy of 0
        happens on classification problems too.
        """
        keys = ("train_accuracies", "valid_accuracies", "test_accuracies")
        accuracies = {key: output[key] for key in keys if key in output}
        keep = any(any(values) for values in accuracies.values())
        processed = super()._post_process_output(output, *args, **kwargs)
        if keep:
            processed.update(accuracies)
        return processed

    def generate_output_directory_name(self, *args, **kwargs):
        """DeepOBS's output location; the runner remembers it for the step log."""
        run_directory, file_name = super().generate_output_directory_name(*args, **kwargs)
        self._output_location = (run_directory, file_name)
        return run_directory, file_name

    # Setting up ------------------------------------------------------------------------

    def _run(self, testproblem=None, **args):
        """Configure the process (device, data), then run DeepOBS's ``_run``."""
        args.pop("full", None)
        if not _is_problem(testproblem):
            raise ValueError(
                f"Unknown test problem {testproblem!r}. Known problems: "
                f"{', '.join(sorted(n for n in dir(testproblems) if _is_problem(n)))}."
            )
        device = args.get("device")
        if device is not None:
            _check_device(device)
            deepobs_pytorch.config.set_default_device(device)
        if args.get("synthetic_data"):
            backobs.use_synthetic_data(True)
        self._write_logs = not args.get("no_logs")
        self._output_location = None
        output = super()._run(testproblem=testproblem, **args)
        if self._write_logs and self._output_location is not None:
            run_directory, file_name = self._output_location
            print(f"[backobs] Results: {os.path.join(run_directory, file_name)}.json")
            step_log_path = self._step_log_path()
            if os.path.exists(step_log_path):
                print(f"[backobs] Step log: {step_log_path}")
        return output

    def create_testproblem(self, testproblem, batch_size, weight_decay, random_seed):
        """Create and set up the DeepOBS problem as DeepOBS does, then extend it.

        Args:
            testproblem (str): Name of the DeepOBS problem, e.g. ``"mnist_logreg"``.
            batch_size (int): Mini-batch size.
            weight_decay (float or None): l2 factor; ``None`` uses the problem's default.
            random_seed (int): Seed for Python, NumPy and torch.

        Returns:
            The set-up and extended test problem.

        Raises:
            NotImplementedError: If the problem cannot be extended (VAEs, batch
                normalisation, active l2 regularisation).
        """
        tproblem = super().create_testproblem(testproblem, batch_size, weight_decay, random_seed)
        return backobs.extend_problem(tproblem)

    def _make_extensions(self, names):
        if self._extensions_factory is not None:
            return self._extensions_factory
        names = list(names or ["BatchGrad"])
        unknown = [name for name in names if name not in EXTENSION_NAMES]
        if unknown:
            raise ValueError(
                f"Unknown extension(s) {', '.join(unknown)}; choose from "
                f"{', '.join(EXTENSION_NAMES)}."
            )
        classes = [getattr(extensions_module, name) for name in names]
        return lambda: [cls() for cls in classes]

    def _step_log_path(self):
        if not self._write_logs or self._output_location is None:
            return None
        run_directory, file_name = self._output_location
        return os.path.join(run_directory, file_name + ".steps.jsonl")

    # Training --------------------------------------------------------------------------

    def training(
        self,
        tproblem,
        hyperparams,
        num_epochs,
        print_train_iter,
        train_log_interval,
        tb_log,
        tb_log_dir,
        extensions=None,
        steps_per_epoch=None,
        eval_batches=None,
        log_interval=1,
        **unused_training_params,
    ):
        """Train with the extensions active in every backward pass; log them for every step.

        Args:
            tproblem: The extended DeepOBS test problem.
            hyperparams (dict): Keyword arguments of the optimizer.
            num_epochs (int): Number of epochs; the problem is evaluated before the first
                and after every epoch.
            print_train_iter (bool): Print the mini-batch loss every ``train_log_interval``
                steps (DeepOBS's ``Epoch 0, step 0: loss ...`` lines).
            train_log_interval (int): Steps between the mini-batch losses kept in the
                results (``minibatch_train_losses``).
            tb_log (bool): Log the mini-batch loss to TensorBoard.
            tb_log_dir (str): TensorBoard directory.
            extensions (list[str], optional): Extension names, if the runner was created
                without an extensions factory.
            steps_per_epoch (int, optional): Stop each epoch after this many steps.
            eval_batches (int, optional): Evaluate on this many mini-batches per set.
            log_interval (int): Print the extension shapes every this many steps (0: never).
            **unused_training_params: Options used before training (``device``,
                ``synthetic_data``); recorded in the results.

        Returns:
            dict: DeepOBS's metrics: ``train_losses``, ``valid_losses``, ``test_losses``,
            ``minibatch_train_losses``, ``train_accuracies``, ``valid_accuracies``,
            ``test_accuracies``.
        """
        make_extensions = self._make_extensions(extensions)
        optimizer = self._optimizer_class(tproblem.net.parameters(), **hyperparams)
        self._eval_batches = eval_batches or None
        metrics = {
            key: []
            for key in (
                "train_losses",
                "valid_losses",
                "test_losses",
                "minibatch_train_losses",
                "train_accuracies",
                "valid_accuracies",
                "test_accuracies",
            )
        }
        self._announce_caps(steps_per_epoch, eval_batches)
        step_log = _StepLog(self._step_log_path(), log_interval, tproblem.net)
        summary_writer = _open_summary_writer(tb_log_dir) if tb_log else None
        global_step = 0
        try:
            for epoch_count in range(num_epochs + 1):
                self.evaluate_all(
                    epoch_count,
                    num_epochs,
                    tproblem,
                    metrics["train_losses"],
                    metrics["valid_losses"],
                    metrics["test_losses"],
                    metrics["train_accuracies"],
                    metrics["valid_accuracies"],
                    metrics["test_accuracies"],
                )
                if epoch_count == num_epochs:
                    break

                tproblem.train_init_op()
                progress = tqdm(
                    total=_steps_in_epoch(tproblem, steps_per_epoch),
                    desc=f"Epoch {epoch_count + 1}/{num_epochs}",
                    unit="step",
                    leave=False,
                    disable=None if self._progress_bar else True,
                )
                finite = True
                step = 0
                while finite and not (steps_per_epoch and step >= steps_per_epoch):
                    optimizer.zero_grad()
                    try:
                        batch_loss, _ = tproblem.get_batch_loss_and_accuracy()
                    except StopIteration:
                        break
                    loss = batch_loss.item()
                    finite = math.isfinite(loss)
                    if step % train_log_interval == 0:
                        metrics["minibatch_train_losses"].append(loss)
                        if print_train_iter:
                            tqdm.write(f"Epoch {epoch_count:d}, step {step:d}: loss {loss:g}")
                        if summary_writer is not None:
                            summary_writer.add_scalar("loss", loss, global_step)
                    if finite:
                        # DeepOBS checks the loss after the epoch; stopping at the first
                        # non-finite loss saves the rest of a wasted epoch and keeps NaNs
                        # away from the extensions and from a second-order step.
                        extensions = make_extensions()
                        with backpack(*extensions):
                            batch_loss.backward()
                        step_log.record(epoch_count, step, global_step, loss, extensions)
                        optimizer.step()
                    progress.update()
                    progress.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    step += 1
                    global_step += 1
                progress.close()

                if not finite:
                    self._abort_routine(
                        epoch_count,
                        num_epochs,
                        metrics["train_losses"],
                        metrics["valid_losses"],
                        metrics["test_losses"],
                        metrics["train_accuracies"],
                        metrics["valid_accuracies"],
                        metrics["test_accuracies"],
                        metrics["minibatch_train_losses"],
                    )
                    break
        finally:
            step_log.close()
            if summary_writer is not None:
                summary_writer.close()
        return metrics

    def _announce_caps(self, steps_per_epoch, eval_batches):
        if steps_per_epoch:
            print(
                f"[backobs] Each epoch stops after {steps_per_epoch} steps "
                "(--steps_per_epoch; 0 trains on whole epochs)."
            )
        if eval_batches:
            print(
                f"[backobs] Evaluating on the first {eval_batches} mini-batches of each set "
                "(--eval_batches; 0 evaluates on all, as DeepOBS)."
            )

    def evaluate(self, tproblem, phase):
        """Evaluate the problem on one set and print DeepOBS's line, e.g. ``TRAIN: loss ...``.

        As DeepOBS's ``evaluate``, except that at most ``eval_batches`` mini-batches are
        used when the run was given that option.

        Args:
            tproblem: The test problem.
            phase (str): ``"TRAIN"``, ``"VALID"`` or ``"TEST"``.

        Returns:
            tuple[float, float]: The mean loss and accuracy over the evaluated mini-batches.
        """
        init_ops = {
            "TRAIN": tproblem.train_eval_init_op,
            "VALID": tproblem.valid_init_op,
            "TEST": tproblem.test_init_op,
        }
        init_ops[phase]()
        loss_sum, accuracy_sum, batches = 0.0, 0.0, 0
        while self._eval_batches is None or batches < self._eval_batches:
            try:
                batch_loss, batch_accuracy = tproblem.get_batch_loss_and_accuracy()
            except StopIteration:
                break
            loss_sum += batch_loss.item()
            accuracy_sum += batch_accuracy
            batches += 1
        loss, accuracy = loss_sum / max(batches, 1), accuracy_sum / max(batches, 1)
        if accuracy != 0.0:
            print(f"{phase}: loss {loss:g}, acc {accuracy:f}")
        else:
            print(f"{phase}: loss {loss:g}")
        return loss, accuracy


def summarize_quantity(savefield, value):
    """Summarise one extension quantity of one parameter for the step log.

    Args:
        savefield (str): The attribute the extension writes, e.g. ``"grad_batch"``.
        value (torch.Tensor or list[torch.Tensor]): The quantity; a list for Kronecker
            factors.

    Returns:
        dict: ``shape``, ``norm`` (Euclidean norm of all entries) and ``mean``; per-factor
        lists of these for Kronecker factors; for per-sample quantities ``[N, ...]`` also
        ``sample_norms`` (mean, std, min, max of the N per-sample norms), for ``batch_l2``
        ``sample_values`` (the same statistics of its N values).
    """
    if isinstance(value, (list, tuple)):
        summaries = [summarize_quantity(savefield, factor) for factor in value]
        return {key: [summary[key] for summary in summaries] for key in ("shape", "norm", "mean")}
    value = value.detach()
    entries = value.float()
    summary = {
        "shape": list(value.shape),
        "norm": torch.linalg.vector_norm(entries).item(),
        "mean": entries.mean().item(),
    }
    if savefield == "batch_l2":
        summary["sample_values"] = _spread(entries)
    elif savefield == "grad_batch" or savefield.endswith("_batch"):
        summary["sample_norms"] = _spread(torch.linalg.vector_norm(entries.flatten(1), dim=1))
    return summary


def _spread(samples):
    """Mean, (population) standard deviation, minimum and maximum of a 1d tensor."""
    mean, std, low, high = torch.stack(
        [samples.mean(), samples.std(unbiased=False), samples.min(), samples.max()]
    ).tolist()
    return {"mean": mean, "std": std, "min": low, "max": high}


class _StepLog:
    """Prints the quantities' shapes every ``interval`` steps, writes summaries every step."""

    def __init__(self, path, interval, net):
        self._interval = interval
        self._named_parameters = list(net.named_parameters())
        self._path = path
        self._file = None

    def record(self, epoch, step, global_step, loss, extensions):
        verbose = self._interval and global_step % self._interval == 0
        if not (verbose or self._path):
            return
        entry = {"epoch": epoch, "step": step, "global_step": global_step, "loss": loss}
        entry["extensions"] = {}
        for extension in extensions:
            name = _unique_key(type(extension).__name__, entry["extensions"])
            values = [getattr(p, extension.savefield, None) for _, p in self._named_parameters]
            if verbose:
                _print_shapes(name, values)
            if self._path:
                entry["extensions"][name] = {
                    "savefield": extension.savefield,
                    "parameters": {
                        param_name: None
                        if value is None
                        else summarize_quantity(extension.savefield, value)
                        for (param_name, _), value in zip(self._named_parameters, values)
                    },
                }
        if self._path:
            if self._file is None:
                os.makedirs(os.path.dirname(self._path), exist_ok=True)
                self._file = open(self._path, "a", encoding="utf-8")
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()

    def close(self):
        if self._file:
            self._file.close()
            self._file = None


def _print_shapes(name, values):
    lines = [f"[backobs] Extension: {name}"]
    for index, value in enumerate(values):
        if value is None:
            lines.append(f"  Parameter {index}: missing")
        elif isinstance(value, (list, tuple)):
            lines.append(f"  Parameter {index}: Shapes {[tuple(f.shape) for f in value]}")
        else:
            lines.append(f"  Parameter {index}: Shape {tuple(value.shape)}")
    tqdm.write("\n".join(lines))


def _unique_key(name, taken):
    key, copy = name, 1
    while key in taken:
        copy += 1
        key = f"{name}#{copy}"
    return key


def _steps_in_epoch(tproblem, steps_per_epoch):
    try:
        steps = len(tproblem.data._train_dataloader)
    except (AttributeError, TypeError):
        steps = None
    if steps_per_epoch:
        return steps_per_epoch if steps is None else min(steps, steps_per_epoch)
    return steps


def _open_summary_writer(log_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        warnings.warn(f"TensorBoard logging is off: {error}", RuntimeWarning, stacklevel=3)
        return None
    return SummaryWriter(log_dir=log_dir)


def _check_device(device):
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device!r} is not a torch device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu.")


def _is_problem(name):
    problem = getattr(testproblems, name, None)
    return isinstance(problem, type) and hasattr(problem, "set_up") and name[0].islower()
