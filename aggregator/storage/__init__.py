"""What the aggregator keeps: `db/` (SQLAlchemy models, engine), `blobs` (content-addressed files), `blob_gc`, `global_models`, `bundle_views`, `routing_bundle`."""
