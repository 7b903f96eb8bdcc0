"""Admin writes keep flowing under release load: with 32 RCAR clients releasing keys nonstop,
200 key puts all succeed, the releases keep succeeding meanwhile, and the stored state
passes the same checks as after a crash. Latencies are measured in
bench/admin_under_load.py, not asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.durability import settings
from tests.e2e.durability.kbs_driver import LoadResult, admin_under_load

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _assert_flowing(result: LoadResult) -> None:
    failed = len(result.put_errors)
    assert failed == 0, f"{failed} of 200 puts failed, e.g. {result.put_errors[:3]}"
    assert len(result.put_seconds) == 200
    assert result.release_failures == {}, f"releases failed meanwhile: {result.release_failures}"
    assert result.releases > 0, "no release completed while the puts ran"
    assert result.problems == [], "\n".join(result.problems)


def test_sqlite_admin_writes_under_load(tmp_path: Path) -> None:
    _assert_flowing(admin_under_load(tmp_path, seed=settings.seed()))


@pytest.mark.soak  # ~35 s on 2 cores: `make soak` (the SQLite run stays in `make test`)
@pytest.mark.postgres
def test_postgres_admin_writes_under_load(tmp_path: Path, pg_url: str) -> None:
    _assert_flowing(admin_under_load(tmp_path, database_url=pg_url, seed=settings.seed()))
