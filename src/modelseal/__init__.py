"""modelseal: seal AI models; release keys only to attested TEEs; load them in memory.

The flow and the modules that perform each step:

1. seal       ``modelseal.format`` (sealed file format v1, manifest, CNAP legacy)
2. register   ``modelseal.owner`` -> KBS admin API (``modelseal.kbs``, ``modelseal.keystore``)
3. serve      ``modelseal.registry`` + ``modelseal.blobstore`` (ciphertext only)
4. attest     ``modelseal.loader`` (RCAR client) -> ``modelseal.tee.<kind>`` -> KBS
5. release    ``modelseal.kbs`` -> ``modelseal.policy`` -> JWE to the TEE key
6. decrypt    ``modelseal.loader`` -> ``modelseal.format`` (verifies the manifest)
7. load       unchanged inference server reading the tmpfs directory, or the SDK
"""

from __future__ import annotations

__version__ = "0.1.0"
