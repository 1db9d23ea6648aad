"""Worker processes that die with the herbid process that started them.

A ``ProcessPoolExecutor``'s workers outlive a parent killed with SIGKILL (nothing runs in
the parent to stop them), and keep decoding images for nobody. Each worker here asks the
kernel to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``) and, everywhere,
watches the parent from a daemon thread, so a killed build leaves no orphans behind.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

#: How often a worker checks that the process that started it still exists (seconds).
PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes bound to the life of this one."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),),
                               mp_context=_start_method())


def _start_method() -> multiprocessing.context.BaseContext | None:
    """``forkserver`` once this process runs Ray, else the platform default.

    ``fork`` copies only the calling thread, with every lock Ray's gRPC and logging threads
    held at that moment: a forked worker can wait on one of them forever (it hung a
    local build run after a Ray build in one process).
    """
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return multiprocessing.get_context("forkserver")
    return None


def _die_with_parent(parent_pid: int) -> None:
    forked = os.getppid() == parent_pid  # else started by a forkserver or spawned
    if forked and sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if _parent_gone(parent_pid, forked):  # it died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, forked), name="herbid-parent-watch", daemon=True).start()


def _watch(parent_pid: int, forked: bool) -> None:
    # Also covers other start methods and systems without PR_SET_PDEATHSIG.
    while not _parent_gone(parent_pid, forked):
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _parent_gone(parent_pid: int, forked: bool) -> bool:
    if forked:  # re-parented at the parent's death, even while it is an unreaped zombie
        return os.getppid() != parent_pid
    try:
        os.kill(parent_pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid reused by another user
        return True
    return False
