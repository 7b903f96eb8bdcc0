"""``SealOptions``: how one model is sealed, as one value passed down every sealer.

The CLI and ``publish`` build it once; the owner's sealers (file, directory, partial) and
the format writers read what they need from it. Before, the same keywords (key id,
segment size, model id, content type, workers, progress) were spelled out and forwarded
again at every level, and a new header member meant editing each signature.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from modelseal.errors import ConfigError
from modelseal.format.header import DEFAULT_SEGMENT_SIZE, SALT_LEN, Header, build_header
from modelseal.format.workers import Progress

__all__ = ["SealOptions"]


@dataclass(frozen=True)
class SealOptions:
    """The header members every sealed file of one model shares, plus the pace of sealing.

    ``key_id`` may be None only for the CNAP format (which names no key); ``workers`` is
    the number of encryption threads per file; ``progress`` receives plaintext byte counts.
    """

    key_id: str | None = None
    segment_size: int = DEFAULT_SEGMENT_SIZE
    model: str | None = None
    content_type: str | None = None
    created: str | None = None
    workers: int = 2
    progress: Progress | None = None
    #: seal a model's files under opaque names, padded (manifest ``modelseal-manifest/2``):
    #: headers, blob names and lengths then tell a registry no file name or exact size
    hide_names: bool = False

    def require_key_id(self) -> str:
        """The key id, which every modelseal format but CNAP writes into its header."""
        if not self.key_id:
            raise ConfigError("--key-id is required (the KBS resource path of the key)")
        return self.key_id

    def header(self, *, size: int, path: str, salt: bytes | None = None) -> Header:
        """A v1 header for ``size`` bytes at ``path``, with a fresh salt unless ``salt``
        (a test-only seam for deterministic vectors) is given."""
        return build_header(
            size=size,
            key_id=self.require_key_id(),
            path=path,
            salt=secrets.token_bytes(SALT_LEN) if salt is None else salt,
            segment_size=self.segment_size,
            model=self.model,
            content_type=self.content_type,
            created=self.created,
        )

    def but(self, **changes: object) -> SealOptions:
        """A copy with some fields replaced (e.g. the manifest's ``content_type``)."""
        return replace(self, **changes)  # type: ignore[arg-type]
