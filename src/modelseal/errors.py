"""One error tree for all of modelseal.

Every expected failure is an :class:`Error` subclass carrying the process exit code of
the README ("Exit codes"), so the CLI maps errors to exit codes in one place::

    Error (1)
    ├── ConfigError (2)              bad settings, flags, missing extra
    ├── FormatError (5)              malformed sealed file / header / length
    │   └── IntegrityError (5)       manifest mismatch: missing, extra, swapped, rolled back
    ├── DecryptionError (5)          ONE opaque error for every AEAD / unwrap failure
    ├── AttestationError (4)
    │   ├── EvidenceError (4)        signature, chain, collateral, binding, TCB
    │   └── UnsupportedTee (4)       no attester/verifier for a kind, or sample not allowed
    ├── AuthorizationError (4)
    │   ├── TokenError (4)           missing/expired/forged token or session
    │   └── PolicyDenied (4)         release policy said no (reasons: audit log only)
    ├── NotFound (3)
    │   ├── KeyNotFound / ModelNotFound / BlobNotFound
    ├── UnsafeDestination (6)        plaintext would land on disk-backed storage
    │   └── DestinationTooSmall (6)  no room: free space or the memory cgroup's limit
    └── BackendError (75)            storage/network/collateral outage; original in __cause__
        ├── TransientError (75)      worth retrying
        └── CollateralMissing (2)    no DCAP collateral configured for a platform (KBS: 503)

Messages must never contain key material or plaintext; ``DecryptionError`` carries no detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

__all__ = [
    "AttestationError",
    "AuthorizationError",
    "BackendError",
    "BlobNotFound",
    "CollateralMissing",
    "ConfigError",
    "DecryptionError",
    "DestinationTooSmall",
    "Error",
    "EvidenceError",
    "FormatError",
    "IntegrityError",
    "KeyNotFound",
    "ModelNotFound",
    "NotFound",
    "PolicyDenied",
    "TokenError",
    "TransientError",
    "UnsafeDestination",
    "UnsupportedTee",
]


class Error(Exception):
    """Root of every modelseal error."""

    exit_code: ClassVar[int] = 1
    #: Short hint for operators: what to do about it.
    hint: ClassVar[str] = ""

    def diagnostics(self) -> str:
        """Operator-facing text: the message plus the remediation hint."""
        msg = str(self) or type(self).__name__
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


class ConfigError(Error):
    """Bad settings, flags, configuration files, or a missing optional dependency."""

    exit_code = 2
    hint = "check the command-line flags, MODELSEAL_* variables and configuration files"


class FormatError(Error):
    """Malformed input: a sealed file, header, manifest or peer message that does not parse."""

    exit_code = 5
    hint = "the input is not a valid sealed file; it may be corrupt, truncated or tampered with"


class IntegrityError(FormatError):
    """The model does not match its sealed manifest."""

    def __init__(self, message: str, *, paths: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.paths = tuple(paths)


class DecryptionError(Error):
    """Opaque: wrong key, tampered ciphertext, header or tag. Never says which."""

    exit_code = 5
    hint = "wrong key, or the sealed data was modified"

    def __init__(self, message: str = "authentication failed") -> None:
        super().__init__(message)


class AttestationError(Error):
    """This TEE could not be attested (the evidence is missing, invalid or unsupported)."""

    exit_code = 4


class EvidenceError(AttestationError):
    """Evidence failed verification (signature, chain, collateral, binding, TCB, debug)."""


class UnsupportedTee(AttestationError):
    """No attester or verifier for a TEE kind, or an insecure kind the peer does not allow."""

    exit_code = 4
    hint = (
        "pick a supported --tee kind; an insecure development kind needs the KBS's "
        "explicit opt-in flag (modelseal kbs serve --help)"
    )


class AuthorizationError(Error):
    """The request was authenticated or attested but is not allowed."""

    exit_code = 4


class TokenError(AuthorizationError):
    """Missing, expired, forged or replayed token, session or nonce."""


class PolicyDenied(AuthorizationError):
    """A release policy denied the request. ``reasons`` go to the audit log only."""

    def __init__(self, message: str = "denied", *, reasons: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reasons = tuple(reasons)


class NotFound(Error):
    """A named key, model or blob does not exist."""

    exit_code = 3


class KeyNotFound(NotFound):
    """No key is stored under this key id."""


class ModelNotFound(NotFound):
    """No model record for this name and version."""


class BlobNotFound(NotFound):
    """No blob with this digest."""


class UnsafeDestination(Error):
    """Plaintext would land on disk-backed storage where it could outlive the process."""

    exit_code = 6
    hint = "use a memory-backed directory (tmpfs, emptyDir medium: Memory) or pass --allow-disk"


class DestinationTooSmall(UnsafeDestination):
    """The model would not fit: the destination's free space, or (for tmpfs, whose pages
    are charged to the loader's memory cgroup) the cgroup's memory limit."""

    hint = (
        "give the destination more room (emptyDir sizeLimit, the container's memory limit) "
        "or serve the model with `modelseal mount` (decrypt on read, reclaimable page cache)"
    )


class BackendError(Error):
    """A storage, network or collateral service failed; the original error is ``__cause__``."""

    exit_code = 75
    hint = "a storage, network or collateral service failed; retry later"


class TransientError(BackendError):
    """A failure worth retrying (connection reset, 5xx, 503)."""


class CollateralMissing(BackendError):
    """No DCAP collateral for the quote's platform: neither a bundle entry nor a PCCS URL.

    A configuration gap, not an outage: retrying changes nothing until the operator adds
    collateral. It stays a :class:`BackendError` so the KBS still answers 503 (the guest is
    not at fault), while the CLI exits 2 and the hint names the flags that supply it.
    """

    exit_code = 2
    hint = (
        "give collateral for this platform: --collateral FILE_OR_DIR (a bundle holding its "
        "FMSPC) or --pccs-url URL (an Intel PCS/PCCS to fetch it from)"
    )
