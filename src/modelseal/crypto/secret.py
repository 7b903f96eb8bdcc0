"""SecretBytes: key material that never prints, pickles or compares in variable time."""

from __future__ import annotations

import hmac
from typing import Any, NoReturn


class SecretBytes:
    """A mutable holder for key bytes.

    ``repr``/``str`` never show the value, pickling is refused, and :meth:`wipe` overwrites
    the buffer so callers can zeroize keys when they are done (best effort in CPython).
    """

    __slots__ = ("_buf",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self._buf = bytearray(value)

    def reveal(self) -> bytes:
        """The raw bytes, for the few call sites that hand them to a primitive."""
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        return f"SecretBytes(<{len(self._buf)} bytes redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self._buf, other._buf)

    def __hash__(self) -> int:
        raise TypeError("SecretBytes is unhashable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretBytes cannot be pickled")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("SecretBytes cannot be pickled")

    def wipe(self) -> None:
        """Overwrite the key bytes with zeros."""
        for i in range(len(self._buf)):
            self._buf[i] = 0

    def __enter__(self) -> SecretBytes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()
