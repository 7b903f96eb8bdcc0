"""Wire and domain models shared by several processes (pydantic / frozen dataclasses)."""
