"""``column IN (ids)`` whose SQL text does not grow with the list of ids.

SQLAlchemy renders ``column.in_(ids)`` with one placeholder per id, so every list length is
its own statement. Python's ``sqlite3`` keeps up to 128 prepared statements on each pooled
connection: a prepared ``IN`` of 1,000 ids takes about 170 KiB, and the rounds' queries ran on
each of the 16 pooled connections in turn, so the aggregator's memory grew with every round in
proportion to the number of sites (``benchmarks/results/scale.md``, section K). A long list is
therefore one parameter: a JSON text read by ``json_each`` on SQLite, an array compared with
``= ANY`` on PostgreSQL (where psycopg prepares a statement it has run five times).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, String, any_, func, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.types import ARRAY

SHORT_LIST = 16
"""Lists up to this long stay a plain ``IN`` (a handful of statement variants, each small)."""


def in_ids(
    session: Session, column: SQLColumnExpression[Any], ids: Iterable[str]
) -> ColumnElement[bool]:
    """``column IN ids``, as one parameter when the list is long.

    Args:
        session: the session the query runs in (its bind's dialect picks the form).
        column: the column to test, of a string type. Example: ``Site.id``.
        ids: the values, strings. Example: ``["3f2a…", "9c1b…"]``.
    """
    values = list(ids)
    if len(values) > SHORT_LIST:
        dialect = session.get_bind().dialect.name
        if dialect == "sqlite":
            each = func.json_each(json.dumps(values)).table_valued("value")
            return column.in_(select(each.c.value))
        if dialect == "postgresql":
            return column == any_(literal(values, ARRAY(String)))
    return column.in_(values)
