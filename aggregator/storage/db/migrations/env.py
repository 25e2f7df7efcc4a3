"""Alembic environment: runs on the connection ``aggregator.storage.db.migrate`` hands over.

There is no ``alembic.ini``; ``aggregator.storage.db.migrate.alembic_config`` builds the configuration in
code and puts an open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from aggregator.storage.db.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - the aggregator always passes one
    raise RuntimeError(
        "run migrations through aggregator.storage.db.migrate, which passes a connection"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
