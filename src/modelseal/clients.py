"""Clients of modelseal's servers: the supported API for talking to a KBS or a registry.

- :class:`KbsAdminClient`: the KBS admin API (store keys and release policies, read and
  verify the audit log), authenticated with an admin bearer token.
- :class:`KbsClient`: the attestation side, as used inside a TEE: the RCAR handshake
  (``/kbs/v0/auth`` then ``/kbs/v0/attest``), then key release as a JWE encrypted to a key
  that never leaves the process. The loader and the SDK (``modelseal.open_model``) use it.
- :class:`RegistryClient`: upload and look up sealed blobs and model records.
- :class:`AttestedTransport` / :class:`AsyncAttestedTransport`: httpx transports (sync and
  async) that send requests only to an attested TLS gateway (``modelseal gateway``) whose
  evidence satisfies a policy, checked before a byte of the request is written
  (docs/guides/attested-tls.md).

The names in ``__all__`` are the supported interface, kept compatible across minor
releases; the modules that define them (``modelseal.owner.kbs_admin``,
``modelseal.loader.kbs_client``, ``modelseal.owner.registry_client``,
``modelseal.ratls.transport``, ``modelseal.ratls.async_transport``) are internal and may
change at any time. Importing this module loads httpx and the JOSE code; ``import
modelseal`` alone does not.
"""

from __future__ import annotations

from modelseal.loader.kbs_client import KbsClient
from modelseal.owner.kbs_admin import KbsAdminClient, KeyConflictError
from modelseal.owner.registry_client import RegistryClient, RegistryConflict
from modelseal.ratls.async_transport import AsyncAttestedTransport
from modelseal.ratls.transport import AttestedTransport

__all__ = [
    "AsyncAttestedTransport",
    "AttestedTransport",
    "KbsAdminClient",
    "KbsClient",
    "KeyConflictError",
    "RegistryClient",
    "RegistryConflict",
]
