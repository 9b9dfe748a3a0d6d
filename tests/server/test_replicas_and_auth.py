"""Two replicas sharing PostgreSQL and one artifact store, with API keys required."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from adapters.database import open_database
from adapters.fingerprint import BaseModelSpec
from adapters.keys import create_key, revoke_key
from tests.adapter_factory import write_adapter
from tests.conftest import SERVER_ENV, fresh_postgres_database
from tests.helpers import (
    LORADOCK,
    BackgroundStream,
    ServerProcess,
    adapter_files,
    chromium,
    still_running,
    upload_adapter,
)

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Hello"}]
CACHE_S = 1.0


def launch(request: pytest.FixtureRequest) -> Iterator[tuple[ServerProcess, ServerProcess, dict[str, str]]]:
    """Replicas A and B (started together), and keys: admin, inference, and a tenant limited to `tenant-a`
    (`tests/early_start.py`)."""
    demo_model = request.getfixturevalue("demo_model")
    with fresh_postgres_database() as url:
        database = open_database(url)
        keys = {
            "admin": create_key(database, scope="admin", tenant="ops")[0],
            "inference": create_key(database, scope="inference", tenant="apps")[0],
            "tenant": create_key(database, scope="inference", tenant="acme", adapters=["tenant-a"])[0],
            "limited": create_key(database, scope="inference", tenant="small", requests_per_minute=4)[0],
            "single": create_key(database, scope="inference", tenant="single", max_concurrent=1)[0],
        }
        revoked, view = create_key(database, scope="admin", tenant="old")
        revoke_key(database, view.id)
        keys["revoked"] = revoked
        database.dispose()
        home = request.getfixturevalue("tmp_path_factory").mktemp("shared-home")
        (home / "tmp").mkdir()
        env = {
            **SERVER_ENV,
            "LORADOCK_DATABASE_URL": url,
            "LORADOCK_AUTH": "on",
            "LORADOCK_RESOLUTION_CACHE_S": str(CACHE_S),
            "TMPDIR": str(home / "tmp"),
        }
        replicas = [ServerProcess(home, ["--base-model", str(demo_model)], env=env) for _ in range(2)]
        try:
            yield replicas[0], replicas[1], keys
        finally:
            for replica in replicas:
                replica.terminate()


@pytest.fixture(scope="module")
def cluster(
    launched: tuple[ServerProcess, ServerProcess, dict[str, str]],
) -> tuple[ServerProcess, ServerProcess, dict[str, str]]:
    for replica in launched[:2]:
        replica.wait_ready()
    return launched


def openai_client(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_registered_on_one_replica_served_by_the_other_at_once(
    cluster, demo_base: BaseModelSpec, tmp_path: Path
) -> None:
    a, b, keys = cluster
    folder = write_adapter(tmp_path / "shared", demo_base, seed=5)
    created = upload_adapter(a.url, "shared", adapter_files(folder), api_key=keys["admin"])
    assert created.status_code == 201, created.text
    reply = openai_client(b, keys["inference"]).chat.completions.create(model="shared", messages=HELLO, max_tokens=3)
    assert reply.model == "shared@1"
    second = upload_adapter(
        a.url, "shared", adapter_files(write_adapter(tmp_path / "s2", demo_base, seed=6)), api_key=keys["admin"]
    )
    assert second.json()["version"] == 2
    on_b = openai_client(b, keys["inference"])
    assert on_b.completions.create(model="shared@2", prompt="Hi", max_tokens=1).model == "shared@2"


def test_alias_moves_and_retirements_reach_the_other_replica(cluster, demo_base: BaseModelSpec, tmp_path: Path) -> None:
    a, b, keys = cluster
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    for seed in (7, 8):
        folder = write_adapter(tmp_path / f"m{seed}", demo_base, seed=seed)
        assert upload_adapter(a.url, "moving", adapter_files(folder), api_key=keys["admin"]).status_code == 201
    on_b = openai_client(b, keys["inference"])
    for target in (1, 2):
        assert (
            httpx.put(f"{a.url}/v1/adapters/moving/aliases/prod", json={"version": target}, headers=admin).status_code
            == 200
        )
        time.sleep(CACHE_S + 0.5)
        assert on_b.completions.create(model="moving", prompt="Hi", max_tokens=1).model == f"moving@{target}"
    assert httpx.delete(f"{a.url}/v1/adapters/moving/versions/1", headers=admin).status_code == 200
    time.sleep(CACHE_S + 0.5)
    with pytest.raises(openai.APIStatusError) as gone:
        on_b.completions.create(model="moving@1", prompt="Hi", max_tokens=1)
    assert gone.value.status_code == 410


def test_keys_are_required_and_scoped(cluster, demo_base: BaseModelSpec, tmp_path: Path) -> None:
    a, _, keys = cluster
    for name in ("tenant-a", "tenant-b"):
        folder = write_adapter(tmp_path / name, demo_base, seed=len(name))
        assert upload_adapter(a.url, name, adapter_files(folder), api_key=keys["admin"]).status_code == 201
    chat = {"model": "tenant-a", "messages": HELLO, "max_tokens": 1}
    assert httpx.post(f"{a.url}/v1/chat/completions", json=chat).status_code == 401
    for key in ("ldk-wrong", keys["revoked"]):
        response = httpx.post(f"{a.url}/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    sneaky = upload_adapter(a.url, "sneaky", adapter_files(tmp_path / "tenant-a"), api_key=keys["inference"])
    assert sneaky.status_code == 403 and sneaky.json()["error"]["type"] == "permission_error"
    tenant = openai_client(a, keys["tenant"])
    assert tenant.chat.completions.create(model="tenant-a", messages=HELLO, max_tokens=1).model == "tenant-a@1"
    with pytest.raises(openai.PermissionDeniedError):
        tenant.chat.completions.create(model="tenant-b", messages=HELLO, max_tokens=1)
    visible = {model.id for model in tenant.models.list()}
    assert "tenant-a" in visible and not any(name.startswith(("tenant-b", "shared", "moving")) for name in visible)
    listed = httpx.get(f"{a.url}/v1/adapters", headers={"Authorization": f"Bearer {keys['tenant']}"}).json()
    assert [adapter["name"] for adapter in listed["data"]] == ["tenant-a"]
    assert (
        httpx.get(f"{a.url}/v1/adapters/tenant-b", headers={"Authorization": f"Bearer {keys['tenant']}"}).status_code
        == 403
    )
    everything = {model.id for model in openai_client(a, keys["admin"]).models.list()}
    assert {"tenant-a", "tenant-b"} <= everything
    assert httpx.get(f"{a.url}/health").status_code == 200  # probes stay open


def test_feedback_only_on_your_own_tenants_completions_and_listing_needs_admin(cluster) -> None:
    a, b, keys = cluster
    reply = openai_client(a, keys["inference"]).chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=HELLO, max_tokens=4
    )

    def rate(server: ServerProcess, key: str) -> httpx.Response:
        body = {"completion_id": reply.id, "rating": "up"}
        return httpx.post(f"{server.url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"})

    other_tenant = rate(a, keys["tenant"])
    assert other_tenant.status_code == 404 and other_tenant.json()["error"]["code"] == "not_found"
    assert rate(a, keys["inference"]).status_code == 201
    assert rate(b, keys["inference"]).status_code == 200  # the other replica sees the same record (PostgreSQL)
    assert httpx.post(f"{a.url}/v1/feedback", json={"completion_id": reply.id, "rating": "up"}).status_code == 401

    def listing(key: str) -> httpx.Response:
        return httpx.get(f"{b.url}/v1/feedback", headers={"Authorization": f"Bearer {key}"})

    assert listing(keys["inference"]).status_code == 403
    records = listing(keys["admin"]).json()["data"]
    assert [(record["completion_id"], record["tenant"]) for record in records] == [(reply.id, "apps")]


def test_auth_cannot_be_off_on_a_public_address(loradock_home: Path) -> None:
    done = subprocess.run(
        [str(LORADOCK), "serve", "--host", "0.0.0.0"],
        env={"LORADOCK_HOME": str(loradock_home), "LORADOCK_AUTH": "off", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "auth cannot be off" in done.stderr


def test_the_dashboard_asks_a_browser_for_an_admin_key(cluster) -> None:
    a, _, keys = cluster
    refused = httpx.get(f"{a.url}/ui")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{a.url}/ui", auth=("ops", keys["inference"])).status_code == 403
    assert httpx.get(f"{a.url}/ui", auth=("ops", "ldk-wrong")).status_code == 401
    page = httpx.get(f"{a.url}/ui", auth=("ops", keys["admin"]))
    assert page.status_code == 200 and 'id="drift"' in page.text
    assert httpx.get(f"{a.url}/ui", headers={"Authorization": f"Bearer {keys['admin']}"}).status_code == 200
    dom = chromium("--dump-dom", a.url.replace("http://", f"http://ops:{keys['admin']}@") + "/ui")
    assert 'id="adapters"' in dom and "tenant-a" in dom


def test_drift_is_readable_by_keys_that_may_use_the_adapter(cluster) -> None:
    a, _, keys = cluster
    tenant = {"Authorization": f"Bearer {keys['tenant']}"}
    assert httpx.get(f"{a.url}/v1/adapters/tenant-a/drift", headers=tenant).status_code == 200
    assert httpx.get(f"{a.url}/v1/adapters/tenant-b/drift", headers=tenant).status_code == 403
    assert httpx.get(f"{a.url}/v1/adapters/tenant-a/drift").status_code == 401


def test_a_keys_rate_and_concurrency_limits_are_429_with_retry_after(cluster) -> None:
    a, _, keys = cluster
    chat = {"model": "SmolLM2-135M-Instruct", "messages": HELLO, "max_tokens": 1}

    def ask(key: str) -> httpx.Response:
        return httpx.post(f"{a.url}/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"})

    statuses = [ask(keys["limited"]).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
    limited = ask(keys["limited"])
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert ask(keys["inference"]).status_code == 200  # other keys are not affected

    long = {**chat, "max_tokens": 64, "messages": [{"role": "user", "content": "Tell me a long story."}]}
    stream = BackgroundStream(a.url, long, headers={"Authorization": f"Bearer {keys['single']}"})
    assert stream.wait_started()
    second = ask(keys["single"])
    stream.finish()
    assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert second.headers["retry-after"] == "1"
    assert ask(keys["single"]).status_code == 200
    two_prompts = {"model": "SmolLM2-135M-Instruct", "prompt": ["a", "b"], "max_tokens": 1}
    batch = httpx.post(
        f"{a.url}/v1/completions", json=two_prompts, headers={"Authorization": f"Bearer {keys['single']}"}
    )
    assert batch.status_code == 400 and batch.json()["error"]["param"] == "prompt"


def test_keys_never_appear_in_logs_or_the_interaction_log(cluster) -> None:
    """Near the end: it reads what every test before it made the replicas log and store."""
    a, b, keys = cluster
    key = keys["inference"]
    httpx.get(f"{a.url}/v1/models?api_key={key}", headers={"Authorization": f"Bearer {key}"})
    httpx.get(f"{a.url}/v1/models", headers={"Authorization": f"Bearer {key}x"})
    logs = a.log_path.read_text() + b.log_path.read_text()
    database = open_database(a.env["LORADOCK_DATABASE_URL"])
    with database.engine.connect() as connection:
        stored = " ".join(str(row) for row in connection.exec_driver_sql("SELECT * FROM interactions"))
    database.dispose()
    assert stored, "the replicas logged no interactions to check"
    assert "api_key=ldk-[REDACTED]" in logs and "Logging error" not in logs  # the access line, whole
    for secret in keys.values():
        assert secret not in logs and secret[4:] not in logs
        assert secret not in stored


def test_a_replica_stopped_by_sigterm_finishes_its_streams_while_the_other_serves(
    cluster, demo_base: BaseModelSpec, tmp_path: Path
) -> None:
    """It stops replica A: a rolling restart as an orchestrator runs one, with an adapter's stream in flight."""
    a, b, keys = cluster
    folder = write_adapter(tmp_path / "draining", demo_base, seed=9)
    assert upload_adapter(a.url, "draining", adapter_files(folder), api_key=keys["admin"]).status_code == 201
    story = {"model": "draining", "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 64}
    stream = BackgroundStream(a.url, story, headers={"Authorization": f"Bearer {keys['inference']}"})
    assert stream.wait_started()
    a.process.send_signal(signal.SIGTERM)
    meanwhile = openai_client(b, keys["inference"]).chat.completions.create(
        model="draining", messages=HELLO, max_tokens=2
    )
    events = stream.finish()
    exit_code = a.process.wait(60)
    assert meanwhile.model == "draining@1"
    assert events[-1] == "data: [DONE]", a.log_tail()
    finish = [json.loads(e[6:])["choices"][0].get("finish_reason") for e in events[1:-1] if '"finish_reason"' in e]
    assert finish and finish[-1] in {"stop", "length"}
    # uvicorn re-raises the SIGTERM it caught once shutdown is complete, so the process ends "by SIGTERM".
    assert exit_code in (0, -signal.SIGTERM), a.log_tail()
    assert "Application shutdown complete" in a.log_tail()
    # Ending by the signal skips atexit, where multiprocessing would remove the forkserver's socket folder; loradock
    # removes it itself once the engine core has been forked (server/engine_process.py).
    leftovers = [path.name for path in (a.home / "tmp").iterdir() if path.name.startswith("pymp-")]
    assert not leftovers


def test_a_replica_killed_outright_leaves_no_process_behind(cluster) -> None:
    """Last (it kills replica B): a SIGKILL of the API process alone, as the out-of-memory killer sends it. Its engine
    core (forked from a forkserver, not from the API process) used to keep running with the model's gigabytes."""
    b = cluster[1]
    descendants = psutil.Process(b.process.pid).children(recursive=True)
    assert any("EngineCore" in child.name() + " ".join(child.cmdline()) for child in descendants)
    b.process.send_signal(signal.SIGKILL)
    b.process.wait(30)
    deadline = time.monotonic() + 60
    while (alive := [child for child in descendants if still_running(child)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, [(child.pid, child.name()) for child in alive]
