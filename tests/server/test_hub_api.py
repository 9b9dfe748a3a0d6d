"""The hub through a running server: registration while serving, aliases and splits, retirement, refusals."""

from __future__ import annotations

import filecmp
import os
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import create_engine, inspect, select

from adapters.fingerprint import BaseModelSpec
from adapters.tables import Base
from tests.adapter_factory import write_adapter
from tests.bad_adapters import build_corpus
from tests.helpers import LORADOCK, BackgroundStream, ServerProcess, adapter_files, upload_adapter

pytestmark = pytest.mark.integration

BASE = "SmolLM2-135M-Instruct"
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, demo_base: BaseModelSpec):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("hub-adapters")
    return lambda seed: write_adapter(root / f"seed-{seed}", demo_base, seed=seed)


def register(server: ServerProcess, name: str, folder: Path) -> dict:
    response = upload_adapter(server.url, name, adapter_files(folder))
    assert response.status_code == 201, response.text
    return response.json()


def which_version(client: openai.OpenAI, model: str, user: str | None = None) -> str:
    reply = client.completions.create(model=model, prompt="Hi", max_tokens=1, **({"user": user} if user else {}))
    return reply.model


def test_registered_adapter_is_servable_the_moment_registration_returns(
    client: openai.OpenAI, demo_server: ServerProcess, made
) -> None:
    version = register(demo_server, "fresh", made(11))
    assert version["version"] == 1 and version["status"] == "active"
    raw = client.chat.completions.with_raw_response.create(model="fresh", messages=HELLO, max_tokens=4)
    assert raw.headers["x-loradock-adapter-version"] == "1"
    assert raw.parse().model == "fresh@1"
    assert client.chat.completions.create(model="fresh@1", messages=HELLO, max_tokens=2).model == "fresh@1"


def test_moving_prod_switches_the_next_requests(client: openai.OpenAI, demo_server: ServerProcess, made) -> None:
    register(demo_server, "mover", made(21))
    register(demo_server, "mover", made(22))
    assert which_version(client, "mover") == "mover@2"  # newest active while there is no prod
    for target in (1, 2, 1):
        moved = httpx.put(f"{demo_server.url}/v1/adapters/mover/aliases/prod", json={"version": target}, timeout=30)
        assert moved.status_code == 200, moved.text
        assert which_version(client, "mover") == f"mover@{target}"
        assert which_version(client, "mover:prod") == f"mover@{target}"
    models = {model.id: model for model in client.models.list()}
    assert {"mover", "mover@1", "mover@2", "mover:prod"} <= set(models)
    assert models["mover:prod"].model_extra["parent"] == BASE


def test_split_90_10_lands_within_binomial_bounds_and_sticks_per_user(
    client: openai.OpenAI, demo_server: ServerProcess, made
) -> None:
    register(demo_server, "split", made(31))
    register(demo_server, "split", made(32))
    body = {"targets": [{"version": 1, "weight": 0.9}, {"version": 2, "weight": 0.1}]}
    assert httpx.put(f"{demo_server.url}/v1/adapters/split/aliases/prod", json=body, timeout=30).status_code == 200
    with ThreadPoolExecutor(max_workers=8) as pool:
        served = Counter(pool.map(lambda _: which_version(client, "split"), range(400)))
    # 400 draws at p = 0.1: mean 40, standard deviation 6; accept 4 standard deviations either side.
    assert 16 <= served["split@2"] <= 64, served
    assert served["split@1"] + served["split@2"] == 400
    for user in ("alice", "bob", "carol"):
        assert len({which_version(client, "split", user) for _ in range(10)}) == 1


def test_retired_versions_stop_serving_while_in_flight_requests_finish(
    client: openai.OpenAI, demo_server: ServerProcess, made
) -> None:
    v1 = register(demo_server, "retiring", made(41))
    register(demo_server, "retiring", made(42))
    stream = BackgroundStream(demo_server.url, {"model": "retiring@1", "messages": HELLO, "max_tokens": 60})
    assert stream.wait_started()
    retired = httpx.delete(f"{demo_server.url}/v1/adapters/retiring/versions/1", timeout=30)
    assert retired.status_code == 200 and retired.json()["status"] == "deprecated"
    events = stream.finish()
    assert events[-1] == "data: [DONE]"
    assert all('"error"' not in event for event in events)
    with pytest.raises(openai.APIStatusError) as gone:
        client.chat.completions.create(model="retiring@1", messages=HELLO, max_tokens=2)
    assert gone.value.status_code == 410
    assert which_version(client, "retiring") == "retiring@2"
    purged = httpx.delete(f"{demo_server.url}/v1/adapters/retiring/versions/1?purge=true", timeout=30)
    assert purged.json()["status"] == "purged"
    assert not (demo_server.home / "artifacts" / "sha256" / v1["sha256"]).exists()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="retiring@1", messages=HELLO, max_tokens=2)


def test_ops_api_errors(demo_server: ServerProcess, made) -> None:
    register(demo_server, "ops", made(51))
    url = demo_server.url
    assert httpx.get(f"{url}/v1/adapters/nobody", timeout=10).status_code == 404
    assert httpx.get(f"{url}/v1/adapters/ops/versions/9", timeout=10).status_code == 404
    assert httpx.put(f"{url}/v1/adapters/ops/aliases/prod", json={"version": 9}, timeout=10).status_code == 409
    assert httpx.put(f"{url}/v1/adapters/ops/aliases/prod", json={}, timeout=10).status_code == 400
    assert httpx.put(f"{url}/v1/adapters/ops/aliases/Bad!", json={"version": 1}, timeout=10).status_code == 400
    assert httpx.put(f"{url}/v1/adapters/ops/aliases/prod", json={"version": 1}, timeout=10).status_code == 200
    blocked = httpx.delete(f"{url}/v1/adapters/ops/versions/1", timeout=10)
    assert blocked.status_code == 409 and "prod" in blocked.json()["error"]["message"]
    assert httpx.delete(f"{url}/v1/adapters/ops/aliases/prod", timeout=10).status_code == 204
    assert httpx.delete(f"{url}/v1/adapters/ops/aliases/prod", timeout=10).status_code == 404
    no_files = httpx.post(f"{url}/v1/adapters", data={"name": "x"}, files={"other": ("", b"")}, timeout=10)
    assert no_files.status_code == 400
    by_source = httpx.post(f"{url}/v1/adapters", json={"name": "x", "source": "/nonexistent/adapter"}, timeout=10)
    assert by_source.status_code == 400 and "neither a folder" in by_source.json()["error"]["message"]


def test_register_by_server_side_source_and_read_back(demo_server: ServerProcess, made) -> None:
    folder = made(61)
    created = httpx.post(
        f"{demo_server.url}/v1/adapters",
        json={"name": "sourced", "source": str(folder), "metadata": {"team": "search"}},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    version = httpx.get(f"{demo_server.url}/v1/adapters/sourced/versions/1", timeout=10).json()
    assert version["source"] == {"kind": "local", "uri": str(folder)}
    assert version["metadata"] == {"team": "search"}
    listed = httpx.get(f"{demo_server.url}/v1/adapters", timeout=10).json()
    assert "sourced" in {adapter["name"] for adapter in listed["data"]}


def test_cli_works_through_the_server(demo_server: ServerProcess, made, tmp_path: Path) -> None:
    env = {**os.environ, "LORADOCK_HOME": str(tmp_path / "elsewhere"), "COLUMNS": "200"}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(LORADOCK), "adapters", *args, "--server", demo_server.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    folder = made(71)
    assert "registered cli-made@1" in cli("register", "cli-made", str(folder))
    assert "cli-made" in cli("list")
    assert "cli-made:canary -> v1" in cli("alias", "cli-made", "canary", "1")
    assert "canary" in cli("show", "cli-made")
    cli("pull", "cli-made@1", "--out", str(tmp_path / "pulled"))
    for path in adapter_files(folder):
        assert filecmp.cmp(path, tmp_path / "pulled" / path.name, shallow=False)
    assert "removed alias cli-made:canary" in cli("alias", "cli-made", "canary", "--delete")
    assert "is now deprecated" in cli("deprecate", "cli-made", "1")


def _snapshot(server: ServerProcess) -> tuple[dict[str, list], dict[str, bytes]]:
    engine = create_engine(f"sqlite:///{server.home / 'loradock.db'}")
    try:
        with engine.connect() as connection:
            rows = {
                table.name: sorted(map(tuple, connection.execute(select(table))), key=repr)
                for table in Base.metadata.sorted_tables
                # drift snapshots are the monitor's output, written all the time a server runs
                if inspect(connection).has_table(table.name) and table.name != "drift_snapshots"
            }
    finally:
        engine.dispose()
    store = server.home / "artifacts" / "sha256"
    files = {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    return rows, files


def test_bad_adapter_corpus_is_refused_over_http_and_changes_nothing(
    demo_server: ServerProcess, demo_base: BaseModelSpec, tmp_path: Path
) -> None:
    corpus = build_corpus(demo_base, tmp_path, max_bytes=32 << 20, max_files=32, max_rank=16)
    assert len(corpus) >= 20
    before = _snapshot(demo_server)
    for case in corpus:
        response = upload_adapter(demo_server.url, case.name, case.files)
        assert response.status_code == case.status, (case.id, response.text)
        error = response.json()["error"]
        assert case.says.lower() in error["message"].lower(), (case.id, error)
        assert _snapshot(demo_server) == before, case.id
    assert before[0]["adapters"], "the hub should hold adapters while it refuses the corpus"
