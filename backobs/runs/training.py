"""The training loop of a run: epochs of steps with extensions, divergence and Ctrl-C.

:class:`TrainingLoop` is what :class:`backobs.runs.runner.BackpackRunner` runs between its set-up
and its results file; it knows nothing of command lines or files but the step log.

- every training backward pass runs inside ``backpack(*extensions)`` and the optimizer's
  ``step()`` runs while the quantities are on the parameters;
- at the first non-finite mini-batch loss, or an optimizer refusing a non-finite update
  (an :class:`ArithmeticError`, e.g. :class:`backobs.optim.NonFiniteUpdateError`), the run
  stops (DeepOBS checks only after the epoch) and :attr:`TrainingLoop.state` says where,
  what was not finite (the loss, or which parameter's update) and why;
- Ctrl-C (:class:`KeyboardInterrupt`) ends the loop with the completed epochs kept.
"""

import math
import signal
import threading
import time
from contextlib import nullcontext

from tqdm import tqdm

from backpack_core import backpack, no_records

__all__ = ["TrainingLoop", "METRICS", "initial_state"]

METRICS = (
    "train_losses",
    "valid_losses",
    "test_losses",
    "minibatch_train_losses",
    "train_accuracies",
    "valid_accuracies",
    "test_accuracies",
)
"""DeepOBS's metrics, the lists a run returns."""

_EVALUATIONS = ("train_losses", "valid_losses", "test_losses")


def initial_state():
    """The state of a run before training (the keys a results file gains).

    Returns:
        dict: ``status`` ``"finished"``, ``diverged_at_step``, ``diverged_quantity`` and
        ``diverged_reason`` ``None``, ``epoch_seconds`` ``[]``.
    """
    return {
        "status": "finished",
        "diverged_at_step": None,
        "diverged_quantity": None,
        "diverged_reason": None,
        "epoch_seconds": [],
    }


class _Interrupts:
    """Ctrl-C that is never lost.

    Python ignores an exception raised inside a weak-reference callback or a ``__del__``
    (it prints "Exception ignored in ..."), so a SIGINT that lands there would be swallowed
    and the run would go on to its end. While active (in the main thread, with Python's
    default SIGINT handler in place) this notes every SIGINT, raises
    :class:`KeyboardInterrupt` as the default handler does, and :meth:`check` raises it
    again between steps if it was swallowed.
    """

    def __init__(self):
        self.seen = False
        self._previous = None

    def __enter__(self):
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def check(self):
        """Raise a :class:`KeyboardInterrupt` that arrived but was swallowed."""
        if self.seen:
            raise KeyboardInterrupt

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class TrainingLoop:
    """Epochs of training steps with extensions, as DeepOBS's runners train.

    Args:
        tproblem: The extended DeepOBS test problem.
        optimizer (torch.optim.Optimizer): The optimizer.
        make_extensions (Callable[[], list]): Fresh extension instances for each step.
        step_log (backobs.StepLog): Where each step's quantities are summarised.
        evaluate_all (Callable[[int, dict], None]): Evaluates after an epoch (epoch index,
            metrics to append to), as DeepOBS's ``evaluate_all``.
        abort (Callable[[int, dict], None]): DeepOBS's ``_abort_routine`` for a diverged
            run (epoch index, metrics).
        train_log_interval (int): Keep every this many mini-batch losses.
        print_train_iter (bool): Print those losses.
        summary_writer (optional): A TensorBoard writer for the loss.
        progress_bar (bool): Show a progress bar over each epoch's steps (terminals only).

    Attributes:
        state (dict): ``status`` (``"finished"``, ``"interrupted"``, ``"diverged"``),
            ``diverged_at_step``, ``diverged_quantity`` (what was not finite: ``"loss"``, or
            e.g. ``"update of parameter 3.weight"``), ``diverged_reason`` (the message) and
            ``epoch_seconds`` (training time of each completed epoch).
    """

    def __init__(
        self,
        tproblem,
        optimizer,
        make_extensions,
        step_log,
        evaluate_all,
        abort,
        train_log_interval=10,
        print_train_iter=False,
        summary_writer=None,
        progress_bar=False,
    ):
        self.tproblem = tproblem
        self.optimizer = optimizer
        self.make_extensions = make_extensions
        self.step_log = step_log
        self.evaluate_all = evaluate_all
        self.abort = abort
        self.train_log_interval = train_log_interval
        self.print_train_iter = print_train_iter
        self.summary_writer = summary_writer
        self.progress_bar = progress_bar
        self.state = initial_state()
        self._interrupts = _Interrupts()

    def run(self, num_epochs, steps_per_epoch=None, steps_in_epoch=None):
        """Evaluate, then train and evaluate ``num_epochs`` times.

        Args:
            num_epochs (int): Epochs.
            steps_per_epoch (int, optional): Stop each epoch after this many steps.
            steps_in_epoch (int, optional): Steps an epoch will take (for the progress bar).

        Returns:
            dict: DeepOBS's metrics; after an interrupt the lists hold the completed epochs.
        """
        metrics = {key: [] for key in METRICS}
        self._interrupts = _Interrupts()
        try:
            with self._interrupts:
                self._epochs(metrics, num_epochs, steps_per_epoch, steps_in_epoch)
        except KeyboardInterrupt:
            self.state["status"] = "interrupted"
            complete = min(len(metrics[key]) for key in _EVALUATIONS)
            for key in METRICS:
                if key != "minibatch_train_losses":
                    del metrics[key][complete:]
            # An epoch whose evaluation was cut short is not complete: its time goes too.
            del self.state["epoch_seconds"][max(complete - 1, 0) :]
            print(
                f"[backobs] Interrupted: the results hold the {max(complete - 1, 0)} of "
                f"{num_epochs} epochs completed."
            )
        return metrics

    def _epochs(self, metrics, num_epochs, steps_per_epoch, steps_in_epoch):
        global_step = 0
        for epoch in range(num_epochs + 1):
            self.evaluate_all(epoch, metrics)
            self._interrupts.check()
            if epoch == num_epochs:
                break
            started = time.perf_counter()
            global_step, finite = self._epoch(
                metrics, epoch, num_epochs, global_step, steps_per_epoch, steps_in_epoch
            )
            if not finite:
                self.abort(epoch, metrics)
                break
            self.state["epoch_seconds"].append(time.perf_counter() - started)

    def _epoch(self, metrics, epoch, num_epochs, global_step, steps_per_epoch, steps_in_epoch):
        """Train one epoch; return the global step and whether the loss stayed finite."""
        self.tproblem.train_init_op()
        progress = tqdm(
            total=steps_in_epoch,
            desc=f"Epoch {epoch + 1}/{num_epochs}",
            unit="step",
            leave=False,
            disable=None if self.progress_bar else True,
        )
        step = 0
        try:
            while not (steps_per_epoch and step >= steps_per_epoch):
                self.optimizer.zero_grad()
                extensions = self.make_extensions()
                try:
                    # A step without extensions keeps no records in its forward pass.
                    with nullcontext() if extensions else no_records():
                        batch_loss, _ = self.tproblem.get_batch_loss_and_accuracy()
                except StopIteration:
                    break
                loss = batch_loss.item()
                self._keep_loss(metrics, epoch, step, global_step, loss)
                if not math.isfinite(loss):
                    # Stopping at the first non-finite loss keeps NaNs away from the
                    # extensions and from a second-order step.
                    reason = f"the mini-batch loss is {loss}"
                    self._diverged(global_step, epoch, step, reason, "loss")
                    self.step_log.write(
                        {"epoch": epoch, "step": step, "global_step": global_step,
                         "loss": loss, "extensions": {}}
                    )  # fmt: skip
                    return global_step + 1, False
                with backpack(*extensions):
                    batch_loss.backward()
                self.step_log.record(epoch, step, global_step, loss, extensions)
                try:
                    self.optimizer.step()
                except ArithmeticError as error:  # an optimizer refusing a non-finite update
                    quantity = self._non_finite_quantity(error)
                    self._diverged(global_step, epoch, step, str(error), quantity)
                    return global_step + 1, False
                self._interrupts.check()
                progress.update()
                progress.set_postfix(loss=f"{loss:.4g}", refresh=False)
                step += 1
                global_step += 1
        finally:
            progress.close()
        return global_step, True

    def _keep_loss(self, metrics, epoch, step, global_step, loss):
        if step % self.train_log_interval:
            return
        metrics["minibatch_train_losses"].append(loss)
        if self.print_train_iter:
            tqdm.write(f"Epoch {epoch:d}, step {step:d}: loss {loss:g}")
        if self.summary_writer is not None:
            self.summary_writer.add_scalar("loss", loss, global_step)

    def _non_finite_quantity(self, error):
        """``"update of parameter <name>"`` (or its gradient, curvature) from the error."""
        quantity = getattr(error, "quantity", None) or "update"
        name = getattr(error, "parameter_name", None)
        parameter = getattr(error, "parameter", None)
        if name is None and parameter is not None:
            # The runner builds the optimizer from net.parameters(), without names.
            named = self.tproblem.net.named_parameters()
            name = next((key for key, value in named if value is parameter), None)
        return f"{quantity} of parameter {name}" if name is not None else quantity

    def _diverged(self, global_step, epoch, step, reason, quantity):
        self.state["status"] = "diverged"
        self.state["diverged_at_step"] = global_step
        self.state["diverged_quantity"] = quantity
        self.state["diverged_reason"] = reason
        print(
            f"[backobs] Diverged at step {global_step} (epoch {epoch}, step {step}): "
            f"{reason.rstrip('.')}. "
            "The run stops here, as DeepOBS does; the results mark it as diverged."
        )
