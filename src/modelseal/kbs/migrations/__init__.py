"""Alembic migrations of the KBS database (applied by :mod:`modelseal.kbs.schema`).

``versions/`` holds one module per schema revision, each with ``revision``,
``down_revision`` and ``upgrade()``; :mod:`modelseal.kbs.schema` runs them with Alembic's
programmatic API (no ``alembic.ini`` or ``env.py``), so they ship inside the wheel as
ordinary package modules.

Adding a revision when a model changes: copy the newest module in ``versions/`` to
``vNNNN_<what>.py`` with ``revision = "NNNN"`` and ``down_revision`` = the previous one, and
write ``upgrade()`` with ``alembic.op`` operations. On SQLite, column changes go through
``op.batch_alter_table`` (SQLite cannot ALTER most column properties; batch mode copies the
table inside the same transaction). Migrations are forward-only: an operator who must go
back restores the backup taken before ``modelseal kbs migrate``. The test
``tests/integration/kbs_admin/test_migrations.py::test_head_matches_the_models`` fails,
listing the differences, until the models and the head revision agree.
"""
