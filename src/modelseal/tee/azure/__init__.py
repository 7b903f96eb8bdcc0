"""Azure confidential VMs: what the ``az-snp-vtpm`` and ``az-tdx-vtpm`` kinds share.

On an Azure CVM the guest has no direct access to the SEV-SNP or TDX attestation
interface. The paravisor (HCL) produces a hardware report whose report data is the
SHA-256 of a JSON document it also returns ("runtime claims"): that JSON holds the public
part of the vTPM's attestation key (``HCLAkPub``). Both go into one blob, the HCL report,
which the guest reads from the vTPM NV index ``0x01400001``. A vTPM quote signed by that
AK then attests the PCRs and carries the session nonce. Modules: ``hcl`` (the HCL report
layout), ``evidence`` (the evidence JSON Trustee verifies, versions 0..2), ``vtpm`` (the
checks both verifiers run) and ``attester`` (tpm2-tools + the Azure instance metadata
service).
"""
