"""Where a KBS release's server CPU goes: py-spy samples of a loaded ``kbs serve`` worker.

Starts ``modelseal kbs serve`` (one worker, SQLite) like ``kbs_bench``, drives it with 32
keep-alive clients doing full releases (sample or mock-tdx evidence), and records the worker
with ``py-spy record --gil --native`` (only the thread holding the GIL is sampled, with
native frames, so waiting threads count nothing and system calls such as the socket
``write`` show up). Each sample is put into the first matching category below; the table
gives each category's share and, times the measured server CPU per release, its ms.

Run: ``python -m bench.kbs_profile`` (not part of ``make bench``; env: KBS_PROFILE_TEE
``sample``/``mock-tdx``, KBS_PROFILE_SECONDS). Needs py-spy (a dev dependency) and ptrace
rights on the worker.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.kbs_bench import (
    guest_for,
    process_tree_cpu,
    register_key,
    run_async,
    run_level,
    start_server,
)

#: (category, frame substrings): a sample goes to the first category one of its frames names.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dcap-qvl (quote, certificate chain, collateral)", ("verify (modelseal/tee/tdx/dcap.py",)),
    ("evidence checks of ours (parse, event log, claims)", ("AttestationService.verify",)),
    ("release decision + audit append (writer thread)", ("release_unit.<locals>.decide",)),
    ("session SQL, savepoints, commit (writer thread)", ("GroupCommit._writer",)),
    ("hand-offs to and from the writer thread", ("GroupCommit.run", "GroupCommit._flush")),
    ("ES256 token issue", ("TokenService.issue",)),
    ("token check at /resource", ("ResourceService.verify",)),
    ("JWE (ECDH-ES+A256KW, A256GCM)", ("encrypt (modelseal/crypto/jose/jwe.py",)),
    ("binding digest (JCS + SHA-384)", ("runtime_data_digest",)),
    ("socket writes (uvicorn writes head and body apart)", ("write (libc",)),
    ("uvicorn: request parsing, response", ("RequestResponseCycle.send", "HttpToolsProtocol")),
    ("request body read + msgspec decode", ("_parsed", "read_body")),
    ("KBS handlers, rest", ("guard.<locals>.guarded",)),
    ("Starlette/FastAPI middleware + routing", ("FastAPI.__call__",)),
    ("garbage collector", ("gc_collect",)),
)
OTHER = "event loop, other"


def categorize(raw: Path) -> dict[str, float]:
    """Share of samples per category in a py-spy ``raw`` (collapsed stacks) file."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        for name, keys in CATEGORIES:
            if any(k in stack for k in keys):
                counts[name] += int(n)
                break
        else:
            counts[OTHER] += int(n)
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name, _ in (*CATEGORIES, (OTHER, ()))}


def main() -> None:
    tee = os.environ.get("KBS_PROFILE_TEE", "sample")
    seconds = int(os.environ.get("KBS_PROFILE_SECONDS", "10"))
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    from modelseal.tee.mock_tdx.ca import MockTdxCA

    with tempfile.TemporaryDirectory(prefix="kbs-profile-") as tmp:
        data_dir = Path(tmp) / "kbs"
        ca = MockTdxCA.create(Path(tmp) / "ca")
        proc, url = start_server(data_dir, 1, "--mock-tdx-root", str(ca.root_pem_path))
        try:
            register_key(data_dir, url)
            guest = guest_for(tee, ca.directory, keys=256)
            run_async(run_level(url, guest, 32, 1.0))  # warm-up
            raw = Path(tmp) / "profile.txt"
            record = subprocess.Popen(
                [
                    *(spy, "record", "--gil", "--native", "-r", "250", "-d", str(seconds)),
                    *("-f", "raw", "-o", str(raw), "-p", str(proc.pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            cpu0 = sum(process_tree_cpu(proc.pid).values())
            result = run_async(run_level(url, guest, 32, seconds))
            cpu = sum(process_tree_cpu(proc.pid).values()) - cpu0
            record.wait()
            shares = categorize(raw)
        finally:
            proc.terminate()
            proc.wait(10)
    per_release = 1000 * cpu / max(1.0, result["releases"])
    print(f"{tee}: {result['rate']:.0f} releases/s, {per_release:.2f} ms server CPU/release")
    print("| where | share | ms/release |\n| --- | ---: | ---: |")
    for name, share in shares.items():
        print(f"| {name} | {100 * share:.0f} % | {share * per_release:.2f} |")


if __name__ == "__main__":
    main()
