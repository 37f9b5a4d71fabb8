"""The step log's size, known before training, and the free-space check that uses it (issue 24).

The estimate formats one entry as :class:`StepLog` does, from the parameters' shapes and the
extensions; here it is compared with hand-written lines, with real summaries of every
extension, and with the file of a real run. The check is tested with a patched
``shutil.disk_usage`` (a real 64 KiB file system: ``test_full_disk.py``).
"""

import collections
import json
import os

import pytest
import torch

from backobs.runs import steplog
from backobs.runs.runner import BackpackRunner
from backobs.runs.steplog import StepLog, quantity_shape, summarize_quantity, summary_skeleton
from backpack_core import backpack, extend
from backpack_core import extensions as E
from backpack_core.config import format_bytes

NUMBER = "0.24816232919692993"  # repr(steplog.TYPICAL_NUMBER)
SPREAD = f'{{"mean": {NUMBER}, "std": {NUMBER}, "min": {NUMBER}, "max": {NUMBER}}}'


def structure(value):
    """``value`` with every float replaced by 0.0: the keys, shapes and lists remain."""
    if isinstance(value, dict):
        return {key: structure(item) for key, item in value.items()}
    if isinstance(value, list):
        return [structure(item) for item in value]
    return 0.0 if isinstance(value, float) else value


def test_one_logged_step_in_bytes_written_out_by_hand(tmp_path):
    net = torch.nn.Linear(3, 2)
    log = StepLog(str(tmp_path / "run.steps.jsonl"), net)
    line = (
        f'{{"epoch": 0, "step": 0, "global_step": 0, "loss": {NUMBER}, "extensions": '
        '{"BatchGrad": {"savefield": "grad_batch", "parameters": {'
        f'"weight": {{"shape": [4, 2, 3], "norm": {NUMBER}, "mean": {NUMBER}, '
        f'"sample_norms": {SPREAD}}}, '
        f'"bias": {{"shape": [4, 2], "norm": {NUMBER}, "mean": {NUMBER}, '
        f'"sample_norms": {SPREAD}}}}}}}, '
        '"KFAC": {"savefield": "kfac", "parameters": {'
        f'"weight": {{"shape": [[2, 2], [3, 3]], "norm": [{NUMBER}, {NUMBER}], '
        f'"mean": [{NUMBER}, {NUMBER}]}}, '
        f'"bias": {{"shape": [[2, 2]], "norm": [{NUMBER}], "mean": [{NUMBER}]}}}}}}}}}}\n'
    )
    json.loads(line)  # the hand-written line is valid JSON
    assert len(line) == 863
    assert log.bytes_per_step([E.BatchGrad(), E.KFAC()], batch_size=4) == 863
    assert (
        log.logged_steps(10) == 10 and log.estimate_bytes([E.BatchGrad(), E.KFAC()], 4, 10) == 8630
    )
    every_third = StepLog(str(tmp_path / "b.steps.jsonl"), net, write_interval=3)
    assert every_third.logged_steps(10) == 4  # global steps 0, 3, 6, 9
    assert every_third.estimate_bytes([E.BatchGrad(), E.KFAC()], 4, 10) == 4 * 863
    assert StepLog(None, net).logged_steps(10) == 0


@pytest.mark.parametrize("extension", [cls() for cls in E.ALL], ids=lambda e: type(e).__name__)
def test_the_estimated_entry_has_the_real_summaries_shape(extension):
    """For every extension, on a conv net: the same keys and shapes as the real summaries."""
    net = extend(
        torch.nn.Sequential(
            torch.nn.Conv2d(2, 3, kernel_size=2),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(3 * 3 * 3, 4),
        )
    )
    loss_function = extend(torch.nn.CrossEntropyLoss())
    inputs, labels = torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 3, 0])
    with backpack(extension):
        loss_function(net(inputs), labels).backward()
    per_sample = extension.per_sample
    for parameter in net.parameters():
        real = summarize_quantity(getattr(parameter, extension.savefield), per_sample)
        estimated = summary_skeleton(quantity_shape(extension, parameter, 5), per_sample)
        assert structure(real) == structure(estimated)


def test_the_estimate_against_a_real_run(tmp_path, monkeypatch):
    """mnist_2c2d, six extensions, 6 steps: the file is within 3% of the estimate."""
    names = ["BatchGrad", "BatchL2Grad", "Variance", "DiagGGNMC", "KFAC", "BatchDotGrad"]
    sizes = {}
    for interval in (1, 4):
        runner = BackpackRunner(torch.optim.SGD, {"lr": {"type": float}})
        runner.run(
            testproblem="mnist_2c2d", hyperparams={"lr": 0.1}, batch_size=8, num_epochs=1,
            steps_per_epoch=6, eval_batches=1, log_interval=0, extensions=names,
            step_log_interval=interval, output_dir=str(tmp_path / str(interval)),
        )  # fmt: skip
        log = runner._last_step_log
        with open(log.path, encoding="utf-8") as file:
            lines = file.readlines()
        assert [json.loads(line)["global_step"] for line in lines] == list(range(0, 6, interval))
        extensions = [getattr(E, name)() for name in names]
        estimate = log.estimate_bytes(extensions, batch_size=8, steps=6)
        real = os.path.getsize(log.path)
        assert structure(json.loads(lines[0])) == structure(
            log._entry(0, 0, 0, 0.0, extensions, _skeleton(8))
        )
        assert 0.97 < estimate / real < 1.03, (estimate, real)
        sizes[interval] = real
    # the way out that the warning names: every 4th step, 2 lines instead of 6
    assert 2.9 < sizes[1] / sizes[4] < 3.1


def _skeleton(batch_size):
    def summarize(extension, parameter, per_sample):
        return summary_skeleton(quantity_shape(extension, parameter, batch_size), per_sample)

    return summarize


DiskUsage = collections.namedtuple("DiskUsage", "total used free")


def test_too_little_free_space_is_one_warning_with_the_numbers(tmp_path, monkeypatch, capsys):
    net = torch.nn.Linear(3, 2)
    log = StepLog(str(tmp_path / "run.steps.jsonl"), net)
    extensions = [E.BatchGrad(), E.KFAC()]
    # 1000 steps of 863 bytes, a results file of 2048 + 32 * (6 * 2 + 100 + 2) bytes
    assert steplog.results_file_bytes(1, 1000, 10) == 5696
    needed = 863_000 + 5696

    monkeypatch.setattr(steplog.shutil, "disk_usage", lambda path: DiskUsage(10**6, 0, needed - 1))
    assert steplog.check_free_space(log, extensions, 4, 1000, 1, 10) == (needed, needed - 1)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "backobs run: warning: the step log needs about 842.8 KiB (1000 logged steps of "
        f"863 B) and the results file about 5.6 KiB, but {tmp_path} has 848.3 KiB free: "
        "training goes on and a full disk drops the step log, not the run; for a smaller step "
        "log use a larger --step-log-interval, fewer --extensions, or another --output_dir"
    ]
    assert format_bytes(needed - 1) == "848.3 KiB"

    monkeypatch.setattr(steplog.shutil, "disk_usage", lambda path: DiskUsage(10**6, 0, needed))
    assert steplog.check_free_space(log, extensions, 4, 1000, 1, 10) == (needed, needed)
    # every 10th step: a tenth of the log, and the same free space suffices
    sparse = StepLog(str(tmp_path / "run.steps.jsonl"), net, write_interval=10)
    assert steplog.check_free_space(sparse, extensions, 4, 1000, 1, 10) == (86_300 + 5696, needed)
    assert capsys.readouterr().err == ""


def test_nothing_is_checked_without_a_log_or_a_known_length(tmp_path, monkeypatch):
    def refuse(path):
        raise AssertionError("disk_usage was asked")

    monkeypatch.setattr(steplog.shutil, "disk_usage", refuse)
    net = torch.nn.Linear(3, 2)
    assert steplog.check_free_space(StepLog(None, net), [E.BatchGrad()], 4, 100, 1, 10) is None
    log = StepLog(str(tmp_path / "run.steps.jsonl"), net)
    assert steplog.check_free_space(log, [E.BatchGrad()], 4, None, 1, 10) is None


@pytest.mark.parametrize("interval", [0, -1, 1.5, True])
def test_a_bad_write_interval_is_refused(interval):
    with pytest.raises((TypeError, ValueError), match="write_interval must be an integer >= 1"):
        StepLog("run.steps.jsonl", torch.nn.Linear(3, 2), write_interval=interval)
