"""TEST-ONLY revision 0003 (never shipped): shows a database at 0002 being upgraded.

It adds an index and, through SQLite-safe batch mode, a column, so a multi-statement
upgrade can be interrupted midway by the tests.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ms_audit_action_test", "ms_audit", ["action"])
    with op.batch_alter_table("ms_keys") as batch:
        batch.add_column(sa.Column("note_test", sa.String(32), nullable=True))
