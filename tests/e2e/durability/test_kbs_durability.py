"""``kill -9`` the KBS under concurrent key puts, policy changes, KEK rotations and RCAR
releases; after every restart the acknowledged state must be intact (kbs_driver.py says
exactly what is checked). SQLite with one and two workers, PostgreSQL with one and two
workers and with two replicas on one database: at least 10 kill points per backend here,
hundreds in ``make soak``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.durability import settings
from tests.e2e.durability.kbs_driver import KbsConfig, TrafficMix, run_kbs_durability

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# (configuration, kill points in the default run): with the KEK-in-a-token runs below,
# 10 per backend (SQLite 4 + 3 + 3, PostgreSQL 3 + 2 + 3 + 2)
SQLITE = [(KbsConfig(workers=1), 4), (KbsConfig(workers=2), 3)]
POSTGRES = [
    (KbsConfig(workers=1), 3),
    (KbsConfig(workers=2), 2),
    (KbsConfig(workers=1, replicas=2), 3),
]


def _id(case: tuple[KbsConfig, int]) -> str:
    config = case[0]
    return f"replicas{config.replicas}-workers{config.workers}"


@pytest.mark.parametrize("case", SQLITE, ids=_id)
def test_sqlite_survives_kill9(case: tuple[KbsConfig, int], tmp_path: Path) -> None:
    config, kills = case
    report = run_kbs_durability(tmp_path, config, kill_points=kills, seed=settings.seed())
    print(report.summary())


@pytest.mark.postgres
@pytest.mark.parametrize("case", POSTGRES, ids=_id)
def test_postgres_survives_kill9(case: tuple[KbsConfig, int], tmp_path: Path, pg_url: str) -> None:
    config, kills = case
    report = run_kbs_durability(
        tmp_path, config, kill_points=kills, seed=settings.seed(), database_url=pg_url
    )
    print(report.summary())


@pytest.mark.soak
@pytest.mark.parametrize("case", SQLITE, ids=_id)
def test_sqlite_soak(case: tuple[KbsConfig, int], tmp_path: Path) -> None:
    report = run_kbs_durability(
        tmp_path,
        case[0],
        kill_points=settings.SOAK_KILLS,
        seed=settings.seed(),
        window=(0.2, settings.SOAK_WINDOW),
        mix=TrafficMix(rcar_clients=settings.SOAK_CLIENTS),
    )
    print(report.summary())


@pytest.mark.soak
@pytest.mark.postgres
@pytest.mark.parametrize("case", POSTGRES, ids=_id)
def test_postgres_soak(case: tuple[KbsConfig, int], tmp_path: Path, pg_url: str) -> None:
    report = run_kbs_durability(
        tmp_path,
        case[0],
        kill_points=settings.SOAK_KILLS,
        seed=settings.seed(),
        database_url=pg_url,
        window=(0.2, settings.SOAK_WINDOW),
        mix=TrafficMix(rcar_clients=settings.SOAK_CLIENTS),
    )
    print(report.summary())


# The KEK in a PKCS#11 token (SoftHSM2), shared by the workers and by two replicas: the
# token's objects must survive kill -9 mid-rotation as the kek files do.
# Two workers: both processes use the token, one rotates while the other serves.
def test_kek_in_token_survives_kill9(tmp_path: Path, kek_uri: str) -> None:
    config = KbsConfig(workers=2, kek_uri=kek_uri)
    report = run_kbs_durability(tmp_path, config, kill_points=3, seed=settings.seed())
    print(report.summary())


@pytest.mark.postgres
def test_replicas_sharing_a_token_survive_kill9(tmp_path: Path, pg_url: str, kek_uri: str) -> None:
    config = KbsConfig(replicas=2, kek_uri=kek_uri)
    report = run_kbs_durability(
        tmp_path, config, kill_points=2, seed=settings.seed(), database_url=pg_url
    )
    print(report.summary())
