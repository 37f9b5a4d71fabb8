"""example/supported.py prints the support table."""

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "example" / "supported.py"


def test_supported_script_prints_table():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("✔") == 15
    assert result.stdout.count("❌") == 5
    assert "~svhn_wrn164~" in result.stdout and "batch normalization" in result.stdout
