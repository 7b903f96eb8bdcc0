"""Confidential model loader (runs inside the TEE; imports kept minimal).

``load_model`` (``modelseal load``) decrypts into a memory-backed directory for an unchanged
inference server; ``sdk.open_model``/``sdk.load_safetensors`` decrypt into process memory.
Submodules import lazily so ``modelseal.loader.destination`` stays cheap.
"""
