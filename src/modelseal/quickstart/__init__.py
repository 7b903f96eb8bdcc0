"""The whole flow on loopback with embedded defaults (``modelseal quickstart``)."""
