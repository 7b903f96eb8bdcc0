"""CPU cost of the KBS's per-release JOSE work: one EAR token issued, one verified.

Run: ``python -m bench jose_bench`` (rewrites the "JOSE: EAR token issue and verify" section of
docs/benchmarks.md). The token carries mock-TDX-sized claims (five 48-byte measurements, an
init-data table, a P-256 ``tee-pubkey``), as a release does. Next to it, the floor: one raw
ECDSA P-256 sign and one verify of the same signing input through ``cryptography`` alone,
so the column "JOSE overhead" is what parsing, claim checks and the JWS library add.

The machine is shared, so each figure is CPU time (``process_time``) per operation, the
best and the median of 15 rounds of 300 operations, with the variants interleaved round by
round so a busy neighbour slows all of them alike.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.report import write_section
from modelseal._internal.clock import FixedClock
from modelseal.crypto.jose.jwk import TeeKeyPair
from modelseal.crypto.jose.jwt import TokenSigningKey
from modelseal.kbs.tokens import TokenService
from modelseal.protocol.claims import Claims

ROUNDS = 15
PER_ROUND = 300

CLAIMS = Claims(
    tee="mock-tdx",
    debug=False,
    report_data=bytes(range(64)),
    tcb_status="UpToDate",
    advisories=(),
    measurements={name: "ab" * 48 for name in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3")},
    init_data_digest="cd" * 48,
    init_data={"model": "models/demo/1", "policy": "default"},
    insecure=True,
    extra={"fmspc": "00606a000000", "tcb_svn": "0" * 32},
)


def cpu_us(fn: Callable[[], Any]) -> float:
    """CPU microseconds per call of ``fn`` over one round."""
    start = time.process_time()
    for _ in range(PER_ROUND):
        fn()
    return (time.process_time() - start) / PER_ROUND * 1e6


def measure() -> dict[str, list[float]]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = TokenSigningKey.generate()
    service = TokenService(
        key,
        issuer="modelseal-kbs",
        audience="modelseal-kbs",
        ttl=300,
        insecure=True,
        clock=FixedClock(),
    )
    tee_pubkey = TeeKeyPair.generate().public_jwk()
    token, _, _ = service.issue(CLAIMS, nonce="A" * 44, tee_pubkey=tee_pubkey)
    signing_input = token.rsplit(".", 1)[0].encode("ascii")
    raw_key = ec.generate_private_key(ec.SECP256R1())
    raw_public = raw_key.public_key()
    der = raw_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))

    def issue() -> None:
        service.issue(CLAIMS, nonce="A" * 44, tee_pubkey=tee_pubkey)

    def verify() -> None:
        service.verify(token)

    def floor() -> None:
        raw_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        raw_public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))

    variants = {"issue": issue, "verify": verify, "floor": floor}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, fn in variants.items():
            results[name].append(cpu_us(fn))
    results["token_chars"] = [float(len(token))]
    return results


def main() -> None:
    r = measure()
    pair = [i + v for i, v in zip(r["issue"], r["verify"], strict=True)]
    rows = [
        ("issue (`TokenService.issue`)", r["issue"]),
        ("verify (`TokenService.verify`)", r["verify"]),
        ("issue + verify (one release)", pair),
        ("floor: raw ECDSA P-256 sign + verify", r["floor"]),
    ]
    lines = [
        "| operation | best µs CPU | median µs CPU |",
        "|---|---:|---:|",
        *(f"| {name} | {min(v):.0f} | {statistics.median(v):.0f} |" for name, v in rows),
    ]
    overhead = min(pair) - min(r["floor"])
    body = "\n".join(
        [
            f"`python -m bench jose_bench` on {platform.python_implementation()} "
            f"{platform.python_version()}, {platform.machine()}; token of "
            f"{int(r['token_chars'][0])} characters (mock-TDX claims). CPU time per operation, "
            f"best and median of {ROUNDS} interleaved rounds of {PER_ROUND}.",
            "",
            *lines,
            "",
            f"JOSE overhead above the raw ECDSA floor: {overhead:.0f} µs per release "
            "(bounded parsing, header and claim rules, the JWS library).",
        ]
    )
    print(body)
    write_section("JOSE: EAR token issue and verify", body)


if __name__ == "__main__":
    main()
