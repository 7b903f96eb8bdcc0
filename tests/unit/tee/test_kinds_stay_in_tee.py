"""Only ``modelseal.tee`` names TEE kinds: everything else asks the kind registry.

A kind's name in code outside ``tee/`` is a special case that a new kind would have to find
and edit; the registry's plugin descriptions say what such code needs (insecure,
TCB-checked, test-only, options, detection). "Names" means any spelling of any word of a
registered kind (``mock-tdx``, ``mock_tdx``, ``MOCK_TDX``, ``MockTdx``, ``mocktdx``, and
``mock`` or ``tdx`` alone) or of a word a plugin declares as an alias (``azure``), found in
an identifier (variable, attribute, argument, keyword, function, class, dataclass field,
imported name or module) or in a string constant. The words come from the registry, so a
new kind is guarded the day it registers.

Docstrings and comments are prose and may name kinds. The few modules that must speak a
kind's vocabulary because a protocol outside modelseal fixes it are listed in
:data:`ALLOWED`, each with the words it may use and why; an entry that is no longer needed
fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import modelseal
from modelseal.tee import registry

SRC = Path(modelseal.__file__).parent

#: module (relative to the package) -> (kind words it may use, why)
ALLOWED: Mapping[str, tuple[frozenset[str], str]] = {
    "kbs/ita_model.py": (
        frozenset({"tdx", "sgx"}),
        "Intel Trust Authority's key-transfer policy schema: its member names and "
        "attestation types (TDX, SGX) are fixed by that API",
    ),
    "ratls/wire.py": (
        frozenset({"tdx"}),
        "the attested-TLS evidence buffer carries a raw Intel TDX quote under the quote "
        "CBOR tag, so the codec recognizes that quote's header",
    ),
    "kbs/transfer_api.py": (
        frozenset({"aa"}),
        "the CNAP transfer API sends a bare quote and event log; the verifier's evidence "
        "shape has an Attestation Agent event log member, empty here",
    ),
    "loader/transfer_client.py": (
        frozenset({"tdx"}),
        "the CNAP transfer API's client sends a raw TDX quote by definition and takes it "
        "out of the TDX evidence with that kind's codec",
    ),
    "_internal/environment.py": (
        frozenset({"tpm", "tdx", "aa"}),
        "the one table of variables the library reads documents third-party variables "
        "(tpm2-tools', the CoCo Attestation Agent's) by the attester that reads them",
    ),
    "dev/guest_components.py": (
        frozenset({"aa"}),
        "a test double of CoCo guest-components' api-server-rest, whose API names the "
        "Attestation Agent's endpoints /aa/...",
    ),
    "cli/dev.py": (
        frozenset({"aa"}),
        "help of the guest-components test double, naming its Attestation Agent (AA) API",
    ),
    "cli/kbs_serve.py": (
        frozenset({"aa"}),
        "kbs get --key-source cdh uses the client of guest-components' api-server-rest, "
        "which lives with the Attestation Agent relay",
    ),
    "loader/attest.py": (
        frozenset({"aa"}),
        "the CDH key source uses the client of guest-components' api-server-rest, which "
        "lives with the Attestation Agent relay",
    ),
    "loader/measure.py": (
        frozenset({"aa"}),
        "loads are recorded in the runtime measurements through the CoCo Attestation "
        "Agent whatever kind attested; its URL option and client live with the AA relay",
    ),
}


def kind_words() -> dict[str, str]:
    """word -> the kind it belongs to: every word of every registered kind's name, the
    name's words joined (``mocktdx``), and the aliases plugins declare."""
    words: dict[str, str] = {}
    for name, plugin in registry.PLUGINS.items():
        parts = _words(name)
        words["".join(parts)] = name
        for part in (*parts, *(w for alias in plugin.aliases for w in _words(alias))):
            words.setdefault(part, name)
    return words


def _words(text: str) -> list[str]:
    """Lower-case words of ``text``: split at camel case and at anything not a letter or
    digit (``MockTdx_dir``, ``MODELSEAL_MOCK_TDX_DIR``, ``mock-tdx`` -> mock, tdx, ...)."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return [w for w in re.split(r"[^A-Za-z0-9]+", text.lower()) if w]


def _found(text: str, vocabulary: Mapping[str, str]) -> set[str]:
    """The kind words in ``text``: a word itself, or consecutive words run together."""
    words = _words(text)
    hits = set()
    for i in range(len(words)):
        for j in range(i + 1, len(words) + 1):
            if "".join(words[i:j]) in vocabulary:
                hits.add("".join(words[i:j]))
    return hits


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the constant nodes that are docstrings (first statement of a body)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _names(node: ast.AST, docs: set[int]) -> Iterator[str]:
    """The identifiers ``node`` defines or uses, or its text if a non-docstring string."""
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg is not None):
        yield node.arg
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        yield node.name
    elif isinstance(node, ast.alias):
        yield node.name
        if node.asname:
            yield node.asname
    elif isinstance(node, ast.ImportFrom) and node.module:
        yield node.module
    elif isinstance(node, ast.Global | ast.Nonlocal):
        yield from node.names
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
        yield node.value


def kind_names_in(source: str, label: str) -> list[tuple[str, str]]:
    """``(word, "label:line: text")`` for each identifier or string naming a kind."""
    vocabulary = kind_words()
    tree = ast.parse(source, filename=label)
    docs = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        for text in _names(node, docs):
            for word in sorted(_found(text, vocabulary)):
                line = getattr(node, "lineno", 0)
                hits.append((word, f"{label}:{line}: {text[:60]!r} names {vocabulary[word]!r}"))
    return hits


def _outside_tee() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    for path in sorted(SRC.rglob("*.py")):
        label = path.relative_to(SRC).as_posix()
        if not label.startswith("tee/"):
            yield label, kind_names_in(path.read_text(encoding="utf-8"), label)


def test_no_module_outside_tee_names_a_kind() -> None:
    offenders = [
        where
        for label, hits in _outside_tee()
        for word, where in hits
        if word not in ALLOWED.get(label, (frozenset(), ""))[0]
    ]
    assert offenders == [], "ask modelseal.tee.registry instead:\n" + "\n".join(offenders)


def test_every_allowance_is_still_needed() -> None:
    used = {label: {word for word, _ in hits} for label, hits in _outside_tee()}
    stale = {
        label: sorted(words - used.get(label, set()))
        for label, (words, _) in ALLOWED.items()
        if words - used.get(label, set())
    }
    assert stale == {}, "drop these from ALLOWED"
    assert all(reason for _, reason in ALLOWED.values())


def test_the_words_come_from_the_registry() -> None:
    words = kind_words()
    for name, plugin in registry.PLUGINS.items():
        assert name.replace("-", "").replace("_", "") in words
        for alias in plugin.aliases:
            assert alias in words
    # spot checks of what the registry yields today
    assert {"mocktdx", "mock", "tdx", "azure", "snp", "tpm", "nvidia", "sample", "aa"} <= set(words)


PROBES = [
    ('t.startswith("mock-")', "mock"),
    ("settings.mock_tdx_dir", "mocktdx"),
    ('ENV = "MODELSEAL_MOCK_TDX_DIR"', "mocktdx"),
    ("def f(azure_imds_url: str) -> None: ...", "azure"),
    ("class S:\n    aa_url: str\n", "aa"),
    ("def snp_certs() -> None: ...", "snp"),
    ("class MockTdxThing: ...", "mocktdx"),
    ('x = {"tee": "sample"}', "sample"),
    ("f(tpm_trusted_aks=1)", "tpm"),
    ("from modelseal.tee.nvidia import PLUGIN", "nvidia"),
    ('print(f"is {kind} mocktdx?")', "mocktdx"),
]


@pytest.mark.parametrize(("source", "word"), PROBES)
def test_the_check_sees_each_spelling(source: str, word: str) -> None:
    assert word in {w for w, _ in kind_names_in(source, "probe.py")}


def test_the_check_sees_every_kind_and_lets_prose_through() -> None:
    for kind in registry.PLUGINS:
        ident = kind.replace("-", "_")
        source = (
            f'"""Mentions {kind} in prose."""\n\n\n'
            f"def f(tee: str) -> bool:\n"
            f'    """Is it {kind}?"""\n'
            f"    # a comment about {kind}\n"
            f"    return tee == {kind!r}\n\n\n"
            f"{ident}_option = 1\n"
        )
        hits = kind_names_in(source, "probe.py")
        assert {where.split(":")[1] for _, where in hits} == {"7", "10"}, hits
    # ordinary words that merely contain a kind's letters are not kinds
    assert kind_names_in('text = "the paaa tdxy sampled snippet"\nsamples = 1\n', "p.py") == []
