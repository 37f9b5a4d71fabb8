"""The options of one training run, shared by ``example/run.py`` and ``backobs run``.

Every option is checked before any work starts (:func:`check_run_arguments`); a bad value
raises :class:`backobs.checks.OptionError`, printed as one line with exit code 2.
"""

import argparse
import os

from backobs.checks import (
    DATA_LOADERS,
    OneLineParser,
    OptionError,
    check_data_loader,
    check_finite_float,
    check_nonnegative_int,
    check_positive_int,
    check_readable_directory,
    check_writable_directory,
)
from backpack_core import extensions as _extensions

__all__ = [
    "OptionError",
    "OneLineParser",
    "check_positive_int",
    "check_nonnegative_int",
    "check_finite_float",
    "check_writable_directory",
    "check_readable_directory",
    "check_device",
    "check_data_loader",
    "DATA_LOADERS",
    "check_run_arguments",
    "add_run_arguments",
    "run_arguments",
    "EXTENSION_NAMES",
    "SHORT_RUN_STEPS",
]


EXTENSION_NAMES = tuple(extension.__name__ for extension in _extensions.ALL)
"""The extensions that ``--extensions`` accepts, by class name."""

SHORT_RUN_STEPS = 10
"""Runs of at most this many training steps print the extension shapes every step."""

NONNEGATIVE_HYPERPARAMETERS = frozenset(
    {"lr", "learning_rate", "damping", "momentum", "beta1", "beta2", "epsilon", "ema_decay"}
)
"""Hyperparameters that must be >= 0 in every run (the names of BackOBS's and DeepOBS's
optimizers); any other numeric hyperparameter must only be finite."""


def add_run_arguments(parser, hyperparameters, demo_defaults=None, default_extension="BatchGrad"):
    """Add the options of one training run to ``parser``.

    Args:
        parser (argparse.ArgumentParser): The parser (or subcommand parser) to fill.
        hyperparameters (dict): The optimizer's hyperparameters in DeepOBS's format,
            ``{name: {"type": float, "default": value}}``; an entry without a default is a
            required option.
        demo_defaults (dict, optional): Defaults of a demo script (``batch_size``,
            ``num_epochs``, ``steps_per_epoch``, ``eval_batches``); ``--full`` drops them.
        default_extension (str, optional): The extension active when ``--extensions`` is
            not given (``None``: none).
    """
    demo = dict(demo_defaults or {})

    def default_text(name, deepobs_text):
        if name in demo:
            return f"default: {demo[name]}; with --full: {deepobs_text}"
        return f"default: {deepobs_text}"

    parser.add_argument(
        "testproblem", metavar="PROBLEM", help="A DeepOBS problem, e.g. mnist_logreg."
    )
    optimizer = parser.add_argument_group("the optimizer's hyperparameters")
    for name, specification in hyperparameters.items():
        kind = specification.get("type", float)
        help_text = specification.get("help", "")
        if kind is bool:
            default = specification.get("default", False)
            if default is True or "default" not in specification:
                optimizer.add_argument(
                    f"--{name}",
                    action=argparse.BooleanOptionalAction,
                    default=default if "default" in specification else None,
                    required="default" not in specification,
                    help=(help_text + f" (default: {default})").strip()
                    if "default" in specification
                    else (help_text + " (required)").strip(),
                )
            else:
                optimizer.add_argument(
                    f"--{name}",
                    action="store_true",
                    default=default,
                    help=help_text or f"Switch {name} on.",
                )
            continue
        if "default" in specification:
            help_text += f" (default: {specification['default']})"
            optimizer.add_argument(
                f"--{name}", type=kind, default=specification["default"], help=help_text.strip()
            )
        else:
            optimizer.add_argument(
                f"--{name}", type=kind, required=True, help=(help_text + " (required)").strip()
            )

    deepobs = parser.add_argument_group("DeepOBS's options")
    deepobs.add_argument(
        "--batch_size",
        "--bs",
        type=int,
        default=demo.get("batch_size"),
        help=f"Mini-batch size ({default_text('batch_size', 'DeepOBS default of the problem')}).",
    )
    deepobs.add_argument(
        "-N",
        "--num_epochs",
        type=int,
        default=demo.get("num_epochs"),
        help=f"Number of epochs ({default_text('num_epochs', 'DeepOBS default of the problem')}).",
    )
    deepobs.add_argument(
        "-r",
        "--random_seed",
        type=int,
        default=42,
        help="Seed of Python's, NumPy's and torch's random numbers (default: 42).",
    )
    deepobs.add_argument(
        "--data_dir",
        help="Directory of the data sets (default: DeepOBS's, ./data_deepobs).",
    )
    deepobs.add_argument(
        "--output_dir",
        default="./results",
        help="Directory of the results, sorted into <problem>/<optimizer>/<settings>/ "
        "(default: ./results).",
    )
    deepobs.add_argument(
        "--weight_decay",
        "--wd",
        "--l2_reg",
        dest="weight_decay",
        type=float,
        help="Factor of the l2 regularisation (default: the problem's). BackOBS supports "
        "none: problems that use it run only with --l2_reg 0.0.",
    )
    deepobs.add_argument(
        "--no_logs", action="store_true", help="Write no results file and no step log."
    )
    deepobs.add_argument(
        "--train_log_interval",
        type=int,
        default=10,
        help="Keep the mini-batch loss of every this many steps in the results (default: 10).",
    )
    deepobs.add_argument(
        "--print_train_iter",
        action="store_true",
        help="Print the mini-batch loss every --train_log_interval steps.",
    )
    deepobs.add_argument("--tb_log", action="store_true", help="Log the loss to TensorBoard.")
    deepobs.add_argument(
        "--tb_log_dir",
        default="none",
        help="TensorBoard directory (default: the settings folder of the run).",
    )

    backobs = parser.add_argument_group("BackOBS's options")
    backobs.add_argument(
        "--extensions",
        nargs="+",
        choices=EXTENSION_NAMES,
        default=None,
        metavar="NAME",
        help="Extensions active in every training step besides those the optimizer needs, "
        f"summarised in the step log (default: {default_extension or 'none'}). One or more of: "
        f"{', '.join(EXTENSION_NAMES)}.",
    )
    backobs.add_argument(
        "--steps-per-epoch",
        "--steps_per_epoch",
        dest="steps_per_epoch",
        type=int,
        default=demo.get("steps_per_epoch"),
        help="Stop each epoch after this many steps; 0: the whole epoch "
        f"({default_text('steps_per_epoch', 'the whole epoch')}).",
    )
    backobs.add_argument(
        "--eval-batches",
        "--eval_batches",
        dest="eval_batches",
        type=int,
        default=demo.get("eval_batches"),
        help="Evaluate on the first this many mini-batches of the train-eval, validation and "
        f"test sets; 0: all, as DeepOBS ({default_text('eval_batches', 'all')}).",
    )
    backobs.add_argument(
        "--log-interval",
        "--log_interval",
        dest="log_interval",
        type=int,
        default=None,
        help="Print the shapes of the extension quantities every this many steps; 0: never "
        f"(default: every step in runs of at most {SHORT_RUN_STEPS} steps, else never). What "
        "the step log keeps is --step-log-interval's.",
    )
    backobs.add_argument(
        "--step-log-interval",
        "--step_log_interval",
        dest="step_log_interval",
        type=int,
        default=1,
        help="Write every this many steps (global steps 0, n, 2n, ...) to the step log; a "
        "larger n makes the log n times smaller (default: 1, every step).",
    )
    backobs.add_argument(
        "--synthetic-data",
        "--synthetic_data",
        dest="synthetic_data",
        action="store_true",
        help="Train on synthetic stand-ins of the data sets (no download, no network).",
    )
    backobs.add_argument(
        "--device",
        help="Device to train on, e.g. cpu or cuda:0 (default: cuda if available, else cpu).",
    )
    backobs.add_argument(
        "--data-loader",
        "--data_loader",
        dest="data_loader",
        default="tensor",
        choices=DATA_LOADERS,
        help="tensor: each data split decoded once into a tensor on the device, mini-batches "
        "by indexing (DeepOBS's samplers and order; augmentation batched on the device); "
        "deepobs: DeepOBS's per-image loaders (default: tensor).",
    )
    if demo:
        backobs.add_argument(
            "--full",
            action="store_true",
            help="Drop this script's demo defaults "
            f"({', '.join(f'{k}={v}' for k, v in demo.items())}): DeepOBS's batch size and "
            "number of epochs, whole epochs, full evaluation.",
        )
        parser.set_defaults(_demo_defaults=demo)


def run_arguments(namespace, hyperparameters):
    """Turn parsed run options into the keyword arguments of ``BackpackRunner.run``.

    Args:
        namespace (argparse.Namespace): What :func:`add_run_arguments`' options parsed to.
        hyperparameters (dict): The optimizer's hyperparameters (DeepOBS's format).

    Returns:
        dict: ``testproblem``, ``hyperparams`` and the training settings.
    """
    values = dict(vars(namespace))
    demo = values.pop("_demo_defaults", None) or {}
    if values.pop("full", False):
        for name, default in demo.items():
            if values.get(name) == default:
                values[name] = None
    for name in ("command", "handler"):
        values.pop(name, None)
    values["hyperparams"] = {name: values.pop(name) for name in hyperparameters}
    return values


def check_run_arguments(arguments):
    """Check the settings of a run before any work; raise :class:`OptionError` if bad.

    Args:
        arguments (dict): Keyword arguments of ``BackpackRunner.run`` (see
            :func:`run_arguments`); changed in place where a value is normalised.

    Raises:
        OptionError: Naming the option and what it accepts.
    """
    from backobs.adapter import problems

    name = arguments.get("testproblem")
    known = [row.name for row in problems.SUPPORT_TABLE]
    if name not in known:
        raise OptionError(f"unknown problem {name!r}; choose one of: {', '.join(sorted(known))}")
    row = next(row for row in problems.SUPPORT_TABLE if row.name == name)
    if not row.supported:
        raise OptionError(f"{name} is not supported by BackOBS: {row.reason}")
    weight_decay = check_finite_float("--weight_decay", arguments.get("weight_decay"), minimum=0)
    default_l2 = problems.default_l2_factor(problems.get_problem_class(name)) or 0.0
    if (weight_decay if weight_decay is not None else default_l2) > 0.0:
        raise OptionError(
            f"{name} adds l2 regularization with factor "
            f"{weight_decay if weight_decay is not None else default_l2} to its loss. BackOBS "
            "does not support that: the extensions see only the loss module applied to the "
            "network output, so the regularizer's part of their quantities would be missing. "
            "Pass --l2_reg 0.0 (in Python: weight_decay=0.0)."
        )
    check_positive_int("--batch_size", arguments.get("batch_size"))
    check_positive_int("--num_epochs", arguments.get("num_epochs"))
    for option in ("batch_size", "num_epochs"):
        if arguments.get(option) is None and not _has_deepobs_default(name):
            raise OptionError(
                f"DeepOBS has no default --{option} for {name}; pass --batch_size and --num_epochs"
            )
    seed = arguments.get("random_seed")
    valid_seed = isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32
    if seed is not None and not valid_seed:
        raise OptionError(f"--random_seed must be an integer in [0, 2**32), got {seed!r}")
    check_positive_int("--train_log_interval", arguments.get("train_log_interval"))
    check_nonnegative_int("--steps-per-epoch", arguments.get("steps_per_epoch"), "the whole epoch")
    check_nonnegative_int("--eval-batches", arguments.get("eval_batches"), "all mini-batches")
    check_nonnegative_int("--log-interval", arguments.get("log_interval"), "never")
    check_positive_int("--step-log-interval", arguments.get("step_log_interval"))
    for option, value in (arguments.get("hyperparams") or {}).items():
        if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
            # finite always; >= 0 for the names whose meaning BackOBS knows (lr, damping,
            # ...): a researcher's own hyperparameter may be negative
            minimum = 0 if option in NONNEGATIVE_HYPERPARAMETERS else None
            arguments["hyperparams"][option] = type(value)(
                check_finite_float(f"--{option}", value, minimum=minimum)
            )
    extensions = arguments.get("extensions")
    if extensions is not None:
        unknown = [e for e in extensions if e not in EXTENSION_NAMES]
        if unknown:
            raise OptionError(
                f"--extensions: unknown extension(s) {', '.join(unknown)}; choose from "
                f"{', '.join(EXTENSION_NAMES)}"
            )
    if arguments.get("device") is not None:
        check_device("--device", arguments["device"])
    check_data_loader("--data-loader", arguments.get("data_loader"))
    if not arguments.get("no_logs"):
        check_writable_directory("--output_dir", arguments.get("output_dir") or "./results")
    data_dir = arguments.get("data_dir")
    if data_dir is not None and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise OptionError(f"--data_dir {data_dir!r} is a file, not a directory")


def check_device(option, device):
    """Check that ``device`` names a torch device that exists here.

    Args:
        option (str): The option's name.
        device (str): E.g. ``"cpu"`` or ``"cuda:0"``.

    Returns:
        str: The device.

    Raises:
        OptionError: If it is not a device name, or CUDA is asked for and not available.
    """
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise OptionError(f"{option} {device!r} is not a torch device (e.g. cpu, cuda:0)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"{option} {device}: CUDA is not available here; use --device cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"{option} {device!r}: only cpu, cuda and mps devices are supported")
    return device


def _has_deepobs_default(name):
    from backobs.adapter import deepobs as _deepobs

    try:
        _deepobs.config.get_testproblem_default_setting(name)
    except RuntimeError:
        return False
    return True
