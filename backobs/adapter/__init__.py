"""The DeepOBS adapter: DeepOBS's problems as BackOBS uses them.

- :mod:`~backobs.adapter.deepobs`: DeepOBS's PyTorch half, imported without TensorFlow;
- :mod:`~backobs.adapter.extend`: :func:`extend_problem` and the unreduced-loss variant;
- :mod:`~backobs.adapter.problems`: the support table and the problem classes by name;
- :mod:`~backobs.adapter.testproblems`: the 8 problems DeepOBS 1.1.2 lacks, and
  ``quadratic_deep`` with a loss module;
- :mod:`~backobs.adapter.data`: the data sources (real files with a clear error, synthetic
  stand-ins).

It knows DeepOBS and ``torch.nn``, nothing of derivatives (``backpack_core`` does that) and
nothing of sweeps or reports.
"""

from backobs.adapter import data as _data

if _data.synthetic_data_enabled():
    # BACKOBS_SYNTHETIC_DATA=1 asks for synthetic data in any script, also one that sets up
    # DeepOBS problems without BackOBS's runner: that request is the one import-time change.
    _data.install()
