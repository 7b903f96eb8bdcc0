"""0002: the Intel Trust Authority KBS registration tables (policies, key references).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from modelseal.errors import ConfigError

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Two new tables; nothing existing changes (frozen here, not taken from the models)."""
    op.create_table(
        "ms_ita_policies",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("release_json", sa.Text, nullable=False),
        sa.Column("policy_digest", sa.String(80), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    op.create_table(
        "ms_ita_keys",
        sa.Column("key_id", sa.String(255), primary_key=True),
        sa.Column("policy_id", sa.String(36), nullable=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("key_length", sa.Integer, nullable=False),
    )
    op.create_index("ix_ms_ita_keys_policy_id", "ms_ita_keys", ["policy_id"])


def downgrade() -> None:
    """Forward-only, like every KBS revision."""
    raise ConfigError(
        "KBS schema migrations are forward-only; restore the backup taken before "
        "`modelseal kbs migrate` instead"
    )
