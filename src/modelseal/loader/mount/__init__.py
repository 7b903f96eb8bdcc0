"""``modelseal mount``: a read-only FUSE view of a sealed model that decrypts on read.

:mod:`~modelseal.loader.mount.opening` runs the loader's checks (attestation, key release,
authenticated manifest, headers); :mod:`~modelseal.loader.mount.store` fetches, authenticates
and caches segments; :mod:`~modelseal.loader.mount.fs` answers the kernel;
:mod:`~modelseal.loader.mount.serve` mounts, signals readiness and unmounts on SIGTERM.
Contract: docs/guides/mount.md.
"""
