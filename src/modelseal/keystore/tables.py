"""SQL tables of the key store (SQLite or PostgreSQL through SQLAlchemy).

The key store sits below the KBS app in the layering, so it owns its own declarative base;
the KBS creates these tables next to its own on the same engine.
"""

from __future__ import annotations

from sqlalchemy import Float, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["KeyRow", "KeystoreBase"]


class KeystoreBase(DeclarativeBase):
    """Declarative base of the key-store tables."""


class KeyRow(KeystoreBase):
    """One data key: wrapped under the KEK named by ``kek_id``, never stored in plaintext."""

    __tablename__ = "ms_keys"

    key_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    kek_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16))
    size: Mapped[int]
    model_digest: Mapped[str | None] = mapped_column(String(80), index=True)
    policy_json: Mapped[str | None] = mapped_column(Text)
    policy_digest: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    #: HMAC (KEK-derived key) over every field above: SQL-level edits of state, policy
    #: or model digest are detected when the key is loaded.
    mac: Mapped[str] = mapped_column(String(64))
