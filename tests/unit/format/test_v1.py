"""Round trips and the reader API of the v1 format (writer <-> reader, all sizes)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelseal.crypto.secret import SecretBytes
from modelseal.errors import ConfigError, DecryptionError, FormatError
from modelseal.format.options import SealOptions
from modelseal.format.v1 import (
    COMMIT_LEN,
    PREAMBLE_LEN,
    TAG_LEN,
    FileDecryptor,
    Header,
    SealedReader,
    SealWriter,
    read_header,
    seal_fd,
    seal_stream,
    sealed_size,
    segment_nonce,
)

SEG = 4096
SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17]


def _seal_bytes(
    data: bytes, dek: SecretBytes, *, _salt: bytes | None = None, **kw: object
) -> bytes:
    out = io.BytesIO()
    options = SealOptions(key_id="m/k/1", segment_size=SEG).but(**kw)
    seal_stream(io.BytesIO(data), out, dek, options, size=len(data), path="w.bin", _salt=_salt)
    return out.getvalue()


def _write(tmp_path: Path, blob: bytes, name: str = "f.sealed") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_every_boundary(tmp_path: Path, dek: SecretBytes, size: int) -> None:
    data = os.urandom(size)
    blob = _seal_bytes(data, dek)
    header = Header.parse(blob)
    assert len(blob) == header.sealed_size == sealed_size(size, SEG, header.header_len)
    assert header.segment_count == max(1, -(-size // SEG))
    with SealedReader.open(_write(tmp_path, blob), dek) as reader:
        assert reader.read_range(0, size) == data
        assert b"".join(bytes(c) for c in reader.iter_segments()) == data
        out = tmp_path / "out"
        fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            reader.decrypt_to_fd(fd, workers=2)
        finally:
            os.close(fd)
        assert out.read_bytes() == data
        reader.verify(workers=2)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_seal_fd_matches_stream(tmp_path: Path, dek: SecretBytes, workers: int) -> None:
    data = os.urandom(5 * SEG + 100)
    salt = bytes(32)
    src = _write(tmp_path, data, "plain")
    dst = tmp_path / "par.sealed"
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        seal_fd(
            sfd,
            dfd,
            dek,
            SealOptions(key_id="m/k/1", segment_size=SEG, workers=workers),
            size=len(data),
            path="w.bin",
            _salt=salt,
        )
    finally:
        os.close(sfd)
        os.close(dfd)
    assert dst.read_bytes() == _seal_bytes(data, dek, _salt=salt)


def test_read_range_decrypts_only_needed_segments(tmp_path: Path, dek: SecretBytes) -> None:
    data = os.urandom(4 * SEG)
    blob = bytearray(_seal_bytes(data, dek))
    header = Header.parse(blob)
    # corrupt segment 3: ranges inside segments 0..2 still read, segment 3 fails
    blob[header.segment_offset(3) + 5] ^= 1
    with SealedReader.open(_write(tmp_path, bytes(blob)), dek) as reader:
        assert reader.read_range(SEG - 10, SEG + 20) == data[SEG - 10 : 2 * SEG + 10]
        assert reader.read_range(2 * SEG, SEG) == data[2 * SEG : 3 * SEG]
        out = bytearray(b"\xff" * 30)
        with pytest.raises(DecryptionError):
            reader.readinto_range(3 * SEG - 10, out)
        assert out == bytes(30), "output must be wiped on failure"


def test_segment_layout_matches_spec(dek: SecretBytes) -> None:
    data = os.urandom(2 * SEG + 5)
    blob = _seal_bytes(data, dek)
    header = Header.parse(blob)
    base = PREAMBLE_LEN + header.header_len + COMMIT_LEN
    assert header.data_offset == base
    assert [header.segment_offset(i) for i in range(3)] == [
        base,
        base + SEG + TAG_LEN,
        base + 2 * (SEG + TAG_LEN),
    ]
    assert [header.segment_plain_len(i) for i in range(3)] == [SEG, SEG, 5]
    assert list(header.segments_for_range(SEG - 1, 2)) == [0, 1]
    assert list(header.segments_for_range(0, 0)) == []
    with pytest.raises(ValueError):
        header.segments_for_range(0, len(data) + 1)
    assert segment_nonce(0, False) == bytes(12)
    assert segment_nonce(258, True) == bytes(9) + b"\x01\x02\x01"


def test_file_decryptor_in_place_and_thread_pool(dek: SecretBytes) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = os.urandom(8 * SEG)
    blob = _seal_bytes(data, dek)
    header = Header.parse(blob)
    commit = blob[header.prefix_len : header.data_offset]
    dec = FileDecryptor(header, commit, dek)

    def one(i: int) -> bytes:
        buf = bytearray(
            blob[header.segment_offset(i) : header.segment_offset(i) + header.segment_sealed_len(i)]
        )
        view = memoryview(buf)
        dec.decrypt_segment_into(i, view, view[: header.segment_plain_len(i)])
        return bytes(view[: header.segment_plain_len(i)])

    with ThreadPoolExecutor(4) as pool:
        assert b"".join(pool.map(one, range(8))) == data
    dec.close()


def test_wrong_key_fails_before_any_segment(
    tmp_path: Path, dek: SecretBytes, other_dek: SecretBytes
) -> None:
    blob = _seal_bytes(b"secret weights", dek)
    with pytest.raises(DecryptionError) as info:
        SealedReader.open(_write(tmp_path, blob), other_dek)
    assert str(info.value) == "authentication failed"
    with pytest.raises(ConfigError):
        SealedReader.open(_write(tmp_path, blob, "b"), SecretBytes(b"short"))


def test_streaming_writer_any_chunking(dek: SecretBytes) -> None:
    data = os.urandom(3 * SEG + 3)
    salt = b"\x07" * 32
    for chunk in (1, 7, SEG, SEG + 1, len(data)):
        out = io.BytesIO()
        with SealWriter(
            out,
            dek,
            SealOptions(key_id="m/k/1", segment_size=SEG),
            size=len(data),
            path="w.bin",
            _salt=salt,
        ) as w:
            for i in range(0, len(data), chunk):
                w.write(data[i : i + chunk])
        assert out.getvalue() == _seal_bytes(data, dek, _salt=salt)


def test_writer_enforces_declared_size(dek: SecretBytes) -> None:
    w = SealWriter(
        io.BytesIO(), dek, SealOptions(key_id="m/k/1", segment_size=SEG), size=10, path="x"
    )
    with pytest.raises(FormatError):
        w.write(b"x" * 11)
    w.write(b"x" * 9)
    with pytest.raises(FormatError, match="9 of 10"):
        w.close()
    src = io.BytesIO(b"y" * 20)
    with pytest.raises(FormatError, match="longer"):
        seal_stream(
            src, io.BytesIO(), dek, SealOptions(key_id="m", segment_size=SEG), size=10, path="x"
        )


def test_read_header_without_key(tmp_path: Path, dek: SecretBytes) -> None:
    blob = _seal_bytes(b"abc", dek, model="llama", content_type="safetensors")
    fd = os.open(_write(tmp_path, blob), os.O_RDONLY)
    try:
        header, commit = read_header(fd)
    finally:
        os.close(fd)
    assert len(commit) == 32
    assert (header.key_id, header.path, header.model, header.content_type, header.size) == (
        "m/k/1",
        "w.bin",
        "llama",
        "safetensors",
        3,
    )
    assert header.to_json()["alg"] == "AES-256-GCM"


_TRUNCATE_WHILE_OPEN = """
import os, sys
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import FormatError
from modelseal.format.v1 import SealedReader
path, key, seg = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
with SealedReader.open(path, SecretBytes(key)) as reader:
    os.truncate(path, reader.header.segment_offset(1) + 5)
    assert reader.read_range(0, 10) == b"a" * 10
    out = bytearray(seg)
    try:
        reader.readinto_range(2 * seg, out)
    except FormatError as exc:
        assert out == bytes(seg), "partial output was not wiped"
        print("refused:", exc)
"""


def test_truncated_while_open_is_an_error_not_a_crash(tmp_path: Path, dek: SecretBytes) -> None:
    """Another process truncating a sealed file under an open reader gives FormatError with
    the output wiped. (The earlier mmap reader raised ValueError here, and died of SIGBUS
    when the truncation hit while a window was mapped; a child process shows either.)"""
    data = b"a" * (4 * SEG)
    path = _write(tmp_path, _seal_bytes(data, dek))
    proc = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_WHILE_OPEN, str(path), dek.reveal().hex(), str(SEG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused: sealed file ended early" in proc.stdout
