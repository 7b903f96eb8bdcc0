"""A reader of a mounted model, run as its own process (e.g. inside a memory cgroup).

``[sys.executable, "-c", SCRIPT, ROOT, TENSOR]`` computes the SHA-256 of every file under
``ROOT`` (1 MiB reads), then maps ``ROOT/model.safetensors`` with ``safetensors.safe_open``
and reads ``TENSOR`` through ``mmap``; it prints one JSON object: ``sha256`` (relative path
-> hex digest), ``tensor`` (SHA-256 of the tensor's bytes) and ``seconds`` (time spent
reading). Its own process, so the page cache it fills is charged to its cgroup, as an
inference server's would be.
"""

from __future__ import annotations

SCRIPT = """
import hashlib, json, sys, time
from pathlib import Path
from safetensors import safe_open
root, name = Path(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
digests = {}
for path in sorted(p for p in root.rglob("*") if p.is_file()):
    h = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digests[str(path.relative_to(root))] = h.hexdigest()
with safe_open(root / "model.safetensors", framework="np") as f:
    tensor = hashlib.sha256(f.get_tensor(name).tobytes()).hexdigest()
seconds = time.perf_counter() - start
print(json.dumps({"sha256": digests, "tensor": tensor, "seconds": seconds}))
"""
