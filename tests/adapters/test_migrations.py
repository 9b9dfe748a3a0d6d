"""The Alembic migrations create exactly the schema the ORM describes, on both databases, and upgrade in place."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from adapters.database import open_database
from adapters.tables import Base


def test_migrations_match_the_models(database_url: str) -> None:
    database = open_database(database_url)
    try:
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": False})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        database.dispose()


def test_migrating_twice_is_harmless(database_url: str) -> None:
    open_database(database_url).dispose()
    database = open_database(database_url)
    with database.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0006"
    database.dispose()
