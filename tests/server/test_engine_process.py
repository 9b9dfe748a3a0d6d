"""The engine core's start (`server/engine_process.py`), checked on real processes without an engine:
`test_openai_api.py` checks the session server's engine core, and `test_replicas_and_auth.py` that a replica's
engine core stops when its API process is killed."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import setproctitle

from tests.helpers import REPO, still_running

STARTER = """
import os, sys
from multiprocessing import forkserver, set_forkserver_preload
from server.engine_process import EngineCoreContext
from tests.server.test_engine_process import report

set_forkserver_preload(["tests.server.test_engine_process"])
forkserver.ensure_running()
os.environ["LORADOCK_PROBE_SET"] = "after the forkserver started"
del os.environ["LORADOCK_PROBE_GONE"]
process = EngineCoreContext().Process(target=report, args=(sys.argv[1],))
process.start()
process.join()
sys.exit(process.exitcode)
"""


ORPHANED = """
import sys
import server.engine_process as engine_process
from tests.server.test_engine_process import wait_forever

method, path, ignore_sigterm = sys.argv[1], sys.argv[2], sys.argv[3] == "yes"
engine_process.ORPHAN_GRACE_S = 1.0  # read in the child: forked children see it, a spawned one its own 10 s
process = engine_process.engine_core_context(method).Process(target=wait_forever, args=(path, ignore_sigterm))
process.start()
process.join()
"""


def wait_forever(path: str, ignore_sigterm: bool) -> None:
    """An engine core that never ends by itself; vLLM's holds a SIGTERM while the engine is being built."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(path).write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def report(path: str) -> None:
    """In the forked child: what it sees of the environment, and whether setproctitle can name it."""
    setproctitle.setproctitle("VLLM::EngineCore")
    seen = {name: os.environ.get(name) for name in ("LORADOCK_PROBE_SET", "LORADOCK_PROBE_GONE")}
    seen["name"] = Path("/proc/self/comm").read_text().strip()
    Path(path).write_text(json.dumps(seen))


def test_a_forked_engine_core_has_the_environment_of_its_start_and_its_own_name(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    env = {**os.environ, "LORADOCK_PROBE_GONE": "set before the forkserver started"}
    done = subprocess.run(
        [sys.executable, "-c", STARTER, str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(out.read_text())
    assert seen == {
        "LORADOCK_PROBE_SET": "after the forkserver started",
        "LORADOCK_PROBE_GONE": None,
        "name": seen["name"],
    }
    assert seen["name"] == "VLLM::EngineCor"  # the kernel keeps 15 characters


def test_vllm_takes_the_engine_cores_start_method_where_loradock_replaces_it() -> None:
    from vllm.v1.engine import utils

    assert "context = get_mp_context()" in inspect.getsource(utils.CoreEngineProcManager.__init__)


@pytest.mark.parametrize(
    ("method", "ignore_sigterm"), [("forkserver", False), ("spawn", False), ("fork", False), ("fork", True)]
)
def test_an_engine_core_stops_when_the_api_process_is_killed(method: str, ignore_sigterm: bool, tmp_path: Path) -> None:
    """Whichever way vLLM starts it (the forkserver's on loradock's CPU default, spawn with the pinned worker, fork or
    spawn on CUDA); one that holds SIGTERM is killed after `ORPHAN_GRACE_S`."""
    pid_file = tmp_path / "engine-core.pid"
    api = subprocess.Popen(
        [sys.executable, "-c", ORPHANED, method, str(pid_file), "yes" if ignore_sigterm else "no"],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    deadline = time.monotonic() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert api.poll() is None and time.monotonic() < deadline, "the engine core did not start"
        time.sleep(0.1)
    engine_core = psutil.Process(int(pid_file.read_text()))
    api.kill()
    api.wait()
    deadline = time.monotonic() + 30
    while still_running(engine_core) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = still_running(engine_core)
    if alive:
        engine_core.kill()
    assert not alive, f"the engine core ({method}) outlived its API process"
