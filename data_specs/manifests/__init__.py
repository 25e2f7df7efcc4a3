"""Dataset manifests: `manifest` (the schema), `validate` (against the files), `fingerprint` (aggregate statistics safe to send)."""
