"""DeepOBS's protocol: tune on the grid, then re-run each best setting with more seeds.

:func:`run_sweep` is a whole sweep: the grid (:func:`~backobs.sweep.execute.execute_runs`),
then, with ``final_seeds``, :func:`choose_best` picks each (problem, optimizer)'s best setting
by the report's ranking rule (:mod:`backobs.report.rank`: best final validation accuracy,
or loss where the runs record no accuracy), writes the choice to
``<output_dir>/sweep_summary.json`` (:data:`SUMMARY_NAME`) and runs :func:`final_runs`, the
best settings with seeds 42, 43, ...

Importing this module loads no torch and no Dask (nor NumPy: the ranking rule is imported
when a choice is made).
"""

import json
import math
import os
import uuid

from backobs import runs
from backobs.sweep.execute import MANIFEST_NAME, _Manifest, execute_runs
from backobs.sweep.spec import FIRST_SEED, _describe_hyperparams, _run_key

__all__ = ["SUMMARY_NAME", "run_sweep", "choose_best", "final_runs"]

SUMMARY_NAME = "sweep_summary.json"
"""The file name of ``--final-seeds``'s choice in the output directory."""


def run_sweep(sweep, client, final_seeds=None, outcomes=None):
    """Run a sweep on a Dask client: the grid, then (optionally) DeepOBS's final seeds.

    For Python callers with a cluster of their own (e.g. dask-jobqueue's ``SLURMCluster``);
    ``backobs sweep`` calls it with a local cluster or a scheduler address.

    Args:
        sweep (Sweep): From :func:`~backobs.sweep.spec.load_sweep`.
        client (distributed.Client): Where the runs go.
        final_seeds (int, optional): Run each (problem, optimizer)'s best setting with this
            many seeds (42, 43, ...) after the grid; the choice goes to
            ``<output_dir>/sweep_summary.json``.
        outcomes (list, optional): A list to append each phase's
            :class:`~backobs.sweep.execute.SweepOutcome` to as it ends (so that a caller sees
            the grid's outcome after a Ctrl-C in the final phase).

    Returns:
        list: The :class:`~backobs.sweep.execute.SweepOutcome` of the grid, and of the final
        seeds if run.
    """
    outcomes = [] if outcomes is None else outcomes
    manifest = _Manifest(
        os.path.join(sweep.output_dir, MANIFEST_NAME), uuid.uuid4().hex[:12], sweep.source
    )
    grid = sweep.runs()
    outcomes.append(execute_runs(grid, client, manifest))
    if final_seeds and not outcomes[-1].interrupted:
        outcomes.append(
            _final_seeds_phase(sweep, grid, outcomes[-1], client, manifest, final_seeds)
        )
    return outcomes


def _final_seeds_phase(sweep, grid, outcome, client, manifest, final_seeds):
    paths = {}
    for run in grid:
        path = runs.existing_result(run)
        if path is not None:
            paths[_run_key(run)] = path
    # failed or diverged grid runs have no finished results file; their settings rank last
    for record in outcome.records:
        if record["status"] == "diverged" and record.get("path"):
            paths[_run_key(runs.Run.from_dict(record["run"]))] = record["path"]
    choices = choose_best(sweep, paths)
    summary_path = os.path.join(sweep.output_dir, SUMMARY_NAME)
    summary = {"spec": sweep.source, "final_seeds": final_seeds, "choices": choices}
    _write_json_atomically(summary_path, summary)
    for problem, by_optimizer in choices.items():
        for optimizer, choice in by_optimizer.items():
            chosen = choice["hyperparams"]
            text = (
                "no setting ended with a finite score"
                if chosen is None
                else (
                    f"{_describe_hyperparams(optimizer, chosen) or 'the defaults'} "
                    f"({choice['metric']} {choice['score']:.6g})"
                )
            )
            print(f"[sweep] best for {problem} {optimizer}: {text}")
    print(f"[sweep] choice written to {summary_path}")
    final = final_runs(sweep, choices, final_seeds)
    final_outcome = execute_runs(final, client, manifest)
    for by_optimizer in choices.values():
        for choice in by_optimizer.values():
            choice["final_runs"] = []
    for run in final:
        choices[run.problem][run.optimizer]["final_runs"].append(
            {"seed": run.seed, "path": runs.existing_result(run)}
        )
    _write_json_atomically(summary_path, summary)
    return final_outcome


def choose_best(sweep, results_paths):
    """DeepOBS's choice: each (problem, optimizer)'s best setting of the grid.

    The rule is the report's (:func:`backobs.report.rank.rank_settings`, mode ``final``,
    mean over the grid's seeds), so that ``backobs report`` on the grid's folder names the
    same best setting: the final validation accuracy, or the final validation loss where a
    run of the problem records no accuracy; a tie in the accuracy is broken by the loss.
    A setting with a failed or missing run is not ranked; one with a diverged run, or
    without a finite score, is never chosen.

    Args:
        sweep (Sweep): The sweep.
        results_paths (dict): ``_run_key(run) -> results path`` of the grid runs that
            ended with a results file.

    Returns:
        dict: ``{problem: {optimizer: choice}}``; ``choice`` has ``hyperparams`` (``None`` if
        no setting can be chosen), ``metric``, ``better`` (``"higher"`` or ``"lower"``),
        ``score``, ``settings_directory`` and ``candidates`` (every setting with its
        ``rank``, ``score`` and results files; rank and score ``None`` if not ranked).
    """
    from backobs.report.rank import higher_is_better, rank_settings, ranking_metric
    from backobs.report.read import Setting, Skip, read_run

    choices = {}
    for problem in sweep.problems:
        complete = {}  # optimizer -> [(hyperparams, Setting)] of the settings with every seed
        candidates = {}
        for optimizer, _ in sweep.optimizers:
            complete[optimizer], candidates[optimizer] = [], []
            for hyperparams in sweep.hyperparameter_settings(optimizer, problem):
                seed_runs, paths = [], []
                for seed in sweep.seeds:
                    path = results_paths.get(
                        _run_key(sweep.make_run(problem, optimizer, hyperparams, seed))
                    )
                    if path is None:
                        continue
                    paths.append(path)
                    try:
                        seed_runs.append(read_run(path))
                    except Skip:
                        pass
                candidate = {
                    "hyperparams": hyperparams,
                    "rank": None,
                    "score": None,
                    "results": paths,
                }
                candidates[optimizer].append(candidate)
                if len(seed_runs) == len(sweep.seeds):
                    directory = runs.settings_directory(
                        sweep.make_run(problem, optimizer, hyperparams, FIRST_SEED)
                    )
                    setting = Setting(
                        problem,
                        optimizer,
                        os.path.basename(directory),
                        dict(hyperparams),
                        seed_runs,
                    )
                    complete[optimizer].append((candidate, setting, directory))
        every_setting = [setting for group in complete.values() for _, setting, _ in group]
        metric = (
            ranking_metric("valid_accuracies", every_setting)
            if every_setting
            else "valid_accuracies"
        )
        for optimizer, _ in sweep.optimizers:
            best = None
            group = complete[optimizer]
            if group:
                by_setting = {
                    id(setting): (candidate, directory) for candidate, setting, directory in group
                }
                ranking = rank_settings(
                    [setting for _, setting, _ in group], metric, "final", "mean"
                )
                for item in ranking:
                    candidate, _ = by_setting[id(item.setting)]
                    candidate["rank"] = item.rank
                    candidate["score"] = None if math.isnan(item.score) else item.score
                first = ranking[0]
                if not first.setting.diverged_runs and not math.isnan(first.score):
                    best = by_setting[id(first.setting)]
            choices.setdefault(problem, {})[optimizer] = {
                "hyperparams": best[0]["hyperparams"] if best else None,
                "metric": metric,
                "better": "higher" if higher_is_better(metric) else "lower",
                "score": best[0]["score"] if best else None,
                "settings_directory": best[1] if best else None,
                "candidates": candidates[optimizer],
            }
    return choices


def final_runs(sweep, choices, count):
    """The runs of DeepOBS's final step: each chosen setting with seeds 42, ..., 42+count-1.

    Args:
        sweep (Sweep): The sweep (its training settings).
        choices (dict): From :func:`choose_best`.
        count (int): Number of seeds.

    Returns:
        list: :class:`backobs.runs.Run` objects (none for a pair without a choice).
    """
    return [
        sweep.make_run(problem, optimizer, choice["hyperparams"], seed)
        for problem, by_optimizer in choices.items()
        for optimizer, choice in by_optimizer.items()
        if choice["hyperparams"] is not None
        for seed in range(FIRST_SEED, FIRST_SEED + count)
    ]


def _write_json_atomically(path, content):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(content, stream, indent=2, allow_nan=False, default=str)
        stream.write("\n")
    os.replace(temporary, path)
