"""Sample attester: Trustee's ``sample`` evidence, ``{"svn": "1", "report_data": b64}``.

Runs anywhere and proves nothing; it exists so the whole flow can be exercised without a
TEE. The KBS refuses it unless started with ``--insecure-allow-sample``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from modelseal._internal.encoding import b64_encode
from modelseal.errors import FormatError

#: Trustee's sample attester reports a fixed security version.
SAMPLE_SVN = "1"
MAX_REPORT_DATA = 64


class Attester:
    """Produces sample evidence carrying the raw report data (standard base64)."""

    tee: ClassVar[str] = "sample"

    def __init__(self, svn: str = SAMPLE_SVN) -> None:
        self.svn = svn

    def evidence(self, report_data: bytes) -> Any:
        if len(report_data) > MAX_REPORT_DATA:
            raise FormatError(f"sample report_data is limited to {MAX_REPORT_DATA} bytes")
        return {"svn": self.svn, "report_data": b64_encode(report_data)}
