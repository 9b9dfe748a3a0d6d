"""OpenAI's Files and fine-tuning API on a real server and a real `loradock worker`, with the official client."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from adapters.database import open_database
from adapters.keys import create_key
from tests.conftest import fresh_postgres_database
from tests.helpers import LORADOCK, ServerProcess
from training.demo_task import write_dataset

pytestmark = pytest.mark.integration

TINY = "tiny-llama"
SMALL_JOB = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}}
LORA = {"r": 8}


class Worker:
    """`loradock worker` as a child process."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.log = (home / f"worker-{time.monotonic_ns()}.log").open("w")
        self.process = subprocess.Popen(
            [str(LORADOCK), "worker"], env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def environment(home: Path, tiny_model: Path, **extra: str) -> dict[str, str]:
    """The settings of this module's servers and workers. Their temporary files go under the home: a worker killed
    outright leaves its forkserver's socket folder behind, where pytest removes it, not in the machine's /tmp."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "TMPDIR": str(home / "tmp"),
        "LORADOCK_HOME": str(home),
        "LORADOCK_BASE_MODEL": str(tiny_model),
        "LORADOCK_MAX_LORA_RANK": "16",
        "LORADOCK_WORKER_POLL_S": "0.5",
        "LORADOCK_WORKER_STALE_S": "5",
        **extra,
    }


def launch(request: pytest.FixtureRequest) -> Iterator[tuple[ServerProcess, Worker, dict[str, str], Path]]:
    """A server with keys required and one worker, both on the tiny base; keys of two tenants
    (`tests/early_start.py`)."""
    home = request.getfixturevalue("tmp_path_factory").mktemp("ft-home")
    env = environment(home, request.getfixturevalue("tiny_model"), LORADOCK_AUTH="on")
    database = open_database(f"sqlite:///{home / 'loradock.db'}")
    keys = {tenant: create_key(database, scope="inference", tenant=tenant)[0] for tenant in ("acme", "globex")}
    database.dispose()
    server = ServerProcess(home, [], env=env)
    worker = Worker(home, env)
    try:
        yield server, worker, keys, home
    finally:
        worker.stop()
        server.terminate()


@pytest.fixture(scope="module")
def service(
    launched: tuple[ServerProcess, Worker, dict[str, str], Path],
) -> tuple[ServerProcess, Worker, dict[str, str], Path]:
    launched[0].wait_ready()
    return launched


def client(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def wait_for(check: Callable[[], Any], timeout_s: float = 300, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError("condition not met in time")


def finished(api: openai.OpenAI, job_id: str, timeout_s: float = 300) -> Any:
    return wait_for(
        lambda: (job := api.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled") and job,
        timeout_s,
    )


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ft-data") / "tickets.jsonl", count=120)


def test_upload_train_poll_and_chat_with_the_fine_tuned_model(service, tickets: Path) -> None:
    server, _, keys, _ = service
    api = client(server, keys["acme"])
    uploaded = api.files.create(file=tickets.open("rb"), purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.bytes == tickets.stat().st_size
    assert api.files.retrieve(uploaded.id).filename == "tickets.jsonl"
    assert api.files.content(uploaded.id).read() == tickets.read_bytes()
    job = api.fine_tuning.jobs.create(
        model=TINY, training_file=uploaded.id, suffix="tickets", method=SMALL_JOB, seed=7, extra_body={"loradock": LORA}
    )
    assert job.status == "validating_files" and job.seed == 7
    done = finished(api, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{TINY}:tickets:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0
    events = api.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [event.message for event in events]
    assert any(message.startswith("Step ") and "training loss" in message for message in messages)
    assert messages[-1].startswith("Created fine-tuning job") and messages[0].startswith("The job has successfully")
    checkpoints = api.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(done.fine_tuned_model)
    reply = api.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "My order is late."}], max_tokens=4
    )
    assert reply.model == done.model_extra["loradock"]["adapter"]
    hub_name = reply.model.split("@")[0]
    assert api.chat.completions.create(model=hub_name, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert hub_name in {model.id for model in api.models.list()}


def test_a_bad_training_file_fails_the_job_in_validating_files(service, tmp_path: Path) -> None:
    server, _, keys, _ = service
    api = client(server, keys["acme"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n{nope\n')
    uploaded = api.files.create(file=bad.open("rb"), purpose="fine-tune")
    assert uploaded.status == "error" and "line 2: malformed JSON" in uploaded.status_details
    job = finished(api, api.fine_tuning.jobs.create(model=TINY, training_file=uploaded.id).id, timeout_s=60)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 2: malformed JSON" in job.error.message
    events = [event.message for event in api.fine_tuning.jobs.list_events(job.id).data]
    assert any("Validation of bad.jsonl failed" in message for message in events)


def test_job_pages_and_tenants(service, tmp_path: Path) -> None:
    server, _, keys, _ = service
    api, other = client(server, keys["acme"]), client(server, keys["globex"])
    bad = tmp_path / "empty-answers.jsonl"
    bad.write_text('{"prompt": 1}\n')
    file_id = api.files.create(file=bad.open("rb"), purpose="fine-tune").id
    created = [api.fine_tuning.jobs.create(model=TINY, training_file=file_id).id for _ in range(3)]
    first = api.fine_tuning.jobs.list(limit=2)
    assert [job.id for job in first.data] == created[::-1][:2] and first.has_more
    rest = api.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert rest.data[0].id == created[0]
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(created[0])
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.cancel(created[0])
    assert all(job.id not in created for job in other.fine_tuning.jobs.list().data)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.create(model=TINY, training_file=file_id)
    for job_id in created:
        finished(api, job_id, timeout_s=60)
    api.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(file_id)


def test_cancel_a_running_job_and_the_worker_takes_the_next(service, tickets: Path) -> None:
    server, _, keys, _ = service
    api = client(server, keys["acme"])
    file_id = api.files.create(file=tickets.open("rb"), purpose="fine-tune").id
    long_job = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 30, "batch_size": 4}}}
    job = api.fine_tuning.jobs.create(model=TINY, training_file=file_id, method=long_job, extra_body={"loradock": LORA})
    wait_for(lambda: any(e.message.startswith("Step ") for e in api.fine_tuning.jobs.list_events(job.id).data))
    asked = time.monotonic()
    api.fine_tuning.jobs.cancel(job.id)
    cancelled = finished(api, job.id, timeout_s=60)
    assert cancelled.status == "cancelled" and time.monotonic() - asked < 20
    follow_up = api.fine_tuning.jobs.create(
        model=TINY, training_file=file_id, method=SMALL_JOB, extra_body={"loradock": LORA}
    )
    assert finished(api, follow_up.id).status == "succeeded"


def test_a_killed_worker_is_replaced_and_the_job_resumes(service, tickets: Path, tiny_model: Path) -> None:
    server, worker, keys, home = service
    api = client(server, keys["acme"])
    file_id = api.files.create(file=tickets.open("rb"), purpose="fine-tune").id
    job_spec = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}}
    job = api.fine_tuning.jobs.create(model=TINY, training_file=file_id, method=job_spec, extra_body={"loradock": LORA})
    wait_for(lambda: api.fine_tuning.jobs.checkpoints.list(job.id).data)
    run_dir = home / "jobs" / job.id
    # the training child is forked from the worker's forkserver (training/job_process.py), named after its command
    children = psutil.Process(worker.process.pid).children(recursive=True)
    [child] = [process for process in children if str(run_dir) in " ".join(process.cmdline())]
    assert "multiprocessing.forkserver" in " ".join(child.parent().cmdline())
    os.kill(worker.process.pid, signal.SIGKILL)  # only the worker: its training child must die with it
    worker.process.wait()
    wait_for(lambda: subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True).returncode != 0, 30)
    replacement = Worker(home, environment(home, tiny_model, LORADOCK_AUTH="on"))
    service[1].process = replacement.process  # the fixture stops whichever worker is current
    service[1].log = replacement.log
    done = finished(api, job.id)
    assert done.status == "succeeded", done.error
    assert done.model_extra["loradock"]["attempts"] == 2
    messages = [event.message for event in api.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any("will resume from its last checkpoint" in m for m in messages)
    assert any(m == "Resuming from the last checkpoint" for m in messages)
    record = json.loads((run_dir / "run.json").read_text())
    train_rows = len((run_dir / "data" / "train.jsonl").read_text().splitlines())
    assert record["steps"] == 3 * math.ceil(train_rows / 4)  # every step of 3 epochs, none lost or repeated


def test_two_workers_on_postgresql_run_four_jobs_once_each(tmp_path: Path, tiny_model: Path, tickets: Path) -> None:
    with fresh_postgres_database() as url:
        home = tmp_path / "home"
        # Two training runs side by side on 2 cores: one thread each. With torch's default of a thread per core, four
        # threads shared two cores: two jobs side by side took 15 s from their data to their first checkpoint (model
        # load and 5 steps), against 4 s with a thread each.
        env = environment(
            home, tiny_model, LORADOCK_DATABASE_URL=url, LORADOCK_WORKER_STALE_S="60", OMP_NUM_THREADS="1"
        )
        server = ServerProcess(home, [], env=env)
        workers: list[Worker] = []
        try:
            workers = [Worker(home, env), Worker(home, env)]  # they need the database, not the server: start now
            server.wait_ready()
            api = client(server, "unused")
            small = tmp_path / "small.jsonl"
            small.write_text("".join(tickets.read_text().splitlines(keepends=True)[:40]))
            file_id = api.files.create(file=small.open("rb"), purpose="fine-tune").id
            jobs = [
                api.fine_tuning.jobs.create(
                    model=TINY, training_file=file_id, method=SMALL_JOB, suffix=f"w{i}", extra_body={"loradock": LORA}
                ).id
                for i in range(4)
            ]
            results = [finished(api, job_id, timeout_s=400) for job_id in jobs]
            starts = [
                sum(
                    event.message == "Fine-tuning job started"
                    for event in api.fine_tuning.jobs.list_events(job_id).data
                )
                for job_id in jobs
            ]
        finally:
            for worker in workers:
                worker.stop()
            server.terminate()
    assert [job.status for job in results] == ["succeeded"] * 4
    assert all(job.model_extra["loradock"]["attempts"] == 1 for job in results)
    assert starts == [1] * 4


def test_dpo_job_on_preference_rows(service, tmp_path: Path) -> None:
    server, _, keys, _ = service
    api = client(server, keys["acme"])
    rows = []
    for row in json.loads("[" + ",".join(write_dataset(tmp_path / "t.jsonl", count=60).read_text().splitlines()) + "]"):
        right = row["messages"][-1]["content"]
        wrong = right.replace('"priority": "', '"priority": "not-')
        rows.append(
            {
                "input": {"messages": row["messages"][:-1]},
                "preferred_output": [{"role": "assistant", "content": right}],
                "non_preferred_output": [{"role": "assistant", "content": wrong}],
            }
        )
    preferences = tmp_path / "preferences.jsonl"
    preferences.write_text("".join(json.dumps(row) + "\n" for row in rows))
    file_id = api.files.create(file=preferences.open("rb"), purpose="fine-tune").id
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "beta": 0.1}}}
    job = finished(
        api,
        api.fine_tuning.jobs.create(model=TINY, training_file=file_id, method=dpo, extra_body={"loradock": LORA}).id,
    )
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo"
    sft_file = api.files.create(file=(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune").id
    refused = finished(api, api.fine_tuning.jobs.create(model=TINY, training_file=sft_file, method=dpo).id, 60)
    assert refused.status == "failed" and "prompt/chosen/rejected" in refused.error.message
