"""Alembic: a fresh SQLite and a fresh PostgreSQL reach the same head, the same schema, and match the models."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from khalsi.db.migrate import current_revision, head_revision, upgrade
from khalsi.db.models import Base

# Indexes on expressions (``timestamp DESC``) cannot be reflected for comparison; their names are
# still compared below.
EXPRESSION_INDEXES = {
    index.name
    for table in Base.metadata.tables.values()
    for index in table.indexes
    if any(not isinstance(expression, sa.Column) for expression in index.expressions)
}


def schema(engine: Engine) -> dict[str, dict[str, Any]]:
    """Tables with their columns, nullability, index and unique-constraint names, as the database reports them."""
    inspector = sa.inspect(engine)
    found: dict[str, dict[str, Any]] = {}
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        found[table] = {
            "columns": {column["name"]: column["nullable"] for column in inspector.get_columns(table)},
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            # PostgreSQL also lists the index behind each unique constraint; those are compared as constraints.
            "indexes": sorted(
                str(index["name"]) for index in inspector.get_indexes(table) if "duplicates_constraint" not in index
            ),
            "unique": sorted(str(unique["name"]) for unique in inspector.get_unique_constraints(table)),
            "foreign_keys": sorted(str(fk["name"]) for fk in inspector.get_foreign_keys(table)),
        }
    return found


def model_diffs(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    # An expression index is reported as "remove"/"add" because it cannot be reflected faithfully.
    return [
        diff
        for diff in diffs
        if not (
            isinstance(diff, tuple) and diff[0] in {"add_index", "remove_index"} and diff[1].name in EXPRESSION_INDEXES
        )
    ]


def test_sqlite_and_postgresql_reach_the_same_head_and_schema(engine: Engine, pg_engine: Engine) -> None:
    head = head_revision()
    assert head is not None
    assert current_revision(engine) == head
    assert current_revision(pg_engine) == head

    sqlite_schema, pg_schema = schema(engine), schema(pg_engine)
    assert set(sqlite_schema) == set(Base.metadata.tables)
    assert sqlite_schema == pg_schema
    for table in Base.metadata.tables.values():
        declared = {index.name for index in table.indexes}
        assert declared <= set(pg_schema[table.name]["indexes"]), table.name
    assert EXPRESSION_INDEXES  # the exception above is real, not a blanket pass
    assert "idx_market_data_symbol_timestamp" in pg_schema["market_data"]["indexes"]
    assert "uq_market_data_coin_id_timestamp" in pg_schema["market_data"]["unique"]


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    before = schema(engine)
    upgrade(engine)
    assert schema(engine) == before
    assert current_revision(engine) == head_revision()


def test_postgresql_migrations_match_the_models(pg_engine: Engine) -> None:
    assert model_diffs(pg_engine) == []


def test_sqlite_migrations_match_the_models(engine: Engine) -> None:
    assert model_diffs(engine) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_downgrade_to_base_and_back(backend: str, request: pytest.FixtureRequest) -> None:
    from alembic import command

    from khalsi.db.migrate import alembic_config

    db_engine: Engine = request.getfixturevalue("engine" if backend == "sqlite" else "pg_engine")
    before = schema(db_engine)
    config = alembic_config(db_engine.url.render_as_string(hide_password=False))
    with db_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert schema(db_engine) == {}
    upgrade(db_engine)
    assert schema(db_engine) == before


def test_every_name_fits_postgresql_identifiers() -> None:
    # PostgreSQL cuts names at 63 bytes (SQLAlchemy then appends a hash), so a longer name differs
    # between SQLite and PostgreSQL and a later migration dropping it by name breaks on one of them.
    names = [
        str(item.name)
        for table in Base.metadata.tables.values()
        for item in [*table.constraints, *table.indexes]
        if isinstance(item, sa.Constraint | sa.Index) and item.name is not None
    ]
    too_long = [name for name in names if len(name.encode()) > 63]
    assert too_long == []
