"""Confidential model loader (runs inside the TEE; imports kept minimal)."""
