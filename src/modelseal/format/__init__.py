"""Sealed file format v1 (reader/writer), sealed manifest, CNAP legacy format."""
