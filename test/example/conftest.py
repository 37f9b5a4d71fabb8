"""Run the example scripts as a user does: in a fresh interpreter, from the command line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "example"


@pytest.fixture
def run_example(tmp_path):
    """Run ``example/<script>`` in a fresh interpreter inside ``tmp_path``."""

    def run(script, *arguments):
        environment = dict(os.environ)
        environment.pop("BACKOBS_SYNTHETIC_DATA", None)  # the scripts' own flags decide
        return subprocess.run(
            [sys.executable, str(EXAMPLE_DIR / script), *map(str, arguments)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environment,
            timeout=300,
        )

    return run
