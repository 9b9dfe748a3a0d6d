"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing import forkserver
from multiprocessing.connection import wait
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel kill this process when its parent dies, even by SIGKILL (Linux's parent-death signal).

    Call it first thing in the child, or as a Popen preexec_fn from a parent that runs no other threads (one is
    unsafe with threads). `parent`, when given, is the pid that should be the parent: if it died before the signal
    was armed, this process exits at once."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        sys.exit(1)


def stop_with_the_starting_process(grace_s: float = 0.0) -> None:
    """In a child started by multiprocessing (spawn, fork or forkserver), stop when the process that started it dies,
    even by SIGKILL.

    A forkserver's child has the forkserver for its parent, so the parent-death signal would wait for the wrong
    process, and a spawned one would have to arm it itself. multiprocessing gives every child a pipe whose other end
    only the starting process holds (`parent_process().sentinel`); a thread waits for it to close, then sends this
    process SIGTERM, and SIGKILL `grace_s` later (at once when 0)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])
        if grace_s:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="stop-with-the-starting-process", daemon=True).start()


def start_forkserver(preload: list[str]) -> None:
    """Start multiprocessing's forkserver, which imports `preload` while the caller goes on; children forked from it
    later start with those modules imported. Its first start fixes what it imports, and a later call changes nothing.

    The forkserver is a clean interpreter that has only imported modules, with no threads started, which is what makes
    forking from it safe where forking a process that runs threads (OpenMP's, vLLM's) would not be."""
    multiprocessing.set_forkserver_preload(preload)
    forkserver.ensure_running()


def write_output_to(log: Path) -> None:
    """In a child forked from a forkserver: its stdout and stderr (inherited from the forkserver's start) go to the
    end of `log` instead, as they would for a spawned child given that file."""
    with log.open("ab") as out:
        for stream in (1, 2):
            os.dup2(out.fileno(), stream)
