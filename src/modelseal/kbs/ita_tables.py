"""Tables of the Intel Trust Authority KBS registration API (revision 0002).

``ms_ita_policies`` holds ITA key-transfer policies: the ITA object as answered
(``document``), the modelseal release policy it translates into (``release_json`` and its
digest) and an HMAC over all of it under a sub-key of the admin credential, so a row
edited in the database is refused instead of handing its policy to new keys.

``ms_ita_keys`` says which keys were made through ``POST /kbs/v1/keys`` and with which
policy. The key itself, with its release policy (a copy of the ITA policy's translation),
is an ordinary ``ms_keys`` row with its own MAC; the two rows are written in one
transaction. A key refers to its ITA policy only while its release policy still is that
policy's translation (a policy set over the modelseal admin API ends the reference).
"""

from __future__ import annotations

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from modelseal.kbs.db import Base

__all__ = ["ItaKeyRow", "ItaPolicyRow"]


class ItaPolicyRow(Base):
    """One ITA key-transfer policy."""

    __tablename__ = "ms_ita_policies"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    document: Mapped[str] = mapped_column(Text)
    release_json: Mapped[str] = mapped_column(Text)
    policy_digest: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[float] = mapped_column(Float)
    mac: Mapped[str] = mapped_column(String(64))


class ItaKeyRow(Base):
    """A key created over the ITA API: its algorithm as given and its policy's id."""

    __tablename__ = "ms_ita_keys"

    key_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    policy_id: Mapped[str | None] = mapped_column(String(36), index=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    key_length: Mapped[int] = mapped_column(Integer)
