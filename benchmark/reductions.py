"""Accuracy and time of long float32 reductions: torch's one-pass forms against pieces.

BatchL2Grad reads squared norms of flattened individual gradients (``[N, D]``, D up to
millions), BatchDotGrad their Gram matrix ``[N, N]``. This script times, on random float32
rows of the shapes the DeepOBS nets give, torch's one-pass ``vector_norm`` and ``x @ x.T``
against ``backpack_core.reductions`` (pieces of 4096 entries, of 65536 columns) and against
the obvious exact-ish alternatives, and reports each one's largest relative error against
float64.

Usage::

    python benchmark/reductions.py [--threads 1] [--repeats 5]
"""

import argparse
import statistics
import time

import torch

from backpack_core.reductions import row_gram, squared_norms

# (name, rows, columns): the weights of fmnist_2c2d's dense layer at batch 3 (the test
# reference's case), of mnist_mlp's first layer at batch 128, of a small layer at batch 128
SHAPES = [
    ("fmnist_2c2d dense1, N=3", 3, 1024 * 3136),
    ("mnist_mlp dense1, N=128", 128, 1000 * 784),
    ("10 x 1024 layer, N=128", 128, 10 * 1024),
]


def _one_pass_norms(x):
    return torch.linalg.vector_norm(x, dim=1).square()


def _square_sum(x):
    return x.square().sum(1)


def _one_product(x):
    return x @ x.T


def _time(function, x, repeats):
    function(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print("| rows | quantity | method | relative error | median time (ms) |")
    print("|---|---|---|---|---|")
    for label, n, d in SHAPES:
        x = torch.randn(n, d, generator=generator)
        wide = x.double()
        norms, gram = (wide**2).sum(1), wide @ wide.T
        cases = [
            ("squared norms", "vector_norm (one pass)", norms, _one_pass_norms),
            ("squared norms", "x.square().sum(1)", norms, _square_sum),
            ("squared norms", "squared_norms (pieces)", norms, squared_norms),
            ("Gram matrix", "x @ x.T (one product)", gram, _one_product),
            ("Gram matrix", "row_gram (pieces)", gram, row_gram),
        ]
        for quantity, method, expected, function in cases:
            error = (function(x).double() - expected).abs().max() / expected.abs().max()
            seconds = _time(function, x, args.repeats)
            print(f"| {label} | {quantity} | {method} | {error:.1e} | {1e3 * seconds:.1f} |")


if __name__ == "__main__":
    main()
