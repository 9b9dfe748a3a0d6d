"""The hub's database: SQLite (WAL) in $LORADOCK_HOME by default, PostgreSQL for several replicas.

The schema is owned by Alembic: `open_database` upgrades to the newest migration before anything uses it, so a
new release simply starts on an old database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 5
TCP_USER_TIMEOUT_MS = 10_000
MIGRATION_LOCK_ID = 0x6C6F7261646F636B
"""A PostgreSQL advisory lock key ("loradock" in ASCII) held while the schema is upgraded."""


def redacted_url(url: str) -> str:
    """The URL as logs and status pages may show it: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


class Database:
    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        """`timeout_s` bounds how long a statement waits for a lock (the interaction log gives up sooner)."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _make_engine(url, writer=True, timeout_s=timeout_s)
        # SQLite readers need no write lock; on PostgreSQL one engine serves both.
        self._read_engine = _make_engine(url, writer=False, timeout_s=timeout_s) if self.is_sqlite else self.engine
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite it does not wait for writers)."""
        with self._read_sessions.begin() as session:
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest migration."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if not self.is_sqlite:
                # Replicas starting together would otherwise race to create the same tables; PostgreSQL runs DDL in
                # the transaction, so the first upgrades and the others find the schema current.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()


def open_database(url: str) -> Database:
    """Connect, creating the SQLite file's folder if needed, and migrate."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    database = Database(url)
    database.migrate()
    return database


def _make_engine(url: str, *, writer: bool, timeout_s: float) -> Engine:
    milliseconds = int(timeout_s * 1000)
    if not url.startswith("sqlite"):
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            pool_timeout=min(timeout_s, 10),
            connect_args={
                "options": f"-c lock_timeout={milliseconds}",
                # A database host that vanished must fail calls in seconds (503 to ops calls), not hang them.
                "connect_timeout": CONNECT_TIMEOUT_S,
                # ... and a connection whose host went silent mid-query fails in seconds, not TCP's 15 minutes.
                "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout_s})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        # WAL lets readers (every server request that resolves a name) run beside a writer (a registration).
        connection.isolation_level = None
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={milliseconds}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Any) -> None:
        # pysqlite's deferred transactions turn concurrent read-then-write into "database is locked" failures;
        # writers take the write lock at BEGIN, which serializes them cleanly (SQLAlchemy's documented recipe).
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine
