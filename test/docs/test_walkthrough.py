"""The developer manual's walkthrough runs as written: its example script and its test.

``docs/developer_manual.org`` builds the example extension ``BatchCosineGrad`` in stages
whose code lives in ``docs/examples/``. These tests run that code as the manual tells a
contributor to (from the repository root, in a fresh interpreter) and check the outputs the
manual shows, so that the manual cannot silently drift from the engine.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
SCRIPT = "docs/examples/use_batch_cosine_grad.py"
MANUAL = ROOT / "docs" / "developer_manual.org"


def manual_output(command):
    """The lines of the example block that follows ``command``'s bash block in the manual."""
    lines = MANUAL.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.strip() == command and lines[index - 1].strip().lower() == "#+begin_src bash":
            start = next(
                j for j in range(index, len(lines)) if lines[j].strip() == "#+BEGIN_EXAMPLE"
            )
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "#+END_EXAMPLE")
            return [line.rstrip() for line in lines[start + 1 : end] if line.strip()]
    raise AssertionError(f"the manual shows no output of {command!r}")


def assert_shown_lines_in_order(shown, output):
    """Each shown line (``...`` = any text) matches a later output line; carets are skipped.

    Lines of ``^`` only (Python's error markers) vary between Python versions.
    """
    actual = [line.rstrip() for line in output.splitlines()]
    position = 0
    for line in shown:
        if line.strip() == "..." or not line.strip().strip("^"):
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in line.split("...")))
        for j in range(position, len(actual)):
            if pattern.fullmatch(actual[j]):
                position = j + 1
                break
        else:
            raise AssertionError(f"manual line not in the output: {line!r}\n{output}")


def run(*command, timeout=120):
    environment = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def test_example_files_exist():
    for name in ("batch_cosine_grad.py", "use_batch_cosine_grad.py", "test_batch_cosine_grad.py"):
        assert (EXAMPLES / name).is_file(), name
    manual = (ROOT / "docs" / "developer_manual.org").read_text(encoding="utf-8")
    assert "docs/examples/batch_cosine_grad.py" in manual


def test_scaffold_stage_fails_after_the_debug_lines():
    result = run(sys.executable, SCRIPT, "--stage", "scaffold", "--debug")
    assert result.returncode != 0
    shown = manual_output(f"python {SCRIPT} --stage scaffold --debug")
    assert_shown_lines_in_order(shown, result.stdout + result.stderr)
    assert "[DEBUG] Running extension BatchCosineGradScaffold on CrossEntropyLoss()" in (
        result.stdout
    )
    assert "Linear(in_features=784, out_features=10, bias=True)" in result.stdout
    assert result.stderr.rstrip().endswith(
        "BatchCosineGradScaffold does not implement compute(ctx, name), which returns the "
        "value stored as param.batch_cosine"
    )


def test_dummy_stage_stores_the_placeholder():
    result = run(sys.executable, SCRIPT, "--stage", "dummy", "--debug")
    assert result.returncode == 0, result.stderr
    assert "Executing BatchCosineGradDummy for weight of Linear" in result.stdout
    assert "  .batch_cosine.shape: 42" in result.stdout
    assert result.stdout.splitlines() == manual_output(f"python {SCRIPT} --stage dummy --debug")


def test_final_stage_prints_cosine_matrices():
    result = run(sys.executable, SCRIPT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == manual_output(f"python {SCRIPT}")
    assert lines.count("  .batch_cosine.shape: torch.Size([4, 4])") == 2
    rows = [line.split() for line in lines if line.startswith("    ")]
    assert len(rows) == 8
    for index, row in enumerate(rows):
        assert row[index % 4] == "+1.000"


def test_walkthrough_test_passes():
    result = run(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "docs/examples/test_batch_cosine_grad.py",
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout
