"""Alembic revisions, oldest first: ``0001`` is the schema of the last pre-alembic release."""
