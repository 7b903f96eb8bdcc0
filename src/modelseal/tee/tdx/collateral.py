"""DCAP collateral: offline bundles, a PCS/PCCS client, and an on-disk cache.

A collateral set (TCB info, QE identity, PCK/root CRLs and their issuer chains) is the
dcap-qvl ``QuoteCollateralV3`` JSON, keyed by TEE type (``TDX``/``SGX``) and FMSPC of the
platform. Lookup order for a quote: the offline bundle (a file, or a directory whose file
names do not matter), then the on-disk cache of earlier downloads that is still valid at
the verification time, then the configured PCS/PCCS URL (result cached). No collateral ⇒
:class:`CollateralMissing` (a configuration gap: the CLI exits 2, the KBS answers 503 as
the guest is not at fault); a PCCS that fails ⇒ :class:`BackendError`; collateral
that exists but is expired ⇒ dcap-qvl's check fails ⇒ :class:`EvidenceError`. Every lookup
is counted by where its answer came from (``modelseal_collateral_lookups_total``).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from modelseal._internal import metrics
from modelseal._internal.bounded import load_json
from modelseal.crypto.x509_pem import parse_certificates
from modelseal.errors import (
    BackendError,
    CollateralMissing,
    ConfigError,
    EvidenceError,
    FormatError,
)

#: A bundle file larger than this is not collateral.
MAX_COLLATERAL_FILE = 4 * 1024 * 1024
#: Largest TCB info / QE identity / PCCS answer member read (real ones are a few KiB).
_MAX_MEMBER = 1 << 20
_REQUIRED = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


def _ts(text: object) -> float:
    """An ISO 8601 date of the collateral; ``TypeError``/``ValueError`` if it is not one."""
    if not isinstance(text, str):
        raise TypeError("collateral date is not a string")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class CollateralSet:
    """One collateral document plus the facts needed to select it."""

    tee: str  # "TDX" | "SGX"
    fmspc: str  # lower-case hex
    issued: float
    next_update: float
    text: str  # dcap-qvl JSON, verbatim

    def fresh_at(self, now: float) -> bool:
        """Inside [issued, next_update): the upper bound is exclusive, as in dcap-qvl."""
        return self.issued <= now < self.next_update


def parse_collateral(doc: Any, *, source: str) -> CollateralSet:
    """Validate the shape of one dcap-qvl collateral JSON object (signatures: dcap-qvl)."""
    if not isinstance(doc, dict) or any(k not in doc for k in _REQUIRED):
        raise EvidenceError(f"{source}: not dcap-qvl collateral JSON (need {', '.join(_REQUIRED)})")
    try:
        tcb = load_json(doc["tcb_info"], what=f"{source}: tcb_info", max_bytes=_MAX_MEMBER)
        qe = load_json(doc["qe_identity"], what=f"{source}: qe_identity", max_bytes=_MAX_MEMBER)
        tee = str(tcb["id"]).upper()
        fmspc = str(tcb["fmspc"]).lower()
        issued = max(_ts(tcb["issueDate"]), _ts(qe["issueDate"]))
        next_update = min(_ts(tcb["nextUpdate"]), _ts(qe["nextUpdate"]))
    except (FormatError, ValueError, KeyError, TypeError) as exc:
        raise EvidenceError(f"{source}: malformed TCB info / QE identity in collateral") from exc
    if tee not in ("TDX", "SGX"):
        raise EvidenceError(f"{source}: TCB info id {tee!r} is neither TDX nor SGX")
    return CollateralSet(
        tee=tee, fmspc=fmspc, issued=issued, next_update=next_update, text=json.dumps(doc)
    )


def _load_file(path: Path) -> list[CollateralSet]:
    try:
        if path.stat().st_size > MAX_COLLATERAL_FILE:
            return []
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return []
    docs = doc if isinstance(doc, list) else [doc]
    out = []
    for item in docs:
        try:
            out.append(parse_collateral(item, source=str(path)))
        except EvidenceError:
            continue
    return out


def load_bundle(path: str | Path) -> list[CollateralSet]:
    """All collateral sets in a file or a directory tree (other files are ignored)."""
    p = Path(path)
    if p.is_file():
        sets = _load_file(p)
        if not sets:
            raise ConfigError(f"{p}: no dcap-qvl collateral JSON in this file")
        return sets
    if p.is_dir():
        found: list[CollateralSet] = []
        for child in sorted(p.rglob("*")):
            if child.is_file():
                found.extend(_load_file(child))
        return found
    raise ConfigError(f"collateral path {p} does not exist")


def _pick(sets: list[CollateralSet], tee: str, fmspc: str, now: float) -> CollateralSet | None:
    matching = [s for s in sets if s.tee == tee and s.fmspc == fmspc]
    if not matching:
        return None
    fresh = [s for s in matching if s.fresh_at(now)]
    # Prefer a set valid at `now`; else the newest, so dcap-qvl reports why it is unusable.
    return max(fresh or matching, key=lambda s: s.issued)


class CollateralStore:
    """Finds collateral for (TEE, FMSPC) at a time; thread-safe; keeps sets in memory."""

    def __init__(
        self,
        *,
        bundle: str | Path | Sequence[str | Path] | None = None,
        pccs_url: str | None = None,
        cache_dir: str | Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        bundles = [bundle] if isinstance(bundle, str | Path) else list(bundle or [])
        self._sets: list[CollateralSet] = [s for b in bundles for s in load_bundle(b)]
        # One explicitly named file is used even for another FMSPC/TEE: dcap-qvl then
        # reports the precise mismatch (operators cross-check quotes this way).
        self._single_file = (
            len(bundles) == 1 and Path(bundles[0]).is_file() and len(self._sets) == 1
        )
        self._pccs_url = pccs_url.rstrip("/") if pccs_url else None
        self._cache_dir = Path(cache_dir) / "dcap-collateral" if cache_dir else None
        self._timeout = timeout
        self._lock = threading.Lock()
        self._cached: list[CollateralSet] = []
        if self._cache_dir and self._cache_dir.is_dir():
            self._cached = load_bundle(self._cache_dir)

    @property
    def may_fetch(self) -> bool:
        """True when a lookup may download collateral (a PCS/PCCS URL is configured)."""
        return self._pccs_url is not None

    def get(self, tee: str, fmspc: str, ca: str, now: float) -> CollateralSet:
        """Collateral for this platform: a fresh bundled set, else the cache, else the PCCS.

        A stale set is still returned when nothing fresher exists, so the verification
        fails with "collateral expired" (the operator's cue) instead of "missing".
        """
        tee, fmspc = tee.upper(), fmspc.lower()
        source = "missing"
        try:
            found, source = self._lookup(tee, fmspc, ca, now)
            return found
        except BackendError as exc:
            source = "missing" if isinstance(exc, CollateralMissing) else "pccs_error"
            raise
        finally:
            label = tee.lower() if tee in ("TDX", "SGX") else "other"
            metrics.COLLATERAL_LOOKUPS.labels(label, source).inc()

    def _lookup(self, tee: str, fmspc: str, ca: str, now: float) -> tuple[CollateralSet, str]:
        """The set :meth:`get` returns and where it came from (the metric's source label)."""
        bundled = _pick(self._sets, tee, fmspc, now)
        if bundled is not None and (bundled.fresh_at(now) or not self._pccs_url):
            return bundled, "bundle" if bundled.fresh_at(now) else "stale"
        with self._lock:
            cached = _pick(self._cached, tee, fmspc, now)
            if cached is not None and cached.fresh_at(now):
                return cached, "cache"
            if self._pccs_url:
                fetched = self._fetch(tee, fmspc, ca)
                self._store(fetched)
                return fetched, "pccs"
        if bundled is not None:
            return bundled, "stale"
        if cached is not None:
            return cached, "stale"
        if self._single_file:
            return self._sets[0], "bundle"
        raise CollateralMissing(
            f"no DCAP collateral for {tee} FMSPC {fmspc}: the collateral bundle has no entry "
            "for it and no PCCS URL is configured (add it to the bundle or set a PCCS URL)"
        )

    def _store(self, cs: CollateralSet) -> None:
        self._cached = [s for s in self._cached if (s.tee, s.fmspc) != (cs.tee, cs.fmspc)]
        self._cached.append(cs)
        if self._cache_dir is None:
            return
        self._cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self._cache_dir / f"{cs.tee.lower()}-{cs.fmspc}.json"
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(cs.text, encoding="utf-8")
        tmp.replace(target)

    def _fetch(self, tee: str, fmspc: str, ca: str) -> CollateralSet:
        """Download one collateral set from a PCS/PCCS (Intel PCS API v4 paths)."""
        import httpx

        assert self._pccs_url is not None
        base = self._pccs_url
        kind = "tdx" if tee == "TDX" else "sgx"
        try:
            with httpx.Client(timeout=self._timeout, follow_redirects=False) as client:
                pck = _get(client, f"{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der")
                tcb = _get(client, f"{base}/{kind}/certification/v4/tcb?fmspc={fmspc.upper()}")
                qe = _get(client, f"{base}/{kind}/certification/v4/qe/identity?update=standard")
                root = _get(client, f"{base}/sgx/certification/v4/rootcacrl", ok_only=False)
                if root.status_code != 200:
                    # Intel's PCS has no rootcacrl endpoint (PCCS does): use the CRL
                    # distribution point of the root certificate, as Intel documents.
                    root = _get(client, _root_crl_url(_chain(pck, "SGX-PCK-CRL-Issuer-Chain")))
        except httpx.HTTPError as exc:
            raise BackendError(f"collateral service {base} unreachable: {exc}") from exc
        tcb_text, tcb_sig = _signed_member(tcb.text, "tcbInfo")
        qe_text, qe_sig = _signed_member(qe.text, "enclaveIdentity")
        doc = {
            "pck_crl_issuer_chain": _chain(pck, "SGX-PCK-CRL-Issuer-Chain"),
            "root_ca_crl": _crl_hex(root.content),
            "pck_crl": _crl_hex(pck.content),
            "tcb_info_issuer_chain": _chain(
                tcb, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"
            ),
            "tcb_info": tcb_text,
            "tcb_info_signature": tcb_sig,
            "qe_identity_issuer_chain": _chain(qe, "SGX-Enclave-Identity-Issuer-Chain"),
            "qe_identity": qe_text,
            "qe_identity_signature": qe_sig,
        }
        try:
            return parse_collateral(doc, source=base)
        except EvidenceError as exc:
            raise BackendError(f"collateral service {base} returned bad data: {exc}") from exc


@dataclass(frozen=True)
class _Response:
    """A collateral-service answer read within :data:`MAX_COLLATERAL_FILE` bytes."""

    status_code: int
    headers: Any
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


def _get(client: Any, url: str, *, ok_only: bool = True) -> _Response:
    """GET with a size bound: a PCS/PCCS (or a proxy in front of it) cannot exhaust memory."""
    with client.stream("GET", url) as resp:
        if ok_only and resp.status_code != 200:
            raise BackendError(f"collateral service: GET {url} -> HTTP {resp.status_code}")
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > MAX_COLLATERAL_FILE:
                raise BackendError(
                    f"collateral service: GET {url} answered more than {MAX_COLLATERAL_FILE} bytes"
                )
        return _Response(resp.status_code, resp.headers, bytes(body))


def _chain(resp: Any, *names: str) -> str:
    for name in names:
        value = resp.headers.get(name)
        if value:
            return urllib.parse.unquote(value)
    raise BackendError(f"collateral service: response lacks the {names[0]} header")


def _root_crl_url(chain_pem: str) -> str:
    """The CRL distribution point URL of the last (root) certificate of a PEM chain."""
    from cryptography import x509

    try:
        root = parse_certificates(chain_pem.encode())[-1]
        points = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (ValueError, IndexError, x509.ExtensionNotFound) as exc:
        raise BackendError("collateral service has no root CRL and the root names none") from exc
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(
                ("https://", "http://")
            ):
                return str(name.value)
    raise BackendError("the root certificate names no http(s) CRL distribution point")


def _crl_hex(body: bytes) -> str:
    """PCCS serves CRLs as DER, PEM, or hex text; dcap-qvl JSON wants hex of the DER."""
    text = body.strip()
    if text.startswith(b"-----BEGIN"):
        lines = [ln for ln in text.decode("ascii", "replace").splitlines() if "-----" not in ln]
        try:
            return base64.b64decode("".join(lines), validate=True).hex()
        except ValueError as exc:
            raise BackendError("collateral service: malformed PEM CRL") from exc
    try:
        decoded = bytes.fromhex(text.decode("ascii"))
        return decoded.hex()
    except (UnicodeDecodeError, ValueError):
        return body.hex()


def _signed_member(body: str, member: str) -> tuple[str, str]:
    """The exact text of ``member`` (signatures cover the bytes as served) and the signature."""
    try:
        doc = load_json(body, what=f"{member} response", max_bytes=_MAX_MEMBER)
        signature = str(doc["signature"])
    except (FormatError, KeyError, TypeError) as exc:
        raise BackendError(f"collateral service: malformed {member} response") from exc
    key = f'"{member}"'
    start = body.find(key)
    start = body.find("{", start + len(key)) if start >= 0 else -1
    if start < 0:
        raise BackendError(f"collateral service: {member} missing")
    depth, in_str, esc = 0, False, False
    for i in range(start, len(body)):
        ch = body[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return body[start : i + 1], signature
    raise BackendError(f"collateral service: {member} truncated")
