"""KFAC's conventions side by side: backpack_core against curvlinops and ASDL.

What a KFAC optimizer step needs is the mini-batch gradient and the Kronecker factors. This
times, per DeepOBS net, in one process and interleaved (the order rotates every repeat):

- ``plain``: forward+backward of an un-extended copy (the baseline of the ratios);
- ``backpack_core <approx>``: one forward+backward with ``KFAC(mc_samples=1,
  kfac_approx=approx)`` active, which gives both, for approx in backpack, expand, reduce;
- ``curvlinops <approx>``: a plain forward+backward for the gradient, then a fresh
  ``KFACLinearOperator(fisher_type="mc", mc_samples=1, kfac_approx=approx)`` and its
  ``compute_kronecker_factors()`` on the same mini-batch;
- ``ASDL``: a plain forward+backward, then ``FisherMCCrossEntropy`` with
  ``fisher_shapes=["kron"]`` (KFC's expand convention).

It also prints ``tr(B) tr(A) / tr(G)`` of one conv layer's weight for the three conventions,
``G`` the layer's exact GGN block from ``torch.func`` (``--skip-traces`` to leave it out).

Usage::

    python benchmark/kfac_conventions.py                   # both nets, 7 repeats
    python benchmark/kfac_conventions.py --nets mnist_2c2d --repeats 3 --threads 1

Needs the ``bench`` extra (curvlinops-for-pytorch, asdfghjkl); a missing peer is reported
and skipped. Writes ``benchmark/results/kfac_conventions.json`` (git-ignored).
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import torch  # noqa: E402
from catalog import NETS  # noqa: E402
from problems import build_net, loss_factory, make_data  # noqa: E402
from torch import nn  # noqa: E402

APPROXIMATIONS = ("backpack", "expand", "reduce")
DEFAULT_NETS = ("mnist_2c2d", "cifar10_3c3d")


def _plain_step(net: nn.Module, loss: nn.Module) -> Callable:
    def step(x, y):
        net.zero_grad(set_to_none=True)
        loss(net(x), y).backward()

    return step


def backpack_core_step(net: nn.Module, approx: str) -> Callable:
    """One forward+backward with ``KFAC(mc_samples=1, kfac_approx=approx)``."""
    from backpack_core import backpack, extend
    from backpack_core.extensions import KFAC

    net, loss = extend(copy.deepcopy(net)), extend(loss_factory())
    extension = KFAC(mc_samples=1, kfac_approx=approx)

    def step(x, y):
        net.zero_grad(set_to_none=True)
        with backpack(extension):
            loss(net(x), y).backward()

    return step


def curvlinops_step(net: nn.Module, approx: str) -> Callable:
    """A plain forward+backward, then curvlinops' KFAC factors of the same mini-batch."""
    from curvlinops import KFACLinearOperator

    net, loss = copy.deepcopy(net), loss_factory()
    params = [p for p in net.parameters() if p.requires_grad]
    plain = _plain_step(net, loss)

    def step(x, y):
        plain(x, y)
        operator = KFACLinearOperator(
            net,
            loss,
            params,
            [(x, y)],
            fisher_type="mc",
            mc_samples=1,
            kfac_approx=approx,
            check_deterministic=False,
            num_data=x.shape[0],
            num_per_example_loss_terms=1,
        )
        operator.compute_kronecker_factors()

    return step


def asdl_step(net: nn.Module) -> Callable:
    """A plain forward+backward, then ASDL's Monte-Carlo Kronecker factors (KFC)."""
    from asdl import FISHER_MC, LOSS_CROSS_ENTROPY, SHAPE_KRON, FisherConfig, get_fisher_maker

    net, loss = copy.deepcopy(net), loss_factory()
    plain = _plain_step(net, loss)
    config = FisherConfig(
        fisher_type=FISHER_MC,
        fisher_shapes=[SHAPE_KRON],
        loss_type=LOSS_CROSS_ENTROPY,
        n_mc_samples=1,
    )
    maker = get_fisher_maker(net, config)

    def step(x, y):
        plain(x, y)
        maker.setup_model_call(net, x)
        maker.forward_and_backward(data_size=x.shape[0])

    return step


def make_steps(net: nn.Module, peers: bool) -> Dict[str, Callable]:
    """The timed methods of one net by label (peers that fail to import are reported)."""
    steps = {"plain": _plain_step(copy.deepcopy(net), loss_factory())}
    for approx in APPROXIMATIONS:
        steps[f"backpack_core {approx}"] = backpack_core_step(net, approx)
    if not peers:
        return steps
    for approx in ("expand", "reduce"):
        try:
            steps[f"curvlinops {approx}"] = curvlinops_step(net, approx)
        except ImportError as err:
            print(f"note: curvlinops skipped ({err}); pip install -e '.[bench]'")
            break
    try:
        steps["ASDL expand"] = asdl_step(net)
    except ImportError as err:
        print(f"note: ASDL skipped ({err}); pip install -e '.[bench]'")
    return steps


def time_net(name: str, batch_size: int, repeats: int, warmup: int, peers: bool) -> dict:
    """Median seconds of every method on one net, interleaved with plain steps."""
    spec = NETS[name]
    net = build_net(spec, seed=0)
    x, y = make_data(spec, batch_size, torch.device("cpu"), seed=1)
    steps = make_steps(net, peers)
    labels = [label for label in steps if label != "plain"]
    times: Dict[str, List[float]] = {label: [] for label in steps}
    ratios: Dict[str, List[float]] = {label: [] for label in labels}

    def timed(label: str) -> float:
        start = time.perf_counter()
        steps[label](x, y)
        return time.perf_counter() - start

    for _ in range(warmup):
        for label in steps:
            timed(label)
    for r in range(repeats):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            plain = timed("plain")
            seconds = timed(label)
            times["plain"].append(plain)
            times[label].append(seconds)
            ratios[label].append(seconds / plain)
    return {
        "batch_size": batch_size,
        "median_s": {label: statistics.median(t) for label, t in times.items()},
        "ratio": {label: statistics.median(r) for label, r in ratios.items()},
        "times_s": times,
    }


def trace_ratios(side: int, seed: int = 0) -> Dict[str, float]:
    """``tr(B) tr(A) / tr(G)`` of the weight of ``Conv2d(3, 4, 3)`` with ``side**2`` outputs.

    The net is ``Conv2d(3, 4, 3), ReLU, Flatten, Linear(4 * side**2, 5)`` with mean
    cross-entropy on 4 inputs uniform in [0, 1]; ``G`` is the exact GGN block of the conv
    weight, computed with ``torch.func`` (per-sample Jacobians and loss Hessians).
    """
    from torch.func import functional_call, hessian, jacrev, vmap

    from backpack_core import backpack, extend
    from backpack_core.extensions import KFLR

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, 5)
    ).double()
    X = torch.rand(4, 3, side + 2, side + 2, dtype=torch.float64)
    y = torch.randint(5, (4,))
    params = {n: p.detach() for n, p in net.named_parameters()}

    def output_of(weight, x):
        return functional_call(net, {**params, "0.weight": weight}, (x.unsqueeze(0),))[0]

    def loss_of(output, target):  # one summand of the mean loss
        return nn.functional.cross_entropy(output, target) / X.shape[0]

    weight = params["0.weight"]
    jac = vmap(jacrev(output_of), in_dims=(None, 0))(weight, X).flatten(2)  # [N, C, P]
    outputs = vmap(output_of, in_dims=(None, 0))(weight, X)
    hess = vmap(hessian(loss_of))(outputs, y)  # [N, C, C]
    exact_trace = torch.einsum("ncp,ncd,ndp->", jac, hess, jac)

    model, loss = extend(copy.deepcopy(net)), extend(nn.CrossEntropyLoss())
    ratios = {}
    for approx in APPROXIMATIONS:
        model.zero_grad()
        with backpack(KFLR(kfac_approx=approx)):
            loss(model(X), y).backward()
        B, A = model[0].weight.kflr
        ratios[approx] = (B.trace() * A.trace() / exact_trace).item()
    return ratios


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), choices=list(NETS))
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 MNIST, 64 CIFAR")
    parser.add_argument("--repeats", type=int, default=7, help="timed pairs per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--no-peers", action="store_true", help="backpack_core only")
    parser.add_argument("--skip-traces", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Time the cells, print the tables, write the JSON."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_start": os.getloadavg(),
        "repeats": args.repeats,
        "nets": {},
    }
    for name in args.nets:
        batch = args.batch_size or NETS[name].batch_size
        cell = time_net(name, batch, args.repeats, args.warmup, not args.no_peers)
        result["nets"][name] = cell
        print(f"\n{name} (batch {batch}), median of {args.repeats}:")
        print(f"  {'plain':24s} {cell['median_s']['plain'] * 1e3:8.1f} ms")
        for label, ratio in cell["ratio"].items():
            seconds = cell["median_s"][label]
            print(f"  {label:24s} {seconds * 1e3:8.1f} ms  {ratio:5.2f}x plain", flush=True)
    if not args.skip_traces:
        result["trace_ratios"] = {}
        print("\ntr(B) tr(A) / tr(GGN block), one conv layer (Conv2d(3, 4, 3)):")
        for side in (4, 8, 16):
            ratios = trace_ratios(side)
            result["trace_ratios"][side * side] = ratios
            text = ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
            print(f"  {side * side:4d} output positions: {text}")
    result["load_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kfac_conventions.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
