"""Runs under a Python that has NVIDIA's ``nv-local-gpu-verifier`` (not this project's
environment: it pins older cryptography, lxml and signxml): parse the given reports and
verify their signatures with NVIDIA's code, print what it found as JSON.

    python nvtrust_side.py REPORT_HEX CHAIN_PEM [REPORT_HEX CHAIN_PEM ...]
"""

import json
import sys

from cryptography import x509
from verifier.attestation import AttestationReport
from verifier.config import HopperSettings


def _hex(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def main() -> None:
    out = []
    for report_path, chain_path in zip(sys.argv[1::2], sys.argv[2::2], strict=True):
        with open(report_path) as fh:
            data = bytes.fromhex(fh.read().strip())
        with open(chain_path, "rb") as fh:
            leaf = x509.load_pem_x509_certificates(fh.read())[0]
        settings = HopperSettings()
        report = AttestationReport(data, settings)
        opaque = report.get_response_message().get_opaque_data()
        driver = opaque.get_data("OPAQUE_FIELD_ID_DRIVER_VERSION")
        out.append(
            {
                "signature_ok": bool(
                    report.verify_signature(leaf, settings.signature_length, settings.HashFunction)
                ),
                "nonce": report.get_request_message().get_nonce().hex(),
                "measurements": report.get_measurements(),
                "driver": driver.decode().rstrip("\x00") if isinstance(driver, bytes) else driver,
                "fwid": _hex(opaque.get_data("OPAQUE_FIELD_ID_FWID")),
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
