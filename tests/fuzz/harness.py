"""The shared fuzzing harness: a target is a parser of untrusted bytes plus the inputs to feed
it, and the only acceptable outcomes are success or the error its docstring documents.

``make test`` runs every target on a small hypothesis budget (profile ``fuzz-quick``);
``make fuzz`` sets ``FUZZ_SECONDS`` so each target keeps drawing fresh examples for that long
(profile ``fuzz``) and then runs the atheris entry points (``python -m tests.fuzz``), which
mutate the same real inputs under coverage guidance.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelseal.errors import Error
from tests.conftest import ATTESTATION_VECTORS as SHARED_VECTORS
from tests.conftest import ROOT
from tests.integration.kbs_admin.strategies import json_values

#: seconds each target runs under ``make fuzz``; 0 (the default) is the quick ``make test`` run
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS") or 0)

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "fuzz-quick",
    max_examples=int(os.environ.get("FUZZ_QUICK_EXAMPLES") or 50),
    deadline=None,
    suppress_health_check=_HEALTH,
)
#: rounds of 1,000 examples repeat until FUZZ_SECONDS is up (a round overshoots it by little)
settings.register_profile(
    "fuzz", max_examples=1_000, deadline=None, suppress_health_check=_HEALTH, print_blob=True
)
PROFILE = "fuzz" if FUZZ_SECONDS > 0 else "fuzz-quick"

FORMAT_VECTORS = ROOT / "tests" / "vectors" / "format"


@dataclass(frozen=True)
class Target:
    """One parser entry point fed with bytes.

    ``parse`` wraps the entry point as its callers use it (a JSON document, a file
    descriptor, a key...); ``documented`` are the exceptions its docstring promises;
    ``seeds`` are real inputs that ``inputs`` mutates and atheris starts from; ``hostile``
    are fixed inputs every run tries first (deep nesting, huge numbers...).
    """

    name: str
    parse: Callable[[bytes], object]
    seeds: Callable[[], Sequence[bytes]] = lambda: ()
    extra: Callable[[], st.SearchStrategy[bytes]] | None = None
    documented: tuple[type[BaseException], ...] = (Error,)
    hostile: Sequence[bytes] = ()
    max_random: int = 2_000
    #: examples in the quick run when the profile's default is too many (slow targets)
    quick_examples: int | None = None

    def __str__(self) -> str:
        return self.name

    def inputs(self) -> st.SearchStrategy[bytes]:
        """Mutations of the seeds, the target's own structured inputs, and random bytes."""
        seeds = list(self.seeds())
        parts: list[st.SearchStrategy[bytes]] = [st.binary(max_size=self.max_random)]
        if seeds:
            parts.insert(0, mutated(seeds))
        if self.extra is not None:
            parts.insert(0, self.extra())
        return st.one_of(parts)


def check(target: Target, data: bytes) -> None:
    """Feed ``data`` to ``target``: success and documented errors pass, anything else fails."""
    try:
        target.parse(data)
    except target.documented:
        return


def run(target: Target) -> None:
    """Run ``target`` under hypothesis: once on the quick budget, or for ``FUZZ_SECONDS``."""

    profile = settings.get_profile(PROFILE)
    if PROFILE == "fuzz-quick" and target.quick_examples is not None:
        profile = settings(profile, max_examples=target.quick_examples)

    @settings(profile)
    @given(data=target.inputs())
    def fuzz(data: bytes) -> None:
        check(target, data)

    for hostile in target.hostile:
        fuzz = example(data=hostile)(fuzz)
    stop = time.monotonic() + FUZZ_SECONDS
    fuzz()
    while time.monotonic() < stop:
        fuzz()


# --- inputs ---------------------------------------------------------------------------------

_BOUNDARY = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 63]


@st.composite
def _mutate(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """One real input with 1-4 edits: bit flips, boundary integers written over length
    fields, truncation, extension, and cut/duplicated ranges (what a hostile peer sends)."""
    blob = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        n = len(blob)
        pos = draw(st.integers(0, max(n - 1, 0)))
        op = draw(st.integers(0, 6))
        if op == 0 and n:
            blob[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and n:
            blob[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == 2:
            width, fmt = draw(st.sampled_from([(2, "<H"), (4, "<I"), (8, "<Q"), (4, ">I")]))
            value = draw(st.sampled_from(_BOUNDARY) | st.integers(0, n + 64)) % (1 << 8 * width)
            blob[pos : pos + width] = struct.pack(fmt, value)
        elif op == 3:
            del blob[pos:]
        elif op == 4:
            blob += draw(st.binary(min_size=1, max_size=64))
        elif op == 5:
            del blob[pos : pos + draw(st.integers(1, 64))]
        else:
            blob[pos:pos] = blob[pos : pos + draw(st.integers(1, 64))]
    return bytes(blob)


def mutated(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Byte-level mutations of the real inputs ``seeds``."""
    return _mutate(seeds)


@st.composite
def _mutate_json(draw: st.DrawFn, docs: Sequence[Any]) -> bytes:
    """One real JSON document with a value somewhere replaced, a member dropped or added."""
    doc = json.loads(json.dumps(draw(st.sampled_from(docs))))
    for _ in range(draw(st.integers(1, 3))):
        node, key = _pick(draw, doc)
        if node is None:
            doc = draw(json_values)
            continue
        op = draw(st.integers(0, 2))
        if op == 0:
            node[key] = draw(json_values | _bad_scalars)
        elif op == 1:
            del node[key]
        elif isinstance(node, dict):
            node[draw(st.text(max_size=10))] = draw(json_values)
        else:
            node.insert(key, draw(json_values))
    return json.dumps(doc).encode()


def _pick(draw: st.DrawFn, doc: Any) -> tuple[Any, Any]:
    """A random (container, key) inside ``doc``; (None, None) means the whole document."""
    node: Any = None
    key: Any = None
    cur = doc
    while isinstance(cur, dict | list) and cur and draw(st.booleans()):
        keys = list(cur) if isinstance(cur, dict) else list(range(len(cur)))
        node, key = cur, draw(st.sampled_from(keys))
        cur = cur[key]
    return node, key


_bad_scalars = st.sampled_from(
    [-1, 0, 2**64, -(2**63) - 1, 10**400, 1e308, -0.0, "", "\x00", "\ud800", "a" * 5000, [], {}]
)


def json_mutated(docs: Sequence[Any]) -> st.SearchStrategy[bytes]:
    """Structure-aware mutations of real JSON documents ``docs`` (then serialized)."""
    return _mutate_json(docs)


def json_docs(members: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[bytes]:
    """Any small JSON document, or one built from ``members``, serialized."""
    values = json_values if members is None else (members | json_values)
    return values.map(lambda v: json.dumps(v).encode())


#: inputs that break JSON/TOML/YAML parsers which trust their input's shape
HOSTILE_TEXT: tuple[bytes, ...] = (
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"9" * 5_000,
    b'{"x": ' + b"9" * 5_000 + b"}",
    b"1e999999",
    b"NaN",
    b'"\\ud800"',
    b"\xef\xbb\xbf{}",
    b"\xff\xfe\x00",
    b'{"a": 1, "a": 2}',
)
#: (tomllib is pure Python: 10,000 levels exceed the recursion limit ten times over)
HOSTILE_TOML: tuple[bytes, ...] = (
    b"a = " + b"[" * 10_000 + b"]" * 10_000,
    b"a = " + b"{b = " * 10_000 + b"1" + b"}" * 10_000,
    b"a = " + b"9" * 5_000,
    b"[" + b"a." * 10_000 + b"b]",
)


def shared(*parts: str) -> Path:
    """A file of the shared real-evidence vectors (the target skips when they are absent)."""
    return SHARED_VECTORS.joinpath(*parts)


def read_vectors(*paths: Path) -> list[bytes]:
    """The bytes of the vector files that exist (none when the shared folder is absent)."""
    return [p.read_bytes() for p in paths if p.is_file()]


def require(seeds: Callable[[], Sequence[bytes]]) -> Callable[[], Sequence[bytes]]:
    """``seeds`` that skip the test when no real vector is available."""

    def load() -> Sequence[bytes]:
        found = seeds()
        if not found:
            pytest.skip(f"real vectors absent ({SHARED_VECTORS})")
        return found

    return load


def with_fd(parse: Callable[[int], object]) -> Callable[[bytes], object]:
    """Adapt a parser of an open file to bytes: the bytes live in an anonymous memory file."""

    def call(data: bytes) -> object:
        fd = os.memfd_create("fuzz")
        try:
            if data:
                os.write(fd, data)
            return parse(fd)
        finally:
            os.close(fd)

    return call


def json_input(parse: Callable[[Any], object]) -> Callable[[bytes], object]:
    """Adapt a validator of decoded JSON to bytes: text that is not JSON is the caller's
    problem (each caller maps it to its own error), so only JSON values reach ``parse``."""

    def call(data: bytes) -> object:
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            return None
        return parse(value)

    return call


def text_input(parse: Callable[[str], object]) -> Callable[[bytes], object]:
    """Adapt a parser of text (a header or cookie value) to bytes, one character a byte."""
    return lambda data: parse(data.decode("latin-1"))
