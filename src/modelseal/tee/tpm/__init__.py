"""TPM 2.0: tpm2-tools attester (quote over PCRs) and the TPMS_ATTEST verifier."""
