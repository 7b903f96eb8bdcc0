"""SGX (DCAP quote v3) verification, registered as TEE kind ``sgx``; shares the TDX code."""
