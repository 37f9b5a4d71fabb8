"""Claims: each run of a results folder computed once, with several sweep commands at once.

Before a worker starts a run it creates the run's claim file next to where the results go,
``<settings folder>/.random_seed__<seed>.claim``, with ``O_CREAT | O_EXCL`` (atomic, also on
a shared file system; no lock that holds only within one machine). The file holds the
claimant's host, process id and sweep id; its modification time is the heartbeat, touched
every :data:`HEARTBEAT_SECONDS` while the run lasts. The claim is removed when the run ends.

A claim whose owner is gone is taken over: its process is dead on this host, or its
heartbeat is older than :data:`STALE_SECONDS` (an owner on another host, or a machine that
went down). The taker renames the stale file to a unique name first (of two takers one
rename succeeds), then claims anew, and removes the partial files the dead claimant left
(:func:`remove_leftovers`); so a sweep killed with SIGKILL leaves nothing that blocks the
next one.
"""

import contextlib
import glob
import json
import os
import socket
import threading
import time
import uuid

__all__ = [
    "HEARTBEAT_SECONDS",
    "STALE_SECONDS",
    "claim_path",
    "Claim",
    "claim",
    "owner_of",
    "is_stale",
    "remove_leftovers",
]

HEARTBEAT_SECONDS = 20.0
"""How often a claimant touches its claim."""

STALE_SECONDS = 180.0
"""A claim untouched this long belongs to nobody (its claimant died without removing it)."""


def claim_path(run):
    """The claim file of ``run``: beside its results, hidden (a report reads no claims).

    Args:
        run (backobs.runs.Run): The run.

    Returns:
        str: ``<settings folder>/.random_seed__<seed>.claim``.
    """
    from backobs import runs

    return os.path.join(runs.settings_directory(run), f".random_seed__{run.seed}.claim")


class Claim:
    """A claim held by this process; a context manager that keeps its heartbeat.

    Attributes:
        path (str): The claim file.
        owner (dict): What the file says: ``host``, ``pid``, ``sweep``, ``claimed_at``.
    """

    def __init__(self, path, owner, heartbeat_seconds=HEARTBEAT_SECONDS):
        self.path = path
        self.owner = owner
        self._heartbeat_seconds = heartbeat_seconds
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._beat, daemon=True, name="backobs-claim")
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self.release()
        return False

    def _beat(self):
        while not self._stop.wait(self._heartbeat_seconds):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self):
        """Stop the heartbeat and remove the claim file (if it is still this claim)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        current = owner_of(self.path)
        if current is not None and current.get("token") == self.owner["token"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)


def remove_leftovers(run):
    """Remove the partial files (``random_seed__<seed>__*.part``) of an earlier try of ``run``.

    Only the holder of the run's claim calls it: no live sweep writes them then (a killed
    claimant's step log stays behind as ``.part``, since SIGKILL allows no clean-up).

    Args:
        run (backobs.runs.Run): The run.

    Returns:
        list[str]: The files removed.
    """
    directory = os.path.dirname(claim_path(run))
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), f"random_seed__{run.seed}__*.part")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
    return removed


def owner_of(path):
    """What a claim file says (``None`` if there is none; ``{}`` while it is being written)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def is_stale(path, owner, stale_seconds=STALE_SECONDS):
    """Whether the claim at ``path`` belongs to nobody any more.

    Args:
        path (str): The claim file.
        owner (dict): Its content (:func:`owner_of`).
        stale_seconds (float): The heartbeat's timeout.

    Returns:
        bool: Its process is dead on this host, or its heartbeat is older than the timeout.
    """
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return True
    if age > stale_seconds:
        return True
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _alive(owner["pid"])
    return False


def _alive(pid):
    """Whether process ``pid`` runs on this host (a zombie, killed but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as file:
            state = file.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):  # no /proc (macOS): trust the signal
        return True
    return state not in ("Z", "X")


def claim(path, sweep_id, stale_seconds=STALE_SECONDS, heartbeat_seconds=HEARTBEAT_SECONDS):
    """Claim a run, taking over a stale claim.

    Args:
        path (str): The run's claim file (:func:`claim_path`).
        sweep_id (str): The claiming sweep's id (for the owner's record).
        stale_seconds (float): When a claim counts as abandoned.
        heartbeat_seconds (float): How often the returned claim touches its file.

    Returns:
        tuple: ``(Claim, None)`` if this process holds the claim now, else ``(None, owner)``
        with what the live claimant's file says.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "sweep": sweep_id,
        "claimed_at": time.time(),
        "token": uuid.uuid4().hex,
    }
    for _ in range(5):
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            current = owner_of(path)
            if current is None:
                continue  # removed meanwhile: try again
            if not is_stale(path, current, stale_seconds):
                return None, current
            _take_over(path, current, owner["token"])
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(owner, file)
        return Claim(path, owner, heartbeat_seconds), None
    current = owner_of(path) or {}
    return None, current


def _take_over(path, stale_owner, token):
    """Move a stale claim away; put it back if another taker's fresh claim was moved."""
    moved = f"{path}.stale-{token}"
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return  # another taker was first
    if owner_of(moved) != stale_owner:  # it had been replaced by a live claim meanwhile
        with contextlib.suppress(FileExistsError):
            os.link(moved, path)  # no clobbering: fails if yet another claim exists
    with contextlib.suppress(FileNotFoundError):
        os.remove(moved)
