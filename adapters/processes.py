"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

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
