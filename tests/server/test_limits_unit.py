"""Per-key limits and the database-outage classification, as pure logic (the HTTP behaviour is tested on real
servers in test_replicas_and_auth.py and test_faults.py)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from adapters.keys import ANONYMOUS_ADMIN, Principal
from adapters.settings import Settings
from server.errors import InvalidRequestError, RateLimitedError, database_unavailable
from server.limits import KeyLimits


def _key(key_id: int | None = 1, rpm: int | None = None, concurrent: int | None = None) -> Principal:
    return Principal(key_id, "inference", "team", None, requests_per_minute=rpm, max_concurrent=concurrent)


def test_a_keys_rate_is_a_moving_window_with_a_retry_after() -> None:
    limits = KeyLimits(Settings(key_requests_per_minute=100))
    key = _key(rpm=2)
    limits.check_rate(key)
    limits.check_rate(key)
    with pytest.raises(RateLimitedError) as refused:
        limits.check_rate(key)
    assert 1 <= refused.value.retry_after_s <= 60 and refused.value.headers()["Retry-After"]
    limits.check_rate(_key(key_id=2))  # another key has its own window (the server's default, 100)


def test_no_key_and_the_bootstrap_admin_key_are_never_limited() -> None:
    limits = KeyLimits(Settings(key_requests_per_minute=1, key_max_concurrent=1))
    bootstrap = Principal(key_id=None, scope="admin", tenant="admin", adapters=None)
    for principal in (ANONYMOUS_ADMIN, bootstrap):
        for _ in range(5):
            limits.check_rate(principal)
        with limits.generation_slot(principal), limits.generation_slot(principal):
            pass
        limits.check_prompts(principal, 50)


def test_generation_slots_are_released_however_the_block_ends() -> None:
    limits = KeyLimits(Settings(key_max_concurrent=2))
    key = _key()
    with (
        limits.generation_slot(key),
        limits.generation_slot(key),
        pytest.raises(RateLimitedError) as full,
        limits.generation_slot(key),
    ):
        pass
    assert full.value.code == "concurrency_limit_exceeded"
    with pytest.raises(ValueError), limits.generation_slot(key):
        raise ValueError("the engine failed")
    with limits.generation_slot(key), limits.generation_slot(key):
        pass  # both free again


def test_a_request_with_more_prompts_than_the_key_may_run_is_refused_up_front() -> None:
    limits = KeyLimits(Settings())
    limits.check_prompts(_key(concurrent=3), 3)
    with pytest.raises(InvalidRequestError) as refused:
        limits.check_prompts(_key(concurrent=3), 4)
    assert refused.value.param == "prompt"


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (PoolTimeoutError("pool exhausted"), True),
        (OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused")), True),
        (OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminating connection")), True),
        (OperationalError("SELECT 1", {}, psycopg.errors.ObjectNotInPrerequisiteState("no connections")), True),
        (OperationalError("SELECT 1", {}, psycopg.errors.QueryCanceled("statement timeout")), False),
        (OperationalError("SELECT 1", {}, psycopg.errors.LockNotAvailable("lock timeout")), False),
        (OperationalError("SELECT 1", {}, sqlite3.OperationalError("no such table: adapters")), False),
        (OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")), False),
        (IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate")), False),
        (ValueError("not a database error"), False),
    ],
)
def test_only_an_unreachable_database_counts_as_an_outage(error: Exception, outage: bool) -> None:
    assert database_unavailable(error) is outage
