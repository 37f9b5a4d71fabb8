"""example/run.py as a user runs it: the demo, and one clear line for what is unsupported."""

import glob


def test_demo_prints_evaluations_and_extension_shapes(run_example, tmp_path):
    result = run_example("run.py", "mnist_logreg", "--lr", 0.1, "--synthetic-data")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    block = "[backobs] Extension: BatchGrad\n  Parameter 0: Shape (3, 10, 784)\n"
    assert out.count(block + "  Parameter 1: Shape (3, 10)\n") == 3
    for line in ("Evaluating after 0 of 1 epochs...", "Evaluating after 1 of 1 epochs..."):
        assert line in out
    assert out.count("TRAIN: loss ") == out.count("VALID: loss ") == out.count("TEST: loss ") == 2
    assert "first 10 mini-batches" in out and "stops after 3 steps" in out
    assert glob.glob(str(tmp_path / "results" / "mnist_logreg" / "SGD" / "*" / "*.json"))
    assert glob.glob(str(tmp_path / "results" / "mnist_logreg" / "SGD" / "*" / "*.steps.jsonl"))


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("run.py: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_active_l2_ends_with_one_line(run_example):
    result = run_example("run.py", "cifar10_3c3d", "--lr", 0.1, "--synthetic-data")
    assert_one_line_error(result, "cifar10_3c3d", "l2", "--l2_reg 0.0")
    assert "Extension" not in result.stdout
