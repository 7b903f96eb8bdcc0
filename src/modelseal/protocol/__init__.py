"""Wire and domain models shared by several processes (msgspec wire models on the loader's
path, pydantic for server-only documents, frozen dataclasses)."""
