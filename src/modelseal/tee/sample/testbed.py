"""The sample TEE without hardware: the KBS only has to be opted in."""

from __future__ import annotations

from pathlib import Path

from modelseal.tee.plugin import Testbed
from modelseal.tee.sample import ALLOW

BANNER = f"""\
================================================================================
 modelseal quickstart — INSECURE DEVELOPMENT SETUP, loopback only
 The KBS runs with {ALLOW.flag}: it releases keys to the 'sample' TEE,
 whose evidence proves NOTHING. Every token it issues is stamped insecure.
 Never run a KBS like this outside a development machine.
================================================================================"""


def provision(work_dir: Path) -> Testbed:
    """Nothing to create: unsigned evidence needs no key material."""
    del work_dir
    return Testbed(
        kbs_options={ALLOW.name: True},
        trust="INSECURE: sample TEE allowed",
        banner=BANNER,
    )
