"""The sweep file: YAML or JSON in, a validated :class:`Sweep` (the grid of runs) out.

Every list is a grid axis and a scalar is fixed; ``problems`` may also be a mapping that gives
a problem grids of its own (``{mnist_2c2d: {optimizers: {kfac: {damping: [0.1, 1, 10]}}}}``:
the hyperparameters it names replace the file's lists for that problem, the others and the
set of optimizers stay the file's). :func:`load_sweep` checks all of it before
anything runs and raises one :class:`~backobs.checks.OptionError` naming the file, the key and
what it accepts. :meth:`Sweep.runs` expands the grid into :class:`backobs.runs.Run` objects.

Importing this module loads no torch: the optimizer registry and the problems (which do) are
imported when a sweep is checked.
"""

import itertools
import json
import math
import os
from dataclasses import dataclass

import yaml

from backobs import checks, runs
from backobs.checks import OptionError

__all__ = ["Sweep", "SPEC_KEYS", "FIRST_SEED", "load_sweep", "parse_sweep"]

FIRST_SEED = 42
"""DeepOBS's protocol tunes on this seed and re-runs the best setting with 42, 43, ..."""

# key -> (what it accepts, for messages). "problems" and "optimizers" are required.
SPEC_KEYS = {
    "problems": "a problem name, a list of them, or a mapping from problem name to null or "
    "{optimizers: {optimizer: {hyperparameter: values}}} (that problem's own grids)",
    "optimizers": "a mapping from optimizer name to its hyperparameters",
    "seeds": "an integer >= 0 or a list of them (default: [42])",
    "batch_size": "a positive integer (default: DeepOBS's per problem)",
    "num_epochs": "a positive integer (default: DeepOBS's per problem)",
    "steps_per_epoch": "an integer >= 0 (0: whole epochs)",
    "eval_batches": "an integer >= 0 (0: evaluate on all batches)",
    "synthetic_data": "true or false",
    "data_dir": "a directory",
    "output_dir": "a directory (default: results)",
    "extensions": "a list of extension names active in every step",
    "device": "a device such as cpu or cuda:0",
    "data_loader": "tensor (default) or deepobs",
    "step_log_interval": "a positive integer: write every n-th step to the step log",
}
"""The keys a sweep file may have, with what each accepts."""

_REQUIRED_KEYS = ("problems", "optimizers")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file.

    Attributes:
        source (str): Where it came from (the file name), for messages.
        problems (tuple): Problem names, in the file's order.
        optimizers (tuple): ``(name, axes)`` pairs; ``axes`` is a tuple of
            ``(hyperparameter, values)`` with ``values`` a tuple (one value: fixed).
        seeds (tuple): Seeds of the grid.
        settings (dict): The training settings shared by every run: ``batch_size``,
            ``num_epochs``, ``steps_per_epoch``, ``eval_batches``, ``synthetic_data``,
            ``data_dir`` and ``output_dir`` (absolute paths), ``extensions``, ``device``,
            ``data_loader``, ``step_log_interval``.
        problem_grids (tuple): ``(problem, ((optimizer, axes), ...))`` pairs: a problem's
            own axes, each replacing the file's axis of that hyperparameter for it.
    """

    source: str
    problems: tuple
    optimizers: tuple
    seeds: tuple
    settings: dict
    problem_grids: tuple = ()

    def axes(self, optimizer, problem=None):
        """An optimizer's grid axes, on ``problem`` if given (its own axes replacing the file's).

        Returns:
            tuple: ``(hyperparameter, values)`` pairs, the file's order, then the problem's
            hyperparameters that the file does not name.
        """
        axes = dict(dict(self.optimizers)[optimizer])
        own = dict(dict(dict(self.problem_grids).get(problem, ())).get(optimizer, ()))
        axes.update(own)
        return tuple(axes.items())

    @property
    def output_dir(self):
        """str: The absolute output directory (results, manifest, summary)."""
        return self.settings["output_dir"]

    def hyperparameter_settings(self, optimizer, problem=None):
        """Every point of an optimizer's grid, defaults filled in.

        Args:
            optimizer (str): One of the sweep's optimizers.
            problem (str, optional): The problem, if it has grids of its own.

        Returns:
            list: Dictionaries of hyperparameters, in grid order (last axis fastest).
        """
        from backobs import optim

        axes = self.axes(optimizer, problem)
        names = [name for name, _ in axes]
        return [
            optim.check_hyperparameters(optimizer, dict(zip(names, point)))
            for point in itertools.product(*(values for _, values in axes))
        ]

    def make_run(self, problem, optimizer, hyperparams, seed):
        """The run of one grid point with the sweep's training settings.

        Args:
            problem (str): Problem name.
            optimizer (str): Optimizer name.
            hyperparams (dict): Its hyperparameters.
            seed (int): Random seed.

        Returns:
            backobs.runs.Run: The run.
        """
        return runs.Run(
            problem=problem,
            optimizer=optimizer,
            hyperparams=dict(hyperparams),
            seed=seed,
            **self.settings,
        )

    def runs(self):
        """Expand the grid: problems x optimizers x hyperparameter grid x seeds.

        Returns:
            list: :class:`backobs.runs.Run` objects, problems outermost, seeds innermost.
        """
        return [
            self.make_run(problem, optimizer, hyperparams, seed)
            for problem in self.problems
            for optimizer, _ in self.optimizers
            for hyperparams in self.hyperparameter_settings(optimizer, problem)
            for seed in self.seeds
        ]


def load_sweep(path):
    """Read and validate a sweep file (YAML or JSON).

    Args:
        path (str): The file.

    Returns:
        Sweep: The validated sweep.

    Raises:
        OptionError: If the file cannot be read or parsed, or any entry is invalid; one line
            naming the file, the key and what it accepts.
    """
    if not os.path.exists(path):
        raise OptionError(f"sweep file {path!r} does not exist")
    if os.path.isdir(path):
        raise OptionError(f"sweep file {path!r} is a directory, not a YAML or JSON file")
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or str(error)
        raise OptionError(f"{path}: not valid YAML or JSON{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise OptionError(f"sweep file {path!r} cannot be read: {error}") from None
    return parse_sweep(data, source=path)


def parse_sweep(data, source="<sweep>"):
    """Validate a sweep given as a dictionary (a parsed sweep file).

    Args:
        data (dict): The sweep file's content.
        source (str): Its name in messages.

    Returns:
        Sweep: The validated sweep; ``output_dir`` and ``data_dir`` made absolute, so that
        workers with another working directory write to the same place.

    Raises:
        OptionError: For unknown or missing keys, unknown or unsupported problems, unknown
            optimizers or hyperparameters, empty grids, duplicates, and bad values.
    """

    def fail(key, message):
        raise OptionError(f"{source}: {key}: {message}")

    if not isinstance(data, dict):
        raise OptionError(
            f"{source}: a sweep file must be a mapping with the keys "
            f"{', '.join(_REQUIRED_KEYS)} (and optionally {', '.join(_optional_keys())}), "
            f"got {type(data).__name__}"
        )
    unknown = [key for key in data if key not in SPEC_KEYS]
    if unknown:
        raise OptionError(
            f"{source}: unknown key {unknown[0]!r}; a sweep file has the keys "
            f"{', '.join(SPEC_KEYS)}"
        )
    for key in _REQUIRED_KEYS:
        if key not in data or data[key] is None:
            fail(key, f"missing; give {SPEC_KEYS[key]}")

    problem_names, own_grids = _parse_problems(data["problems"], fail)
    optimizer_grid = _parse_optimizers(data["optimizers"], fail)
    problem_grids = _parse_problem_grids(own_grids, optimizer_grid, fail)
    seeds = _axis(data.get("seeds", [FIRST_SEED]), "seeds", fail)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            fail("seeds", f"a seed must be an integer in [0, 2**32), got {seed!r}")
    settings = _parse_settings(data, fail)
    sweep = Sweep(source, problem_names, optimizer_grid, seeds, settings, problem_grids)
    for optimizer, _ in optimizer_grid:
        try:
            sweep.hyperparameter_settings(optimizer)
        except ValueError as error:
            fail(f"optimizers.{optimizer}", _one_line(error))
    for problem, grids in problem_grids:
        for optimizer, _ in grids:
            try:
                sweep.hyperparameter_settings(optimizer, problem)
            except ValueError as error:
                fail(f"problems.{problem}.optimizers.{optimizer}", _one_line(error))
    for run in sweep.runs():  # what `backobs run` would refuse, refused before any run starts
        try:
            runs.settings_directory(run)
        except (ValueError, NotImplementedError) as error:  # OptionError is a ValueError
            raise OptionError(f"{source}: {_describe_run(run)}: {_one_line(error)}") from None
    return sweep


def _optional_keys():
    return [key for key in SPEC_KEYS if key not in _REQUIRED_KEYS]


def _one_line(error):
    return " ".join(str(error).split())


def _axis(value, key, fail):
    """A grid axis: a list (non-empty, no duplicates) or one scalar."""
    values = value if isinstance(value, list) else [value]
    if not values:
        fail(key, "an empty list: the grid would have no runs")
    for item in values:
        if isinstance(item, (dict, list)):
            fail(key, f"a value must be a single number or name, got {item!r}")
    seen = set()
    for item in values:
        identity = (isinstance(item, bool), item)  # True == 1, but not the same setting
        if identity in seen:
            fail(key, f"{item!r} is listed twice")
        seen.add(identity)
    return tuple(values)


def _parse_problems(value, fail):
    """Problem names, and the raw entries of a mapping (``{}`` for a name or a list)."""
    from backobs.adapter import problems

    entries = {}
    if isinstance(value, dict):
        if not value:
            fail("problems", "an empty mapping: the grid would have no runs")
        entries = value
        value = list(value)
    names = _axis(value, "problems", fail)
    support = {row.name: row for row in problems.SUPPORT_TABLE}
    for name in names:
        if not isinstance(name, str):
            fail("problems", f"a problem is a name such as mnist_logreg, got {name!r}")
        try:
            problems.get_problem_class(name)
        except ValueError as error:
            fail("problems", _one_line(error))
        row = support.get(name)
        if row is not None and not row.supported:
            fail("problems", f"{name} is not supported by BackOBS: {row.reason}")
    return names, entries


_PROBLEM_KEYS = ("optimizers",)
"""The keys of a problem's entry in a ``problems`` mapping."""


def _parse_problem_grids(entries, optimizer_grid, fail):
    """The problems' own axes: ``((problem, ((optimizer, axes), ...)), ...)``."""
    from backobs import optim

    names = [name for name, _ in optimizer_grid]
    grids = []
    for problem, entry in entries.items():
        key = f"problems.{problem}"
        if entry is None:
            continue
        if not isinstance(entry, dict):
            fail(key, f"must be null or a mapping with the key optimizers, got {entry!r}")
        unknown = [name for name in entry if name not in _PROBLEM_KEYS]
        if unknown:
            fail(key, f"unknown key {unknown[0]!r}; a problem's entry has the key optimizers")
        optimizers = entry.get("optimizers")
        if optimizers is None:
            continue
        if not isinstance(optimizers, dict):
            fail(
                f"{key}.optimizers",
                "must be a mapping from optimizer name to its hyperparameters, e.g. "
                f"{{kfac: {{damping: [0.1, 1]}}}}, got {optimizers!r}",
            )
        own = []
        for optimizer, hyperparams in optimizers.items():
            if optimizer not in names:
                fail(
                    f"{key}.optimizers",
                    f"{optimizer!r} is not one of the file's optimizers ({', '.join(names)}); "
                    "a problem can only change their grids: add it to optimizers",
                )
            known = optim.resolve_optimizer(optimizer).hyperparameters
            own.append(
                (optimizer, _parse_axes(optimizer, known, hyperparams, f"{key}.optimizers", fail))
            )
        grids.append((problem, tuple(own)))
    return tuple(grids)


def _parse_optimizers(value, fail):
    from backobs import optim

    if not isinstance(value, dict):
        fail("optimizers", f"must be {SPEC_KEYS['optimizers']}, e.g. {{sgd: {{lr: [0.01, 0.1]}}}}")
    if not value:
        fail("optimizers", "empty: the grid would have no runs")
    grid = []
    folders = {}  # results folder -> the optimizer (name or import path) that writes there
    for name, hyperparams in value.items():
        if not isinstance(name, str):
            fail("optimizers", f"an optimizer's name must be a string, got {name!r}")
        try:
            spec = optim.resolve_optimizer(name)
        except ValueError as error:
            fail("optimizers", _one_line(error))
        other = folders.setdefault(spec.folder_name, name)
        if other != name:
            fail(
                "optimizers",
                f"{other!r} and {name!r} are different classes named {spec.folder_name!r}: "
                "their results would share one folder; rename one of the classes",
            )
        grid.append(
            (name, _parse_axes(name, spec.hyperparameters, hyperparams, "optimizers", fail))
        )
    return tuple(grid)


def _parse_axes(name, known, hyperparams, parent, fail):
    """An optimizer's ``{hyperparameter: value or list}`` as ``((name, values), ...)``.

    ``known``: the optimizer's hyperparameters (``{name: {"type": ..., ...}}``).
    """
    key = f"{parent}.{name}"
    if hyperparams is None:
        hyperparams = {}
    if not isinstance(hyperparams, dict):
        fail(key, f"must be a mapping from hyperparameter to value or list, got {hyperparams!r}")
    axes = []
    for hyperparameter, values in hyperparams.items():
        if hyperparameter not in known:
            fail(
                key,
                f"unknown hyperparameter {hyperparameter!r}; {name} has {', '.join(known)}",
            )
        kind = known[hyperparameter].get("type")
        values = _axis(values, f"{key}.{hyperparameter}", fail)
        axes.append((hyperparameter, tuple(_yaml_number(v, kind) for v in values)))
    return tuple(axes)


def _yaml_number(value, kind):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a float hyperparameter takes it as 0.001."""
    if kind is float and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _parse_settings(data, fail):
    def scalar(key):
        value = data.get(key)
        if isinstance(value, (list, dict)):
            fail(key, f"must be a single value ({SPEC_KEYS[key]}), not a grid, got {value!r}")
        return value

    def checked(key, check, *args):
        try:
            return check(key, scalar(key), *args)
        except OptionError as error:
            fail(key, str(error).split(f"{key} ", 1)[-1])

    settings = {
        "batch_size": checked("batch_size", checks.check_positive_int),
        "num_epochs": checked("num_epochs", checks.check_positive_int),
        "steps_per_epoch": checked("steps_per_epoch", checks.check_nonnegative_int),
        "eval_batches": checked("eval_batches", checks.check_nonnegative_int),
        "step_log_interval": checked("step_log_interval", checks.check_positive_int),
    }
    synthetic = data.get("synthetic_data", False)
    if not isinstance(synthetic, bool):
        fail("synthetic_data", f"must be true or false, got {synthetic!r}")
    settings["synthetic_data"] = synthetic

    for key in ("data_dir", "output_dir", "device"):
        value = scalar(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            fail(key, f"must be {SPEC_KEYS[key]}, got {value!r}")
    output_dir = data.get("output_dir") or "results"
    checked_dir = _check_directory(checks.check_writable_directory, "output_dir", output_dir)
    if checked_dir is not None:
        fail("output_dir", checked_dir)
    settings["output_dir"] = os.path.abspath(output_dir)
    data_dir = data.get("data_dir")
    if data_dir is not None and not synthetic:
        checked_dir = _check_directory(checks.check_readable_directory, "data_dir", data_dir)
        if checked_dir is not None:
            fail("data_dir", checked_dir)
    settings["data_dir"] = os.path.abspath(data_dir) if data_dir is not None else None

    extensions = data.get("extensions") or []
    if isinstance(extensions, str):
        extensions = [extensions]
    if not isinstance(extensions, list):
        fail("extensions", f"must be {SPEC_KEYS['extensions']}, got {extensions!r}")
    from backobs.runs.runner import EXTENSION_NAMES

    for name in extensions:
        if name not in EXTENSION_NAMES:
            fail(
                "extensions",
                f"unknown extension {name!r}; choose from {', '.join(EXTENSION_NAMES)}",
            )
    settings["extensions"] = tuple(extensions)
    settings["device"] = data.get("device")
    settings["data_loader"] = checked("data_loader", checks.check_data_loader) or "tensor"
    return settings


def _check_directory(check, key, path):
    """The message of ``check`` without the key, or ``None`` if the directory is fine."""
    try:
        check(key, path)
    except OptionError as error:
        return str(error).split(f"{key} ", 1)[-1]
    return None


def _run_key(run):
    """A run's identity as a string (its settings as sorted JSON), for dictionaries."""
    return json.dumps(run.to_dict(), sort_keys=True)


def _describe_hyperparams(optimizer, hyperparams):
    """``name=value`` of the hyperparameters that differ from the optimizer's defaults."""
    from backobs import optim

    known = optim.resolve_optimizer(optimizer).hyperparameters
    return " ".join(
        f"{name}={value}"
        for name, value in hyperparams.items()
        if "default" not in known.get(name, {}) or known[name]["default"] != value
    )


def _describe_run(run):
    """One line: problem, optimizer, hyperparameters other than the defaults, seed."""
    hyperparams = _describe_hyperparams(run.optimizer, run.hyperparams)
    return f"{run.problem} {run.optimizer} {hyperparams} seed {run.seed}".replace("  ", " ")
