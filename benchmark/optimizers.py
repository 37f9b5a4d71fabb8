"""Time per training step of each optimizer of ``backobs.optim``, relative to SGD's.

A training step is what the runner does: ``zero_grad``, forward, backward (inside
``backpack(*optimizer.extensions())``), ``step()``. Every optimizer trains its own copy of
the same DeepOBS net (``nn.Flatten`` swapped in, as in the rest of the benchmark) on one
random mini-batch with mean cross-entropy (no l2 term: the net and the loss only). A repeat
runs each optimizer for a cycle of steps (at least 0.2 s, and a multiple of
``inverse_interval`` steps for the interval variant, so that each cycle holds its share of
inverse computations) right after the others, and the table reports the median over the
repeats of the mean step time (after one warm-up cycle).

Second table: a diagonal optimizer's step over the forward and backward pass with its
extension alone (no ``step()``), to show what the update itself costs.

    python benchmark/optimizers.py                      # the four nets, 5 repeats
    python benchmark/optimizers.py --nets mnist_logreg --repeats 2
"""

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from catalog import NETS  # noqa: E402
from problems import build_net, loss_factory, make_data  # noqa: E402

from backobs.optim import make_optimizer, required_extensions  # noqa: E402
from backpack_core import backpack, extend  # noqa: E402
from backpack_core.extensions import DiagGGNExact, DiagGGNMC  # noqa: E402

# CPU seconds of this process: on a shared machine the wall clock also counts the other
# processes' time slices (see --clock).
CLOCK = time.process_time
DEFAULT_NETS = ("mnist_logreg", "mnist_mlp", "mnist_2c2d", "cifar10_3c3d")
LR, DAMPING = 1e-3, 1e-2

# (row label, optimizer name, hyperparameters besides lr)
CONFIGS = [
    ("sgd", "sgd", {}),
    ("momentum", "momentum", {}),
    ("adam", "adam", {}),
    ("zero", "zero", {"damping": DAMPING}),
    ("diag_ggn_exact", "diag_ggn_exact", {"damping": DAMPING}),
    ("diag_ggn_mc", "diag_ggn_mc", {"damping": DAMPING}),
    ("kfac", "kfac", {"damping": DAMPING}),
    ("kflr", "kflr", {"damping": DAMPING}),
    ("kfra", "kfra", {"damping": DAMPING}),
    ("kfac, inverse_interval=20", "kfac", {"damping": DAMPING, "inverse_interval": 20}),
]
# The diagonal optimizers and the extension each one needs.
DIAGONALS = {"diag_ggn_exact": DiagGGNExact, "diag_ggn_mc": DiagGGNMC}


class Trainer:
    """One optimizer on its own copy of the net."""

    def __init__(self, net, name, hyperparams, inputs, labels):
        self.net = extend(copy.deepcopy(net))
        self.lossfunc = extend(loss_factory())
        self.optimizer = make_optimizer(name, self.net.parameters(), lr=LR, **hyperparams)
        self.inputs, self.labels = inputs, labels
        self.interval = hyperparams.get("inverse_interval", 1)
        self.cycle = self.interval
        self.phases = []  # (zero_grad + forward + backward, step) seconds of each step

    def step(self):
        """One training step: forward, backward with the extensions the step needs, step."""
        start = CLOCK()
        self.optimizer.zero_grad()
        loss = self.lossfunc(self.net(self.inputs), self.labels)
        with backpack(*required_extensions(self.optimizer)):
            loss.backward()
        middle = CLOCK()
        self.optimizer.step()
        self.phases.append((middle - start, CLOCK() - middle))

    def warm_up(self, seconds=0.2):
        """Take one cycle of steps, then lengthen the cycle to at least ``seconds``."""
        start = CLOCK()
        for _ in range(self.cycle):
            self.step()
        per_step = max((CLOCK() - start) / self.cycle, 1e-6)
        cycles = max(1, math.ceil(seconds / per_step / self.interval))
        self.cycle = self.interval * cycles

    def time_cycle(self):
        """Mean seconds per step over one cycle."""
        start = CLOCK()
        for _ in range(self.cycle):
            self.step()
        return (CLOCK() - start) / self.cycle


class ExtensionOnly(Trainer):
    """Forward and backward with a diagonal extension, without the optimizer's step."""

    def __init__(self, net, extension, inputs, labels):
        super().__init__(net, "sgd", {}, inputs, labels)
        self.extension = extension

    def step(self):
        """Forward and backward with the extension only."""
        self.optimizer.zero_grad()
        loss = self.lossfunc(self.net(self.inputs), self.labels)
        with backpack(self.extension()):
            loss.backward()


def measure(net_name, batch_size, repeats, configs):
    spec = NETS[net_name]
    net = build_net(spec)
    inputs, labels = make_data(spec, batch_size, torch.device("cpu"))
    trainers = {label: Trainer(net, name, hp, inputs, labels) for label, name, hp in configs}
    for label, extension in DIAGONALS.items():
        if label in trainers:
            trainers[f"{label} extension only"] = ExtensionOnly(net, extension, inputs, labels)
    times = {label: [] for label in trainers}
    for trainer in trainers.values():
        trainer.warm_up()
        trainer.phases.clear()
    for _ in range(repeats):
        for label, trainer in trainers.items():
            times[label].append(trainer.time_cycle())
    results = {label: statistics.median(values) for label, values in times.items()}
    for label in ("sgd", *DIAGONALS):
        if label in trainers:
            backward, step = zip(*trainers[label].phases)
            results[f"{label} step share"] = statistics.median(step) / statistics.median(backward)
    return results


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _milliseconds(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def tables(results, nets, configs):
    header = "| optimizer | " + " | ".join(f"{n} ({b})" for n, b in nets) + " |"
    rule = "|---" * (len(nets) + 1) + "|"
    lines = ["Step time over SGD's (median seconds per step):", "", header, rule]
    for label, _, _ in configs:
        cells = []
        for net, _ in nets:
            seconds = results[net][label]
            ratio = seconds / results[net]["sgd"]
            cells.append(f"{ratio:.2f} ({_milliseconds(seconds)})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Diagonal optimizer's step over its extension's forward+backward alone: separate runs "
        "(optimizer / extension only, medians) and within the same steps (1 + median step() "
        "/ median zero_grad+forward+backward):",
        "",
    ]
    lines += [header, rule]
    for label in DIAGONALS:
        if any(label == c[0] for c in configs):
            cells = []
            for net, _ in nets:
                separate = results[net][label] / results[net][f"{label} extension only"]
                within = 1 + results[net][f"{label} step share"]
                cells.append(f"{separate:.3f} / {within:.3f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [f"– / {1 + results[net]['sgd step share']:.3f}" for net, _ in nets]
    lines.append("| sgd (its step over its plain backward) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS), choices=sorted(NETS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the net's")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        choices=[c[0] for c in CONFIGS],
        help="rows to measure (default: all; sgd is always measured)",
    )
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: CPU time = work)"
    )
    parser.add_argument(
        "--clock",
        choices=("process", "wall"),
        default="process",
        help="process: CPU seconds of this process (default; robust on a shared machine); "
        "wall: elapsed seconds",
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    torch.set_num_threads(args.threads)
    if args.repeats < 1:
        parser.error(f"--repeats must be a positive integer, got {args.repeats}")
    configs = CONFIGS
    if args.optimizers:
        configs = [c for c in CONFIGS if c[0] == "sgd" or c[0] in args.optimizers]
    torch.manual_seed(0)
    load_start = os.getloadavg()
    nets, results = [], {}
    for net_name in args.nets:
        batch_size = args.batch_size or NETS[net_name].batch_size
        nets.append((net_name, batch_size))
        print(f"[optimizers] {net_name} ({batch_size}) ...", file=sys.stderr, flush=True)
        results[net_name] = measure(net_name, batch_size, args.repeats, configs)
        print(tables(results, nets, configs), file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    machine = (
        f"Machine: {_cpu_name()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CPU, {args.clock} "
        "clock; load average "
        f"{' '.join(f'{x:.1f}' for x in load_start)} at start, "
        f"{' '.join(f'{x:.1f}' for x in load_end)} at end; {args.repeats} repeats; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )
    text = machine + "\n\n" + tables(results, nets, configs)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            file.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
