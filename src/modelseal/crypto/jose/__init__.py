"""JOSE for the KBS protocol, in one place: keys, the byte-exact JWE, and the JWTs.

* :mod:`~modelseal.crypto.jose.jwk` - the TEE's ephemeral key pair and strict parsing of the
  ``tee-pubkey`` JWKs the KBS encrypts to;
* :mod:`~modelseal.crypto.jose.jwe` - flattened JWE (``ECDH-ES+A256KW`` / ``RSA-OAEP-256``
  with ``A256GCM``) in the exact byte layout Trustee's KBS sends and its Rust client
  re-serializes for the AAD, composed from ``cryptography`` primitives because no JOSE
  library emits that layout;
* :mod:`~modelseal.crypto.jose.compact` - bounded reading of a compact JWS, no verification;
* :mod:`~modelseal.crypto.jose.jwt` - ES256 attestation tokens and HS256 admin tokens,
  signed and verified through joserfc with our narrower rules on top.

This package imports nothing itself, so the loader (which needs ``jwk``, ``jwe`` and
``compact``) never loads the JWS library; a test pins that.
"""
