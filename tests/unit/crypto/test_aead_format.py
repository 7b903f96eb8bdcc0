"""AES-256-GCM helpers of the sealed formats: wipe on failure, threads, HKDF vector."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelseal.crypto.aead import AesGcm, GcmStreamDecryptor, GcmStreamEncryptor, wipe
from modelseal.crypto.kdf import hkdf_sha256
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError

KEY = SecretBytes(bytes(range(32)))
NONCE = bytes(12)


def test_decrypt_into_wipes_unauthenticated_plaintext() -> None:
    """cryptography leaves plaintext in the buffer on InvalidTag; we must not."""
    with AesGcm(KEY) as aead:
        sealed = bytearray(aead.encrypt(NONCE, b"top secret weights"))
        sealed[-1] ^= 1
        out = bytearray(18)
        with pytest.raises(DecryptionError) as info:
            aead.decrypt_into(NONCE, sealed, out)
        assert out == bytes(18)
        assert str(info.value) == "authentication failed"


def test_in_place_and_numpy_like_targets() -> None:
    data = os.urandom(5000)
    with AesGcm(KEY) as aead:
        buf = bytearray(len(data) + 16)
        view = memoryview(buf)
        view[: len(data)] = data
        aead.encrypt_into(NONCE, view[: len(data)], view)
        aead.decrypt_into(NONCE, view, view[: len(data)])
        assert bytes(view[: len(data)]) == data
        wide = memoryview(bytearray(16)).cast("I")
        wipe(wide)
        assert wide.tobytes() == bytes(16)


def test_shared_between_threads() -> None:
    with AesGcm(KEY) as aead:
        blobs = [(i.to_bytes(12, "big"), os.urandom(10_000)) for i in range(32)]
        sealed = [aead.encrypt(n, d) for n, d in blobs]
        with ThreadPoolExecutor(4) as pool:
            plain = list(
                pool.map(lambda a: aead.decrypt(a[0][0], a[1]), zip(blobs, sealed, strict=True))
            )
        assert plain == [d for _, d in blobs]


def test_closed_cipher_and_bad_key() -> None:
    aead = AesGcm(KEY)
    aead.close()
    with pytest.raises(ValueError, match="closed"):
        aead.encrypt(NONCE, b"x")
    with pytest.raises(ValueError, match="32-byte"):
        AesGcm(SecretBytes(b"short"))


def test_stream_matches_one_shot_and_checks_tag() -> None:
    data = os.urandom(100_000)
    enc = GcmStreamEncryptor(KEY, NONCE)
    ct = enc.update(data[:333]) + enc.update(data[333:])
    tag = enc.finalize()
    with AesGcm(KEY) as aead:
        assert ct + tag == aead.encrypt(NONCE, data)
    dec = GcmStreamDecryptor(KEY, NONCE, tag)
    assert dec.update(ct) == data
    dec.finalize()
    bad = GcmStreamDecryptor(KEY, NONCE, bytes(16))
    bad.update(ct)
    with pytest.raises(DecryptionError):
        bad.finalize()


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf_sha256(
        SecretBytes(bytes.fromhex("0b" * 22)),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.reveal().hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
