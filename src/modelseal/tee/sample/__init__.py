"""The ``sample`` TEE: Trustee-compatible, unsigned, for development only.

Its evidence proves nothing; the KBS refuses it unless started with
``--insecure-allow-sample`` and stamps ``insecure`` into every token it issues for it.
"""
