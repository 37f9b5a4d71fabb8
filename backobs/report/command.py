"""The ``backobs report`` command: :func:`add_arguments` and :func:`command`.

Importing it loads NumPy (for the choices of ``--metric``, ``--mode`` and ``--aggregate``)
but neither pandas nor matplotlib: those are imported when a report is made (``--target``
is parsed by :mod:`~backobs.report.verdict`, which imports pandas, after the folders are
checked).
"""

import glob
import os

from backobs.checks import (
    OptionError,
    check_finite_float,
    check_readable_directory,
    check_writable_directory,
)
from backobs.report.rank import AGGREGATES, METRICS, MODES


def add_arguments(parser):
    """Add ``backobs report``'s arguments to ``parser``.

    Args:
        parser (argparse.ArgumentParser): The subcommand's parser.
    """
    parser.description = (
        "Compare optimizers from a results folder (DeepOBS's layout "
        "<problem>/<optimizer>/<setting>/random_seed__*.json): each optimizer's best "
        "setting per problem, tables (Markdown, CSV) and figures (PNG)."
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="The results folder.")
    parser.add_argument(
        "-o",
        "--out-dir",
        "--out_dir",
        dest="out_dir",
        default=None,
        metavar="OUT_DIR",
        help="Where to write the report (default: RESULTS_DIR/report).",
    )
    parser.add_argument(
        "--metric",
        default=None,
        choices=METRICS,
        help="Rank settings by this metric (default: valid_accuracies, valid_losses for "
        "problems without accuracies, as DeepOBS).",
    )
    parser.add_argument(
        "--mode",
        default="final",
        choices=MODES,
        help="final: rank by the last epoch's value (default); best: by the best epoch's; "
        "most: the settings with the most seeds first (after backobs sweep --final-seeds), "
        "then by the last epoch's value.",
    )
    parser.add_argument(
        "--aggregate",
        default="mean",
        choices=AGGREGATES,
        help="Over seeds: mean and standard deviation (default), or median and quartiles.",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="PROBLEM=VALUE",
        help="The value of the ranking metric to reach on PROBLEM (repeatable; default: the "
        "seed-mean final value of the baseline's best setting).",
    )
    parser.add_argument(
        "--baseline",
        default="sgd",
        metavar="NAME",
        help="The optimizer folder that sets the default targets and the speedups "
        "(default: sgd, any case).",
    )
    parser.add_argument(
        "--profile-by",
        "--profile_by",
        dest="profile_by",
        default=None,
        choices=("seconds", "epochs"),
        help="Compare by seconds or epochs to target in the performance profile (default: "
        "seconds, epochs where some results record no epoch_seconds).",
    )
    parser.add_argument(
        "--tau-max",
        "--tau_max",
        dest="tau_max",
        type=float,
        default=4.0,
        metavar="TAU",
        help="The benchmark score integrates the profile over [1, TAU] (default: 4).",
    )


def command(args):
    """Run ``backobs report``.

    Args:
        args (argparse.Namespace): ``results_dir``, ``out_dir``, ``metric``, ``mode``,
            ``aggregate``, ``target``, ``baseline``, ``profile_by``, ``tau_max`` (the last
            four optional).

    Returns:
        int: 0.

    Raises:
        OptionError: If an option is invalid, or the folder holds no results.
    """
    results_dir = check_readable_directory("RESULTS_DIR", args.results_dir)
    out_dir = args.out_dir if args.out_dir is not None else os.path.join(results_dir, "report")
    check_writable_directory("--out-dir", out_dir)
    for option, value, choices in (
        ("--metric", args.metric, (None, *METRICS)),
        ("--mode", args.mode, MODES),
        ("--aggregate", args.aggregate, AGGREGATES),
    ):
        if value not in choices:
            names = ", ".join(choice for choice in choices if choice)
            raise OptionError(f"{option} must be one of {names}, got {value!r}")

    from backobs.report.verdict import build_verdict, parse_targets

    targets = parse_targets(getattr(args, "target", None))
    tau_max = check_finite_float("--tau-max", getattr(args, "tau_max", 4.0), 1.0, strict=True)

    from backobs.report.rank import build_report
    from backobs.report.read import read_results
    from backobs.report.tables import markdown_table, summary_table
    from backobs.report.verdict import add_notes
    from backobs.report.write import write_report

    results = read_results(results_dir, exclude=[out_dir])
    if not results:
        raise OptionError(
            f"RESULTS_DIR {results_dir!r} holds no results files "
            "(<problem>/<optimizer>/<setting>/random_seed__*.json)" + _layout_hint(results_dir)
        )
    reports = build_report(results, metric=args.metric, mode=args.mode, how=args.aggregate)
    verdict = build_verdict(
        reports,
        targets=targets,
        baseline=getattr(args, "baseline", "sgd"),
        profile_by=getattr(args, "profile_by", None),
        tau_max=tau_max,
    )
    written = write_report(reports, out_dir, verdict=verdict)
    summary = add_notes(summary_table(reports, verdict.baseline), verdict.notes)
    print(markdown_table(summary, args.aggregate, verdict.baseline), end="")
    for path in written:
        print(f"Wrote {path}")
    return 0


def _layout_hint(results_dir):
    """Say so if the user pointed at a problem, optimizer or settings folder."""
    for depth, what in enumerate(("a settings folder", "an optimizer folder", "a problem folder")):
        if glob.glob(os.path.join(results_dir, *["*"] * depth, "random_seed__*.json")):
            return f"; it looks like {what}: pass the folder {3 - depth} level(s) up"
    return ""
