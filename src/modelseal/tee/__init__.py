"""TEE plugins: an attester (inside the TEE) and a verifier (KBS side) per kind."""
