"""``column IN (ids)`` whose SQL text does not grow with the list of ids.

SQLAlchemy renders ``column.in_(ids)`` with one placeholder per id, so every list length is
its own statement, and Python's ``sqlite3`` keeps up to 128 prepared statements on each pooled
connection. A prepared ``IN`` of 1,000 ids takes about 170 KiB, and the rounds' queries ran on
each of the 16 pooled connections in turn: the aggregator's memory grew with every round in
proportion to the number of sites (``benchmarks/results/scale.md``, section K). On SQLite a
long list is therefore one JSON text parameter read by ``json_each``: one short statement for
any number of ids. PostgreSQL prepares statements on the server, so its lists stay plain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, func, select
from sqlalchemy.orm import Session

SHORT_LIST = 16
"""Lists up to this long stay a plain ``IN`` (a handful of statement variants, each small)."""


def in_ids(
    session: Session, column: SQLColumnExpression[Any], ids: Iterable[str]
) -> ColumnElement[bool]:
    """``column IN ids``, as one JSON parameter on SQLite when the list is long.

    Args:
        session: the session the query runs in (its bind's dialect picks the form).
        column: the column or expression to test. Example: ``Site.id``.
        ids: the values, strings. Example: ``["3f2a…", "9c1b…"]``.
    """
    values = list(ids)
    if len(values) <= SHORT_LIST or session.get_bind().dialect.name != "sqlite":
        return column.in_(values)
    each = func.json_each(json.dumps(values)).table_valued("value")
    return column.in_(select(each.c.value))
