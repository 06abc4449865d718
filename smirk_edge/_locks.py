"""A re-entrant lock that a forked child gets back unlocked.

``os.fork()`` copies a held lock into the child, where the thread that held it does not exist:
the child's first call would wait forever. :class:`ForkSafeLock` registers every instance with
``os.register_at_fork`` and gives the child a fresh lock.
"""

from __future__ import annotations

import os
import threading
import weakref

_LIVE: "weakref.WeakSet[ForkSafeLock]" = weakref.WeakSet()


class ForkSafeLock:
    """``threading.RLock`` usable as a context manager, re-created in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        _LIVE.add(self)

    def __enter__(self) -> "ForkSafeLock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()


def _reinit_in_child() -> None:
    for lock in list(_LIVE):
        lock._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_in_child)
