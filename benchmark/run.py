"""Time backpack_core's extensions against BackPACK 1.7.1, torch.func and Opacus.

For each DeepOBS net and extension this measures, side by side in one process, the cost
of forward+backward with the extension relative to plain forward+backward, for
backpack_core and BackPACK 1.7.1; per-sample gradients also by ``torch.func`` and Opacus;
the peak memory of each (library, net, extension) in its own process; and checks each
library's result against backpack_core's. Writes ``benchmark/results/table.md`` and
``benchmark/results/results.json`` and prints the tables.

Usage::

    python benchmark/run.py                       # everything (long; the lead's run)
    python benchmark/run.py --quick               # smoke test, about two minutes
    python benchmark/run.py --nets mnist_mlp --extensions BatchGrad Variance --repeats 11

Cells that cannot finish are reported, not waited for: each runs in a child process
that is killed after ``--cell-timeout`` seconds or above ``--memory-limit-gib``. BackPACK's
KFRA on conv nets is skipped unless ``--include-known-failures``.
"""

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from catalog import (  # noqa: E402
    EXTENSIONS,
    LABELS,
    LIBRARIES,
    NETS,
    PER_SAMPLE_ONLY,
    distribution_version,
    known_failure,
    unavailable_reason,
)
from report import SIDE_BY_SIDE, check_rows, main_table, markdown, per_sample_table  # noqa: E402

QUICK_BATCH = 8
QUICK_NETS = ["mnist_logreg", "mnist_mlp", "mnist_2c2d", "cifar10_3c3d"]


def _child(conn, threads: int) -> None:
    """Entry point of a worker process (imports torch there, not in the parent)."""
    from worker import worker_main

    worker_main(conn, threads)


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Worker:
    """A child process that runs tasks, replaced when it dies, hangs or grows too large.

    Args:
        threads: ``torch.set_num_threads`` in the child (0: torch's default).
        memory_limit_gib: Kill the child when its resident memory exceeds this.
    """

    def __init__(self, threads: int, memory_limit_gib: float):
        self.threads = threads
        self.limit_kib = memory_limit_gib * 2**20
        self.limit_gib = memory_limit_gib
        self.ctx = multiprocessing.get_context("spawn")
        self.proc = None
        self.conn = None
        self.threads_seen = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_child, args=(child, self.threads), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        if not parent.poll(300):
            self.stop()
            raise RuntimeError("the worker process did not start within 300 s")
        self.threads_seen = parent.recv()["threads"]

    def stop(self) -> None:
        """End the child (politely if it is idle, else by SIGKILL)."""
        if self.proc is None:
            return
        if self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(5)
            except (OSError, BrokenPipeError):
                pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        self.proc = self.conn = None

    def run(self, task: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        """Run ``task`` in the child; a dead, slow or bloated child becomes a status."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(task)
        start = time.perf_counter()
        peak_kib = 0
        while True:
            try:
                if self.conn.poll(0.25):
                    answer = self.conn.recv()
                    answer["child_peak_rss_mib"] = peak_kib / 1024
                    return answer
            except (EOFError, OSError):
                pass
            rss = _rss_kib(self.proc.pid)
            peak_kib = max(peak_kib, rss)
            if not self.proc.is_alive():
                code = self.proc.exitcode
                self.stop()
                if code == -9:
                    return {"status": "killed (memory)"}
                if code is not None and code < 0:
                    return {"status": f"killed (signal {-code})"}
                return {"status": f"crashed (exit {code})"}
            if rss > self.limit_kib:
                self.stop()
                return {"status": f"killed (memory > {self.limit_gib:g} GiB)"}
            if time.perf_counter() - start > timeout:
                self.stop()
                return {"status": f"timeout (> {timeout:g} s)"}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nets", nargs="+", default=None, choices=list(NETS), help="default: all (--quick: 4)"
    )
    parser.add_argument("--extensions", nargs="+", default=list(EXTENSIONS))
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs (default 7)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="for every net (default 128 MNIST, 64 CIFAR)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 repeat, 1 warm-up, batch 8, 1 thread, one reused process, "
        "cell timeout 60 s, nets without cifar100_allcnnc",
    )
    parser.add_argument(
        "--cell-timeout", type=float, default=None, help="seconds per task (default 300)"
    )
    parser.add_argument("--memory-limit-gib", type=float, default=None, help="kill a cell above")
    parser.add_argument("--include-known-failures", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument(
        "--reuse-process",
        action="store_true",
        help="one child for all cells (faster; memory numbers then less clean)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's; --quick: 1)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=1e-4, help="correctness tolerance")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    unknown = [e for e in args.extensions if not e[0].isupper()]
    if unknown:
        parser.error(f"not an extension class name: {unknown}")
    if args.quick:
        args.nets = QUICK_NETS if args.nets is None else args.nets
        args.cell_timeout = 60.0 if args.cell_timeout is None else args.cell_timeout
        args.repeats = 1 if args.repeats is None else args.repeats
        args.warmup = 1 if args.warmup is None else args.warmup
        args.batch_size = QUICK_BATCH if args.batch_size is None else args.batch_size
        args.reuse_process = True
        # On a loaded machine two spinning threads per op turn 0.1 ms steps into 100 ms.
        args.threads = 1 if args.threads is None else args.threads
    args.nets = list(NETS) if args.nets is None else args.nets
    args.cell_timeout = 300.0 if args.cell_timeout is None else args.cell_timeout
    args.repeats = 7 if args.repeats is None else args.repeats
    args.warmup = 2 if args.warmup is None else args.warmup
    args.threads = 0 if args.threads is None else args.threads
    if args.memory_limit_gib is None:
        total_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024
        args.memory_limit_gib = round(0.75 * total_kib / 2**20, 1)
    return args


def machine_info(args: argparse.Namespace) -> Dict[str, Any]:
    """Cores, CPU, torch and library versions, load (torch's threads come from the child)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": distribution_version("torch") or "?",
        "threads": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            LABELS[lib]: distribution_version(lib) or "?"
            for lib in args.libraries
            if lib != "torch.func" and not unavailable_reason(lib)
        },
        "load_start": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _libraries_for(extension: str, libraries: List[str]) -> List[str]:
    return [lib for lib in libraries if lib not in PER_SAMPLE_ONLY or extension == "BatchGrad"]


def _task(args, kind: str, net: str, batch: int, extension: str, **extra) -> Dict[str, Any]:
    task = {
        "kind": kind,
        "net": net,
        "batch_size": batch,
        "extension": extension,
        "device": args.device,
        "seed": args.seed,
    }
    task.update(extra)
    return task


def _write(result: Dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(markdown(result))


def _print_cell(cell: Dict[str, Any]) -> None:
    parts = []
    for lib, entry in cell["libs"].items():
        if entry.get("status") == "ok" and "ratio" in entry:
            text = f"{entry['ratio']:.2f}x ({entry['median_s'] * 1e3:.1f} ms, n={entry['repeats']})"
        else:
            text = entry.get("status", "?")
        if entry.get("mem_mib") is not None:
            text += f" {entry['mem_mib']:.0f} MiB"
        parts.append(f"{LABELS[lib]}: {text}")
    checks = [
        f"{LABELS[lib]} rel.diff {c['rel_diff']:.1e}"
        for lib, c in cell.get("checks", {}).items()
        if c.get("rel_diff") is not None
    ]
    line = f"[{cell['net']} / {cell['extension']}] " + "; ".join(parts)
    print(line + (f" | check: {', '.join(checks)}" if checks else ""), flush=True)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run every cell and return the results (also written to ``args.out``)."""
    unavailable = {
        lib: reason for lib in args.libraries if (reason := unavailable_reason(lib)) is not None
    }
    for lib, reason in unavailable.items():
        print(f"note: {LABELS[lib]} skipped: {reason}", flush=True)
    libraries = [lib for lib in args.libraries if lib not in unavailable]
    batch_sizes = {net: args.batch_size or NETS[net].batch_size for net in args.nets}
    result: Dict[str, Any] = {
        "machine": machine_info(args),
        "settings": {
            "nets": args.nets,
            "extensions": args.extensions,
            "libraries": args.libraries,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "cell_timeout": args.cell_timeout,
            "memory_limit_gib": args.memory_limit_gib,
            "include_known_failures": args.include_known_failures,
            "reuse_process": args.reuse_process,
            "quick": args.quick,
            "device": args.device,
            "seed": args.seed,
            "rtol": args.rtol,
            "memory_how": "not measured (--no-memory)",
        },
        "batch_sizes": batch_sizes,
        "unavailable": unavailable,
        "plain": {},
        "cells": [],
    }
    worker = Worker(args.threads, args.memory_limit_gib)

    def submit(task: Dict[str, Any]) -> Dict[str, Any]:
        answer = worker.run(task, args.cell_timeout)
        if not args.reuse_process:
            worker.stop()
        return answer

    try:
        for net in args.nets:
            batch = batch_sizes[net]
            plain_times: List[float] = []
            plain: Dict[str, Any] = {}
            if not args.no_memory:
                probe = submit(_task(args, "probe", net, batch, "BatchGrad", library="plain"))
                plain["mem_mib"] = probe.get("mem_mib")
                if probe.get("mem_method"):
                    result["settings"]["memory_how"] = (
                        f"with /proc VmHWM/ru_maxrss ({probe['mem_method']}), "
                        + (
                            "one fresh child process per (library, net, extension)"
                            if not args.reuse_process
                            else "in one reused process (allocator caches of earlier cells "
                            "can hide part of a later cell's peak)"
                        )
                    )
            result["plain"][net] = plain
            for extension in args.extensions:
                cell: Dict[str, Any] = {"net": net, "extension": extension, "libs": {}}
                runnable = []
                for lib in _libraries_for(extension, libraries):
                    known = known_failure(lib, net, extension)
                    if known and not args.include_known_failures:
                        cell["libs"][lib] = {"status": known}
                        continue
                    if args.no_memory:
                        runnable.append(lib)
                        continue
                    probe = submit(_task(args, "probe", net, batch, extension, library=lib))
                    if probe.get("status") == "ok":
                        runnable.append(lib)
                        cell["libs"][lib] = {"mem_mib": probe["mem_mib"], "probe": probe}
                    else:
                        cell["libs"][lib] = {"status": probe["status"], "probe": probe}
                share = 0.8 * args.cell_timeout / max(len(runnable), 1)
                for lib in list(runnable):
                    step_s = cell["libs"].get(lib, {}).get("probe", {}).get("step_s", 0.0)
                    if 2 * step_s > share:  # the check step and one timed step do not fit
                        runnable.remove(lib)
                        cell["libs"][lib]["status"] = f"too slow to time: 1 step {step_s:.0f} s"
                if runnable:
                    estimates = {
                        lib: cell["libs"].get(lib, {}).get("probe", {}).get("step_s", 0.0)
                        for lib in runnable
                    }
                    timing = submit(
                        _task(
                            args,
                            "time",
                            net,
                            batch,
                            extension,
                            libraries=runnable,
                            repeats=args.repeats,
                            warmup=args.warmup,
                            budget_s=0.8 * args.cell_timeout,
                            check=True,
                            rtol=args.rtol,
                            estimates=estimates,
                        )
                    )
                    if timing.get("status") == "ok":
                        for lib, entry in timing["libs"].items():
                            cell["libs"].setdefault(lib, {}).update(entry)
                        cell["checks"] = timing["checks"]
                        plain_times += timing.get("plain_times_s", [])
                    else:
                        for lib in runnable:
                            cell["libs"].setdefault(lib, {})["status"] = timing["status"]
                        cell["error"] = timing.get("traceback")
                # Keep the side-by-side libraries first, in a fixed order.
                order = [lib for lib in LIBRARIES if lib in cell["libs"]]
                cell["libs"] = {lib: cell["libs"][lib] for lib in order}
                result["cells"].append(cell)
                _print_cell(cell)
                plain["median_s"] = statistics.median(plain_times) if plain_times else None
                result["machine"]["threads"] = worker.threads_seen
                _write(result, args.out)
    finally:
        worker.stop()
    result["machine"]["load_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    _write(result, args.out)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print its tables."""
    args = parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    shown = " / ".join(LABELS[lib] for lib in SIDE_BY_SIDE)
    print(f"\nExtension cost over plain forward+backward ({shown}):")
    print("\n".join(main_table(result, "ratio")))
    if any(c["extension"] == "BatchGrad" for c in result["cells"]):
        print("\nPer-sample gradients, ratio over plain (median seconds), peak memory:")
        print("\n".join(per_sample_table(result)))
    if not args.no_memory:
        print(f"\nPeak memory increase in MiB ({shown}):")
        print("\n".join(main_table(result, "mem_mib")))
    failures = check_rows(result, only_failures=True)
    compared = len(check_rows(result)) - 2
    if failures:
        print(f"\nCORRECTNESS MISMATCHES (rtol {args.rtol:g}):")
        print("\n".join(failures))
    elif compared > 0:
        print(f"\nCorrectness: {compared} comparisons against backpack_core, no mismatch.")
    seconds = time.perf_counter() - started
    print(f"\nWrote {args.out / 'table.md'} and results.json in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
