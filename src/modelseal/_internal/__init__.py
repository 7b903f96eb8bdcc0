"""Small helpers with no modelseal dependencies above ``errors``."""
