"""KEKs held in a PKCS#11 token (an HSM, a cloud HSM's PKCS#11 library, SoftHSM2).

The KEK is an AES-256 secret key object created inside the token with ``CKA_SENSITIVE``
true and ``CKA_EXTRACTABLE`` false, so no API call can return its bytes. The token performs
every operation on it:

- wrapping DEKs: ``CKM_AES_GCM`` with a 12-byte random nonce and 128-bit tag, producing the
  same wrapped layout as a KEK file (:mod:`modelseal.crypto.kek`);
- MACs (audit head, key rows): ``CKM_AES_CMAC`` (16-byte tags) under a second AES-256 token
  object, the KEK's *MAC key*, generated with it and paired with it by a random ``CKA_ID``
  that both objects carry (the KEK's label changes during a rotation; its ID never does);
- the public KEK id: ``"kek-"`` and the first 8 bytes of the CMAC of a fixed label, so the
  id is a function of the secret, as for a KEK file, and reveals nothing about it.

Anyone holding the PIN can use these objects, so their uses are pinned with
``CKA_ALLOWED_MECHANISMS``, which the token fixes when it creates an object (it cannot be
changed later): the KEK allows only ``CKM_AES_GCM``, the MAC key only ``CKM_AES_CMAC``. A PIN
holder can therefore wrap, unwrap and MAC while the PIN is valid, but cannot turn either
object into an AES-ECB oracle or derive a readable copy of it, so nothing they learn lets
them forge a MAC or unwrap a DEK after the PIN is changed. (An earlier design derived the
MAC key from the KEK with ``CKM_AES_ECB_ENCRYPT_DATA``; any PIN holder could repeat that
derivation with ``CKA_EXTRACTABLE`` true and read the MAC key, because SoftHSM2 2.6 has no
``CKA_DERIVE_TEMPLATE``. So neither object allows any derivation.) Both are private
(``CKA_PRIVATE``): a session that never logged in may create and use public objects. Objects
without these restrictions are refused, whoever made them.

The token is named by an RFC 7512 PKCS#11 URI, for example::

    pkcs11:token=modelseal;object=modelseal-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin

``object`` is the label prefix of modelseal's objects (default ``modelseal-kek``). The PIN
comes from ``pin-source`` (a file) or from the caller; ``pin-value`` is refused because a URI
travels through argv, logs and process listings.

A token can go away under a running process (a network HSM fails over, a device is
reset) and come back: the session handle and every object handle become invalid and the
login is lost. :meth:`Pkcs11Token.run` recovers: on an error that means "the session is
gone" it opens a new session, logs in again (the PIN re-read from ``pin-source`` with the
same checks as at start), finds the KEK objects again by their ``CKA_ID`` and retries the
operation once. While the token stays away every call fails fast with a
:class:`~modelseal.errors.BackendError` (the KBS answers 503) and at most one reopen is
tried per :data:`REOPEN_BACKOFF` seconds, so a crowd of requests never hammers a dead HSM.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from modelseal._internal import metrics
from modelseal.crypto.kek import Kek, read_private_file
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import BackendError, ConfigError, DecryptionError

if TYPE_CHECKING:
    import pkcs11

__all__ = [
    "DEFAULT_OBJECT",
    "REOPEN_BACKOFF",
    "Pkcs11Kek",
    "Pkcs11Token",
    "Pkcs11Uri",
    "parse_pkcs11_uri",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_OBJECT = "modelseal-kek"
_ID_LABEL = b"modelseal/v1 kek id"
#: The label of every MAC key object (they are found by the CKA_ID they share with a KEK).
MAC_KEY_LABEL = "modelseal-kek-mac"
_PAIR_ID_LEN = 16
_ULONG = struct.Struct("L")  # CK_MECHANISM_TYPE is a C unsigned long
#: Every key-use flag; a new object sets each false except the ones its use needs
_KEY_USES = ("ENCRYPT", "DECRYPT", "SIGN", "VERIFY", "DERIVE", "WRAP", "UNWRAP")
_MAX_URI = 4096
_MAX_PIN = 256
_PATH_ATTRS = frozenset({"token", "object", "manufacturer", "model", "serial", "slot-id", "type"})
_QUERY_ATTRS = frozenset({"module-path", "pin-source", "pin-value", "module-name"})
#: Errors meaning the session (not the operation) is gone: the token was removed, reset or
#: failed over, which also invalidates object handles and logs the application out
_SESSION_LOST = (
    "SessionHandleInvalid",
    "SessionClosed",
    "DeviceRemoved",
    "DeviceError",
    "TokenNotPresent",
    "TokenNotRecognised",
    "UserNotLoggedIn",
    "ObjectHandleInvalid",
)
#: Seconds after a failed reopen during which calls fail at once instead of trying again
REOPEN_BACKOFF = 1.0


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 URI that locate modelseal's KEK objects."""

    module_path: str
    token: str
    object: str = DEFAULT_OBJECT
    serial: str | None = None
    pin_source: Path | None = None

    def __str__(self) -> str:  # never includes a PIN: there is none in this object
        return f"pkcs11:token={self.token};object={self.object}"


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """Parse ``pkcs11:...`` (RFC 7512) into a :class:`Pkcs11Uri`; ConfigError if unusable."""
    if len(text) > _MAX_URI or not text.startswith("pkcs11:"):
        raise ConfigError("a PKCS#11 KEK must be named by a 'pkcs11:' URI (RFC 7512)")
    body = text[len("pkcs11:") :]
    path, _, query = body.partition("?")
    attrs: dict[str, str] = {}
    for part, allowed, sep in ((path, _PATH_ATTRS, ";"), (query, _QUERY_ATTRS, "&")):
        for item in filter(None, part.split(sep)):
            name, eq, value = item.partition("=")
            if not eq or name not in allowed:
                raise ConfigError(f"PKCS#11 URI attribute {name!r} is not supported here")
            if name in attrs:
                raise ConfigError(f"PKCS#11 URI attribute {name!r} is given twice")
            attrs[name] = unquote(value, errors="strict")
    if "pin-value" in attrs:
        raise ConfigError(
            "a PKCS#11 URI must not carry pin-value (it would show in argv and logs); "
            "use pin-source=file:/path"
        )
    if "module-path" not in attrs or "token" not in attrs:
        raise ConfigError("a PKCS#11 KEK URI needs token=... and ?module-path=...")
    pin_source = attrs.get("pin-source")
    pin_path: Path | None = None
    if pin_source is not None:
        pin_path = Path(pin_source.removeprefix("file:"))
        if not pin_path.is_absolute():
            raise ConfigError("pin-source must be an absolute file path (file:/path)")
    label = attrs.get("object", DEFAULT_OBJECT) or DEFAULT_OBJECT
    if label == MAC_KEY_LABEL:
        raise ConfigError(
            f"object={MAC_KEY_LABEL} is the label of modelseal's MAC keys; name the KEK "
            "objects differently"
        )
    return Pkcs11Uri(
        module_path=attrs["module-path"],
        token=attrs["token"],
        object=label,
        serial=attrs.get("serial"),
        pin_source=pin_path,
    )


def _read_pin(path: Path) -> SecretBytes:
    """The PIN in ``path``, which only its owner may read (see read_private_file)."""
    return SecretBytes(read_private_file(path, limit=_MAX_PIN, what="PKCS#11 PIN").rstrip(b"\r\n"))


def _pin_text(pin: SecretBytes) -> str | None:
    """The PIN as the text python-pkcs11 sends (UTF-8), or None when it is not UTF-8
    (a UnicodeDecodeError names the offending byte and its ``object`` is the whole PIN)."""
    try:
        return pin.reveal().decode("utf-8")
    except UnicodeDecodeError:
        return None


def _import_pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise ConfigError(
            "a PKCS#11 KEK needs the 'hsm' extra: pip install 'modelseal[hsm]'"
        ) from None
    return pkcs11


def _attribute_mapper(mod: Any) -> Any:
    """python-pkcs11's mapper plus CKA_ALLOWED_MECHANISMS (an array of CK_MECHANISM_TYPE),
    which it does not pack or unpack itself."""
    mapper = mod.attributes.AttributeMapper()
    mapper.register_handler(
        mod.Attribute.ALLOWED_MECHANISMS,
        lambda mechs: b"".join(_ULONG.pack(int(m)) for m in mechs),
        lambda raw: frozenset(m for (m,) in _ULONG.iter_unpack(raw)),
    )
    return mapper


_OPEN: dict[tuple[str, str, str | None], Pkcs11Token] = {}
_OPEN_LOCK = threading.Lock()
#: One python-pkcs11 ``lib`` per module: C_Initialize/C_Finalize act on the whole module,
#: so every token of it must see the same "initialised" state
_LIBS: dict[str, Any] = {}


class Pkcs11Token:
    """One logged-in read-write session on the token, shared by every KEK of it.

    PKCS#11 logs an *application* in to a token, not a session: a second login fails. So a
    process holds one :class:`Pkcs11Token` per token (:meth:`open` returns it), and checks
    a later caller's PIN against the first one's. PKCS#11 sessions must not run two
    operations at once, so every call holds one lock (a SoftHSM2 operation takes ~25 µs;
    a release does one unwrap and a few MACs).

    The same lock makes session recovery stampede-free: the caller whose operation found
    the session gone reopens it while holding the lock, so the callers queued behind it
    never see the dead session and never reopen it again; they run on the new one.
    """

    @classmethod
    def open(cls, uri: Pkcs11Uri, *, pin: SecretBytes | None = None) -> Pkcs11Token:
        """The process's session on the token ``uri`` names (opened and logged in once)."""
        if pin is None and uri.pin_source is not None:
            pin = _read_pin(uri.pin_source)
        if pin is None:
            raise ConfigError(f"no PIN for {uri}: set pin-source=file:/path in the URI")
        if _pin_text(pin) is None:  # raised here, outside the handler: no context with the PIN
            raise ConfigError(f"the PIN for {uri} is not UTF-8 text")
        pin_digest = hashlib.sha256(pin.reveal()).digest()
        key = (uri.module_path, uri.token, uri.serial)
        with _OPEN_LOCK:
            token = _OPEN.get(key)
            if token is None:
                token = _OPEN[key] = cls(uri, pin, pin_digest)
        if not hmac.compare_digest(token._pin_digest, pin_digest):
            raise ConfigError(f"the PIN for {uri} is incorrect")
        return token

    def __init__(self, uri: Pkcs11Uri, pin: SecretBytes, pin_digest: bytes) -> None:
        self.uri = uri
        mod = _import_pkcs11()
        self._mod = mod
        self._pin_digest = pin_digest
        # kept only when there is no PIN file to read again at a reopen
        self._pin = pin if uri.pin_source is None else None
        self._lock = threading.RLock()
        self._lost = tuple(getattr(mod.exceptions, name) for name in _SESSION_LOST)
        #: Bumped at every reopen: a KEK whose handles are older finds its objects again
        self.generation = 0
        #: Successful reopens since start (operators and tests watch it)
        self.reopens = 0
        self._retry_at = 0.0
        self._session: pkcs11.Session | None = None
        try:
            lib = _LIBS.get(uri.module_path)
            if lib is None:
                lib = _LIBS[uri.module_path] = mod.lib(uri.module_path)
            self._lib = lib
            self._session = self._login(pin)
        except mod.exceptions.NoSuchToken:
            raise ConfigError(
                f"no PKCS#11 token labelled {uri.token!r} in {uri.module_path}"
            ) from None
        except mod.exceptions.PinIncorrect:
            raise ConfigError(f"the PIN for {uri} is incorrect") from None
        except mod.exceptions.PKCS11Error as exc:
            raise ConfigError(f"cannot open {uri}: {type(exc).__name__}") from None
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"cannot load PKCS#11 module {uri.module_path}: {exc}") from None

    def _login(self, pin: SecretBytes) -> Any:
        token = self._lib.get_token(token_label=self.uri.token, token_serial=self.uri.serial)
        return token.open(
            user_pin=pin.reveal().decode("utf-8"),  # UTF-8: checked before
            rw=True,
            attribute_mapper=_attribute_mapper(self._mod),
        )

    def _reopen(self) -> Any:
        """A new logged-in session (the caller holds the lock); BackendError if the token
        is still away. Tries a plain new session first, then reinitialises the module
        (after a device reset a module may only see the token again once reinitialised;
        other tokens of the module then find their sessions gone and reopen theirs)."""
        mod = self._mod
        old, self._session = self._session, None
        if old is not None:
            with contextlib.suppress(mod.exceptions.PKCS11Error):
                old.close()
        source = self.uri.pin_source
        try:
            pin = _read_pin(source) if source is not None else self._pin
        except ConfigError as exc:  # the message names the file, never its contents
            self._retry_at = time.monotonic() + REOPEN_BACKOFF
            raise BackendError(f"cannot log in to {self.uri} again: {exc}") from None
        if pin is None or _pin_text(pin) is None:
            self._retry_at = time.monotonic() + REOPEN_BACKOFF
            raise BackendError(f"cannot log in to {self.uri} again: the PIN is not UTF-8 text")
        failure = "unknown"
        for reinitialise in (False, True):
            try:
                if reinitialise:
                    self._lib.reinitialize()
                session = self._login(pin)
            except mod.exceptions.PKCS11Error as exc:
                failure = type(exc).__name__
                continue
            self._session = session
            self._pin_digest = hashlib.sha256(pin.reveal()).digest()
            self.generation += 1
            self.reopens += 1
            metrics.KEK_TOKEN_EVENTS.labels("reopened").inc()
            log.warning("reopened the PKCS#11 session to %s", self.uri)
            return session
        self._retry_at = time.monotonic() + REOPEN_BACKOFF
        metrics.KEK_TOKEN_EVENTS.labels("unavailable").inc()
        log.warning("the PKCS#11 token %s is unavailable (%s)", self.uri, failure)
        raise BackendError(f"the PKCS#11 token {self.uri} is unavailable ({failure}); retry later")

    def _is_lost(self, exc: BaseException) -> bool:
        # a module left uninitialised by a failed reinitialisation answers
        # CKR_CRYPTOKI_NOT_INITIALIZED, which python-pkcs11 raises as a bare PKCS11Error
        return isinstance(exc, self._lost) or not self._lib.initialized

    def _live(self) -> Any:
        """The session, reopened when an earlier failure dropped it (at most one try per
        REOPEN_BACKOFF seconds, so a dead token costs waiting callers nothing)."""
        if self._session is not None:
            return self._session
        if time.monotonic() < self._retry_at:
            raise BackendError(f"the PKCS#11 token {self.uri} is unavailable; retry later")
        return self._reopen()

    def run(self, what: str, op: Callable[[Any], T], *, retry: bool = True) -> T:
        """``op(session)`` under the lock; a token failure is a BackendError.

        When ``op`` finds the session gone, the session is reopened and ``op`` runs once
        more (``retry``). Key-management writes pass ``retry=False``: whether a lost
        write took effect is unknown, so they fail (the rotation they belong to is
        repeated or finished later) and only the next call uses the new session.
        """
        mod = self._mod
        with self._lock:
            session = self._live()
            try:
                return op(session)
            except mod.exceptions.PKCS11Error as exc:
                if not self._is_lost(exc):
                    raise BackendError(f"PKCS#11 {what} failed: {type(exc).__name__}") from None
                lost = type(exc).__name__
            metrics.KEK_TOKEN_EVENTS.labels("session_lost").inc()
            log.warning("the PKCS#11 session to %s was lost during %s (%s)", self.uri, what, lost)
            session = self._reopen()
            if not retry:
                raise BackendError(
                    f"PKCS#11 {what} failed: {lost} (the session was reopened; retry)"
                )
            try:
                return op(session)
            except mod.exceptions.PKCS11Error as exc:
                # not marked dead: if the token is really gone again, the next call's
                # reopen fails and starts the backoff
                raise BackendError(f"PKCS#11 {what} failed: {type(exc).__name__}") from None

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            if self._session is not None:
                self._session.close()

    # --- objects -------------------------------------------------------------------------

    def find(self, label: str) -> list[Pkcs11Kek]:
        """Every KEK labelled ``label`` (normally zero or one), each with its MAC key.

        Opening a KEK creates no object in the token, so a caller may look keys up as
        often as it likes (a KEK ring does on every miss) without filling the session.
        """
        attr, oc, kt = self._mod.Attribute, self._mod.ObjectClass, self._mod.KeyType

        def lookup(s: Any) -> list[Pkcs11Kek]:
            found = list(
                s.get_objects({attr.CLASS: oc.SECRET_KEY, attr.KEY_TYPE: kt.AES, attr.LABEL: label})
            )
            # opened under the same hold of the session, so a promotion in another thread
            # cannot destroy an object between finding and opening it
            opened = (self._open(s, key) for key in found)
            return [kek for kek in opened if kek is not None]

        return self.run("lookup", lookup)

    def _open(self, session: Any, key: Any) -> Pkcs11Kek | None:
        """``key`` with its MAC key, or None when another process destroyed it meanwhile.

        Replicas share the token, and one may destroy a KEK at any step of this lookup (its
        losing first KEK, a discarded or a retired one). modelseal destroys a KEK before its
        MAC key, so whatever failed, a KEK that is gone now was being destroyed: it is not
        there, as a lookup a moment later would have found. A KEK still there is refused.
        """
        try:
            return Pkcs11Kek(self, key, self._mac_key_of(session, key))
        except (self._mod.exceptions.ObjectHandleInvalid, ConfigError):
            try:
                key[self._mod.Attribute.CLASS]
            except self._mod.exceptions.ObjectHandleInvalid:
                return None
            raise

    def _mac_key_of(self, session: Any, key: Any) -> Any:
        attr, oc = self._mod.Attribute, self._mod.ObjectClass
        pair_id = bytes(key[attr.ID])
        macs = (
            list(
                session.get_objects(
                    {attr.CLASS: oc.SECRET_KEY, attr.ID: pair_id, attr.LABEL: MAC_KEY_LABEL}
                )
            )
            if len(pair_id) == _PAIR_ID_LEN
            else []
        )
        if len(macs) != 1:
            raise ConfigError(
                f"the KEK object {key[attr.LABEL]!r} in {self.uri} has {len(macs)} MAC keys "
                f"(objects labelled {MAC_KEY_LABEL!r} with its CKA_ID); modelseal creates "
                "exactly one with every KEK"
            )
        return macs[0]

    def _find_again(self, session: Any, pair_id: bytes) -> tuple[Any, Any]:
        """The KEK and MAC key objects carrying ``pair_id``, found in a new session (the
        KEK's label may have changed in a rotation since; its CKA_ID never does)."""
        attr, oc = self._mod.Attribute, self._mod.ObjectClass
        objects = list(session.get_objects({attr.CLASS: oc.SECRET_KEY, attr.ID: pair_id}))
        macs = [o for o in objects if o[attr.LABEL] == MAC_KEY_LABEL]
        keks = [o for o in objects if o[attr.LABEL] != MAC_KEY_LABEL]
        if len(keks) != 1 or len(macs) != 1:
            raise BackendError(
                f"after reopening {self.uri}, {len(keks)} KEK objects and {len(macs)} MAC "
                "keys carry a KEK's CKA_ID (exactly one of each was expected)"
            )
        return keks[0], macs[0]

    def _template(self, label: str, pair_id: bytes, mechanism: Any, use: Any) -> dict[Any, Any]:
        """A token object that never leaves the token and serves only ``mechanism``."""
        attr = self._mod.Attribute
        template = {
            attr.TOKEN: True,
            attr.PRIVATE: True,
            attr.SENSITIVE: True,
            attr.EXTRACTABLE: False,
            attr.ID: pair_id,
            attr.LABEL: label,
            attr.ALLOWED_MECHANISMS: [mechanism],
            **{getattr(attr, name): False for name in _KEY_USES},
        }
        for flag in use:
            template[flag] = True
        return template

    def generate(self, label: str) -> Pkcs11Kek:
        """A new KEK stored in the token under ``label``, with its MAC key.

        The MAC key is created first: a crash between the two leaves an unused MAC key
        that nothing names, never a KEK without one.
        """
        attr, kt, mech = self._mod.Attribute, self._mod.KeyType, self._mod.Mechanism
        pair_id = os.urandom(_PAIR_ID_LEN)
        mac_template = self._template(MAC_KEY_LABEL, pair_id, mech.AES_CMAC, [attr.SIGN])
        kek_template = self._template(label, pair_id, mech.AES_GCM, [attr.ENCRYPT, attr.DECRYPT])

        def make(s: Any) -> Pkcs11Kek:
            mac = s.generate_key(kt.AES, 256, store=True, template=mac_template)
            key = s.generate_key(kt.AES, 256, store=True, template=kek_template)
            return Pkcs11Kek(self, key, mac)

        return self.run("key generation", make, retry=False)

    def relabel(self, kek: Pkcs11Kek, label: str) -> None:
        def write(s: Any) -> None:
            kek.handles(s)[0][self._mod.Attribute.LABEL] = label

        self.run("relabel", write, retry=False)

    def destroy(self, kek: Pkcs11Kek) -> None:
        """Destroy the KEK, then its MAC key (a crash between leaves only the MAC key)."""

        def remove(s: Any) -> None:
            key, mac = kek.handles(s)
            key.destroy()
            mac.destroy()

        self.run("destroy", remove, retry=False)


class Pkcs11Kek(Kek):
    """A KEK that lives in a PKCS#11 token; every operation runs inside the token.

    Object handles belong to a session: after the token reopened its session
    (:meth:`Pkcs11Token.run`) the KEK finds its two objects again by their shared
    ``CKA_ID``, checks them as at first, and checks that the MAC key still yields this
    KEK's id, so a stale handle never reaches another object.
    """

    __slots__ = ("_generation", "_token", "handle", "mac_handle", "pair_id")

    def __init__(self, token: Pkcs11Token, handle: Any, mac_handle: Any) -> None:
        """Only inside :meth:`Pkcs11Token.run` (under its lock, on its current session)."""
        self._token = token
        self._generation = token.generation
        self.handle = handle
        self.mac_handle = mac_handle
        label = handle[token._mod.Attribute.LABEL]
        self.pair_id = bytes(handle[token._mod.Attribute.ID])
        self._check(label)
        self.id = self._derive_id()

    def _check(self, label: str) -> None:
        mech = self._token._mod.Mechanism
        _check_restricted(self._token, self.handle, label, mech.AES_GCM)
        _check_restricted(self._token, self.mac_handle, label, mech.AES_CMAC)

    def _derive_id(self) -> str:
        tag = self.mac_handle.sign(_ID_LABEL, mechanism=self._token._mod.Mechanism.AES_CMAC)
        return "kek-" + bytes(tag)[:8].hex()

    def handles(self, session: Any) -> tuple[Any, Any]:
        """The KEK and MAC key objects valid in ``session`` (the token's current one)."""
        token = self._token
        if self._generation != token.generation:
            key, mac = token._find_again(session, self.pair_id)
            self.handle, self.mac_handle = key, mac
            self._check(str(key[token._mod.Attribute.LABEL]))
            if not hmac.compare_digest(self._derive_id(), self.id):
                raise BackendError(
                    f"after reopening {token.uri}, the objects carrying KEK {self.id}'s "
                    "CKA_ID are another key"
                )
            self._generation = token.generation
        return self.handle, self.mac_handle

    @property
    def label(self) -> str:
        attr = self._token._mod.Attribute
        return self._token.run("lookup", lambda s: str(self.handles(s)[0][attr.LABEL]))

    def _gcm(self, nonce: bytes, aad: bytes) -> tuple[Any, Any]:
        mod = self._token._mod
        return mod.Mechanism.AES_GCM, mod.mechanisms.GCMParams(nonce, aad, 128)

    def _seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        mech, param = self._gcm(nonce, aad)
        # a retry after a lost session encrypts the same plaintext under the same nonce:
        # the same ciphertext, never two messages under one nonce
        return self._token.run(
            "wrap",
            lambda s: bytes(
                self.handles(s)[0].encrypt(plaintext, mechanism=mech, mechanism_param=param)
            ),
        )

    def _open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        mech, param = self._gcm(nonce, aad)
        mod = self._token._mod

        def unwrap(s: Any) -> bytes:
            key = self.handles(s)[0]
            try:
                return bytes(key.decrypt(sealed, mechanism=mech, mechanism_param=param))
            except (mod.exceptions.EncryptedDataInvalid, mod.exceptions.GeneralError):
                # SoftHSM2 reports a bad GCM tag as CKR_GENERAL_ERROR, others as
                # CKR_ENCRYPTED_DATA_INVALID: both mean "does not authenticate"
                raise DecryptionError() from None

        return self._token.run("unwrap", unwrap)

    def _mac(self, message: bytes) -> bytes:
        mech = self._token._mod.Mechanism.AES_CMAC
        return self._token.run(
            "MAC", lambda s: bytes(self.handles(s)[1].sign(message, mechanism=mech))
        )


def _check_restricted(token: Pkcs11Token, obj: Any, label: str, mechanism: Any) -> None:
    """Refuse an object that may have left the token or may serve another mechanism.

    Generated in the token (LOCAL) and never readable since (NEVER_EXTRACTABLE,
    ALWAYS_SENSITIVE): an imported key, or one that was read out and then made
    non-extractable, has a value someone may know. Private (CKA_PRIVATE): PKCS#11 lets a
    session that never logged in create and use public token objects, so a public KEK
    may have been planted, and may be used, without the PIN. CKA_ALLOWED_MECHANISMS
    exactly ``mechanism`` (an empty or absent list allows every mechanism, AES-ECB
    included).
    """
    attr = token._mod.Attribute
    try:
        allowed = obj[attr.ALLOWED_MECHANISMS]
    except token._mod.exceptions.PKCS11Error:
        allowed = frozenset()
    if (
        obj[attr.EXTRACTABLE]
        or not obj[attr.SENSITIVE]
        or not obj[attr.LOCAL]
        or not obj[attr.NEVER_EXTRACTABLE]
        or not obj[attr.ALWAYS_SENSITIVE]
        or obj[attr.VALUE_LEN] != 32
    ):
        raise ConfigError(
            f"the KEK object {label!r} in {token.uri} (or its MAC key) was not generated "
            "in the token as a never-extractable, always-sensitive AES-256 key; "
            "modelseal only uses keys that cannot have left the token"
        )
    if not obj[attr.PRIVATE]:
        raise ConfigError(
            f"the KEK object {label!r} in {token.uri} (or its MAC key) has CKA_PRIVATE "
            "false: a session that never logged in can use it, so whoever reaches the token "
            "without the PIN could have made it and could unwrap with it"
        )
    if allowed != {int(mechanism)}:
        raise ConfigError(
            f"the KEK object {label!r} in {token.uri} (or its MAC key) does not restrict "
            f"CKA_ALLOWED_MECHANISMS to {mechanism.name}; a PIN holder could use it for "
            "other mechanisms (AES-ECB, key derivation) and learn its secrets. Create a new "
            "KEK with this version of modelseal and move the keys to it"
        )
