"""``kill -9`` the registry during concurrent blob uploads and version registrations; after
every restart no partial object is visible, no record names a missing or different blob,
and every acknowledged upload and registration is there (registry_driver.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.durability import settings
from tests.e2e.durability.registry_driver import run_registry_durability

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_registry_survives_kill9(tmp_path: Path) -> None:
    report = run_registry_durability(tmp_path, kill_points=10, seed=settings.seed())
    print(report.summary())


@pytest.mark.soak
def test_registry_soak(tmp_path: Path) -> None:
    report = run_registry_durability(
        tmp_path,
        kill_points=settings.SOAK_KILLS,
        seed=settings.seed(),
        window=(0.2, settings.SOAK_WINDOW),
    )
    print(report.summary())
