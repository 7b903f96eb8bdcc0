"""KEKs in a PKCS#11 token (SoftHSM2): wrapping inside the token, never exportable, the
same wrapped layout and the same opaque error as a KEK file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelseal.crypto.kek import SoftwareKek
from modelseal.crypto.pkcs11_kek import Pkcs11Token, parse_pkcs11_uri
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError
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


def test_extractable_objects_are_refused(token: Pkcs11Token, kek_uri: str) -> None:
    import pkcs11

    label = parse_pkcs11_uri(kek_uri).object
    token._session.generate_key(
        pkcs11.KeyType.AES,
        256,
        label=label,
        store=True,
        template={pkcs11.Attribute.EXTRACTABLE: True, pkcs11.Attribute.SENSITIVE: False},
    )
    with pytest.raises(ConfigError, match="never-extractable"):
        token.find(label)


def test_imported_keys_are_refused(token: Pkcs11Token, kek_uri: str) -> None:
    """A key whose value was given to the token (someone knows it) is not a KEK, even
    marked sensitive and non-extractable now."""
    import pkcs11

    label = parse_pkcs11_uri(kek_uri).object
    a = pkcs11.Attribute
    token._session.create_object(
        {
            a.CLASS: pkcs11.ObjectClass.SECRET_KEY,
            a.KEY_TYPE: pkcs11.KeyType.AES,
            a.VALUE: bytes(range(32)),
            a.LABEL: label,
            a.TOKEN: True,
            a.SENSITIVE: True,
            a.EXTRACTABLE: False,
            a.ENCRYPT: True,
            a.DECRYPT: True,
            a.DERIVE: True,
        }
    )
    with pytest.raises(ConfigError, match="never-extractable"):
        token.find(label)


def test_wrong_pin_and_missing_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    bad = tmp_path / "pin"
    bad.write_text("wrong-pin\n")
    with pytest.raises(ConfigError, match="incorrect") as exc:
        Pkcs11Token.open(parse_pkcs11_uri(softhsm.uri("modelseal", bad)))
    assert "wrong-pin" not in str(exc.value)
    with pytest.raises(ConfigError, match="no PKCS#11 token"):
        Pkcs11Token.open(parse_pkcs11_uri(softhsm.uri("absent", softhsm.base / "modelseal.pin")))
    nopin = f"pkcs11:token=modelseal?module-path={softhsm.module}"
    with pytest.raises(ConfigError, match="no PIN"):
        Pkcs11Token.open(parse_pkcs11_uri(nopin))
