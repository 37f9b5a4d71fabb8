"""Peak memory and time of plain training steps with an extended model against without.

``extend(model)`` installs forward hooks that keep, for each module call, what the module's
derivatives read until the backward pass. Plain training (SGD, no ``with backpack(...)``)
should then hold nothing beyond what autograd holds for its own backward. This script
measures it: 100 SGD steps (forward, backward, update) on random data, for an extended
model and for an un-extended one, each in a fresh child process, on DeepOBS's mnist_2c2d
(batch 128) and cifar10_3c3d (batch 64) architectures, built here with ``torch.nn``
(DeepOBS's TensorFlow "same" padding as fixed ``nn.ZeroPad2d`` modules).

Peak memory: the child warms up with two steps, resets the kernel's peak-RSS counter
(``VmHWM``, by writing ``5`` to ``/proc/self/clear_refs``), runs the steps and reports the
peak RSS over them minus the RSS before them (and the peak itself). The children run with
``MALLOC_MMAP_THRESHOLD_=65536``: every tensor above 64 KiB gets a mapping of its own that
is returned at free, so RSS follows the live tensors (glibc's default raises the threshold
after the first frees and then keeps freed activations in the heap, which hides the peak).
Time: median and mean per step. With ``--repeats R`` the four children run R times (the
plain/extended order alternating), and the table gives the median over the repeats of each
column (on a shared machine single runs' times vary by +-30 %).

Usage::

    python benchmark/memory_plain.py                       # both nets, 100 steps
    python benchmark/memory_plain.py --nets mnist_2c2d --steps 50 --threads 2
    PYTHONPATH=/path/to/other/checkout python benchmark/memory_plain.py   # another version
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

NETS = {"mnist_2c2d": 128, "cifar10_3c3d": 64}


def build(name: str):
    """The net ``name`` (DeepOBS shapes) and its input shape."""
    from torch import nn

    if name == "mnist_2c2d":
        net = nn.Sequential(
            nn.ZeroPad2d(2),
            nn.Conv2d(1, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.ZeroPad2d(2),
            nn.Conv2d(32, 64, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(7 * 7 * 64, 1024),
            nn.ReLU(),
            nn.Linear(1024, 10),
        )
        return net, (1, 28, 28)
    if name == "cifar10_3c3d":
        same_pool = (0, 1, 0, 1)  # TF "same" for a 3x3/2 pool on 28, 12 and 6 pixels
        net = nn.Sequential(
            nn.Conv2d(3, 64, 5),
            nn.ReLU(),
            nn.ZeroPad2d(same_pool),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 96, 3),
            nn.ReLU(),
            nn.ZeroPad2d(same_pool),
            nn.MaxPool2d(3, 2),
            nn.ZeroPad2d(1),
            nn.Conv2d(96, 128, 3),
            nn.ReLU(),
            nn.ZeroPad2d(same_pool),
            nn.MaxPool2d(3, 2),
            nn.Flatten(),
            nn.Linear(3 * 3 * 128, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )
        return net, (3, 32, 32)
    raise ValueError(f"unknown net {name}")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(name: str, extended: bool, steps: int, threads: int) -> dict:
    """Run ``steps`` plain SGD steps in this process; peak RSS increase and step times."""
    import torch
    from torch import nn

    import backpack_core

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, input_shape = build(name)
    batch = NETS[name]
    loss_function = nn.CrossEntropyLoss()
    if extended:
        net = backpack_core.extend(net)
        loss_function = backpack_core.extend(loss_function)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    X = torch.randn(batch, *input_shape)
    y = torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad()
        loss_function(net(X), y).backward()
        optimizer.step()

    for _ in range(2):
        step()
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _status_kib("VmRSS")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    return {
        "net": name,
        "extended": extended,
        "batch": batch,
        "steps": steps,
        "peak_increase_mib": (peak - before) / 1024,
        "peak_rss_mib": peak / 1024,
        "peak_reset": reset,
        "median_step_ms": 1e3 * statistics.median(times),
        "mean_step_ms": 1e3 * statistics.mean(times),
        "backpack_core": os.path.dirname(backpack_core.__file__),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("NET", "EXTENDED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, extended = args.child[0], args.child[1] == "1"
        print(json.dumps(child(name, extended, args.steps, args.threads)))
        return

    runs = {}
    for repeat in range(args.repeats):
        for name in args.nets:
            for extended in (False, True) if repeat % 2 == 0 else (True, False):
                command = [sys.executable, __file__, "--child", name, str(int(extended))]
                command += ["--steps", str(args.steps), "--threads", str(args.threads)]
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
                output = subprocess.run(
                    command, check=True, capture_output=True, text=True, env=env
                )
                result = json.loads(output.stdout.strip().splitlines()[-1])
                runs.setdefault((name, extended), []).append(result)
    results = []
    for name in args.nets:
        for extended in (False, True):
            result = dict(runs[(name, extended)][0])
            for key in ("peak_increase_mib", "peak_rss_mib", "median_step_ms", "mean_step_ms"):
                result[key] = statistics.median(run[key] for run in runs[(name, extended)])
            result["repeats"] = args.repeats
            results.append(result)
    print(f"backpack_core from {results[0]['backpack_core']}")
    print(
        f"{args.steps} plain SGD steps per case, {args.threads} thread(s), one process each, "
        f"median over {args.repeats} repeat(s)"
    )
    print()
    print(
        "| net | batch | model | peak RSS increase (MiB) | peak RSS (MiB) | median step (ms) "
        "| mean step (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for result in results:
        model = "extended" if result["extended"] else "plain"
        print(
            f"| {result['net']} | {result['batch']} | {model} | "
            f"{result['peak_increase_mib']:.1f} | {result['peak_rss_mib']:.1f} | "
            f"{result['median_step_ms']:.1f} | "
            f"{result['mean_step_ms']:.1f} |"
        )
    if not all(result["peak_reset"] for result in results):
        print("(peak not reset: /proc/self/clear_refs not writable; peak is since start)")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
