"""Key Broker Service: RCAR attestation, tokens, release, admin API, audit log."""
