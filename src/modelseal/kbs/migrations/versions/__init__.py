"""KBS schema revisions, oldest first (``v0001_...``); loaded by Alembic by file path."""
