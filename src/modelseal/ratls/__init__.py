"""Attested TLS for inference (normative: docs/reference/ratls.md).

In the TEE, ``modelseal gateway`` (:mod:`modelseal.ratls.gateway`) serves a certificate
whose extension carries attestation evidence binding its in-memory key and the models
the loader placed, and proxies HTTP/1.1 to the unchanged inference server. Clients use
:class:`modelseal.ratls.transport.AttestedTransport` (or ``modelseal request``) to check
that evidence against a policy before sending a request.
"""
