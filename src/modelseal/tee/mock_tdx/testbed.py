"""mock-tdx without hardware: a throw-away test CA the KBS trusts explicitly."""

from __future__ import annotations

from pathlib import Path

from modelseal.tee.mock_tdx import CA_DIR, ROOT
from modelseal.tee.mock_tdx.attester import Attester
from modelseal.tee.plugin import Testbed

BANNER = """\
================================================================================
 modelseal quickstart — TEST SETUP, loopback only
 The KBS trusts a throw-away mock-tdx test root CA created for this run: quotes
 take the full DCAP verification path, but no hardware is involved. The release
 policy pins MRTD and requires init-data naming the published model digest.
================================================================================"""


def provision(work_dir: Path) -> Testbed:
    """Create the test CA in ``work_dir/mock-tdx-ca``; the policy pins its default MRTD."""
    ca_dir = work_dir / "mock-tdx-ca"
    attester = Attester(ca_dir)
    return Testbed(
        kbs_options={ROOT.name: str(attester.ca.root_pem_path)},
        attester_values={CA_DIR.name: str(ca_dir)},
        measurements={"mr_td": attester.measurements["mr_td"]},
        trust="mock-tdx test root",
        banner=BANNER,
    )
