"""Jobs in the database on SQLite and PostgreSQL: claims, heartbeats, takeover of silent workers, pagination."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from adapters.database import open_database
from adapters.errors import ConflictError, NotFoundError
from adapters.fine_tuning import FineTuningStore, JobRequest


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> FineTuningStore:
    return FineTuningStore(open_database(database_url), tmp_path / "files", 1 << 20)


def data_file(store: FineTuningStore, tenant: str = "acme") -> str:
    row = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    return store.create_file(tenant, "data.jsonl", "fine-tune", io.BytesIO((row + "\n").encode())).id


def job(store: FineTuningStore, file_id: str, tenant: str = "acme") -> str:
    return store.create_job(tenant, JobRequest(model="base", training_file=file_id), {}).id


def test_each_job_is_claimed_by_one_worker(store: FineTuningStore) -> None:
    file_id = data_file(store)
    jobs = [job(store, file_id) for _ in range(6)]
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (taken := store.claim(name)) is not None:
            with lock:
                claimed.append(taken.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(jobs)


def test_a_silent_worker_loses_its_job_and_learns_it(store: FineTuningStore) -> None:
    job_id = job(store, data_file(store))
    store.mark(job_id, "queued", "validated")
    assert store.claim("a").status == "running"
    assert store.heartbeat(job_id, "a") == "run"
    time.sleep(1.1)
    assert store.recover_stale(stale_after_s=1, max_attempts=3) == [job_id]
    assert store.claim("b").id == job_id
    assert store.heartbeat(job_id, "a") == "lost"  # the old worker stops its copy
    assert store.heartbeat(job_id, "b") == "run"
    assert store.get_job(job_id, None).loradock["attempts"] == 2
    store.cancel_job(job_id, "acme")
    assert store.heartbeat(job_id, "b") == "cancel"


def test_too_many_losses_fail_the_job_with_the_reason(store: FineTuningStore) -> None:
    job_id = job(store, data_file(store))
    store.mark(job_id, "queued", "validated")
    store.claim("a")
    time.sleep(1.1)
    store.recover_stale(stale_after_s=1, max_attempts=1)
    failed = store.get_job(job_id, None)
    assert failed.status == "failed" and failed.error.code == "worker_lost"


def test_tenants_pages_and_file_rules(store: FineTuningStore) -> None:
    file_id = data_file(store)
    ids = [job(store, file_id) for _ in range(5)]
    page = store.list_jobs("acme", None, 2)
    assert [j.id for j in page.data] == ids[::-1][:2] and page.has_more
    assert [j.id for j in store.list_jobs("acme", page.last_id, 10).data] == ids[::-1][2:]
    assert store.list_jobs("globex", None, 10).data == []
    with pytest.raises(NotFoundError):
        store.get_job(ids[0], "globex")
    with pytest.raises(NotFoundError):
        job(store, file_id, tenant="globex")
    with pytest.raises(ConflictError):
        store.delete_file(file_id, "acme")  # jobs still use it
    bad = store.create_file("acme", "bad.jsonl", "fine-tune", io.BytesIO(b'{"text": "fine"}\n{oops\n'))
    assert bad.status == "error" and "line 2" in (bad.status_details or "")
