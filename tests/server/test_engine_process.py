"""The engine core's start from a forkserver (`server/engine_process.py`), checked on real processes without an
engine; `test_openai_api.py` checks the session server's engine core."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import setproctitle

from tests.helpers import REPO

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
