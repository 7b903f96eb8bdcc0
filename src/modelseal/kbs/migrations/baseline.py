"""Revision 0001: the KBS schema as ``create_all()`` made it before migrations existed.

Frozen copies of the tables, not the live models: the models may change in later revisions,
while a database made by old code must keep being compared with exactly this schema when
:func:`modelseal.kbs.schema.migrate` adopts it. Index names are the ones SQLAlchemy gave
``index=True`` columns (``ix_<table>_<column>``), as found in those databases.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["REVISION", "metadata"]

REVISION = "0001"


def metadata() -> MetaData:
    """A new :class:`MetaData` holding the five tables of revision 0001."""
    meta = MetaData()
    Table(
        "ms_keys",
        meta,
        Column("key_id", String(255), primary_key=True),
        Column("wrapped", LargeBinary, nullable=False),
        Column("kek_id", String(64), nullable=False),
        Column("state", String(16), nullable=False),
        Column("size", Integer, nullable=False),
        Column("model_digest", String(80)),
        Column("policy_json", Text),
        Column("policy_digest", String(80)),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        Column("mac", String(64), nullable=False),
        Index("ix_ms_keys_kek_id", "kek_id"),
        Index("ix_ms_keys_model_digest", "model_digest"),
    )
    Table(
        "ms_audit",
        meta,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("time", String(40), nullable=False),
        Column("actor", String(255), nullable=False),
        Column("action", String(64), nullable=False),
        Column("key_id", String(255)),
        Column("tee", String(32)),
        Column("claims_digest", String(80)),
        Column("policy_digest", String(80)),
        Column("decision", String(16), nullable=False),
        Column("reasons", Text, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("row_hash", String(64), nullable=False),
        Index("ix_ms_audit_key_id", "key_id"),
    )
    Table(
        "ms_audit_head",
        meta,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("seq", Integer, nullable=False),
        Column("row_hash", String(64), nullable=False),
        Column("kek_id", String(64), nullable=False),
        Column("mac", String(64), nullable=False),
    )
    Table(
        "ms_transfer_nonces",
        meta,
        Column("nonce", String(128), primary_key=True),
        Column("key_id", String(255), nullable=False),
        Column("expires_at", Float, nullable=False),
        Index("ix_ms_transfer_nonces_expires_at", "expires_at"),
    )
    Table(
        "kbs_rcar_sessions",
        meta,
        Column("id", String(32), primary_key=True),
        Column("tee", String(64), nullable=False),
        Column("nonce", String(64), nullable=False),
        Column("state", String(16), nullable=False),
        Column("expires_at", Float, nullable=False),
        Column("token", Text),
        Index("ix_kbs_rcar_sessions_expires_at", "expires_at"),
    )
    return meta
