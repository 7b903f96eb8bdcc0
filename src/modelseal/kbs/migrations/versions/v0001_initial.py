"""0001: the KBS schema as it was before migrations (keys, audit chain, nonces, sessions).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from alembic import op

from modelseal.errors import ConfigError
from modelseal.kbs.migrations import baseline

revision = baseline.REVISION
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the five tables; fails if one exists (adopting old databases is
    :func:`modelseal.kbs.schema.migrate`'s job, after it has compared them)."""
    baseline.metadata().create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    """Forward-only: dropping these tables would destroy every key."""
    raise ConfigError(
        "KBS schema migrations are forward-only; restore the backup taken before "
        "`modelseal kbs migrate` instead"
    )
