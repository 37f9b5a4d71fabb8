"""What runs inside the child processes: memory probes and interleaved timing cells.

The parent (``run.py``) sends tasks through a pipe to a worker process started with
``multiprocessing``'s spawn method and reads one answer per task. A task that crashes the
worker, exhausts the memory or exceeds its time limit only loses that worker; the parent
reports the cell and starts a fresh one.

Two kinds of task:

* ``probe``: one library, one (net, extension). Builds everything, records the process's
  resident memory, runs one forward+backward with the extension and reports the peak
  resident memory increase and the step's time. It also tells the parent whether the cell
  can run at all before it is timed.
* ``time``: one (net, extension), all libraries in the same process. Checks each library's
  result against backpack_core's on one seeded step, then times plain and extension steps
  interleaved (plain, ext A, plain, ext B, ...) and reports medians.
"""

import gc
import os
import re
import resource
import statistics
import time
import traceback
import warnings
from typing import Any, Callable, Dict, List

import torch
from catalog import MONTE_CARLO, NETS
from methods import PlainMethod, compare, make_method
from problems import build_net, has_dropout, loss_factory, make_data


# ---------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    return int(match.group(1)) if match else -1


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory increase of a block of code, in MiB.

    On CPU: the peak resident set size (VmHWM, reset before the block where the kernel
    allows it, else ``ru_maxrss`` of the process so far) minus the resident set size
    before the block. On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated
    memory before the block.

    Args:
        device: The device the tensors live on.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""

    def start(self) -> None:
        """Mark the baseline."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
            return
        self.base = _status_kib("VmRSS") * 1024
        if _reset_peak_rss():
            self.method = "VmHWM reset"
        else:
            self.method = "ru_maxrss"

    def stop(self) -> float:
        """The peak increase since :meth:`start`, in MiB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "VmHWM reset":
            peak = _status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self.base, 0) / 2**20


# ---------------------------------------------------------------------------- timing
def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    def timed(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def _setup(task: Dict[str, Any]):
    spec = NETS[task["net"]]
    device = torch.device(task["device"])
    net = build_net(spec, seed=task["seed"]).to(device)
    x, y = make_data(spec, task["batch_size"], device, seed=task["seed"] + 1)
    return spec, device, net, x, y


def run_probe(task: Dict[str, Any]) -> Dict[str, Any]:
    """One library's first step on one (net, extension): peak memory and time.

    The baseline is taken after setup: the net copies, the data, and one plain
    forward+backward with a single sample (which loads the kernels and thread pools).
    """
    spec, device, net, x, y = _setup(task)
    library = task["library"]
    method = make_method(library, net, loss_factory, task["extension"])
    warm = PlainMethod(net, loss_factory)
    warm.step(x[:1], y[:1])
    del warm
    meter = MemoryMeter(device)
    meter.start()
    seconds = _timer(device)(lambda: method.step(x, y))
    mem = meter.stop()
    return {"status": "ok", "mem_mib": mem, "mem_method": meter.method, "step_s": seconds}


def run_timing(task: Dict[str, Any]) -> Dict[str, Any]:
    """Check, then time plain and extension steps of several libraries interleaved."""
    started = time.perf_counter()
    spec, device, net, x, y = _setup(task)
    extension = task["extension"]
    timed = _timer(device)
    out: Dict[str, Any] = {"status": "ok", "libs": {}, "checks": {}}

    plain = PlainMethod(net, loss_factory)
    methods = {}
    for library in task["libraries"]:
        try:
            methods[library] = make_method(library, net, loss_factory, extension)
        except Exception as err:  # reported per library, the others still run
            out["libs"][library] = {"status": f"error: {type(err).__name__}: {err}"}

    # Correctness: one seeded step per library, compared with backpack_core's result.
    results = {}
    for library, method in list(methods.items()):
        torch.manual_seed(task["seed"] + 2)
        try:
            method.step(x, y)
        except Exception as err:
            out["libs"][library] = {"status": f"error: {type(err).__name__}: {err}"}
            del methods[library]
            continue
        if task["check"]:
            results[library] = method.result()
    if "backpack_core" in results:
        reference = results["backpack_core"]
        names = [name for name, _ in net.named_parameters()]
        for library, result in results.items():
            if library == "backpack_core":
                continue
            shapes_only = extension in MONTE_CARLO
            entry = compare(result, reference, shapes_only=shapes_only, names=names)
            entry["shapes_only"] = shapes_only
            off = entry["rel_diff"] is not None and entry["rel_diff"] > task["rtol"]
            if library == "torch.func" and has_dropout(net) and off:
                entry["note"] = "dropout masks differ (vmap draws its own); not comparable"
            out["checks"][library] = entry
    del results
    gc.collect()

    # Warm-up, which also estimates each library's cost to fit the time budget. A library
    # whose probe step was slow skips the warm-up (its first steps were the probe and check).
    plain_times: List[float] = []
    estimates = task.get("estimates", {})
    share = task["budget_s"] / max(len(methods), 1)
    pair_cost = {}
    for library, method in methods.items():
        estimate = estimates.get(library, 0.0)
        if estimate * (task["warmup"] + 2) > share:
            pair_cost[library] = estimate
            continue
        for _ in range(task["warmup"]):
            tp = timed(lambda: plain.step(x, y))
            pair_cost[library] = tp + timed(lambda m=method: m.step(x, y))
    remaining = task["budget_s"] - (time.perf_counter() - started)
    share = remaining / max(len(methods), 1)
    repeats = {
        library: max(1, min(task["repeats"], int(share / pair_cost[library])))
        if pair_cost.get(library)
        else task["repeats"]
        for library in methods
    }

    times: Dict[str, List[float]] = {library: [] for library in methods}
    ratios: Dict[str, List[float]] = {library: [] for library in methods}
    order = list(methods)
    for r in range(max(repeats.values(), default=0)):
        shift = r % max(len(order), 1)
        for library in order[shift:] + order[:shift]:  # rotate to spread drifts evenly
            if r >= repeats[library]:
                continue
            tp = timed(lambda: plain.step(x, y))
            te = timed(lambda m=methods[library]: m.step(x, y))
            plain_times.append(tp)
            times[library].append(te)
            ratios[library].append(te / tp)

    for library in methods:
        out["libs"][library] = {
            "status": "ok",
            "median_s": statistics.median(times[library]),
            "ratio": statistics.median(ratios[library]),
            "repeats": len(times[library]),
            "times_s": times[library],
            "ratios": ratios[library],
        }
    out["plain_median_s"] = statistics.median(plain_times) if plain_times else None
    out["plain_times_s"] = plain_times
    return out


def run_task(task: Dict[str, Any]) -> Dict[str, Any]:
    """Run one task; an exception becomes an ``error`` status, not a dead worker."""
    try:
        if task["kind"] == "probe":
            return run_probe(task)
        return run_timing(task)
    except Exception as err:
        return {
            "status": f"error: {type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=6),
        }
    finally:
        gc.collect()


def worker_main(conn, threads: int) -> None:
    """The child process: answer tasks from ``conn`` until it sends ``None``.

    Args:
        conn: The child's end of a ``multiprocessing.Pipe``.
        threads: ``torch.set_num_threads`` value (0: torch's default).
    """
    if threads:
        torch.set_num_threads(threads)
    # Opacus's hooks warn on every step that the input needs no gradient; that is expected.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    conn.send({"pid": os.getpid(), "threads": torch.get_num_threads()})
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(run_task(task))
