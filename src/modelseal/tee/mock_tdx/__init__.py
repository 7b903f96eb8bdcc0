"""mock-tdx: TDX-shaped quotes and collateral from a test CA (CI and quickstart only).

``ca.MockTdxCA`` (test PKI + collateral), ``quote_builder`` (signed v4/v5 quotes),
``attester.Attester`` (evidence with a replayable CCEL), ``verifier.Verifier`` (the real
DCAP pipeline, trusted only with an explicit ``mock_tdx_root``).
"""
