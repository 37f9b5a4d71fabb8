"""``backobs report``: compare optimizers from a results folder, as DeepOBS's analyzer does.

DeepOBS 1.1.2's own analyzer cannot be imported without TensorFlow and expects keys that its
PyTorch runner never writes, so BackOBS reads DeepOBS's results layout itself::

    RESULTS_DIR/<problem>/<optimizer>/<setting>/random_seed__<seed>__<date>.json

as BackOBS's runner and DeepOBS's own PyTorch runners write it (step logs
``*.steps.jsonl`` and other files are ignored). For every problem and optimizer the settings
(hyperparameter combinations) are ranked by DeepOBS's rule: the final value of the
validation accuracy, averaged over the seeds, or of the validation loss where a problem has
no accuracies (``--metric`` chooses another metric; ``--mode best`` ranks by the best epoch
instead of the last, ``--mode most`` puts the settings with the most seeds first, for the
folder of ``backobs sweep --final-seeds``). The best setting of each optimizer is reported:

- ``report.md`` / ``report.csv``: problem, optimizer, best hyperparameters, seeds, final test
  accuracy and loss (mean ± standard deviation over the seeds, or median and quartiles with
  ``--aggregate median``), seconds per training epoch and that cost relative to SGD, and,
  with two or more seeds on both sides, the difference of the final test accuracy (loss) to
  the baseline's with its 95 % Welch interval (marked *not significant* where it holds 0);
  ``settings.csv``: every setting with its rank;
- ``<problem>_performance.png``: test loss, test accuracy, train loss and train accuracy
  against epochs, one line and band per optimizer (DeepOBS's performance plot);
- ``<problem>_sensitivity.png``: the ranking metric against the learning rate, one panel per
  optimizer, one curve per value of the other hyperparameters;
- ``<problem>_cost.png``: seconds per epoch per optimizer and test loss against wall-clock
  time, from the ``epoch_seconds`` that BackOBS's runner records (DeepOBS's runners do not),
  and where the problem has a target, the ranking metric against time with the target and
  where each optimizer reaches it.

Messy folders are reported, not fatal: a setting with a diverged seed (``"status":
"diverged"``, a non-finite number, or the initial values that DeepOBS writes for the epochs
after an abort) is ranked after all others and marked; a setting that did not learn (its
final ranking metric no better than before training) is ranked after those that did and
marked; a setting with fewer seeds than the
problem's others is marked; an unreadable or foreign JSON file, and an interrupted run, is
left out with a one-line warning on stderr naming it. A folder without any results is an
:class:`~backobs.checks.OptionError`.

One job per module:

- :mod:`~backobs.report.read`: the folder into :class:`Setting` objects (:func:`read_results`).
- :mod:`~backobs.report.rank`: the ranking rule (:func:`rank_settings`, :func:`build_report`),
  the one that ``backobs sweep --final-seeds`` uses too.
- :mod:`~backobs.report.stats`: the difference to the baseline with Welch's interval.
- :mod:`~backobs.report.tables`: the summary and settings tables, and the Markdown table.
- :mod:`~backobs.report.figures`: performance, sensitivity, cost and profile figures.
- :mod:`~backobs.report.verdict`: the verdict across problems: time to a target, the
  performance profile and benchmark score, warnings about the grids (:func:`build_verdict`).
- :mod:`~backobs.report.write`: :func:`write_report`, all of it into one folder.
- :mod:`~backobs.report.command`: the ``backobs report`` command.

Nothing here imports DeepOBS (or TensorFlow, or torch). The public names of the modules are
importable from here, each module imported when first used.
"""

from backobs._lazy import lazy_attributes

_NAMES = {
    "read": ("SeedResult", "Setting", "read_results", "read_run", "Skip"),
    "rank": (
        "METRICS",
        "MODES",
        "AGGREGATES",
        "DEFAULT_METRIC",
        "Curve",
        "RankedSetting",
        "ProblemReport",
        "aggregate",
        "build_report",
        "learned",
        "rank_settings",
        "ranking_metric",
    ),
    "stats": ("Difference", "welch_difference", "t_quantile"),
    "tables": (
        "DIFFERENCE_COLUMNS",
        "format_hyperparams",
        "tuned_hyperparams",
        "summary_table",
        "settings_table",
        "markdown_table",
    ),
    "figures": ("plot_performance", "plot_sensitivity", "plot_cost", "plot_profile"),
    "verdict": (
        "PROFILE_BY",
        "SCORES_COLUMNS",
        "Verdict",
        "add_notes",
        "benchmark_score",
        "build_verdict",
        "default_target",
        "first_reach",
        "hyperparameter_notes",
        "parse_targets",
        "profile_steps",
        "profile_table",
        "seed_crossings",
    ),
    "write": ("write_report",),
    "command": ("add_arguments",),
}

__getattr__, __dir__, __all__ = lazy_attributes("backobs.report", _NAMES)
