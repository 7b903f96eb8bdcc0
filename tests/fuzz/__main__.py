"""atheris (libFuzzer) entry points for every fuzz target: ``python -m tests.fuzz``.

Each target runs in its own process for ``--seconds`` (default ``$FUZZ_SECONDS`` or 60),
starting from a corpus of its real seeds (``bytes`` mode: libFuzzer mutates raw bytes under
coverage and comparison guidance, which finds magic values and length fields) or driving the
target's hypothesis strategy (``structured`` mode: coverage-guided choices inside the
structure-aware mutations). A crash leaves its input in ``--artifacts`` (default
``.fuzz-artifacts/<target>/``); replay it with ``python -m tests.fuzz --replay FILE NAME``.

    python -m tests.fuzz --list
    python -m tests.fuzz --seconds 120 tdx-quote snp-report
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FAMILIES = (
    "tests.fuzz.test_format",
    "tests.fuzz.test_protocol",
    "tests.fuzz.test_crypto",
    "tests.fuzz.test_documents",
    "tests.fuzz.test_tdx",
    "tests.fuzz.test_snp",
    "tests.fuzz.test_tpm",
    "tests.fuzz.test_azure",
    "tests.fuzz.test_eventlog",
    "tests.fuzz.test_nvidia",
    "tests.fuzz.test_ratls",
)


def _targets(stack: contextlib.ExitStack | None = None) -> dict[str, Any]:
    """Every target by name; with ``stack``, also those needing a live loopback server
    (their servers stop when the stack closes)."""
    found: dict[str, Any] = {}
    for name in FAMILIES:
        module = importlib.import_module(name)
        targets = list(module.TARGETS)
        served = getattr(module, "served_targets", None)
        if served is not None and stack is not None:
            targets += stack.enter_context(served())
        for target in targets:
            found[target.name] = target
    return found


def _instrumented_targets(stack: contextlib.ExitStack) -> dict[str, Any]:
    """The targets, with modelseal imported under atheris's coverage instrumentation."""
    import atheris

    with atheris.instrument_imports(include=["modelseal"]):
        return _targets(stack)


def _run_one(name: str, seconds: int, mode: str, artifacts: Path) -> int:
    import atheris
    import pytest
    from hypothesis import given, settings

    from tests.fuzz.harness import check

    stack = contextlib.ExitStack()
    target = _instrumented_targets(stack)[name]
    try:
        seeds = list(target.seeds())
    except pytest.skip.Exception as exc:
        print(f"{name}: skipped ({exc.msg})", flush=True)
        return 0
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as corpus:
        if mode == "bytes":
            for i, seed in enumerate(seeds):
                Path(corpus, f"seed-{i}").write_bytes(seed)

            def one_input(data: bytes) -> None:
                check(target, data)

        else:

            @settings(database=None, deadline=None)
            @given(data=target.inputs())
            def structured(data: bytes) -> None:
                check(target, data)

            one_input = structured.hypothesis.fuzz_one_input
        args = [
            sys.argv[0],
            f"-max_total_time={seconds}",
            f"-artifact_prefix={artifacts}/",
            "-rss_limit_mb=4096",
            "-timeout=60",
            "-print_final_stats=1",
            corpus,
        ]
        atheris.Setup(args, one_input)
        atheris.Fuzz()
    return 0


def _replay(path: Path, name: str) -> int:
    from tests.fuzz.harness import check

    with contextlib.ExitStack() as stack:
        check(_targets(stack)[name], path.read_bytes())
    print(f"{name}: {path} ends in success or a documented error")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("names", nargs="*", help="targets to run (default: all)")
    parser.add_argument(
        "--seconds", type=int, default=int(float(os.environ.get("FUZZ_SECONDS") or 60))
    )
    parser.add_argument("--mode", choices=("bytes", "structured"), default="bytes")
    parser.add_argument("--artifacts", type=Path, default=Path(".fuzz-artifacts"))
    parser.add_argument("--list", action="store_true", help="print the target names")
    parser.add_argument("--replay", type=Path, help="feed this file to the one named target")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.list or args.replay):
        try:
            import atheris  # noqa: F401
        except ImportError:
            print(
                "atheris is not installed (the dev extra has it on Linux x86-64)", file=sys.stderr
            )
            return 2
    if args.one:
        return _run_one(args.one, args.seconds, args.mode, args.artifacts / args.one)
    if args.replay:
        return _replay(args.replay, args.names[0])
    with contextlib.ExitStack() as stack:
        names = list(_targets(stack))
    if args.list:
        print("\n".join(names))
        return 0
    unknown = set(args.names) - set(names)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    failed = []
    for name in args.names or names:
        print(f"== {name} ({args.mode}, {args.seconds} s)", flush=True)
        cmd = [sys.executable, "-m", "tests.fuzz", "--one", name, "--seconds", str(args.seconds)]
        cmd += ["--mode", args.mode, "--artifacts", str(args.artifacts)]
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"crashes in: {', '.join(failed)} (inputs under {args.artifacts}/)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
