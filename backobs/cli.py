"""The ``backobs`` command: ``run``, ``sweep`` and ``report`` (also ``python -m backobs``).

Every subcommand checks its options before any work: a bad value ends the command with one
line on stderr (``backobs run: error: ...``) and exit code 2; Ctrl-C ends it with exit code
130 and no traceback, after what was finished is written.

Examples:
    backobs run mnist_logreg --optimizer kfac --lr 0.1 --damping 0.01 --synthetic-data
    backobs sweep sweep.yaml --workers 2
    backobs report results -o report
"""

import argparse
import importlib
import sys

from backobs import checks

__all__ = ["main", "build_parser"]

_DESCRIPTION = (
    "Benchmark optimizers that use more than the gradient on DeepOBS problems, with "
    "BackPACK-style extensions."
)


def _optimizer_from(argv):
    """The value of ``--optimizer`` in ``argv``, if any (needed to know its options)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--optimizer")
    known, _ = pre.parse_known_args(argv)
    return known.optimizer


def _add_run_arguments(parser, argv):
    from backobs import optim
    from backobs.runs import options

    name = _optimizer_from(argv)
    spec = None
    if name is not None:
        try:
            spec = optim.resolve_optimizer(name)
        except ValueError as error:
            raise checks.OptionError(f"--optimizer: {error}") from None
        summary = spec.description.rstrip(".")
        parser.description = f"{parser.description} Optimizer {name}: {summary}."
    parser.add_argument(
        "--optimizer",
        required=True,
        metavar="NAME",
        help="One of: "
        + "; ".join(f"{key} ({entry.description})" for key, entry in optim.OPTIMIZERS.items())
        + "; or your own torch.optim.Optimizer subclass as package.module:ClassName, or the "
        f"name of an entry point of the group {optim.external.ENTRY_POINT_GROUP}.",
    )
    hyperparameters = spec.hyperparameters if spec is not None else {}
    options.add_run_arguments(parser, hyperparameters, default_extension=None)
    parser.set_defaults(handler=_run_command, hyperparameter_names=hyperparameters)


def _run_command(args):
    from backobs import optim
    from backobs.runs import options
    from backobs.runs.run import make_runner
    from backobs.runs.runner import ResultsWriteError

    hyperparameters = args.hyperparameter_names
    del args.hyperparameter_names
    optimizer = args.optimizer
    del args.optimizer
    arguments = options.run_arguments(args, hyperparameters)
    try:
        arguments["hyperparams"] = optim.check_hyperparameters(optimizer, arguments["hyperparams"])
    except ValueError as error:
        raise checks.OptionError(str(error)) from None
    runner = make_runner(optimizer, progress_bar=True)
    try:
        output = runner.run(**arguments)
    except ResultsWriteError as error:  # the run is lost: say where and why, exit 1
        print(f"backobs run: error: {error}", file=sys.stderr)
        return 1
    return 0 if output is None or output.get("status") != "interrupted" else 130


_SUBCOMMANDS = {
    "run": (
        "Train one optimizer on one DeepOBS problem (the runner, with extensions).",
        "Train an optimizer on a DeepOBS problem with the extensions it needs active (and "
        "those of --extensions logged), writing DeepOBS's results file and a per-step log. "
        "`backobs run --optimizer NAME --help` lists NAME's hyperparameters.",
    ),
    "sweep": (
        "Run a grid of runs (problems x optimizers x settings x seeds) on Dask.",
        "Run a sweep file's grid of runs on Dask (a local cluster or a scheduler), resumable, "
        "optionally with DeepOBS's final-seeds protocol.",
    ),
    "report": (
        "Compare optimizers from a results folder: tables and figures.",
        "Compare optimizers from a results folder in DeepOBS's layout: the best setting of "
        "each, tables and figures.",
    ),
}


def _chosen_subcommand(argv):
    """The subcommand named in ``argv`` (the first argument that is not an option), if any."""
    for argument in argv:
        if not argument.startswith("-"):
            return argument if argument in _SUBCOMMANDS else None
    return None


def _fill_subcommand(name, parser, argv):
    """Add the options of subcommand ``name`` to its parser (importing only its module)."""
    if name == "run":
        _add_run_arguments(parser, argv)
        return
    module = importlib.import_module(f"backobs.{name}.command")
    module.add_arguments(parser)
    parser.set_defaults(handler=module.command)


def build_parser(argv=()):
    """The ``backobs`` argument parser, with the options of the chosen subcommand only.

    Every subcommand is listed, but only the one named in ``argv`` gets its options (and
    imports its module): ``backobs --help`` and ``backobs report ...`` import no torch.

    Args:
        argv (list[str]): The arguments about to be parsed (``run`` also needs the
            optimizer's name to know its hyperparameter options).

    Returns:
        argparse.ArgumentParser: The parser; ``args.handler(args)`` runs the subcommand.
    """
    argv = list(argv)
    parser = checks.OneLineParser(prog="backobs", description=_DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_subcommand(argv)
    for name, (summary, description) in _SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=description)
        if name == chosen:
            _fill_subcommand(name, sub, argv)
    return parser


def main(argv=None):
    """Run the ``backobs`` command.

    Args:
        argv (list[str], optional): The arguments (default: ``sys.argv[1:]``).

    Returns:
        int: The exit code (0 success, 2 bad input, 130 interrupted).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            parser = build_parser(argv)
        except checks.OptionError as error:  # e.g. an optimizer class that does not import
            _error(f"backobs {_chosen_subcommand(argv) or ''}".strip(), error)
            return 2
        args = parser.parse_args(argv)
        prog = f"backobs {args.command}"
        try:
            return int(args.handler(args) or 0)
        except (checks.OptionError, NotImplementedError) as error:
            _error(prog, error)
            return 2
        except _data_unavailable() as error:
            _error(prog, error)
            return 2
    except KeyboardInterrupt:
        print("backobs: interrupted", file=sys.stderr)
        return 130


def _data_unavailable():
    from backobs.adapter.data import DataUnavailableError

    return DataUnavailableError


def _error(prog, error):
    message = " ".join(str(error).split())
    print(f"{prog}: error: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
