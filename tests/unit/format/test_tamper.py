"""Tampering with sealed files and models: every case is rejected with the documented error
and no plaintext is released (no output file, wiped buffers)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal import cli
from modelseal.crypto.secret import SecretBytes
from modelseal.errors import DecryptionError, Error, FormatError, IntegrityError
from modelseal.format.options import SealOptions
from modelseal.format.v1 import Header, SealedReader, seal_stream
from modelseal.owner.sealing import seal_directory, seal_file, unseal, unseal_file, verify

KEY = SecretBytes(bytes(range(32)))
KEY_B64 = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
SEG = 4096
DATA = os.urandom(4 * SEG + 1000)  # 5 segments, short last one


def _seal(data: bytes = DATA) -> bytes:
    out = io.BytesIO()
    seal_stream(
        io.BytesIO(data),
        out,
        KEY,
        SealOptions(key_id="m/k/v1", segment_size=SEG),
        size=len(data),
        path="w.bin",
    )
    return out.getvalue()


BLOB = _seal()
HEADER = Header.parse(BLOB)
N = HEADER.segment_count
SEGS = [
    BLOB[HEADER.segment_offset(i) : HEADER.segment_offset(i) + HEADER.segment_sealed_len(i)]
    for i in range(N)
]
HEAD = BLOB[: HEADER.data_offset]


def _cli(argv: list[str]) -> object:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code


def _rejected(tmp: Path, blob: bytes, expected: type[Error] | tuple[type[Error], ...]) -> None:
    """The package rejects ``blob`` in the reader and in unseal with the documented error,
    and the CLI (`unseal` with 1 and 2 workers, `verify`) exits 5; no output file, not even
    a temporary, is left behind."""
    src = tmp / "t.sealed"
    src.write_bytes(blob)
    with pytest.raises(expected), SealedReader.open(src, KEY) as reader:
        reader.verify(workers=2)
    outdir = tmp / "out"
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir()
    with pytest.raises(expected):
        unseal_file(src, outdir / "w.bin", KEY, workers=2)
    key_file = tmp / "key"
    key_file.write_text(KEY_B64 + "\n")
    key_file.chmod(0o600)
    for workers in ("1", "2"):
        argv = ["unseal", str(src), "-o", str(outdir / "w.bin"), "--key", str(key_file)]
        assert _cli([*argv, "--workers", workers]) == 5
    assert _cli(["verify", str(src), "--key", str(key_file)]) == 5
    assert list(outdir.iterdir()) == [], "plaintext or temp file left behind"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(0, len(BLOB) - 1), bit=st.integers(0, 7))
def test_any_bit_flip_is_rejected(tmp_path_factory: pytest.TempPathFactory, pos: int,
                                  bit: int) -> None:  # fmt: skip
    blob = bytearray(BLOB)
    blob[pos] ^= 1 << bit
    if pos < 14 + HEADER.header_len:  # preamble or header: structure or commitment
        expected: tuple[type[Error], ...] = (FormatError, DecryptionError)
    else:  # commitment, ciphertext or tag: authentication only
        expected = (DecryptionError,)
    _rejected(tmp_path_factory.mktemp("flip"), bytes(blob), expected)


@pytest.mark.parametrize(
    "region",
    ["magic", "version", "header_len", "header", "commitment", "first", "middle", "last_tag"],
)
def test_bit_flip_in_each_region(tmp_path: Path, region: str) -> None:
    pos = {
        "magic": 0,
        "version": 9,
        "header_len": 12,
        "header": 20,
        "commitment": HEADER.prefix_len + 3,
        "first": HEADER.data_offset,
        "middle": HEADER.segment_offset(2) + 100,
        "last_tag": len(BLOB) - 1,
    }[region]
    blob = bytearray(BLOB)
    blob[pos] ^= 0x80
    expected = (FormatError, DecryptionError) if pos < HEADER.prefix_len else DecryptionError
    _rejected(tmp_path, bytes(blob), expected)


def _cuts() -> list[int]:
    boundaries = [HEADER.segment_offset(i) for i in range(N)]
    mids = [b + 1 for b in boundaries] + [b + SEG // 2 for b in boundaries[:-1]]
    return sorted({0, 5, 14, HEADER.prefix_len, *boundaries, *mids, len(BLOB) - 16,
                   len(BLOB) - 1})  # fmt: skip


@pytest.mark.parametrize("cut", _cuts())
def test_truncation_at_every_boundary_and_mid_segment(tmp_path: Path, cut: int) -> None:
    _rejected(tmp_path, BLOB[:cut], FormatError)


@pytest.mark.parametrize(
    "extra", [b"\x00", bytes(range(16)), SEGS[-1]], ids=["zero", "16", "segment"]
)
def test_appended_bytes(tmp_path: Path, extra: bytes) -> None:
    _rejected(tmp_path, BLOB + extra, FormatError)


@pytest.mark.parametrize(
    "order",
    [
        [1, 0, 2, 3, 4],  # swap
        [0, 1, 3, 2, 4],
        [0, 0, 2, 3, 4],  # duplicate over another
        [0, 1, 3, 3, 4],
    ],
)
def test_swapped_or_duplicated_segments(tmp_path: Path, order: list[int]) -> None:
    _rejected(tmp_path, HEAD + b"".join(SEGS[i] for i in order), DecryptionError)


@pytest.mark.parametrize("drop", range(N))
def test_dropped_segment(tmp_path: Path, drop: int) -> None:
    _rejected(tmp_path, HEAD + b"".join(s for i, s in enumerate(SEGS) if i != drop), FormatError)


def test_last_segment_moved_forward_fails_the_final_flag(tmp_path: Path) -> None:
    """A full-length file whose last segment is a full one (final flag missing)."""
    data = os.urandom(3 * SEG)
    blob = _seal(data)
    header = Header.parse(blob)
    segs = [blob[header.segment_offset(i) : header.segment_offset(i) + SEG + 16]
            for i in range(3)]  # fmt: skip
    _rejected(tmp_path, blob[: header.data_offset] + segs[0] + segs[2] + segs[1],
              DecryptionError)  # fmt: skip


def test_segment_from_another_file_with_same_key(tmp_path: Path) -> None:
    other = _seal(DATA)  # same key, same plaintext, fresh salt
    other_header = Header.parse(other)
    seg0 = other[other_header.segment_offset(0) : other_header.segment_offset(1)]
    _rejected(tmp_path, HEAD + seg0 + b"".join(SEGS[1:]), DecryptionError)


def test_wrong_key(tmp_path: Path) -> None:
    src = tmp_path / "w.sealed"
    src.write_bytes(BLOB)
    with pytest.raises(DecryptionError):
        SealedReader.open(src, SecretBytes(os.urandom(32)))
    assert not (tmp_path / "w.bin").exists()


def test_unknown_version_and_alg(tmp_path: Path) -> None:
    _rejected(tmp_path, BLOB[:8] + b"\x00\x02" + BLOB[10:], FormatError)
    raw = HEADER.raw.replace(b'"AES-256-GCM"', b'"AES-256-GCX"')
    _rejected(tmp_path, HEAD[:14] + raw + BLOB[14 + len(raw) :], FormatError)


def test_partial_output_is_wiped_in_caller_buffer(tmp_path: Path) -> None:
    blob = bytearray(BLOB)
    blob[HEADER.segment_offset(1) + 10] ^= 1
    src = tmp_path / "t.sealed"
    src.write_bytes(bytes(blob))
    out = bytearray(b"\xaa" * len(DATA))
    with SealedReader.open(src, KEY) as reader, pytest.raises(DecryptionError):
        reader.readinto_range(0, out)
    assert out == bytes(len(DATA))


# --- whole models --------------------------------------------------------------------------


@pytest.fixture
def sealed_model(tmp_path: Path) -> Path:
    src = tmp_path / "model"
    (src / "layers").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(3 * SEG))
    (src / "b.bin").write_bytes(os.urandom(3 * SEG))
    (src / "layers" / "0.bin").write_bytes(os.urandom(100))
    dst = tmp_path / "sealed"
    seal_directory(
        src, dst, KEY, SealOptions(key_id="models/m/v1", model="m", segment_size=SEG), version="1"
    )
    return dst


def _model_rejected(sealed: Path, match: str) -> None:
    parent = sealed.parent
    before = sorted(p.name for p in parent.iterdir())
    with pytest.raises(IntegrityError, match=match):
        verify(sealed, KEY)
    with pytest.raises(IntegrityError, match=match):
        unseal(sealed, parent / "out", KEY)
    assert sorted(p.name for p in parent.iterdir()) == before


def test_model_swapped_files(sealed_model: Path) -> None:
    a, b = sealed_model / "a.bin.sealed", sealed_model / "b.bin.sealed"
    tmp = sealed_model.parent / "swap"
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)
    _model_rejected(sealed_model, r"a\.bin\.sealed: holds the sealed data of 'b\.bin'")


def test_model_missing_file(sealed_model: Path) -> None:
    (sealed_model / "layers" / "0.bin.sealed").unlink()
    _model_rejected(sealed_model, r"missing: layers/0\.bin\.sealed")


def test_model_extra_file(sealed_model: Path) -> None:
    shutil.copy(sealed_model / "a.bin.sealed", sealed_model / "c.bin.sealed")
    _model_rejected(sealed_model, r"not in the manifest: c\.bin\.sealed")


def test_model_rolled_back_file(sealed_model: Path, tmp_path: Path) -> None:
    """An older sealing of the same path with the same key: valid alone, not in this model."""
    old = tmp_path / "a.bin"
    old.write_bytes(os.urandom(3 * SEG))
    seal_file(
        old,
        sealed_model / "a.bin.sealed",
        KEY,
        SealOptions(key_id="models/m/v1", segment_size=SEG),
        path="a.bin",
        overwrite=True,
    )
    _model_rejected(sealed_model, r"a\.bin\.sealed: does not match the model manifest")


def test_model_truncated_file_named(sealed_model: Path) -> None:
    p = sealed_model / "b.bin.sealed"
    p.write_bytes(p.read_bytes()[:-1])
    _model_rejected(sealed_model, r"b\.bin\.sealed: sealed file is .* truncated")


def test_model_manifest_missing_or_tampered(sealed_model: Path) -> None:
    manifest = sealed_model / "modelseal-manifest.json.sealed"
    blob = bytearray(manifest.read_bytes())
    blob[-3] ^= 1
    manifest.write_bytes(bytes(blob))
    with pytest.raises(DecryptionError):
        verify(sealed_model, KEY)
    manifest.unlink()
    _model_rejected(sealed_model, "modelseal-manifest.json.sealed is missing")


def test_model_manifest_from_another_model(sealed_model: Path, tmp_path: Path) -> None:
    """Manifest of another sealing of the same key id: headers no longer match."""
    src = tmp_path / "other"
    src.mkdir()
    for name in ("a.bin", "b.bin"):
        (src / name).write_bytes(os.urandom(10))
    (src / "layers").mkdir()
    (src / "layers" / "0.bin").write_bytes(os.urandom(100))
    seal_directory(
        src, tmp_path / "other-sealed", KEY, SealOptions(key_id="models/m/v1", segment_size=SEG)
    )
    shutil.copy(tmp_path / "other-sealed" / "modelseal-manifest.json.sealed",
                sealed_model / "modelseal-manifest.json.sealed")  # fmt: skip
    _model_rejected(sealed_model, "does not match the model manifest")


def test_model_file_sealed_with_other_key(sealed_model: Path, tmp_path: Path) -> None:
    other_key = SecretBytes(os.urandom(32))
    old = tmp_path / "x"
    old.write_bytes(os.urandom(100))
    seal_file(
        old,
        sealed_model / "layers" / "0.bin.sealed",
        other_key,
        SealOptions(key_id="models/m/v1", segment_size=SEG),
        path="layers/0.bin",
        overwrite=True,
    )
    _model_rejected(sealed_model, r"layers/0\.bin\.sealed: does not match")
