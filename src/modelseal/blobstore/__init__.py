"""Storage of sealed blobs behind one interface: local directory or S3."""
