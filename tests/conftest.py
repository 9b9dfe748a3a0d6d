"""Session-wide real parts: the demo model (fetched once, cached across runs) and one shared server."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import psutil
import pytest

from adapters.fingerprint import BaseModelSpec
from tests.early_start import EarlyStarts, next_launching_module
from tests.helpers import LORADOCK, REPO, ServerProcess, make_lora_adapter, make_tiny_model, run_loradock

DEMO_MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def loradock_home() -> Path:
    """A LORADOCK_HOME kept between test runs (the demo model is converted once), apart from the user's own."""
    home = Path(os.environ.get("LORADOCK_TEST_HOME", REPO / ".pytest-home")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def demo_model(loradock_home: Path) -> Path:
    """The demo base model, fetched through the real `loradock models fetch-demo` command."""
    env = {**os.environ, "LORADOCK_HOME": str(loradock_home)}
    subprocess.run([str(LORADOCK), "models", "fetch-demo"], env=env, check=True, timeout=900)
    return loradock_home / "models" / DEMO_MODEL


@pytest.fixture(scope="session")
def test_adapters(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random LoRA adapters over the demo model; each answers very differently from the base."""
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_lora_adapter(demo_model, root / name, seed=seed) for name, seed in (("alpha", 1), ("beta", 2))}


@pytest.fixture(scope="session")
def demo_training(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped demo task trained once per session, exactly as `make demo` trains it, and registered as
    support-tickets@1: (LORADOCK_HOME, run folder). The demo-task test checks it; the export tests, then the
    production-loop test, work on its hub."""
    home = tmp_path_factory.mktemp("demo-home")
    (home / "models").symlink_to(demo_model.parent, target_is_directory=True)
    run = home / "run"
    done = run_loradock(
        [
            "train",
            "--config",
            str(REPO / "training/configs/demo_support_tickets.yaml"),
            "--output-dir",
            str(run),
            "--register",
            "support-tickets",
        ],
        env={**os.environ, "LORADOCK_HOME": str(home), "COLUMNS": "200"},
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return home, run


@pytest.fixture(scope="session")
def tiny_model(demo_model: Path, loradock_home: Path) -> Path:
    """A 2-layer random Llama with the demo model's tokenizer: for training tests that must be quick."""
    return make_tiny_model(demo_model, loradock_home / "models" / "tiny-llama")


@pytest.fixture(scope="session")
def demo_base(demo_model: Path) -> BaseModelSpec:
    return BaseModelSpec.from_folder(demo_model)


SERVER_CONCURRENCY_LIMIT = 80
SERVER_ENV = {
    "LORADOCK_MAX_CONCURRENT_REQUESTS": str(SERVER_CONCURRENCY_LIMIT),
    # Rank 16 keeps vLLM's CPU LoRA kernels (which pad every adapter to max_lora_rank) quick.
    "LORADOCK_MAX_LORA_RANK": "16",
    "LORADOCK_MAX_ADAPTER_BYTES": str(32 << 20),
    # Small drift windows evaluated often, every evaluation stored: the drift tests see changes within seconds.
    "LORADOCK_DRIFT_WINDOW": "40",
    "LORADOCK_DRIFT_EVALUATE_EVERY": "10",
    "LORADOCK_DRIFT_EVALUATE_S": "2",
    "LORADOCK_DRIFT_PROFILE_REQUESTS": "20",
    "LORADOCK_DRIFT_SNAPSHOT_S": "0",
    "LORADOCK_DASHBOARD_SAMPLE_S": "2",
}


@pytest.fixture(scope="session")
def demo_server_process(
    tmp_path_factory: pytest.TempPathFactory, demo_model: Path, test_adapters: dict[str, Path]
) -> Iterator[ServerProcess]:
    """The session server's process: the demo model plus the two test adapters, on a fresh hub (SQLite); started,
    not waited for."""
    args = ["--base-model", str(demo_model)]
    for name, path in test_adapters.items():
        args += ["--adapter", f"{name}={path}"]
    server = ServerProcess(tmp_path_factory.mktemp("server-home"), args, env=SERVER_ENV)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="session", autouse=True)
def _start_the_session_server_early(request: pytest.FixtureRequest) -> None:
    """Start the session server with the session when a selected test uses it: its start (about 30 s, mostly one
    core importing vLLM in two processes) then overlaps with the tests that run before the first one that does."""
    if any("demo_server" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("demo_server_process")


@pytest.fixture(scope="session")
def early_starts() -> Iterator[EarlyStarts]:
    starts = EarlyStarts()
    try:
        yield starts
    finally:
        starts.close()


EARLY_START_ROOM = 12 << 30
"""Memory that must be available for a module's servers to start while the module before runs: room for two
more vLLM stacks (API process and engine core hold about 4 GB together) and a margin. With less, they
start when their module begins, as they would without early starts."""


@pytest.fixture(scope="module", autouse=True)
def _launch_the_next_modules_servers(request: pytest.FixtureRequest, early_starts: EarlyStarts) -> None:
    """As a module begins, the next module with servers of its own starts them (`tests/early_start.py`)."""
    following = next_launching_module(request.session.items, request.module)
    if following is not None and psutil.virtual_memory().available >= EARLY_START_ROOM:
        early_starts.start(following, request)


@pytest.fixture(scope="module")
def launched(request: pytest.FixtureRequest, early_starts: EarlyStarts) -> object:
    """What this module's `launch` started, early or now; stopped when the module ends."""
    return early_starts.take(request)


@pytest.fixture(scope="session")
def demo_server(demo_server_process: ServerProcess) -> ServerProcess:
    """One real server for the session (`demo_server_process`), ready."""
    demo_server_process.wait_ready()
    return demo_server_process


@pytest.fixture(scope="session")
def demo_hub_server_process(demo_training: tuple[Path, Path]) -> Iterator[ServerProcess]:
    """A server over the demo hub (support-tickets@1, the base by name), as `make demo` serves it: the export tests
    download what they registered from it, and the production-loop test sends it traffic, then retrains and
    promotes beside it. Started, not waited for: the first export runs while it starts."""
    server = ServerProcess(demo_training[0], ["--base-model", DEMO_MODEL], env=SERVER_ENV)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="session")
def demo_hub_server(demo_hub_server_process: ServerProcess) -> ServerProcess:
    demo_hub_server_process.wait_ready()
    return demo_hub_server_process


@pytest.fixture(scope="session")
def client(demo_server: ServerProcess) -> openai.OpenAI:
    """The official OpenAI client pointed at the session server."""
    return openai.OpenAI(base_url=f"{demo_server.url}/v1", api_key="not-needed", max_retries=0, timeout=300)


POSTGRES_SERVER = os.environ.get("LORADOCK_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the machine's PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"loradock_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = POSTGRES_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each registry test runs on both stores the hub supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)
