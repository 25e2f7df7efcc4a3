"""Alembic migrations of the aggregator's database (run by ``aggregator.storage.db.migrate``)."""
