"""Faults a shared deployment meets, on a real server (tiny model, real PostgreSQL): limits refused with clear
errors, a full disk during uploads (507, nothing kept), the database going away (ops 503, inference of resolved
adapters goes on, no logged interaction lost), and the engine dying (/ready fails, the server exits non-zero)."""

from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import psycopg
import pytest

from adapters.fingerprint import BaseModelSpec
from tests.adapter_factory import write_adapter
from tests.conftest import POSTGRES_SERVER, SERVER_ENV, fresh_postgres_database
from tests.helpers import ServerProcess, adapter_files, upload_adapter

pytestmark = pytest.mark.integration

FILE_SIZE_LIMIT = 20 << 20
"""The API process runs under a file size limit (`ulimit -f`): a write past 20 MiB fails as on a full disk."""
HELLO = [{"role": "user", "content": "Hello"}]


class FaultServer:
    def __init__(self, server: ServerProcess, database_url: str, base: BaseModelSpec) -> None:
        self.server = server
        self.url = server.url
        self.database_url = database_url
        self.base = base
        self.client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)

    def set_database_reachable(self, reachable: bool) -> None:
        """Refuse (or allow again) every connection to the hub's database and cut the open ones."""
        name = self.database_url.rsplit("/", 1)[1]
        admin = POSTGRES_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(reachable).lower()}')
            if not reachable:
                connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    def count_interactions(self, ids: list[str]) -> int:
        url = self.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as connection:
            row = connection.execute("SELECT count(*) FROM interactions WHERE id = ANY(%s)", (ids,)).fetchone()
        return int(row[0]) if row else 0


def launch(request: pytest.FixtureRequest) -> Iterator[tuple[ServerProcess, str]]:
    """The tiny model's server on a fresh PostgreSQL database, with tight limits (`tests/early_start.py`)."""
    with fresh_postgres_database() as url:
        env = {
            **SERVER_ENV,
            "LORADOCK_DATABASE_URL": url,
            "LORADOCK_DRIFT": "false",
            "LORADOCK_RESOLUTION_CACHE_S": "0.5",
            "LORADOCK_MAX_REQUEST_BYTES": str(64 << 10),
            "LORADOCK_MAX_PROMPT_TOKENS": "64",
            "LORADOCK_MAX_OUTPUT_TOKENS": "8",
        }
        home = request.getfixturevalue("tmp_path_factory").mktemp("faults-home")
        server = ServerProcess(home, ["--base-model", str(request.getfixturevalue("tiny_model"))], env=env)
        try:
            yield server, url
        finally:
            server.terminate()


@pytest.fixture(scope="module")
def faults(launched: tuple[ServerProcess, str], tiny_model: Path) -> FaultServer:
    server, url = launched
    server.wait_ready()
    # On the API process only, once the engine (which sizes shared memory with ftruncate) has started.
    resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    return FaultServer(server, url, BaseModelSpec.from_folder(tiny_model))


def _error(response: httpx.Response) -> dict[str, object]:
    error = response.json()["error"]
    assert isinstance(error, dict)
    return error


def test_request_body_prompt_and_max_tokens_limits(faults: FaultServer) -> None:
    huge = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * (80 << 10)}]}
    too_big = httpx.post(f"{faults.url}/v1/chat/completions", json=huge, timeout=30)
    assert too_big.status_code == 413 and _error(too_big)["code"] == "too_large"
    long_prompt = {"model": "tiny-llama", "prompt": "word " * 200}
    refused = httpx.post(f"{faults.url}/v1/completions", json=long_prompt, timeout=30)
    assert refused.status_code == 400, refused.text
    assert _error(refused)["code"] == "context_length_exceeded" and "at most 64 prompt tokens" in refused.text
    greedy = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 9}
    over = httpx.post(f"{faults.url}/v1/completions", json=greedy, timeout=30)
    assert over.status_code == 400 and _error(over)["param"] == "max_tokens"
    unbounded = faults.client.completions.create(model="tiny-llama", prompt="Hi")
    assert unbounded.usage is not None and unbounded.usage.completion_tokens <= 8


def test_full_disk_during_uploads_is_507_and_keeps_nothing(faults: FaultServer, tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "big", faults.base, seed=1)
    (folder / "padding.bin").write_bytes(os.urandom(24 << 20))
    response = upload_adapter(faults.url, "too-big-for-disk", adapter_files(folder))
    assert response.status_code == 507, response.text
    assert _error(response)["code"] == "insufficient_storage"
    dataset = tmp_path / "train.jsonl"
    dataset.write_bytes(b'{"prompt": "q", "completion": "a"}\n' * (700 << 10))
    with dataset.open("rb") as stream:
        file_response = httpx.post(
            f"{faults.url}/v1/files", files={"file": ("train.jsonl", stream)}, data={"purpose": "fine-tune"}, timeout=60
        )
    assert file_response.status_code == 507, file_response.text
    home = faults.server.home
    assert list((home / "artifacts" / ".incoming").iterdir()) == []
    assert [path.name for path in (home / "files").iterdir()] == []
    assert httpx.get(f"{faults.url}/v1/adapters/too-big-for-disk", timeout=10).status_code == 404
    assert httpx.get(f"{faults.url}/v1/files", timeout=10).json()["data"] == []
    small = upload_adapter(faults.url, "fits", adapter_files(write_adapter(tmp_path / "small", faults.base, seed=2)))
    assert small.status_code == 201, small.text


def test_database_outage_fails_ops_with_503_while_inference_goes_on(faults: FaultServer, tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "steady", faults.base, seed=3)
    assert upload_adapter(faults.url, "steady", adapter_files(folder)).status_code == 201
    assert faults.client.chat.completions.create(model="steady", messages=HELLO, max_tokens=2).model == "steady@1"
    faults.set_database_reachable(False)
    try:
        time.sleep(1)  # past the resolution cache: the registry would be asked again
        ids = []
        for model in ("steady", "tiny-llama", "steady"):
            reply = faults.client.chat.completions.create(model=model, messages=HELLO, max_tokens=2)
            ids.append(reply.id)
        listing = httpx.get(f"{faults.url}/v1/adapters", timeout=30)
        assert listing.status_code == 503, listing.text
        assert _error(listing)["code"] == "database_unavailable" and listing.headers["retry-after"]
        feedback = httpx.post(f"{faults.url}/v1/feedback", json={"completion_id": ids[0], "rating": "up"}, timeout=30)
        assert feedback.status_code == 503, feedback.text
        unknown = httpx.post(
            f"{faults.url}/v1/chat/completions", json={"model": "never-resolved", "messages": HELLO}, timeout=30
        )
        assert unknown.status_code == 503, unknown.text
    finally:
        faults.set_database_reachable(True)
    deadline = time.monotonic() + 30
    while faults.count_interactions(ids) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert faults.count_interactions(ids) == len(ids), "interactions logged during the outage were lost"
    assert httpx.get(f"{faults.url}/v1/adapters", timeout=30).status_code == 200


def test_engine_death_fails_ready_and_exits_non_zero(faults: FaultServer) -> None:
    """Last in this module: it ends the server."""
    server = faults.server
    children = psutil.Process(server.process.pid).children(recursive=True)
    engines = [child for child in children if "EngineCore" in " ".join(child.cmdline()) + child.name()]
    assert engines, [child.name() for child in children]
    for engine in engines:
        engine.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 60
    ready_failed = False
    while server.process.poll() is None and time.monotonic() < deadline:
        try:
            ready_failed |= httpx.get(f"{server.url}/ready", timeout=5).status_code == 503
        except httpx.TransportError:
            ready_failed = True
        time.sleep(0.2)
    assert server.process.wait(30) not in (0, -signal.SIGTERM), server.log_tail()
    assert ready_failed
    assert "the inference engine has stopped" in server.log_tail(200)
