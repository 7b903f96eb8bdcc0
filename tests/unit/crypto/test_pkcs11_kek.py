"""KEKs in a PKCS#11 token (SoftHSM2): wrapping inside the token, never exportable, the
same wrapped layout and the same opaque error as a KEK file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto.kek import KekRing, SoftwareKek
from modelseal.crypto.pkcs11_kek import MAC_KEY_LABEL, Pkcs11Token, parse_pkcs11_uri
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import BackendError, ConfigError, DecryptionError
from modelseal.kbs.kek_stores import TokenKeks
from tests.hsm import SoftHsm

DEK = SecretBytes(os.urandom(32))


@pytest.fixture
def token(kek_uri: str) -> Pkcs11Token:
    return Pkcs11Token.open(parse_pkcs11_uri(kek_uri))


def test_uri_parts(softhsm: SoftHsm) -> None:
    uri = parse_pkcs11_uri(
        "pkcs11:token=my%20hsm;object=k?module-path=/lib/x.so&pin-source=file:/run/pin"
    )
    assert (uri.token, uri.object, uri.module_path) == ("my hsm", "k", "/lib/x.so")
    assert uri.pin_source == Path("/run/pin")
    assert str(uri) == "pkcs11:token=my hsm;object=k"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("pkcs11:token=t?module-path=/x.so&pin-value=1234", "pin-value"),
        ("pkcs11:token=t;bogus=1?module-path=/x.so", "'bogus'"),
        ("pkcs11:token=t", "module-path"),
        ("pkcs11:object=o?module-path=/x.so", "token="),
        ("pkcs11:token=t;token=u?module-path=/x.so", "twice"),
        ("pkcs11:token=t?module-path=/x.so&pin-source=file:pin", "absolute"),
        ("file:/tmp/kek", "pkcs11:"),
        ("pkcs11:" + "a" * 5000, "pkcs11:"),
        # the label every MAC key carries: KEKs under it would be found among MAC keys
        (f"pkcs11:token=t;object={MAC_KEY_LABEL}?module-path=/x.so", "MAC keys"),
    ],
)
def test_unusable_uris_are_config_errors(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_pkcs11_uri(text)


def test_pin_value_never_echoed() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_pkcs11_uri("pkcs11:token=t?module-path=/x.so&pin-value=s3cr3t-pin")
    assert "s3cr3t-pin" not in str(exc.value)


def test_round_trip_layout_and_binding(token: Pkcs11Token, kek_uri: str) -> None:
    kek = token.generate(parse_pkcs11_uri(kek_uri).object)
    blob = kek.wrap("models/m/v1", DEK)
    assert len(blob) == 1 + 12 + 32 + 16
    assert blob[0] == 1
    assert DEK.reveal() not in blob
    assert kek.unwrap("models/m/v1", blob) == DEK
    assert kek.wrap("models/m/v1", DEK) != blob  # fresh nonce
    with pytest.raises(DecryptionError) as exc:
        kek.unwrap("models/m/v2", blob)
    assert str(exc.value) == "authentication failed"
    other = SoftwareKek.generate()
    with pytest.raises(DecryptionError):
        other.unwrap("models/m/v1", blob)


@pytest.mark.parametrize("where", [1, 12, -17, -1])
def test_flipped_byte_is_opaque(token: Pkcs11Token, kek_uri: str, where: int) -> None:
    kek = token.generate(parse_pkcs11_uri(kek_uri).object)
    blob = bytearray(kek.wrap("k", DEK))
    blob[where] ^= 1
    with pytest.raises(DecryptionError):
        kek.unwrap("k", bytes(blob))


def test_key_never_leaves_the_token(token: Pkcs11Token, kek_uri: str) -> None:
    import pkcs11

    kek = token.generate(parse_pkcs11_uri(kek_uri).object)
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        kek.handle[pkcs11.Attribute.VALUE]
    assert kek.handle[pkcs11.Attribute.EXTRACTABLE] is False
    assert kek.handle[pkcs11.Attribute.SENSITIVE] is True


def test_id_and_mac_are_functions_of_the_secret(token: Pkcs11Token, kek_uri: str) -> None:
    label = parse_pkcs11_uri(kek_uri).object
    kek = token.generate(label)
    (again,) = token.find(label)
    assert again.id == kek.id
    assert kek.id.startswith("kek-")
    assert len(kek.id) == 4 + 16
    tag = kek.mac("audit", b"1:abc")
    assert again.verify_mac("audit", b"1:abc", tag)
    assert not kek.verify_mac("audit", b"1:abd", tag)
    assert not kek.verify_mac("audit", b"1:abc", tag[:-1] + bytes([tag[-1] ^ 1]))
    assert kek.mac("a", b"x") != kek.mac("b", b"x")
    other = token.generate(label + "-other")
    assert other.id != kek.id
    assert other.mac("audit", b"1:abc") != tag


def _plant(token: Pkcs11Token, label: str, kek: dict[Any, Any], *, imported: bool = False) -> None:
    """A KEK object made outside modelseal (attributes ``kek``) with a proper MAC key, so
    only the KEK's own attributes can be what is refused."""
    import pkcs11

    a = pkcs11.Attribute
    pair_id = os.urandom(16)
    mac = token._template(MAC_KEY_LABEL, pair_id, pkcs11.Mechanism.AES_CMAC, [a.SIGN])
    token._session.generate_key(pkcs11.KeyType.AES, 256, store=True, template=mac)
    template = {a.TOKEN: True, a.LABEL: label, a.ID: pair_id, **kek}
    if imported:
        template |= {
            a.CLASS: pkcs11.ObjectClass.SECRET_KEY,
            a.KEY_TYPE: pkcs11.KeyType.AES,
            a.VALUE: bytes(range(32)),
        }
        token._session.create_object(template)
    else:
        token._session.generate_key(pkcs11.KeyType.AES, 256, store=True, template=template)


def test_extractable_objects_are_refused(token: Pkcs11Token, kek_uri: str) -> None:
    import pkcs11

    label = parse_pkcs11_uri(kek_uri).object
    a = pkcs11.Attribute
    _plant(
        token,
        label,
        {a.EXTRACTABLE: True, a.SENSITIVE: False, a.ALLOWED_MECHANISMS: [pkcs11.Mechanism.AES_GCM]},
    )
    with pytest.raises(ConfigError, match="never-extractable"):
        token.find(label)


def test_imported_keys_are_refused(token: Pkcs11Token, kek_uri: str) -> None:
    """A key whose value was given to the token (someone knows it) is not a KEK, even
    marked sensitive and non-extractable now."""
    import pkcs11

    label = parse_pkcs11_uri(kek_uri).object
    a = pkcs11.Attribute
    restricted = {a.ALLOWED_MECHANISMS: [pkcs11.Mechanism.AES_GCM]}
    _plant(token, label, {a.SENSITIVE: True, a.EXTRACTABLE: False, **restricted}, imported=True)
    with pytest.raises(ConfigError, match="never-extractable"):
        token.find(label)


@pytest.mark.parametrize(
    "allowed",
    [None, ["AES_GCM", "AES_ECB"], ["AES_GCM", "AES_ECB_ENCRYPT_DATA"], ["AES_CMAC"]],
)
def test_keks_usable_for_other_mechanisms_are_refused(
    token: Pkcs11Token, kek_uri: str, allowed: list[str] | None
) -> None:
    """A KEK that a PIN holder could use for AES-ECB or a key derivation (no
    CKA_ALLOWED_MECHANISMS means every mechanism) is refused, though generated in the token."""
    import pkcs11

    label = parse_pkcs11_uri(kek_uri).object
    a = pkcs11.Attribute
    kek: dict[Any, Any] = {a.SENSITIVE: True, a.EXTRACTABLE: False, a.DERIVE: True}
    if allowed is not None:
        kek[a.ALLOWED_MECHANISMS] = [pkcs11.Mechanism[m] for m in allowed]
    _plant(token, label, kek)
    with pytest.raises(ConfigError, match="CKA_ALLOWED_MECHANISMS"):
        token.find(label)


def test_a_pin_holder_cannot_read_the_keks_secrets(token: Pkcs11Token, kek_uri: str) -> None:
    """What the token refuses to anyone with the PIN (SoftHSM2 enforces
    CKA_ALLOWED_MECHANISMS in every *Init call and C_DeriveKey, and refuses to change it).

    The attacks: AES-ECB on the KEK would compute the blocks a MAC key derived from it is
    made of; a derivation with an extractable template would hand out a readable copy."""
    import pkcs11

    a, m, exc = pkcs11.Attribute, pkcs11.Mechanism, pkcs11.exceptions
    kek = token.generate(parse_pkcs11_uri(kek_uri).object)
    readable = {a.SENSITIVE: False, a.EXTRACTABLE: True}
    for mine in (kek.handle, kek.mac_handle):
        # a PIN holder may first switch every use flag on (CKA_DERIVE etc. are modifiable)
        for flag in (a.ENCRYPT, a.DECRYPT, a.SIGN, a.DERIVE):
            mine[flag] = True
        (obj,) = token._session.get_objects({a.ID: mine[a.ID], a.LABEL: mine[a.LABEL]})
        with pytest.raises(exc.MechanismInvalid):
            obj.encrypt(bytes(16), mechanism=m.AES_ECB)
        with pytest.raises(exc.MechanismInvalid):
            obj.encrypt(bytes(16), mechanism=m.AES_CBC, mechanism_param=bytes(16))
        for derive in (m.AES_ECB_ENCRYPT_DATA, m.AES_CBC_ENCRYPT_DATA):
            param = bytes(32) if derive == m.AES_ECB_ENCRYPT_DATA else (bytes(16), bytes(32))
            with pytest.raises(exc.MechanismInvalid):
                obj.derive_key(
                    pkcs11.KeyType.AES,
                    256,
                    mechanism=derive,
                    mechanism_param=param,
                    store=False,
                    template=readable,
                )
        with pytest.raises(exc.AttributeReadOnly):
            obj[a.ALLOWED_MECHANISMS] = [m.AES_ECB]
        with pytest.raises(exc.AttributeReadOnly):  # public: usable without the PIN
            obj[a.PRIVATE] = False
        with pytest.raises(exc.AttributeSensitive):
            obj[a.VALUE]
        # each serves only its own mechanism
        gcm = pkcs11.mechanisms.GCMParams(bytes(12), b"", 128)
        if mine is kek.handle:
            with pytest.raises(exc.MechanismInvalid):
                obj.sign(b"x", mechanism=m.AES_CMAC)
        else:
            with pytest.raises(exc.MechanismInvalid):
                obj.encrypt(bytes(16), mechanism=m.AES_GCM, mechanism_param=gcm)
    # the permitted uses still work after all those refusals
    assert kek.unwrap("k", kek.wrap("k", DEK)) == DEK
    assert kek.verify_mac("a", b"x", kek.mac("a", b"x"))


def test_looking_keks_up_leaves_no_objects_in_the_session(token: Pkcs11Token, kek_uri: str) -> None:
    """A KEK ring reloads from the token on every miss (a key row under an unknown KEK id):
    each lookup opens every KEK afresh, and must leave no session object behind."""
    import pkcs11

    label = parse_pkcs11_uri(kek_uri).object
    token.generate(label)
    token.generate(label + ".next")
    store = TokenKeks(token, label, Path(os.devnull))
    ring = KekRing(store.load(), reload=store.on_disk)

    def session_objects() -> int:
        with token._lock:
            return len(list(token._session.get_objects({pkcs11.Attribute.TOKEN: False})))

    before = session_objects()
    for _ in range(25):
        with pytest.raises(ConfigError, match="does not hold"):
            ring.get("kek-" + "00" * 8)
        store.has_active()
    assert session_objects() == before
    assert {k.id for k in ring} == {k.id for k in store.on_disk()}


def test_wrong_pin_and_missing_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    bad = tmp_path / "pin"
    bad.write_text("wrong-pin\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="incorrect") as exc:
        Pkcs11Token.open(parse_pkcs11_uri(softhsm.uri("modelseal", bad)))
    assert "wrong-pin" not in str(exc.value)
    with pytest.raises(ConfigError, match="no PKCS#11 token"):
        Pkcs11Token.open(parse_pkcs11_uri(softhsm.uri("absent", softhsm.base / "modelseal.pin")))
    nopin = f"pkcs11:token=modelseal?module-path={softhsm.module}"
    with pytest.raises(ConfigError, match="no PIN"):
        Pkcs11Token.open(parse_pkcs11_uri(nopin))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700, 0o620])
def test_pin_files_others_can_read_are_refused(softhsm: SoftHsm, tmp_path: Path, mode: int) -> None:
    """As ssh refuses a private key others can read: the PIN file must be 0600 or 0400
    (a mounted Secret is copied to 0600 first, see deploy/kubernetes)."""
    pin = tmp_path / "pin"
    pin.write_bytes((softhsm.base / "modelseal.pin").read_bytes())
    pin.chmod(mode)
    uri = parse_pkcs11_uri(softhsm.uri("modelseal", pin))
    if not mode & 0o077:
        assert Pkcs11Token.open(uri).uri.token == "modelseal"  # owner-only modes are fine
        return
    with pytest.raises(ConfigError, match=f"permissions {mode:04o}.*chmod 600") as exc:
        Pkcs11Token.open(uri)
    assert exc.value.exit_code == 2
    assert pin.read_text().strip() not in str(exc.value)


def test_pin_source_must_be_a_regular_file(softhsm: SoftHsm, tmp_path: Path) -> None:
    fifo = tmp_path / "pin"
    os.mkfifo(fifo, 0o600)  # opening must not block on a writer that never comes
    with pytest.raises(ConfigError, match="not a regular file"):
        Pkcs11Token.open(parse_pkcs11_uri(softhsm.uri("modelseal", fifo)))
    link = tmp_path / "link"
    link.symlink_to(softhsm.base / "modelseal.pin")  # a symlink to a 0600 file is fine
    assert Pkcs11Token.open(parse_pkcs11_uri(softhsm.uri("modelseal", link)))


def test_kbs_serve_exits_2_on_a_readable_pin_file(softhsm: SoftHsm, tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_bytes((softhsm.base / "modelseal.pin").read_bytes())
    pin.chmod(0o644)
    cli = [sys.executable, "-c", "from modelseal.cli import main; main()"]
    done = subprocess.run(
        [*cli, "kbs", "serve", "--data-dir", str(tmp_path / "kbs"), "--port", "9",
         "--kek-uri", softhsm.uri("modelseal", pin)],
        capture_output=True, text=True, env=softhsm.env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"PKCS#11 PIN file {pin} has permissions 0644" in done.stderr
    assert "Traceback" not in done.stderr
    assert pin.read_text().strip() not in done.stdout + done.stderr


def test_a_pin_that_is_not_utf8_is_a_config_error(softhsm: SoftHsm, tmp_path: Path) -> None:
    """PKCS#11 PINs reach the token as UTF-8 text; a file holding other bytes is a
    ConfigError that shows none of them (a UnicodeDecodeError names the offending byte
    and its position, and carries the whole PIN)."""
    pin = tmp_path / "pin"
    pin.write_bytes(b"s3cr\xe9t-pin\n")
    pin.chmod(0o600)
    with pytest.raises(ConfigError, match="not UTF-8") as exc:
        Pkcs11Token.open(parse_pkcs11_uri(softhsm.uri("modelseal", pin)))
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None
    for shown in ("s3cr", "0xe9", "position"):
        assert shown not in str(exc.value)


def test_a_kek_destroyed_while_it_is_opened_is_a_backend_error(
    token: Pkcs11Token, kek_uri: str
) -> None:
    """Another thread's or replica's promotion may destroy a KEK between a lookup finding
    it and opening it: a BackendError (503, retry), never the library's own exception."""
    label = parse_pkcs11_uri(kek_uri).object
    kek, other = token.generate(label), token.generate(label + "-other")
    kek.handle.destroy()
    other.mac_handle.destroy()
    # each KEK finds its objects again by CKA_ID (after a reopen: its handles are dead)
    with pytest.raises(BackendError, match="0 KEK objects and 1 MAC keys"):
        _ = kek.label
    with pytest.raises(BackendError, match="1 KEK objects and 0 MAC keys"):
        other.wrap("k", DEK)


@pytest.mark.parametrize("when", ["after the search", "before its MAC key", "after its MAC key"])
def test_a_kek_another_replica_destroys_during_a_lookup_is_not_found(
    token: Pkcs11Token, kek_uri: str, when: str
) -> None:
    """Replicas share the token: another one may destroy its KEK (then its MAC key, as
    modelseal always does: its losing first KEK, a discarded or retired one) at any point
    of our lookup. The KEK is then simply not there, as if we had looked a moment later;
    a lookup does not fail with 'has 0 MAC keys' (exit 2) or a BackendError."""
    import pkcs11

    a = pkcs11.Attribute
    label = parse_pkcs11_uri(kek_uri).object
    mine, theirs = token.generate(label), token.generate(label)
    their_id = theirs.handle[a.ID]
    session = token._session

    def destroy_theirs() -> None:
        theirs.handle.destroy()
        theirs.mac_handle.destroy()

    class OtherReplica:
        """The session, with the other replica's destroy landing at ``when``."""

        def __getattr__(self, name: str) -> Any:
            return getattr(session, name)

        def get_objects(self, template: dict[Any, Any]) -> Any:
            mac_search = template.get(a.LABEL) == MAC_KEY_LABEL
            theirs_now = mac_search and template.get(a.ID) == their_id
            if theirs_now and when == "before its MAC key":
                destroy_theirs()
            found = list(session.get_objects(template))
            if (theirs_now and when == "after its MAC key") or (
                not mac_search and when == "after the search"
            ):
                destroy_theirs()
            return iter(found)

    token._session = OtherReplica()  # type: ignore[assignment]
    try:
        assert [k.id for k in token.find(label)] == [mine.id]
    finally:
        token._session = session
    # a KEK whose MAC key is missing while it is itself still there is still refused
    mine.mac_handle.destroy()
    with pytest.raises(ConfigError, match="has 0 MAC keys"):
        token.find(label)


@pytest.mark.parametrize("public", ["kek", "mac key"])
def test_public_objects_are_refused(token: Pkcs11Token, kek_uri: str, public: str) -> None:
    """A token object with CKA_PRIVATE false can be created, and then used, in a session
    that never logged in: anyone who reaches the token without the PIN could plant a KEK
    (``OBJ.next``, which a rotation adopts, re-wrapping every DEK under it) and unwrap
    with it. Otherwise it is a perfect modelseal KEK: made in the token, never
    extractable, restricted to its mechanism. It is refused."""
    import pkcs11

    a, m = pkcs11.Attribute, pkcs11.Mechanism
    label = parse_pkcs11_uri(kek_uri).object + ".next"
    pair_id = os.urandom(16)
    for mine, mech, use in (("mac key", m.AES_CMAC, a.SIGN), ("kek", m.AES_GCM, a.ENCRYPT)):
        template = token._template(
            MAC_KEY_LABEL if mine == "mac key" else label, pair_id, mech, [use]
        )
        template[a.PRIVATE] = mine != public
        token._session.generate_key(pkcs11.KeyType.AES, 256, store=True, template=template)
    with pytest.raises(ConfigError, match="CKA_PRIVATE"):
        token.find(label)
    with pytest.raises(ConfigError, match="CKA_PRIVATE"):
        TokenKeks(token, label.removesuffix(".next"), Path(os.devnull)).create_next()


def test_a_pin_file_longer_than_a_pin_is_refused(softhsm: SoftHsm, tmp_path: Path) -> None:
    """At most 256 bytes are read (a PIN file pointed at something large is never read
    whole), and a longer file is a ConfigError naming none of it."""
    pin = tmp_path / "pin"
    pin.write_bytes(b"p" * 256 + b"q")
    pin.chmod(0o600)
    with pytest.raises(ConfigError, match="longer than 256 bytes") as exc:
        Pkcs11Token.open(parse_pkcs11_uri(softhsm.uri("modelseal", pin)))
    assert exc.value.exit_code == 2
    assert "ppp" not in str(exc.value)
