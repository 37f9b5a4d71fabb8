"""Settings for every test, whichever way pytest was started."""

import signal


def pytest_configure(config):
    """Ctrl-C raises ``KeyboardInterrupt`` here and in the processes the tests start.

    A shell that starts pytest in the background (``pytest &``) leaves SIGINT ignored, and
    Python then keeps it ignored; the interrupt tests would see nothing. Installing Python's
    handler also resets the inherited disposition of child processes to the default.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
