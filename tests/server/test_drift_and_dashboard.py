"""Drift on the real server: a profile from a sample file, in-distribution traffic (ok), another domain (alert,
in the API, the gauges, the log and `loradock drift`), a profile built from production prompts, 64 concurrent
streams with no lost window update; then the dashboard in headless Chromium against the APIs' numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from lxml import html as lxml_html

from loadtests.drift_calibration import cooking_questions, tickets
from tests.helpers import (
    LORADOCK,
    ServerProcess,
    chromium,
    make_lora_adapter,
    metric,
)
from training.demo_task import SYSTEM_PROMPT

pytestmark = pytest.mark.integration


def ask_all(client: openai.OpenAI, model: str, prompts: list[str], *, stream: bool = False) -> list[str]:
    def one(prompt: str) -> str:
        messages: Any = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        if not stream:
            return client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0).id
        completion_id = ""
        for chunk in client.chat.completions.create(
            model=model, messages=messages, max_tokens=8, temperature=0, stream=True
        ):
            completion_id = chunk.id
        return completion_id

    with ThreadPoolExecutor(64 if stream else 8) as pool:
        return list(pool.map(one, prompts))


def drift(server: ServerProcess, adapter: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/adapters/{adapter}/drift", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for(server: ServerProcess, adapter: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the drift API until `ready`. The drift thread runs at nice 19 and gets the CPU after the engine, so
    on a slow 2-core machine it can lag by minutes; the bound is generous because a passing wait costs nothing."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        view = drift(server, adapter)
        if ready(view):
            return view
        time.sleep(1)
    raise AssertionError(f"drift of {adapter} never got there: {json.dumps(view)[:3000]}")


def scores(view: dict[str, Any]) -> list[Any]:
    return [
        (version["version"], window["window"], check["test"], check["score"])
        for version in view["versions"]
        for window in version["windows"]
        for check in window["checks"]
    ]


def settle(server: ServerProcess, adapter: str) -> None:
    """Wait until the windows hold every completion sent (their scores stop changing between evaluations)."""
    previous = None
    for _ in range(60):
        current = scores(drift(server, adapter))
        if current and current == previous:
            return
        previous = current
        time.sleep(3)
    raise AssertionError(f"the drift of {adapter} kept changing")


def window(view: dict[str, Any], name: str, version: int = 1) -> dict[str, Any]:
    found = next(v for v in view["versions"] if v["version"] == version)
    return next(w for w in found["windows"] if w["window"] == name)


def holds(view: dict[str, Any], name: str, count: int) -> bool:
    """Whether version 1's window `name` holds `count` completions. Until the drift thread takes in the first
    batch (it holds completions back while requests are in flight), the view is the stored one: a profile, no
    windows."""
    found = [w for v in view["versions"] if v["version"] == 1 for w in v["windows"] if w["window"] == name]
    return bool(found) and found[0]["n"] == count


def observed(view: dict[str, Any]) -> int:
    return sum(version["observed"] or 0 for version in view["versions"])


def loradock(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORADOCK_HOME": str(server.home), "COLUMNS": "200"}
    return subprocess.run([str(LORADOCK), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "tickets.txt"
    path.write_text("\n".join(tickets(300, seed=0)))
    return path


@pytest.fixture(scope="module")
def watched(
    demo_server: ServerProcess, demo_model: Path, sample: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """An adapter registered through the server's API with a drift sample of the tickets it is meant for."""
    folder = make_lora_adapter(demo_model, tmp_path_factory.mktemp("watched") / "adapter", seed=7)
    done = loradock(
        demo_server,
        "adapters",
        "register",
        "watched",
        str(folder),
        "--drift-sample",
        str(sample),
        "--server",
        demo_server.url,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered watched@1" in done.stdout and "drift reference: 300 prompts, 0 answers" in done.stdout
    return "watched"


def test_the_embedding_model_is_loaded_before_the_server_reports_ready(demo_server: ServerProcess) -> None:
    """Loaded at the first completion, its imports held the GIL while the first streams were answered, and a
    stream's tokens then reached the client in one chunk."""
    log = demo_server.log_path.read_text()
    assert log.index("drift: embedding model all-MiniLM-L6-v2 loaded") < log.index("ready: serving"), log[-3000:]


def test_the_startup_heap_is_frozen_before_the_server_reports_ready(demo_server: ServerProcess) -> None:
    """Full garbage collections over it paused every stream for about half a second (server/app.py)."""
    log = demo_server.log_path.read_text()
    frozen = re.search(r"garbage collector: (\d+) startup objects frozen", log)
    assert frozen is not None and int(frozen.group(1)) > 100_000, log[-3000:]
    assert log.index("drift: embedding model all-MiniLM-L6-v2 loaded") < frozen.start() < log.index("ready: serving")


def test_a_profile_is_not_replaced_by_accident_and_a_bad_sample_is_refused(
    demo_server: ServerProcess, watched: str, sample: Path, tmp_path: Path
) -> None:
    again = loradock(demo_server, "drift", watched, "--profile-from", str(sample))
    assert again.returncode == 1 and "watched@1 already has a reference profile" in again.stdout
    url = f"{demo_server.url}/v1/adapters/{watched}/versions/1/drift-profile"
    few = httpx.put(url, json={"prompts": ["only", "two"]}, timeout=60)
    assert few.status_code == 400 and "at least 20 non-empty prompts, got 2" in few.json()["error"]["message"]
    assert httpx.put(url.replace("/1/", "/9/"), json={"prompts": ["x"] * 30}, timeout=60).status_code == 404
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\nnot json\n')
    refused = loradock(demo_server, "drift", watched, "--profile-from", str(broken), "--replace")
    assert refused.returncode == 1 and "broken.jsonl:2: not valid JSON" in refused.stdout


def test_in_distribution_traffic_is_ok_and_another_domain_alerts(
    demo_server: ServerProcess, client: openai.OpenAI, watched: str, tmp_path: Path
) -> None:
    ask_all(client, watched, tickets(40, seed=11))
    view = wait_for(demo_server, watched, lambda v: holds(v, "count", 40))
    count = window(view, "count")
    assert view["source"] == "live" and view["versions"][0]["profile"]["source"] == "sample-file"
    prompt_checks = {check["test"]: check for check in count["checks"] if check["target"] == "prompts"}
    assert set(prompt_checks) == {"prompt_length", "prompt_tokens", "prompt_embedding"}
    assert all(check["status"] == "ok" for check in prompt_checks.values()), prompt_checks
    assert all(check["score"] < check["warn_at"] <= check["alert_at"] for check in prompt_checks.values())
    # a sample of prompts only: nothing to compare answers with
    assert {c["status"] for c in count["checks"] if c["target"] == "answers"} == {"insufficient_data"}
    assert metric(demo_server, "loradock_drift_status", adapter=watched, window="count") == 0

    ask_all(client, watched, cooking_questions(40))
    view = wait_for(demo_server, watched, lambda v: window(v, "count")["status"] == "alert")
    count = window(view, "count")
    alerted = {check["test"] for check in count["checks"] if check["status"] == "alert"}
    assert {"prompt_tokens", "prompt_embedding"} <= alerted, count["checks"]
    assert view["status"] == "alert"
    assert count["examples"] and all("bake" in example["prompt"] for example in count["examples"])
    assert metric(demo_server, "loradock_drift_status", adapter=watched, window="count") == 2
    assert metric(demo_server, "loradock_drift_score", adapter=watched, window="count", test="prompt_embedding") > 0
    assert re.search(r"drift: watched@1 count window (ok|warn) -> alert", demo_server.log_path.read_text())
    assert any(point["status"] == "alert" for point in view["history"])

    report = tmp_path / "drift.html"
    done = loradock(demo_server, "drift", watched, "--html", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "watched: alert" in done.stdout and "prompt_embedding" in done.stdout
    page = report.read_text()
    assert "<svg" in page and 'data-status="alert"' in page and "bake" in page


def test_a_version_without_profile_is_profiled_from_production_prompts(
    demo_server: ServerProcess, client: openai.OpenAI
) -> None:
    ask_all(client, "beta", tickets(20, seed=5))  # LORADOCK_DRIFT_PROFILE_REQUESTS in the session server
    view = wait_for(demo_server, "beta", lambda v: bool(v["versions"]) and v["versions"][0]["profile"] is not None)
    assert view["versions"][0]["profile"]["source"] == "production"
    done = loradock(demo_server, "drift", "beta")
    assert done.returncode == 0 and "profile: production" in done.stdout, done.stdout + done.stderr


def test_64_concurrent_streams_lose_no_window_update(
    demo_server: ServerProcess, client: openai.OpenAI, watched: str
) -> None:
    before = observed(drift(demo_server, watched))
    dropped = metric(demo_server, "loradock_drift_observations_total", outcome="dropped")
    ids = ask_all(client, watched, tickets(64, seed=21), stream=True)
    assert len(set(ids)) == 64
    wait_for(demo_server, watched, lambda v: observed(v) == before + 64)
    assert metric(demo_server, "loradock_drift_observations_total", outcome="dropped") == dropped


def test_dashboard_renders_in_chromium_with_the_numbers_the_apis_report(
    demo_server: ServerProcess, client: openai.OpenAI, watched: str, loradock_home: Path
) -> None:
    ids = ask_all(client, watched, tickets(5, seed=31))
    for index, completion_id in enumerate(ids):
        rating = "down" if index < 3 else "up"
        posted = httpx.post(
            f"{demo_server.url}/v1/feedback", json={"completion_id": completion_id, "rating": rating}, timeout=30
        )
        assert posted.status_code in (200, 201), posted.text
    settle(demo_server, watched)

    screenshot = loradock_home / "screenshots" / "dashboard.png"
    screenshot.parent.mkdir(exist_ok=True)
    screenshot.unlink(missing_ok=True)
    url = f"{demo_server.url}/ui"
    dom = chromium("--dump-dom", url)
    chromium("--window-size=1400,5000", f"--screenshot={screenshot}", url)
    assert screenshot.stat().st_size > 20_000
    page = lxml_html.fromstring(dom)

    def cell(panel: str, adapter: str, field: str) -> str:
        found = page.xpath(f'//div[@id="{panel}"]//tr[@data-adapter="{adapter}"]/td[@data-field="{field}"]')
        assert found, f"no {field} of {adapter} in the {panel} panel"
        return str(found[0].text_content()).strip()

    adapters = httpx.get(f"{demo_server.url}/v1/adapters", timeout=30).json()["data"]
    for adapter in adapters:
        active = ", ".join(f"v{v['version']}" for v in adapter["versions"] if v["status"] == "active")
        assert cell("adapters", adapter["name"], "versions") == active

    requests = metric(demo_server, "loradock_requests_total", model=f"{watched}@1")
    errors = metric(demo_server, "loradock_errors_total", model=f"{watched}@1")
    assert int(cell("traffic", watched, "requests")) == int(requests) > 0
    assert int(cell("traffic", watched, "errors")) == int(errors)

    view = drift(demo_server, watched)
    assert cell("drift", watched, "status") == view["status"]
    section = page.xpath(f'//section[@data-adapter="{watched}"]')[0]
    for window_view in view["versions"][0]["windows"]:
        for check in window_view["checks"]:
            if check["score"] is None:
                continue
            shown = section.xpath(
                f'.//h4[@data-window="{window_view["window"]}"]/following-sibling::table[1]'
                f'//tr[@data-test="{check["test"]}"]/td[@class="score"]'
            )
            assert shown and abs(float(shown[0].text_content()) - check["score"]) <= 1e-3 * max(1, check["score"])
    assert section.xpath('.//div[@data-chart="drift-status"]//*[local-name()="svg"]')

    feedback = httpx.get(f"{demo_server.url}/v1/feedback", params={"adapter": watched, "limit": 100}, timeout=30)
    rows = feedback.json()["data"]
    assert int(cell("feedback", watched, "count")) == len(rows) == 5
    assert int(cell("feedback", watched, "negative")) == sum(row["score"] < 0.5 for row in rows) == 3
