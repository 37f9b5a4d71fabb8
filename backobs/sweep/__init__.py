"""``backobs sweep``: a grid of runs, executed on Dask, resumable, with DeepOBS's protocol.

A sweep file (YAML, or JSON, which is YAML too) names problems, optimizers with grids of
hyperparameters, seeds and the training settings of ``backobs run``::

    problems: [mnist_logreg, fmnist_2c2d]
    optimizers:
      sgd: {lr: [0.01, 0.1]}
      kfac: {lr: [0.01, 0.1], damping: [0.001, 0.01]}
    seeds: [42]
    num_epochs: 2
    output_dir: results

``problems`` may also be a mapping that gives a problem grids of its own
(``problems: {mnist_logreg: null, fmnist_2c2d: {optimizers: {kfac: {damping: [0.1, 1]}}}}``):
the hyperparameters it names replace the file's lists for that problem.

One job per module:

- :mod:`~backobs.sweep.spec`: the sweep file to a validated :class:`Sweep`. Every list is a
  grid axis and a scalar is fixed; :func:`load_sweep` checks all of it before anything runs
  and raises one :class:`~backobs.checks.OptionError` naming the file, the key and what it
  accepts. :meth:`Sweep.runs` expands the grid into :class:`backobs.runs.Run` objects.
- :mod:`~backobs.sweep.execute`: :func:`execute_runs` hands runs to a Dask client, skips the
  runs whose results file exists, and appends one JSON line per run to
  ``<output_dir>/sweep_manifest.jsonl``.
- :mod:`~backobs.sweep.claims`: a worker claims each run before it starts it, so that
  several sweep commands on one folder compute each run once.
- :mod:`~backobs.sweep.cluster`: a ``LocalCluster`` by default, any scheduler with
  ``--scheduler``; :func:`dask_setup` is the local workers' preload hook.
- :mod:`~backobs.sweep.protocol`: :func:`run_sweep` (the grid, then the final seeds);
  :func:`choose_best` implements the choice of DeepOBS's protocol for ``--final-seeds``
  with the report's ranking rule (:mod:`backobs.report.rank`), and
  :func:`final_runs` the runs that follow it.
- :mod:`~backobs.sweep.command`: the ``backobs sweep`` command: :func:`add_arguments` and
  ``command.command(args)``, the dry run and what it prints at the end.

The sweep is data handed to an executor: the code that runs one run is the code of
``backobs run`` (:func:`backobs.runs.execute`), in a worker process; a run that raises is a
result (``"failed"`` with its error), not a crash of the sweep.

The public names of these modules are importable from here (``from backobs import sweep``;
``sweep.run_sweep(...)``), each imported when first used: ``import backobs.sweep`` loads
neither torch nor DeepOBS nor Dask, nor do the modules themselves (they import them in the
functions that need them).
"""

from backobs._lazy import lazy_attributes

_NAMES = {
    "spec": ("Sweep", "SPEC_KEYS", "FIRST_SEED", "load_sweep", "parse_sweep"),
    "execute": ("SweepOutcome", "MANIFEST_NAME", "execute_runs"),
    "claims": (),
    "cluster": ("dask_setup",),
    "protocol": ("SUMMARY_NAME", "run_sweep", "choose_best", "final_runs"),
    "command": ("add_arguments",),
}

__getattr__, __dir__, __all__ = lazy_attributes("backobs.sweep", _NAMES)
