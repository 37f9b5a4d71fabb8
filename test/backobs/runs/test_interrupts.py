"""Ctrl-C during training is never lost, even where Python swallows the exception."""

import gc
import signal
import sys
import weakref

import pytest

from backobs.runs.training import TrainingLoop, _Interrupts


class _Thing:
    pass


def _sigint_inside_a_weakref_callback():
    """Deliver SIGINT while Python runs a weak-reference callback (exceptions ignored)."""
    thing = _Thing()
    called = []

    def callback(_):
        called.append(True)
        signal.raise_signal(signal.SIGINT)

    reference = weakref.ref(thing, callback)  # kept: a dead weakref calls nothing
    del thing
    gc.collect()
    assert reference() is None and called


@pytest.fixture
def swallowed(monkeypatch):
    """The exceptions Python ignores (it would print "Exception ignored in ...")."""
    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: ignored.append(report.exc_type))
    return ignored


def test_a_swallowed_interrupt_is_raised_at_the_next_check(swallowed):
    with _Interrupts() as interrupts:
        _sigint_inside_a_weakref_callback()
        assert swallowed == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()


def test_without_the_guard_python_swallows_it(swallowed):
    """Why the guard exists: the same interrupt, unguarded, raises nothing."""
    _sigint_inside_a_weakref_callback()
    assert swallowed == [KeyboardInterrupt]


def test_the_default_handler_is_restored_and_an_ordinary_interrupt_raises():
    with pytest.raises(KeyboardInterrupt):
        with _Interrupts():
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_someone_else_set_is_left_alone():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _Interrupts() as interrupts:
            signal.raise_signal(signal.SIGINT)  # ignored, as its owner asked
            interrupts.check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


class _QuickEpochs(TrainingLoop):
    """A loop whose epochs train nothing: only its bookkeeping of epochs is under test."""

    def _epoch(self, metrics, epoch, num_epochs, global_step, *args):
        return global_step + 1, True


@pytest.mark.parametrize("interrupted_evaluation", [1, 2, 3])
def test_an_interrupt_during_an_evaluation_drops_that_epoch_everywhere(interrupted_evaluation):
    def evaluate_all(epoch, metrics):
        metrics["train_losses"].append(float(epoch))
        if epoch == interrupted_evaluation:
            raise KeyboardInterrupt
        for key in ("valid_losses", "test_losses"):
            metrics[key].append(float(epoch))

    loop = _QuickEpochs(None, None, list, None, evaluate_all, None)
    metrics = loop.run(num_epochs=5)
    assert loop.state["status"] == "interrupted"
    completed = interrupted_evaluation - 1
    assert len(loop.state["epoch_seconds"]) == completed
    for key in ("train_losses", "valid_losses", "test_losses"):
        assert metrics[key] == [float(epoch) for epoch in range(completed + 1)]
