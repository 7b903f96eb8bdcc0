"""Run-time knobs of the durability suite, read from the environment.

``MODELSEAL_DURABILITY_SEED``: replay a failing run's random choices (kill moments, victims,
key bytes, released keys); by default every run draws a new seed and prints it on failure.
``MODELSEAL_SOAK_KILLS``: kill points per configuration in the ``soak`` runs (``make soak``).
``MODELSEAL_SOAK_WINDOW``: the longest traffic window before a kill in soak runs, seconds.
``MODELSEAL_SOAK_CLIENTS``: concurrent RCAR clients of the KBS soak runs.
"""

from __future__ import annotations

import os
import random

__all__ = ["SOAK_CLIENTS", "SOAK_KILLS", "SOAK_WINDOW", "seed"]

SOAK_KILLS = int(os.environ.get("MODELSEAL_SOAK_KILLS", "200"))
SOAK_WINDOW = float(os.environ.get("MODELSEAL_SOAK_WINDOW", "3.0"))
SOAK_CLIENTS = int(os.environ.get("MODELSEAL_SOAK_CLIENTS", "16"))


def seed() -> int:
    """The run's seed: ``MODELSEAL_DURABILITY_SEED`` if set, else a fresh random one."""
    fixed = os.environ.get("MODELSEAL_DURABILITY_SEED")
    return int(fixed) if fixed else random.SystemRandom().getrandbits(32)
