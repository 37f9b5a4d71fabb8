"""``BackpackRunner``: DeepOBS's PyTorch runner with backprop extensions in every step.

The runner is a :class:`deepobs.pytorch.runners.runner.PTRunner`: it prints the same
evaluation lines, stops on a non-finite loss as DeepOBS does and writes the same results
JSON into DeepOBS's output layout (``<output_dir>/<problem>/<optimizer>/<settings>/
random_seed__<seed>__<date>.json``). What it adds:

- the problem is extended (:func:`backobs.extend_problem`) before training, and every
  training backward pass runs inside ``backpack(*extensions)``; the optimizer's ``step()``
  runs while the quantities are on the parameters, so a second-order optimizer can read them;
- a log of the extension outputs for every step (or every n-th) beside the results file
  (``<results file stem>.steps.jsonl``, :mod:`backobs.runs.steplog`), free space checked first;
- extra keys in the results: ``status`` (``"finished"``, ``"interrupted"``, ``"diverged"``),
  ``diverged_at_step``, ``diverged_quantity`` and ``diverged_reason`` (what was not finite,
  and why), ``epoch_seconds`` (wall-clock seconds of each epoch's training steps),
  ``synthetic_data``, ``data_loader`` (the data path that served the run: ``"tensor"`` or
  ``"deepobs"``), ``data_loader_fallback`` (why the tensor path was not used, or null) and
  ``data_cached`` (whether the tensor path found the data decoded by an earlier run in the
  process, e.g. in a sweep worker; null on DeepOBS's loaders).
  Results are strict JSON (a non-finite number is ``null``) and written atomically;
- Ctrl-C ends the run with the completed epochs written (``status: "interrupted"``), then
  re-raises :class:`KeyboardInterrupt` (:meth:`BackpackRunner.main` turns it into exit
  code 130);
- its options (:mod:`backobs.runs.options`) are checked before any work.
"""

import os
import sys
import warnings

import backobs
from backobs.adapter import data as data_sources
from backobs.adapter import deepobs as _deepobs
from backobs.adapter import tensor_data
from backobs.runs import options, steplog
from backobs.runs.process_state import deepobs_private_python_random, problem_lookup, scoped
from backobs.runs.steplog import ResultsWriteError, StepLog, write_json_atomically
from backobs.runs.training import METRICS, TrainingLoop, initial_state
from backpack_core import extensions as extensions_module

__all__ = ["BackpackRunner", "EXTENSION_NAMES", "ResultsWriteError"]

EXTENSION_NAMES = options.EXTENSION_NAMES

# Training parameters that change the numbers in the results file and therefore belong
# in the name of DeepOBS's settings folder (the others only change what is logged).
_RESULT_CHANGING_OPTIONS = ("steps_per_epoch", "eval_batches", "synthetic_data")


class BackpackRunner(_deepobs.runners.PTRunner):
    """DeepOBS's PyTorch runner, training with backprop extensions active.

    ``runner.run()`` without a problem reads the problem and the settings from the command
    line, as DeepOBS's ``StandardRunner`` does; with a problem it takes them as arguments (and
    defaults for what is not given) without reading the command line.

    Example:
        >>> from torch.optim import SGD
        >>> runner = BackpackRunner(SGD, {"lr": {"type": float}})
        >>> runner.run(testproblem="mnist_logreg", hyperparams={"lr": 0.1},
        ...            batch_size=32, num_epochs=1, steps_per_epoch=10)

    Args:
        optimizer_class: A ``torch.optim.Optimizer`` subclass, or any callable
            ``(params, **hyperparams) -> optimizer``. Its ``step()`` runs while the extension
            quantities are on the parameters.
        hyperparameter_names: DeepOBS's description of the optimizer's hyperparameters,
            ``{name: {"type": type, "default": value}}``; each becomes a ``--name`` option.
        make_extensions: A callable returning a fresh list of extension instances for each
            step (e.g. ``lambda: [DiagGGNMC(mc_samples=1)]``), always active; the extensions
            named by the ``extensions`` argument of :meth:`run` (``--extensions``) are active
            besides. Without it and without names, ``BatchGrad`` is active.
        cli_defaults: Defaults for command-line options of a demo script, e.g.
            ``{"batch_size": 3, "num_epochs": 1, "steps_per_epoch": 3}``; ``--full`` drops them.
        progress_bar: Show a progress bar over the steps of each epoch (on a terminal only).
        optimizer_name: The optimizer's folder and ``optimizer_name`` in the results
            (default: the class name, as DeepOBS).
    """

    def __init__(
        self,
        optimizer_class,
        hyperparameter_names,
        make_extensions=None,
        cli_defaults=None,
        progress_bar=False,
        optimizer_name=None,
    ):
        super().__init__(optimizer_class, hyperparameter_names)
        if optimizer_name is not None:
            self._optimizer_name = optimizer_name
        self._make_extensions_always = make_extensions
        self._cli_defaults = dict(cli_defaults or {})
        self._progress_bar = progress_bar
        self._eval_batches = None
        self._state = None
        self._data_path = {}
        self._last_step_log = None
        self.last_results_path = None

    # Entry points ----------------------------------------------------------------------

    def main(self, argv=None, prog=None):
        """Run from a script: parse ``argv``, run, and end the process on errors.

        A bad option, an unsupported problem or missing data ends the process with one line
        on stderr and exit code 2; Ctrl-C with exit code 130 after the completed epochs were
        written. Neither prints a traceback.

        Args:
            argv (list[str], optional): The arguments (default: ``sys.argv[1:]``).
            prog (str, optional): The program name in messages (default: the script's).

        Returns:
            dict: The results, as :meth:`run` returns them.
        """
        prog = prog or os.path.basename(sys.argv[0])
        arguments = self.parse_command_line(argv, prog=prog)
        try:
            return self.run(**arguments)
        except (options.OptionError, NotImplementedError, backobs.DataUnavailableError) as error:
            message = " ".join(str(error).split())
            print(f"{prog}: error: {message}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            sys.exit(130)

    def parse_command_line(self, argv=None, prog=None):
        """Parse a run's command line (see :mod:`backobs.runs.options`).

        Args:
            argv (list[str], optional): The arguments (default: ``sys.argv[1:]``).
            prog (str, optional): The program name in messages.

        Returns:
            dict: Keyword arguments for :meth:`run`.
        """
        parser = options.OneLineParser(
            prog=prog or os.path.basename(sys.argv[0]),
            description="Train an optimizer on a DeepOBS problem with backprop extensions.",
        )
        options.add_run_arguments(
            parser,
            self._hyperparameter_names,
            demo_defaults=self._cli_defaults,
            default_extension=None if self._make_extensions_always else "BatchGrad",
        )
        namespace = parser.parse_args(sys.argv[1:] if argv is None else argv)
        return options.run_arguments(namespace, self._hyperparameter_names)

    def run(
        self,
        testproblem=None,
        hyperparams=None,
        batch_size=None,
        num_epochs=None,
        random_seed=42,
        data_dir=None,
        output_dir="./results",
        weight_decay=None,
        no_logs=False,
        train_log_interval=10,
        print_train_iter=False,
        tb_log=False,
        tb_log_dir="none",
        skip_if_exists=False,
        **training_params,
    ):
        """Train and write the results; see DeepOBS's ``Runner.run`` for the arguments.

        ``training_params`` are BackOBS's: ``extensions`` (list of names), ``steps_per_epoch``,
        ``eval_batches``, ``log_interval``, ``step_log_interval``, ``synthetic_data``, ``device``,
        ``data_loader`` (``"tensor"``, the default, or ``"deepobs"``). Without ``testproblem``
        everything is read from the command line.

        Returns:
            dict: The results, as written to the results file; ``None`` if skipped.

        Raises:
            backobs.runs.options.OptionError: A setting is invalid (checked before any work).
            KeyboardInterrupt: After an interrupted run's results were written.
        """
        if testproblem is None:
            return self.run(**self.parse_command_line())
        arguments = dict(
            testproblem=testproblem,
            hyperparams=dict(hyperparams or {}),
            batch_size=batch_size,
            num_epochs=num_epochs,
            random_seed=random_seed,
            data_dir=data_dir,
            output_dir=output_dir,
            weight_decay=weight_decay,
            no_logs=no_logs,
            train_log_interval=train_log_interval,
            print_train_iter=print_train_iter,
            tb_log=tb_log,
            tb_log_dir=tb_log_dir,
            **training_params,
        )
        self._check(arguments)
        if skip_if_exists and not no_logs:
            exists, matches = self._run_exists(**arguments)
            if exists:
                print(f"[backobs] Found results {matches[0]}: skipping the run.")
                return None
        return self._run(**arguments)

    def _check(self, arguments):
        missing = [
            name
            for name, specification in self._hyperparameter_names.items()
            if name not in arguments["hyperparams"] and "default" not in specification
        ]
        if missing:
            raise options.OptionError(f"the hyperparameter --{missing[0]} is required")
        unknown = set(arguments["hyperparams"]) - set(self._hyperparameter_names)
        if unknown:
            raise options.OptionError(
                f"unknown hyperparameter(s) {', '.join(sorted(unknown))} for "
                f"{self._optimizer_name}; it takes: {', '.join(self._hyperparameter_names)}"
            )
        for name, specification in self._hyperparameter_names.items():
            if name not in arguments["hyperparams"]:
                arguments["hyperparams"][name] = specification["default"]
        options.check_run_arguments(arguments)

    # DeepOBS's hooks ---------------------------------------------------------------------

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

    @staticmethod
    def write_output(output, run_folder_name, file_name):
        """Write the results as strict JSON, atomically (temporary file, then rename)."""
        write_json_atomically(os.path.join(run_folder_name, file_name + ".json"), output)

    def create_testproblem(self, testproblem, batch_size, weight_decay, random_seed):
        """Create and set up the problem as DeepOBS does (seeds included), then extend it.

        The problem class comes from :func:`backobs.get_problem_class`, so the 8 problems
        that DeepOBS 1.1.2 lacks need no registration with DeepOBS.

        Returns:
            The set-up and extended test problem.
        """
        problem_class = backobs.get_problem_class(testproblem)
        with problem_lookup(testproblem, problem_class):
            tproblem = super().create_testproblem(
                testproblem, batch_size, weight_decay, random_seed
            )
        if self._data_path["data_loader"] == "tensor":
            fallback = tensor_data.attach(tproblem)
            self._data_path = {
                "data_loader": "deepobs" if fallback else "tensor",
                "data_loader_fallback": fallback,
                "data_cached": tensor_data.from_cache(tproblem),
            }
        return backobs.extend_problem(tproblem)

    # One run ---------------------------------------------------------------------------

    def _run(self, testproblem=None, **arguments):
        """Set the process up for the run (device, data), train, write; restore afterwards."""
        device = arguments.pop("device", None)
        synthetic = bool(arguments.get("synthetic_data")) or data_sources.synthetic_data_enabled()
        arguments["synthetic_data"] = synthetic
        arguments["data_loader"] = arguments.get("data_loader") or "tensor"
        self._data_path = {
            "data_loader": arguments["data_loader"],
            "data_loader_fallback": None,
            "data_cached": None,
        }
        self._state = initial_state()
        self.last_results_path = None
        with (
            scoped(
                _deepobs.pytorch.config.get_default_device,
                _deepobs.pytorch.config.set_default_device,
                device,
            ),
            scoped(
                _deepobs.config.get_data_dir,
                _deepobs.config.set_data_dir,
                arguments.get("data_dir"),
            ),
            data_sources.data_source(synthetic),
            deepobs_private_python_random(),
        ):
            return self._train_and_write(testproblem, **arguments)

    def _train_and_write(
        self,
        testproblem,
        hyperparams,
        batch_size,
        num_epochs,
        random_seed,
        data_dir,
        output_dir,
        weight_decay,
        no_logs,
        train_log_interval,
        print_train_iter,
        tb_log,
        tb_log_dir,
        **training_params,
    ):
        batch_size = self._use_default_batch_size_if_missing(testproblem, batch_size)
        num_epochs = self._use_default_num_epochs_if_missing(testproblem, num_epochs)
        run_directory, file_name = self.generate_output_directory_name(
            testproblem,
            batch_size,
            num_epochs,
            weight_decay,
            random_seed,
            output_dir,
            hyperparams,
            **training_params,
        )
        results_path = os.path.join(run_directory, file_name + ".json")
        step_log_path = None if no_logs else results_path[: -len(".json")] + ".steps.jsonl"
        if tb_log and tb_log_dir == "none":
            tb_log_dir = run_directory
        tproblem = self.create_testproblem(testproblem, batch_size, weight_decay, random_seed)
        if not no_logs:
            os.makedirs(run_directory, exist_ok=True)
        metrics = self.training(
            tproblem,
            dict(hyperparams),
            num_epochs,
            print_train_iter,
            train_log_interval,
            tb_log,
            tb_log_dir,
            step_log_path=step_log_path,
            **training_params,
        )
        output = self._post_process_output(
            metrics,
            testproblem,
            batch_size,
            num_epochs,
            random_seed,
            weight_decay,
            dict(hyperparams),
            **training_params,
        )
        output.update(self._state)
        output.update(self._data_path)
        output["synthetic_data"] = bool(training_params.get("synthetic_data"))
        step_log = self._last_step_log
        if step_log is not None and step_log.path is not None:
            output["step_log"] = os.path.basename(step_log.path) if step_log.written else None
            output["step_log_error"] = step_log.error
        if not no_logs:
            try:
                self.write_output(output, run_directory, file_name)
            except OSError as error:
                raise ResultsWriteError(results_path, error) from None
            self.last_results_path = results_path
            print(f"[backobs] Results: {results_path}")
            if step_log_path and self._last_step_log.written:
                print(f"[backobs] Step log: {step_log_path}")
        if self._state["status"] == "interrupted":
            raise KeyboardInterrupt
        return output

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
        log_interval=None,
        step_log_interval=None,
        step_log_path=None,
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
            extensions (list[str], optional): Extension names, active besides those of the
                runner's ``extensions`` factory.
            steps_per_epoch (int, optional): Stop each epoch after this many steps.
            eval_batches (int, optional): Evaluate on this many mini-batches per set.
            log_interval (int, optional): Print the extension shapes every this many steps
                (0: never; ``None``: every step in short runs, else never).
            step_log_interval (int, optional): Write every this many steps to the step log.
            step_log_path (str, optional): Where to write the step log (free space checked).
            **unused_training_params: Options used before training (``synthetic_data``);
                recorded in the results.

        Returns:
            dict: DeepOBS's metrics. If interrupted, the lists hold the completed epochs.
        """
        optimizer = self._optimizer_class(tproblem.net.parameters(), **hyperparams)
        self._eval_batches = eval_batches or None
        steps_in_epoch = _steps_in_epoch(tproblem, steps_per_epoch)
        total = None if steps_in_epoch is None else steps_in_epoch * num_epochs
        if log_interval is None:
            log_interval = 1 if total is not None and total <= options.SHORT_RUN_STEPS else 0
        self._announce_caps(steps_per_epoch, eval_batches)
        step_log = StepLog(step_log_path, tproblem.net, log_interval, step_log_interval or 1)
        self._last_step_log = step_log
        make_extensions = self._make_extensions(extensions)
        steplog.check_free_space(
            step_log, make_extensions(), tproblem._batch_size, total, num_epochs, train_log_interval
        )
        summary_writer = _open_summary_writer(tb_log_dir) if tb_log else None
        loop = TrainingLoop(
            tproblem,
            optimizer,
            make_extensions,
            step_log,
            evaluate_all=lambda epoch, metrics: self.evaluate_all(
                epoch, num_epochs, tproblem, *(metrics[key] for key in _EVALUATED)
            ),
            abort=lambda epoch, metrics: self._abort_routine(
                epoch, num_epochs, *(metrics[key] for key in _ABORTED)
            ),
            train_log_interval=train_log_interval,
            print_train_iter=print_train_iter,
            summary_writer=summary_writer,
            progress_bar=self._progress_bar,
        )
        try:
            metrics = loop.run(num_epochs, steps_per_epoch, steps_in_epoch)
        finally:
            step_log.close()
            if summary_writer is not None:
                summary_writer.close()
        self._state = loop.state
        return metrics

    def _make_extensions(self, names):
        classes = [getattr(extensions_module, name) for name in names or ()]
        factory = self._make_extensions_always
        if factory is None and not classes:
            classes = [extensions_module.BatchGrad]

        def make():
            fixed = list(factory()) if factory is not None else []
            return fixed + [cls() for cls in classes]

        return make

    def _announce_caps(self, steps_per_epoch, eval_batches):
        if steps_per_epoch:
            print(
                f"[backobs] Each epoch stops after {steps_per_epoch} steps "
                "(--steps-per-epoch; 0 trains on whole epochs)."
            )
        if eval_batches:
            print(
                f"[backobs] Evaluating on the first {eval_batches} mini-batches of each set "
                "(--eval-batches; 0 evaluates on all, as DeepOBS)."
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


# DeepOBS's evaluate_all and _abort_routine take the metric lists in these orders.
_EVALUATED = tuple(key for key in METRICS if key != "minibatch_train_losses")
_ABORTED = (*_EVALUATED, "minibatch_train_losses")


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
