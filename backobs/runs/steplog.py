"""A per-step log of extension quantities, usable from any training loop.

:class:`StepLog` summarises what the active extensions wrote on the parameters after each
backward pass and appends one JSON object per step (or per n-th step: ``write_interval``) to
a JSON-lines file::

    {"epoch": 0, "step": 2, "global_step": 2, "loss": 2.30,
     "extensions": {"BatchGrad": {"savefield": "grad_batch", "parameters": {
         "dense.weight": {"shape": [3, 10, 784], "norm": 0.41, "mean": 1e-09,
                          "sample_norms": {"mean": 0.23, "std": 0.05,
                                           "min": 0.18, "max": 0.29}}, ...}}}}

``norm`` is the Euclidean norm of the whole quantity and ``mean`` the mean of its entries.
Quantities with one entry per sample (``extension.per_sample``) also get the spread of
their per-sample norms (``sample_norms``), or of their values when they are one number per
sample (``sample_values``, e.g. ``batch_l2``). Kronecker factors (lists of tensors) get one
``shape``, ``norm`` and ``mean`` per factor, in the order ``[B, A]``.

The file is strict JSON: a non-finite number (a diverged run) is written as ``null``. It is
written to ``<path>.<pid>-<random>.part`` while the run goes and renamed to ``path`` when
closed, so a reader never sees a half-written file under the final name. A write error (a
full disk) drops the log and not the run (:meth:`StepLog.write`); before training,
:func:`check_free_space` warns when the output folder has less free space than the log will
need (:meth:`StepLog.estimate_bytes`).

Example:
    >>> log = StepLog("run.steps.jsonl", model, print_interval=0)
    >>> for step, (x, y) in enumerate(loader):
    ...     loss = lossfunc(model(x), y)
    ...     extensions = [BatchGrad(), DiagGGNMC()]
    ...     with backpack(*extensions):
    ...         loss.backward()
    ...     log.record(0, step, step, loss.item(), extensions)
    >>> log.close()
"""

import contextlib
import json
import math
import os
import shutil
import sys
import uuid

import torch
from tqdm import tqdm

from backpack_core.config import format_bytes
from backpack_core.extensions import BatchDotGrad, BatchL2Grad
from backpack_core.extensions.curvature import KroneckerExtension

__all__ = [
    "StepLog",
    "summarize_quantity",
    "strict_json",
    "write_json_atomically",
    "check_free_space",
    "results_file_bytes",
]


def strict_json(value):
    """Replace non-finite floats, at any depth, by ``None`` (JSON ``null``).

    Args:
        value: A structure of dicts, lists, tuples, numbers and strings.

    Returns:
        The same structure with ``nan``, ``inf`` and ``-inf`` replaced by ``None``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


class ResultsWriteError(OSError):
    """The results file of a run cannot be written (a full disk, a lost mount, ...).

    Args:
        path (str): The results file.
        error (OSError): What writing it raised.
    """

    def __init__(self, path, error):
        reason = error.strerror or str(error)
        super().__init__(f"cannot write the results file {path}: {reason}")
        self.path = path


def write_json_atomically(path, value, indent=4):
    """Write ``value`` as strict JSON to ``path`` through a temporary file and a rename.

    Args:
        path (str): The file to write.
        value: The JSON-serialisable content (non-finite floats become ``null``).
        indent (int): Indentation, as :func:`json.dump`.
    """
    temporary = temporary_name(path)
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(strict_json(value), file, indent=indent, allow_nan=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def temporary_name(path):
    """A temporary file name beside ``path``, unique to this process and call.

    ``<path>.<pid>-<random>.part``: two processes that write the same file (two commands on
    one folder) never share a temporary file.
    """
    return f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part"


def summarize_quantity(value, per_sample=False):
    """Summarise one extension quantity of one parameter.

    Args:
        value (torch.Tensor or list[torch.Tensor]): The quantity; a list for Kronecker
            factors.
        per_sample (bool): Whether its first dimension runs over the samples
            (``extension.per_sample``).

    Returns:
        dict: ``shape``, ``norm`` (Euclidean norm of all entries) and ``mean``; per-factor
        lists of these for Kronecker factors; for per-sample quantities ``[N, ...]`` also
        ``sample_norms`` (mean, std, min, max of the N per-sample norms), for per-sample
        numbers ``[N]`` ``sample_values`` (the same statistics of the N values).
    """
    if isinstance(value, (list, tuple)):
        summaries = [summarize_quantity(factor) for factor in value]
        return {key: [summary[key] for summary in summaries] for key in ("shape", "norm", "mean")}
    entries = value.detach().float()
    summary = {
        "shape": list(value.shape),
        "norm": torch.linalg.vector_norm(entries).item(),
        "mean": entries.mean().item(),
    }
    if per_sample and entries.dim() == 1:
        summary["sample_values"] = _spread(entries)
    elif per_sample:
        summary["sample_norms"] = _spread(torch.linalg.vector_norm(entries.flatten(1), dim=1))
    return summary


def _spread(samples):
    """Mean, (population) standard deviation, minimum and maximum of a 1d tensor."""
    mean, std, low, high = torch.stack(
        [samples.mean(), samples.std(unbiased=False), samples.min(), samples.max()]
    ).tolist()
    return {"mean": mean, "std": std, "min": low, "max": high}


class StepLog:
    """Log of the extension quantities after every (or every n-th) training step.

    Args:
        path (str or None): The JSON-lines file to write (``None``: print only). Its folder
            must exist.
        net (torch.nn.Module): The model whose parameters carry the quantities.
        print_interval (int): Print the shapes of the quantities every this many global
            steps, as the original BackOBS did (``[backobs] Extension: BatchGrad`` and one
            ``Parameter 0: Shape (3, 10, 784)`` line per parameter); 0 never prints.
        write_interval (int): Write the global steps 0, n, 2n, ... to the file (default 1:
            every step).
    """

    def __init__(self, path, net, print_interval=0, write_interval=1):
        if isinstance(write_interval, bool) or not isinstance(write_interval, int):
            raise TypeError(f"write_interval must be an integer >= 1, got {write_interval!r}")
        if write_interval < 1:
            raise ValueError(f"write_interval must be an integer >= 1, got {write_interval!r}")
        self.path = path
        self._print_interval = print_interval
        self._write_interval = write_interval
        self._named_parameters = list(net.named_parameters())
        self._file = None
        self._temporary = None
        self.steps = 0
        self.bytes_written = 0
        self.error = None  # why the log was dropped (a write error), else None

    def record(self, epoch, step, global_step, loss, extensions):
        """Summarise the quantities now on the parameters (after ``backward()``).

        Args:
            epoch (int): The epoch, from 0.
            step (int): The step within the epoch, from 0.
            global_step (int): The step counted over all epochs.
            loss (float): The mini-batch loss.
            extensions (list): The extension instances that were active.
        """
        verbose = self._print_interval and global_step % self._print_interval == 0
        if verbose:
            for name, extension in _named(extensions):
                _print_shapes(
                    name, [getattr(p, extension.savefield, None) for _, p in self._named_parameters]
                )
        if self.path is not None and global_step % self._write_interval == 0:
            self.write(self._entry(epoch, step, global_step, loss, extensions, _summarize_on))

    def _entry(self, epoch, step, global_step, loss, extensions, summarize):
        """One line of the log: ``summarize(extension, parameter, per_sample)`` per quantity."""
        entry = {"epoch": epoch, "step": step, "global_step": global_step, "loss": loss}
        entry["extensions"] = {}
        for name, extension in _named(extensions):
            per_sample = getattr(extension, "per_sample", False)
            entry["extensions"][name] = {
                "savefield": extension.savefield,
                "parameters": {
                    param_name: summarize(extension, parameter, per_sample)
                    for param_name, parameter in self._named_parameters
                },
            }
        return entry

    def logged_steps(self, steps):
        """How many of the global steps ``0 .. steps - 1`` the file gets (0 without a path).

        Args:
            steps (int): The training steps of the run.

        Returns:
            int: ``ceil(steps / write_interval)``.
        """
        return 0 if self.path is None else -(-steps // self._write_interval)

    def bytes_per_step(self, extensions, batch_size):
        """The size of one logged step, known before training.

        The entry is formatted as :meth:`record` formats one, from the parameters' shapes and
        the extensions, with :data:`TYPICAL_NUMBER` for every statistic.

        Args:
            extensions (list): The extension instances that will be active.
            batch_size (int): The mini-batch size (the first dimension of per-sample
                quantities).

        Returns:
            int: Bytes of one line of the log.
        """

        def summarize(extension, parameter, per_sample):
            return summary_skeleton(quantity_shape(extension, parameter, batch_size), per_sample)

        entry = self._entry(0, 0, 0, TYPICAL_NUMBER, extensions, summarize)
        return len(json.dumps(entry, allow_nan=False).encode("utf-8")) + 1

    def estimate_bytes(self, extensions, batch_size, steps):
        """The size the log will have after ``steps`` training steps, in bytes.

        Args:
            extensions (list): The extension instances that will be active.
            batch_size (int): The mini-batch size.
            steps (int): The training steps of the run.

        Returns:
            int: :meth:`bytes_per_step` times :meth:`logged_steps`.
        """
        return self.bytes_per_step(extensions, batch_size) * self.logged_steps(steps)

    def write(self, entry):
        """Append one entry (a dict) to the log as a line of strict JSON.

        A write error (no space, quota, permission, I/O) drops the log, not the run: the
        partial file is removed, one warning line goes to stderr, :attr:`error` says why, and
        later entries are discarded.

        Args:
            entry (dict): The entry; non-finite numbers are written as ``null``.
        """
        if self.error is not None:
            return
        line = json.dumps(strict_json(entry), allow_nan=False) + "\n"
        try:
            if self._file is None:
                self._temporary = temporary_name(self.path)
                self._file = open(self._temporary, "w", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
        except OSError as error:
            self._drop(error)
            return
        self.steps += 1
        self.bytes_written += len(line.encode("utf-8"))

    def close(self):
        """Close the file and move it to its final name (nothing if nothing was written)."""
        if self._file is None:
            return
        try:
            self._file.close()
            self._file = None
            os.replace(self._temporary, self.path)
        except OSError as error:
            self._drop(error)

    @property
    def written(self):
        """bool: The log is complete under its final name."""
        return self.error is None and self.path is not None and os.path.exists(self.path)

    def _drop(self, error):
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                os.remove(self._temporary)
        self.error = f"{type(error).__name__}: {error}"
        per_step = self.bytes_written / self.steps if self.steps else None
        size = f"; each logged step took {per_step / 1024:.1f} KiB" if per_step else ""
        print(
            f"backobs run: warning: step log dropped after {self.steps} logged steps "
            f"({self.error}; {self.path}){size}: training goes on and the results file is "
            f"written; {WAYS_OUT}",
            file=sys.stderr,
        )


WAYS_OUT = (
    "for a smaller step log use a larger --step-log-interval, fewer --extensions, or another "
    "--output_dir"
)
"""What the warnings of a full (or too small) disk advise."""

TYPICAL_NUMBER = 0.24816232919692993
"""A statistic as the log writes one: a float32 value, 19 characters as JSON. Real numbers take
17 to 23 (``-4.341825842857361e-05``); with this one the estimates of real logs (mnist_logreg
with BatchGrad, mnist_2c2d with six extensions) came within 3% of the files."""


def quantity_shape(extension, parameter, batch_size):
    """The shape of the quantity that ``extension`` writes on ``parameter``.

    Args:
        extension: The extension instance.
        parameter (torch.Tensor): The parameter.
        batch_size (int): The mini-batch size ``N``.

    Returns:
        list: ``[N]`` (``batch_l2``), ``[N, N]`` (``batch_dot``), ``[N, *p.shape]``
        (per-sample quantities), ``p.shape`` (the others); for Kronecker factors a list of
        factor shapes, ``[[B, B], [A, A]]`` for a weight (``A`` over its inputs, ``C_in * k *
        k`` for a convolution) and ``[[B, B]]`` for a bias.
    """
    shape = list(parameter.shape)
    if isinstance(extension, KroneckerExtension):
        outputs = shape[0] if shape else 1
        if len(shape) <= 1:
            return [[outputs, outputs]]
        inputs = math.prod(shape[1:])
        return [[outputs, outputs], [inputs, inputs]]
    if isinstance(extension, BatchL2Grad):
        return [batch_size]
    if isinstance(extension, BatchDotGrad):
        return [batch_size, batch_size]
    if getattr(extension, "per_sample", False):
        return [batch_size, *shape]
    return shape


def summary_skeleton(shape, per_sample=False, number=TYPICAL_NUMBER):
    """What :func:`summarize_quantity` returns for a quantity of ``shape``, with ``number``.

    Args:
        shape (list): As :func:`quantity_shape` gives it (a list of shapes: Kronecker
            factors).
        per_sample (bool): Whether the first dimension runs over the samples.
        number (float): The value of every statistic.

    Returns:
        dict: The same keys and shapes as :func:`summarize_quantity`'s summary.
    """
    if shape and isinstance(shape[0], list):
        return {"shape": shape, "norm": [number] * len(shape), "mean": [number] * len(shape)}
    summary = {"shape": list(shape), "norm": number, "mean": number}
    spread = {"mean": number, "std": number, "min": number, "max": number}
    if per_sample and len(shape) == 1:
        summary["sample_values"] = spread
    elif per_sample:
        summary["sample_norms"] = spread
    return summary


def results_file_bytes(num_epochs, steps, train_log_interval):
    """A generous estimate of the results file's size, in bytes.

    2 KiB for the settings and keys, and 32 bytes per number (indented JSON: one number per
    line): six metrics per evaluation, a mini-batch loss every ``train_log_interval`` steps,
    one time per epoch.

    Args:
        num_epochs (int): Epochs.
        steps (int): Training steps.
        train_log_interval (int): Steps between the mini-batch losses kept.

    Returns:
        int: Bytes.
    """
    numbers = 6 * (num_epochs + 1) + -(-steps // train_log_interval) + 2 * num_epochs
    return 2048 + 32 * numbers


def check_free_space(step_log, extensions, batch_size, steps, num_epochs, train_log_interval):
    """Before training: warn (one line on stderr) if the step log may not fit on the disk.

    The need is :meth:`StepLog.estimate_bytes` plus :func:`results_file_bytes`; the space is
    :func:`shutil.disk_usage`'s ``free`` of the log's folder. Training goes on either way: a
    log that fills the disk is dropped, not the run.

    Args:
        step_log (StepLog): The run's log (nothing is checked without a path).
        extensions (list): The extension instances that will be active.
        batch_size (int): The mini-batch size.
        steps (int or None): The run's training steps (``None``: unknown, nothing checked).
        num_epochs (int): Epochs.
        train_log_interval (int): Steps between the mini-batch losses in the results.

    Returns:
        tuple[int, int] or None: The bytes needed and free, ``None`` if nothing was checked.
    """
    if step_log.path is None or steps is None:
        return None
    per_step = step_log.bytes_per_step(extensions, batch_size)
    logged = step_log.logged_steps(steps)
    results = results_file_bytes(num_epochs, steps, train_log_interval)
    needed = per_step * logged + results
    folder = os.path.dirname(os.path.abspath(step_log.path))
    free = shutil.disk_usage(folder).free
    if free < needed:
        print(
            f"backobs run: warning: the step log needs about {format_bytes(per_step * logged)} "
            f"({logged} logged steps of {format_bytes(per_step)}) and the results file about "
            f"{format_bytes(results)}, but {folder} has {format_bytes(free)} free: training "
            f"goes on and a full disk drops the step log, not the run; {WAYS_OUT}",
            file=sys.stderr,
        )
    return needed, free


def _summarize_on(extension, parameter, per_sample):
    value = getattr(parameter, extension.savefield, None)
    return None if value is None else summarize_quantity(value, per_sample)


def _named(extensions):
    """``(key, extension)`` pairs; a second instance of a class is keyed ``Name#2``."""
    taken = set()
    for extension in extensions:
        key = _unique_key(type(extension).__name__, taken)
        taken.add(key)
        yield key, extension


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
