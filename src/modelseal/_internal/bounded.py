"""Bounded parsing of untrusted JSON, TOML and YAML: a byte cap and a nesting-depth cap.

Every parser here recurses once per nesting level (msgspec, ``json``, ``tomllib`` and
PyYAML's composer alike), so ``[[[[…`` in a request body ends in a ``RecursionError`` - an
HTTP 500 and a traceback in a server, exit 1 in a CLI - instead of a documented error.
Code that later walks the decoded value (canonical JSON, validators, claim rendering) is
only safe when the depth is known to be small, too. So each document is checked against a
byte cap first, then against a depth cap, before the real parser runs; every failure is a
:class:`~modelseal.errors.FormatError` whose message names the document, never its bytes.

The JSON depth check runs on the raw bytes with C-speed ``bytes`` operations only: string
contents are dropped, the brackets that remain are measured. Small documents (fewer opening
brackets than the cap) pass in about a microsecond; a 2 MiB adversarial body costs tens of
milliseconds at worst, the same order as decoding it.
"""

from __future__ import annotations

import functools
import operator
from itertools import accumulate, repeat
from typing import Any, Final

import msgspec

from modelseal.errors import FormatError

__all__ = [
    "MAX_DEPTH",
    "check_depth",
    "check_json",
    "json_depth",
    "load_json",
    "load_toml",
    "load_yaml",
    "too_deep",
    "too_large",
]

#: Default nesting cap. Every document modelseal reads from a peer nests fewer than ten
#: levels (evidence, policies, model info); 32 leaves room without letting recursion near
#: the interpreter's limit of 1000 frames.
MAX_DEPTH: Final = 32

#: ``{``/``}`` become ``[``/``]``; every other byte is deleted by ``translate``.
_BRACKETS: Final = bytes(range(256)).replace(b"{", b"[").replace(b"}", b"]")
_NOT_BRACKETS: Final = bytes(c for c in range(256) if c not in b"[]{}")
#: Leaf-removal passes at most before the exact measurement (see :func:`json_depth`), and
#: the number of valleys below which the exact step runs at once.
_LEAF_PASSES: Final = 8
_FEW_VALLEYS: Final = 4096


def _structure(data: bytes) -> bytes:
    """The brackets of a JSON text outside its strings, ``{}`` folded into ``[]``.

    Escapes are removed first (``\\\\`` before ``\\"``, left to right as a JSON tokenizer
    pairs them), so every remaining ``"`` delimits a string and splitting on it alternates
    between structure and string contents. Outside strings a valid document has no
    backslash, so any input this misreads is one the real parser refuses before reaching
    the misread part.
    """
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    if b'"' in data:
        data = b"".join(data.split(b'"')[::2])
    return data.translate(_BRACKETS, _NOT_BRACKETS)


def _bracket_depth(s: bytes) -> int:
    """Maximum nesting depth of a bracket-only string (exact for balanced input).

    Split at every valley ``][``: each piece is then ``[`` * o followed by ``]`` * c, and the
    peak inside piece i is (opens minus closes of pieces before it) + o_i, i.e. the running
    sum S_i of (o - c) plus c_i. A handful of list operations, no per-byte Python loop.
    """
    pieces = s.split(b"][")
    opens = list(map(bytes.count, pieces, repeat(b"[")))
    lengths = list(map(len, pieces))
    net = accumulate(map(operator.sub, map(operator.add, opens, opens), lengths))
    return max(map(operator.add, net, map(operator.sub, lengths, opens)), default=0)


def json_depth(data: bytes) -> int:
    """Nesting depth of a JSON text (``[]`` is 1, a scalar 0).

    Exact for well-formed JSON; for malformed text the number is meaningless but the parser
    refuses that text anyway. The exact step costs ~100 ns per valley (``][``), so while
    there are many for the length, leaf passes (one ``replace`` each, removing every
    innermost pair and one level) thin them out first: a valley that survives k passes needs
    two sibling subtrees k + 1 deep, so at most a few passes run on any input.
    """
    s = _structure(data)
    removed, valleys = 0, s.count(b"][")
    # a pass costs ~1/32 of what the exact step pays per valley, per byte
    while valleys > _FEW_VALLEYS and valleys * 32 > len(s) and removed < _LEAF_PASSES:
        s, removed = s.replace(b"[]", b""), removed + 1
        if not s:
            return removed
        valleys = s.count(b"][")
    return removed + _bracket_depth(s) if s else removed


def too_deep(what: str, max_depth: int) -> FormatError:
    """The error for a document nested deeper than ``max_depth`` (names it, never quotes it)."""
    return FormatError(f"{what} nested too deeply (more than {max_depth} levels)")


def too_large(what: str, max_bytes: int) -> FormatError:
    """The error for a document larger than ``max_bytes``."""
    return FormatError(f"{what} too large (more than {max_bytes} bytes)")


def _as_bytes(data: bytes | bytearray | memoryview | str, what: str, max_bytes: int) -> bytes:
    if isinstance(data, str):
        if len(data) > max_bytes:  # every character is at least one byte
            raise too_large(what, max_bytes)
        data = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes):
        # bytes(n) of an int would be n zero bytes (or an OverflowError): a JSON member
        # that should hold a document but holds a number is malformed, not empty
        raise FormatError(f"{what} is not a document (a {type(data).__name__})")
    if len(data) > max_bytes:
        raise too_large(what, max_bytes)
    return data


def _few_brackets(raw: bytes, limit: int) -> bool:
    """True when ``raw`` holds at most ``limit`` opening brackets, so it cannot nest deeper.

    Strings can only add brackets, so this bounds the depth without looking at the structure.
    It is the common case (small bodies, base64 evidence) and costs at most ``2 * limit``
    ``find`` calls, which run at memchr speed (``bytes.count`` of one byte is ~20x slower).
    """
    found = 0
    for bracket in (b"[", b"{"):
        pos = raw.find(bracket)
        while pos >= 0:
            found += 1
            if found > limit:
                return False
            pos = raw.find(bracket, pos + 1)
    return True


def check_json(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
) -> bytes:
    """Enforce the caps on a JSON text before any parser sees it; returns it as bytes.

    For callers that decode with their own parser (a typed msgspec or pydantic model).
    """
    raw = _as_bytes(data, what, max_bytes)
    if not _few_brackets(raw, max_depth) and json_depth(raw) > max_depth:
        raise too_deep(what, max_depth)
    return raw


def load_json(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Decode a JSON text within the caps (strict JSON: no NaN/Infinity, no trailing data)."""
    raw = check_json(data, what=what, max_bytes=max_bytes, max_depth=max_depth)
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        # msgspec's messages give a byte offset or a path, never the offending value
        raise FormatError(f"{what} is not valid JSON ({str(exc)[:120]})") from None
    except RecursionError:  # only if the caller's stack is already nearly exhausted
        raise too_deep(what, max_depth) from None


def check_depth(value: Any, *, what: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse decoded data (dicts and lists) nested deeper than ``max_depth``.

    Iterative, so it is safe on exactly the values it exists to refuse.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= max_depth:
            raise too_deep(what, max_depth)
        stack.extend((child, depth + 1) for child in children)


def load_toml(
    data: bytes | str,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """Decode a TOML document within the caps.

    TOML nests through inline arrays and tables (which ``tomllib`` parses recursively, so a
    ``RecursionError`` is caught) and through dotted keys and table headers (which it does
    not), so the depth is checked on the decoded document.
    """
    import tomllib

    raw = _as_bytes(data, what, max_bytes)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not valid TOML (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give a line and column, never the offending text
        raise FormatError(f"{what} is not valid TOML ({str(exc)[:120]})") from None
    except RecursionError:
        raise too_deep(what, max_depth) from None
    except ValueError:
        # an integer of more digits than Python converts (sys.get_int_max_str_digits())
        raise FormatError(f"{what} is not valid TOML (a number is too long)") from None
    check_depth(doc, what=what, max_depth=max_depth)
    return doc


def load_yaml(
    data: bytes | str,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Decode one YAML document with PyYAML's safe loader, without aliases, within the caps.

    Aliases are refused: they let a small document expand into millions of nodes for later
    code to walk (a "billion laughs" CPU bomb), and no document modelseal reads needs them.
    The depth is counted while composing, before PyYAML's recursive composer gets deep.
    Raises :class:`~modelseal.errors.ConfigError` when PyYAML is not installed.
    """
    raw = _as_bytes(data, what, max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not valid YAML (not UTF-8 text)") from None
    _check_yaml_flow_depth(text, what, max_depth)
    yaml = _yaml()
    try:
        return yaml.load(text, Loader=_bounded_loader(yaml, max_depth))
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError) as exc:
        # ValueError/OverflowError: PyYAML's implicit timestamps build datetimes without
        # range checks (``2027-13-45T00:00:00Z``).
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        if isinstance(exc, RecursionError):
            problem = f"nested too deeply (more than {max_depth} levels)"
        elif isinstance(exc, ValueError | OverflowError):
            problem = "invalid timestamp"
        why = f": {problem}" if isinstance(problem, str) else ""
        raise FormatError(f"{what} is not valid YAML{where}{why}"[:300]) from None


def _check_yaml_flow_depth(text: str, what: str, max_depth: int) -> None:
    """Refuse flow collections (``[``/``{``) nested deeper than ``max_depth``, unparsed.

    PyYAML's scanner looks far ahead inside flow collections (64 KiB of ``[`` cost it over
    half a second before the composer's own depth check could run). A linear scan that
    skips quoted scalars and comments; it may over-count brackets inside plain scalars,
    which only matters for documents nothing here would accept anyway.
    """
    depth, quote, comment, escaped, prev = 0, "", False, False, "\n"
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"" and (prev in _YAML_SCALAR_START or ch == prev == "'"):
            quote = ch  # (``''`` inside a single-quoted scalar is an escaped quote)
        elif ch == "#" and prev in " \t\n":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise too_deep(what, max_depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
        prev = ch


#: Characters after which a quote opens a quoted scalar (elsewhere it is plain text).
_YAML_SCALAR_START: Final = frozenset(" \t\n[{,:?-")


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is in the server extra and dev deps
        from modelseal.errors import ConfigError

        raise ConfigError("YAML documents need PyYAML (pip install 'modelseal[server]')") from None
    return yaml


@functools.cache
def _bounded_loader(yaml: Any, max_depth: int) -> Any:
    """A ``yaml.SafeLoader`` subclass that refuses aliases and nodes deeper than the cap."""

    class BoundedSafeLoader(yaml.SafeLoader):  # type: ignore[misc]
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None, None, "aliases are not allowed", self.peek_event().start_mark
                )
            if self._depth >= max_depth:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested too deeply (more than {max_depth} levels)",
                    self.peek_event().start_mark,
                )
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return BoundedSafeLoader
