"""The only package that imports ``cryptography.hazmat``: keys, KDFs, AEAD, JWE, signing."""
