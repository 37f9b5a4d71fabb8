"""Settings for every test, whichever way pytest was started."""

import os
import signal


def pytest_configure(config):
    """Ctrl-C raises ``KeyboardInterrupt`` here and in the processes the tests start.

    A shell that starts pytest in the background (``pytest &``) leaves SIGINT ignored, and
    Python then keeps it ignored; the interrupt tests would see nothing. Installing Python's
    handler also resets the inherited disposition of child processes to the default.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session):
    """The processes the tests start import this checkout.

    Scripts, ``python -m backobs`` and Dask workers would otherwise import the checkout that is
    installed editable, which differs from this one in a git worktree.
    """
    root = str(session.config.rootpath)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])
