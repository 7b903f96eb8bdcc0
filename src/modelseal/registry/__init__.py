"""Model registry: model records and sealed blobs. Never touches keys."""
