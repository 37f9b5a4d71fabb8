"""Each ``backobs`` command imports only what it uses (checked in fresh interpreters).

``backobs --help``, ``backobs report --help``, ``backobs sweep --help`` and ``backobs report
RESULTS_DIR`` need neither torch nor DeepOBS nor Dask; ``backobs run`` does.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEAVY = ("torch", "torchvision", "deepobs", "distributed")

_PROBE = """
import contextlib, io, json, sys
from backobs import cli
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = cli.main(json.loads(sys.argv[1]))
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                  "modules": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def imported_by(argv, cwd):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([str(a) for a in argv])],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "BACKOBS_SYNTHETIC_DATA"},
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_results_folder(root):
    """The one-run results folder that ``benchmark/startup.py`` times the report on."""
    path = os.path.join(ROOT, "benchmark", "startup.py")
    spec = importlib.util.spec_from_file_location("startup_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_results(root)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["report", "--help"], ["sweep", "--help"]],
    ids=["backobs --help", "report --help", "sweep --help"],
)
def test_help_imports_no_torch_deepobs_or_dask(argv, tmp_path):
    outcome = imported_by(argv, tmp_path)
    assert outcome["code"] == 0
    assert "usage: backobs" in outcome["stdout"]
    assert outcome["modules"] == []


def test_report_of_a_folder_imports_no_torch_deepobs_or_dask(tmp_path):
    write_results_folder(tmp_path / "results")
    outcome = imported_by(["report", tmp_path / "results", "-o", tmp_path / "out"], tmp_path)
    assert outcome["code"] == 0, outcome["stderr"]
    assert (tmp_path / "out" / "report.md").is_file()
    assert outcome["modules"] == []


def test_run_help_imports_what_a_run_needs(tmp_path):
    outcome = imported_by(["run", "--optimizer", "kfac", "--help"], tmp_path)
    assert outcome["code"] == 0
    assert "--damping" in outcome["stdout"]
    assert "torch" in outcome["modules"]


def test_import_backobs_alone_loads_no_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import sys, backobs; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert result.stdout.strip() == "False"
