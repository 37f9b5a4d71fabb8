"""Checks of user-given values, shared by every command (and free of torch).

A bad value raises :class:`OptionError`, whose message names the option and what it accepts;
the commands print it as one line (``backobs run: error: --num_epochs must be a positive
integer, got -1``) and exit with code 2, as :mod:`argparse` does for its own errors.
"""

import argparse
import math
import os
import tempfile

__all__ = [
    "OptionError",
    "check_positive_int",
    "check_nonnegative_int",
    "check_finite_float",
    "check_writable_directory",
    "check_readable_directory",
    "OneLineParser",
    "DATA_LOADERS",
    "check_data_loader",
]


class OptionError(ValueError):
    """A command-line option has a value that cannot be used.

    The message names the option and the values it accepts; it is printed as one line.
    """


def check_positive_int(option, value):
    """Return ``value`` if it is an integer >= 1.

    Args:
        option (str): The option's name as the user wrote it, e.g. ``"--num_epochs"``.
        value: The parsed value (``None`` passes: the option was not given).

    Returns:
        The value.

    Raises:
        OptionError: If the value is not a positive integer.
    """
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{option} must be a positive integer, got {value!r}")
    return value


def check_nonnegative_int(option, value, zero_means=None):
    """Return ``value`` if it is an integer >= 0.

    Args:
        option (str): The option's name, e.g. ``"--log-interval"``.
        value: The parsed value (``None`` passes).
        zero_means (str, optional): What 0 stands for, quoted in the message.

    Returns:
        The value.

    Raises:
        OptionError: If the value is negative or not an integer.
    """
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        meaning = f" (0: {zero_means})" if zero_means else ""
        raise OptionError(f"{option} must be a non-negative integer{meaning}, got {value!r}")
    return value


def check_finite_float(option, value, minimum=None, strict=False):
    """Return ``value`` as a float if it is finite and not below ``minimum``.

    Args:
        option (str): The option's name, e.g. ``"--lr"``.
        value: The parsed value (``None`` passes).
        minimum (float, optional): The smallest allowed value.
        strict (bool): If true, ``minimum`` itself is not allowed.

    Returns:
        float: The value.

    Raises:
        OptionError: If the value is not a finite number in the allowed range.
    """
    if value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{option} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise OptionError(f"{option} must be a finite number, got {value!r}")
    if minimum is not None and (number < minimum or (strict and number == minimum)):
        relation = ">" if strict else ">="
        raise OptionError(f"{option} must be {relation} {minimum:g}, got {value!r}")
    return number


def check_writable_directory(option, path):
    """Check that ``path`` is, or can be created as, a directory we can write into.

    Nothing is created: the nearest existing ancestor must be a writable directory, and no
    part of the path may be an existing file.

    Args:
        option (str): The option's name, e.g. ``"--output_dir"``.
        path (str): The directory.

    Returns:
        str: The path.

    Raises:
        OptionError: If the directory cannot be created or written to.
    """
    absolute = os.path.abspath(path)
    existing = absolute
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise OptionError(f"{option} {path!r} cannot be a directory: {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_file(existing):
        where = "" if existing == absolute else f" (its nearest existing parent {existing!r})"
        raise OptionError(f"{option} {path!r}{where} is not writable; choose another directory")
    return path


def check_readable_directory(option, path):
    """Check that ``path`` is an existing directory.

    Args:
        option (str): The option's name or positional argument, e.g. ``"RESULTS_DIR"``.
        path (str): The directory.

    Returns:
        str: The path.

    Raises:
        OptionError: If it does not exist or is not a directory.
    """
    if not os.path.exists(path):
        raise OptionError(f"{option} {path!r} does not exist")
    if not os.path.isdir(path):
        raise OptionError(f"{option} {path!r} is not a directory")
    return path


def _can_create_file(directory):
    """``os.access`` says yes to root on read-only mounts (``/proc``); really try."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


# The command line of a run ------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message):
        """Print ``<prog>: error: <message>`` and exit with code 2 (no usage block)."""
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


DATA_LOADERS = ("tensor", "deepobs")
"""The values of ``--data-loader``: BackOBS's tensor path (default) or DeepOBS's loaders."""


def check_data_loader(option, value):
    """Check a ``--data-loader`` value (``None`` means the default, ``"tensor"``).

    Raises:
        OptionError: Naming the value and the choices.
    """
    if value is not None and value not in DATA_LOADERS:
        raise OptionError(
            f"{option} {value!r} is not a data loader; choose one of: {', '.join(DATA_LOADERS)}"
        )
    return value
