"""A per-step log of extension quantities, usable from any training loop.

:class:`StepLog` summarises what the active extensions wrote on the parameters after each
backward pass and appends one JSON object per step to a JSON-lines file::

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
full disk) drops the log and not the run (:meth:`StepLog.write`).

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
import sys
import uuid

import torch
from tqdm import tqdm

__all__ = ["StepLog", "summarize_quantity", "strict_json", "write_json_atomically"]


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
    """Log of the extension quantities after every training step.

    Args:
        path (str or None): The JSON-lines file to write (``None``: print only). Its folder
            must exist.
        net (torch.nn.Module): The model whose parameters carry the quantities.
        print_interval (int): Print the shapes of the quantities every this many global
            steps, as the original BackOBS did (``[backobs] Extension: BatchGrad`` and one
            ``Parameter 0: Shape (3, 10, 784)`` line per parameter); 0 never prints.
    """

    def __init__(self, path, net, print_interval=0):
        self.path = path
        self._print_interval = print_interval
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
        if not (verbose or self.path):
            return
        entry = {"epoch": epoch, "step": step, "global_step": global_step, "loss": loss}
        entry["extensions"] = {}
        for extension in extensions:
            name = _unique_key(type(extension).__name__, entry["extensions"])
            values = [getattr(p, extension.savefield, None) for _, p in self._named_parameters]
            if verbose:
                _print_shapes(name, values)
            if self.path:
                per_sample = getattr(extension, "per_sample", False)
                entry["extensions"][name] = {
                    "savefield": extension.savefield,
                    "parameters": {
                        param_name: None if value is None else summarize_quantity(value, per_sample)
                        for (param_name, _), value in zip(self._named_parameters, values)
                    },
                }
        if self.path:
            self.write(entry)

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
            "written; for a step log use a larger --log-interval, fewer --extensions, or "
            "another --output_dir",
            file=sys.stderr,
        )


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
