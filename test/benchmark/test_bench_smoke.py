"""Smoke test of the benchmark harness: a tiny run writes a table with the requested cells.

Needs neither backpack-for-pytorch nor Opacus: only backpack_core is measured.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_writes_table(tmp_path):
    command = [
        sys.executable,
        str(REPO / "benchmark" / "run.py"),
        "--quick",
        "--nets",
        "mnist_logreg",
        "--libraries",
        "backpack_core",
        "--extensions",
        "BatchGrad",
        "DiagGGNExact",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr

    table = (tmp_path / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| mnist_logreg (4) |")]
    assert rows, table
    header = next(line for line in table.splitlines() if line.startswith("| net (batch) |"))
    assert "BatchGrad" in header and "DiagGGN" in header

    result = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["net"], c["extension"]): c for c in result["cells"]}
    assert set(cells) == {("mnist_logreg", "BatchGrad"), ("mnist_logreg", "DiagGGNExact")}
    for cell in cells.values():
        entry = cell["libs"]["backpack_core"]
        assert entry["status"] == "ok", entry
        assert entry["ratio"] > 0 and entry["median_s"] > 0
        assert entry["mem_mib"] is not None
    # The ratio of each cell is in the markdown table, in the "ours / BackPACK" layout.
    ratio_row = rows[0]
    assert ratio_row.count(" / ") >= 2, ratio_row


def test_data_path_benchmark_quick_run_prints_its_table():
    command = [
        sys.executable,
        str(REPO / "benchmark" / "data_path.py"),
        "--quick",
        "--problems",
        "mnist_logreg",
        "--share-steps",
        "2",
        "--sweep-runs",
        "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| mnist")]
    assert len(rows) == 1 and rows[0][2].strip() == "3 / 2"
    plain, tensor, deepobs = (float(cell.strip().rstrip(" s")) for cell in rows[0][3:6])
    # with 3 steps and 2 evaluation batches one more epoch is within the noise: only the
    # plain loop's time, measured on its own, is sure to be positive
    assert plain > 0 and all(abs(value) < 60 for value in (tensor, deepobs))
    assert "cifar10_3c3d, tensor path: next()" in done.stdout
