"""Container entry points: health checks and the compose bootstrap (``python -m deploy.entrypoints.X``)."""
