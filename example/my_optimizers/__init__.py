"""A researcher's package as the README's "Benchmark your own optimizer" uses it.

BackOBS does not import it: ``backobs run --optimizer my_optimizers.sqrt_ggn:SqrtDiagGGN``
does, with ``example/`` on ``PYTHONPATH`` (or the package installed).
"""
