"""Intel TDX: configfs-tsm attester (in the TD) and DCAP verifier (KBS side).

Modules: ``quote`` (strict quote parser), ``evidence`` (Trustee evidence JSON),
``dcap`` (dcap-qvl wrapper), ``collateral`` (bundle/PCCS/cache), ``claims``,
``dcap_verifier`` (the pipeline), ``verifier``, ``attester``; ``sgx`` reuses them.
"""
