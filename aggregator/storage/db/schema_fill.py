"""Adds the tables and nullable columns a database lacks, as pre-alembic releases did at start."""

from __future__ import annotations

from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection


def fill_missing(conn: Connection, metadata: MetaData) -> list[str]:
    """Create missing tables (with their indexes) and add missing nullable columns.

    Args:
        conn: an open connection (the caller commits).
        metadata: the tables wanted. Example: the baseline revision's frozen tables.

    Returns:
        What was added, as ``table`` or ``table.column`` names.
    """
    have_tables = set(inspect(conn).get_table_names())
    added = [t.name for t in metadata.sorted_tables if t.name not in have_tables]
    metadata.create_all(conn, checkfirst=True)
    existing = inspect(conn)
    for table in metadata.sorted_tables:
        if table.name in added:
            continue
        have = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or not column.nullable:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            added.append(f"{table.name}.{column.name}")
    return added
