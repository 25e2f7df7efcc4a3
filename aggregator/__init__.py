"""Aggregator: the FastAPI service that runs federated rounds."""
