"""Owner CLI end to end: real files, real crypto, the documented exit codes."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from modelseal import cli

SEG = "4K"


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    code = info.value.code
    return code if isinstance(code, int) else 1


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(5 * 4096 + 123))
    (root / "config.json").write_bytes(b'{"layers": 2}')
    (root / "sub" / "tok.txt").write_bytes(os.urandom(4096))
    (root / "empty").write_bytes(b"")
    return root


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "model.key"
    assert run(["keygen", "-o", str(path)]) == 0
    return path


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_keygen_mode_and_no_overwrite(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    assert len(before.strip()) == 43  # base64url of 32 bytes, unpadded
    assert run(["keygen", "-o", str(key)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert key.read_bytes() == before


def test_directory_round_trip(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sealed, out = tmp_path / "sealed", tmp_path / "out"
    argv = ["seal", str(model), "-o", str(sealed), "--key", str(key)]
    assert run([*argv, "--key-id", "models/m/v1", "--segment-size", SEG, "--model", "m"]) == 0
    digest = capsys.readouterr().out.split("model digest: ")[1].strip()
    assert digest.startswith("sha256:")
    assert sorted(files_of(sealed)) == [
        "config.json.sealed",
        "empty.sealed",
        "modelseal-manifest.json.sealed",
        "sub/tok.txt.sealed",
        "weights.bin.sealed",
    ]
    assert run(["verify", str(sealed), "--key", str(key)]) == 0
    assert digest in capsys.readouterr().out
    assert run(["unseal", str(sealed), "-o", str(out), "--key", str(key), "--workers", "1"]) == 0
    assert files_of(out) == files_of(model)
    capsys.readouterr()
    assert run(["inspect", str(sealed)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["files"]["weights.bin.sealed"]["header"]["path"] == "weights.bin"
    assert info["manifest"]["header"]["path"] == "modelseal-manifest.json"


def test_directory_round_trip_with_hidden_names(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``seal --hide-names``: ``inspect`` (what anyone without the key sees) shows opaque
    names and padded sizes only; ``verify`` and ``unseal`` give back the real tree."""
    sealed, out = tmp_path / "sealed", tmp_path / "out"
    argv = ["seal", str(model), "-o", str(sealed), "--key", str(key), "--key-id", "models/m/v1"]
    assert run([*argv, "--segment-size", SEG, "--hide-names"]) == 0
    names = set(files_of(sealed)) - {"modelseal-manifest.json.sealed"}
    assert len(names) == 4
    assert all(len(n) == len("0" * 32 + ".sealed") for n in names), names
    capsys.readouterr()
    assert run(["inspect", str(sealed)]) == 0
    seen = capsys.readouterr().out
    for rel in files_of(model):
        assert not [part for part in rel.split("/") if part in seen]
    sizes = [f["header"]["size"] for f in json.loads(seen)["files"].values()]
    # stored sizes are Padmé buckets of at least 4 KiB: 0, 13 and 20603 bytes are not shown
    assert sorted(sizes) == [4096, 4096, 4096, 21504]
    assert run(["verify", str(sealed), "--key", str(key)]) == 0
    assert run(["unseal", str(sealed), "-o", str(out), "--key", str(key)]) == 0
    assert files_of(out) == files_of(model)
    capsys.readouterr()
    one = ["seal", str(model / "config.json"), "-o", str(tmp_path / "c.sealed")]
    assert run([*one, "--key", str(key), "--key-id", "models/m/v1", "--hide-names"]) == 2
    assert "model directory" in capsys.readouterr().err


def test_single_file_v1_and_cnap(tmp_path: Path, model: Path, key: Path) -> None:
    src = model / "weights.bin"
    for fmt, suffix in (("v1", ".sealed"), ("cnap", ".enc")):
        dest = tmp_path / fmt
        dest.mkdir()
        argv = ["seal", str(src), "-o", str(dest), "--key", str(key), "--format", fmt]
        assert run([*argv, "--key-id", "models/m/v1", "--segment-size", SEG]) == 0
        sealed = dest / ("weights.bin" + suffix)
        assert sealed.is_file()
        assert run(["verify", str(sealed), "--key", str(key)]) == 0
        out = tmp_path / f"{fmt}.out"
        assert run(["unseal", str(sealed), "-o", str(out), "--key", str(key)]) == 0
        assert out.read_bytes() == src.read_bytes()
        assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_v1_needs_key_id(tmp_path: Path, model: Path, key: Path) -> None:
    argv = ["seal", str(model / "config.json"), "-o", str(tmp_path / "c"), "--key", str(key)]
    assert run(argv) == 2
    assert not (tmp_path / "c").exists()


def test_usage_errors_and_not_found(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "o")
    assert run(["unseal", str(tmp_path / "missing"), "-o", out, "--key", str(key)]) == 3
    assert run(["unseal", str(model), "-o", out, "--key", str(tmp_path / "nokey")]) == 3
    argv = ["seal", str(model), "-o", out, "--key", str(key), "--key-id", "a/b/c"]
    assert run([*argv, "--segment-size", "3K"]) == 2
    assert run([*argv, "--segment-size", "128M"]) == 2
    assert run([*argv, "--format", "cnap"]) == 2
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key\n")
    assert run(["verify", str(model), "--key", str(bad_key)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "keygen" in err


def test_existing_destination_needs_force(tmp_path: Path, model: Path, key: Path) -> None:
    dst = tmp_path / "s"
    argv = ["seal", str(model), "-o", str(dst), "--key", str(key), "--key-id", "a/b/c"]
    assert run([*argv, "--segment-size", SEG]) == 0
    first = files_of(dst)
    assert run([*argv, "--segment-size", SEG]) == 2
    assert files_of(dst) == first
    assert run([*argv, "--segment-size", SEG, "--force"]) == 0
    assert files_of(dst) != first  # fresh salts
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", "model.key", "s"]), (
        "no temporary leftovers"
    )


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_tampered_file_exit_5_and_nothing_written(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sealed = tmp_path / "w.sealed"
    argv = ["seal", str(model / "weights.bin"), "-o", str(sealed), "--key", str(key)]
    assert run([*argv, "--key-id", "a/b/c", "--segment-size", SEG]) == 0
    blob = bytearray(sealed.read_bytes())
    blob[-4096] ^= 0x40  # inside the last full segment
    sealed.write_bytes(blob)
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    for workers in ("1", "2"):
        argv = ["unseal", str(sealed), "-o", str(outdir / "w"), "--key", str(key)]
        assert run([*argv, "--workers", workers]) == 5
        assert _leftovers(outdir) == []
    assert run(["verify", str(sealed), "--key", str(key)]) == 5
    assert "authentication failed" in capsys.readouterr().err


def test_tampered_directory_exit_5_names_file(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sealed = tmp_path / "sealed"
    argv = ["seal", str(model), "-o", str(sealed), "--key", str(key), "--key-id", "a/b/c"]
    assert run([*argv, "--segment-size", SEG]) == 0
    os.replace(sealed / "config.json.sealed", tmp_path / "x")
    os.replace(sealed / "sub" / "tok.txt.sealed", sealed / "config.json.sealed")
    os.replace(tmp_path / "x", sealed / "sub" / "tok.txt.sealed")
    before = _leftovers(tmp_path)
    capsys.readouterr()
    assert run(["unseal", str(sealed), "-o", str(tmp_path / "out"), "--key", str(key)]) == 5
    assert "config.json.sealed" in capsys.readouterr().err
    assert _leftovers(tmp_path) == before
    assert run(["verify", str(sealed), "--key", str(key)]) == 5


def test_wrong_key_exit_5(tmp_path: Path, model: Path, key: Path) -> None:
    sealed = tmp_path / "sealed"
    argv = ["seal", str(model), "-o", str(sealed), "--key", str(key), "--key-id", "a/b/c"]
    assert run([*argv, "--segment-size", SEG]) == 0
    other = tmp_path / "other.key"
    assert run(["keygen", "-o", str(other)]) == 0
    assert run(["unseal", str(sealed), "-o", str(tmp_path / "out"), "--key", str(other)]) == 5
    assert not (tmp_path / "out").exists()


def test_real_entry_point_subprocess(tmp_path: Path, model: Path, key: Path) -> None:
    """The installed entry point, env-var flags (MODELSEAL_KEY), no traceback on exit 5."""
    env = {**os.environ, "MODELSEAL_KEY": str(key)}
    entry = [sys.executable, "-c", "from modelseal.cli import main; main()"]
    sealed = tmp_path / "c.sealed"
    done = subprocess.run(
        [*entry, "seal", str(model / "config.json"), "-o", str(sealed), "--key-id", "a/b/c"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    sealed.write_bytes(sealed.read_bytes() + b"\0")
    done = subprocess.run(
        [*entry, "unseal", str(sealed), "-o", str(tmp_path / "c.json")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 5
    assert "Traceback" not in done.stderr
    assert "truncated or extended" in done.stderr
    assert not (tmp_path / "c.json").exists()


def test_progress_bar_on_a_tty(
    tmp_path: Path,
    model: Path,
    key: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a terminal the rich progress bar runs (on stderr); results are identical."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    sealed = tmp_path / "sealed"
    argv = ["seal", str(model), "-o", str(sealed), "--key", str(key), "--key-id", "a/b/c"]
    assert run([*argv, "--segment-size", SEG]) == 0
    assert run(["unseal", str(sealed), "-o", str(tmp_path / "out"), "--key", str(key)]) == 0
    assert run(["verify", str(sealed), "--key", str(key)]) == 0
    assert files_of(tmp_path / "out") == files_of(model)
    out = capsys.readouterr().out
    assert "model digest: sha256:" in out
    assert "\x1b[" not in out, "progress output must not go to stdout"


VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "format"
_INDEX = json.loads((VECTORS / "index.json").read_text())
NEGATIVE = [e for e in _INDEX["vectors"] if e["result"] != "ok"]


@pytest.mark.parametrize(
    "entry", NEGATIVE, ids=lambda e: e["file"] + ("+wrong-key" if e.get("key") else "")
)
def test_every_negative_vector_exit_5_no_output(tmp_path: Path, entry: dict[str, str]) -> None:
    """Acceptance: every tamper case fails through the CLI with exit 5 and writes nothing."""
    key_hex = _INDEX["wrong_key"] if entry.get("key") == "wrong" else _INDEX["key"]
    key = tmp_path / "k"
    key.write_text(base64.urlsafe_b64encode(bytes.fromhex(key_hex)).decode().rstrip("=") + "\n")
    key.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    src = str(VECTORS / entry["file"])
    assert run(["unseal", src, "-o", str(out / "plain"), "--key", str(key)]) == 5
    assert run(["verify", src, "--key", str(key)]) == 5
    assert list(out.iterdir()) == []


def _flip(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x01
    path.write_bytes(blob)


def _seal_dir(model: Path, dst: Path, key: Path) -> None:
    argv = ["seal", str(model), "-o", str(dst), "--key", str(key), "--key-id", "a/b/c"]
    assert run([*argv, "--segment-size", SEG]) == 0


def _roll_back(sealed: Path, model: Path, key: Path) -> None:
    """Replace one file by an authentic sealing of other content under the same key."""
    (model / "config.json").write_bytes(b'{"layers": 3}')
    _seal_dir(model, sealed.parent / "newer", key)
    os.replace(sealed.parent / "newer" / "config.json.sealed", sealed / "config.json.sealed")


def _replace_by_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


DIRECTORY_TAMPERS = {
    "segment-bit": ("weights.bin.sealed", lambda s, m, k: _flip(s / "weights.bin.sealed", -100)),
    "header-bit": ("sub/tok.txt.sealed", lambda s, m, k: _flip(s / "sub/tok.txt.sealed", 20)),
    "empty-file-tag": ("empty.sealed", lambda s, m, k: _flip(s / "empty.sealed", -1)),
    "manifest-bit": (
        "modelseal-manifest.json.sealed",
        lambda s, m, k: _flip(s / "modelseal-manifest.json.sealed", -3),
    ),
    "truncated": (
        "weights.bin.sealed",
        lambda s, m, k: os.truncate(s / "weights.bin.sealed", 5000),
    ),
    "appended": (
        "config.json.sealed",
        lambda s, m, k: (s / "config.json.sealed").write_bytes(
            (s / "config.json.sealed").read_bytes() + b"\0"
        ),
    ),
    "missing": ("sub/tok.txt.sealed", lambda s, m, k: (s / "sub/tok.txt.sealed").unlink()),
    "extra": ("stray.sealed", lambda s, m, k: (s / "stray.sealed").write_bytes(b"x")),
    "manifest-missing": (
        "modelseal-manifest.json.sealed",
        lambda s, m, k: (s / "modelseal-manifest.json.sealed").unlink(),
    ),
    "rolled-back": ("config.json.sealed", _roll_back),
    "fifo-in-place": (
        "config.json.sealed",
        lambda s, m, k: _replace_by_fifo(s / "config.json.sealed"),
    ),
}


@pytest.mark.parametrize("case", sorted(DIRECTORY_TAMPERS))
def test_tampered_directory_every_case_exit_5_named_nothing_left(
    tmp_path: Path, model: Path, key: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acceptance, directories: each tamper case fails unseal and verify with exit 5, the
    message names the sealed file, and no plaintext (not even a temporary) is left."""
    name, tamper = DIRECTORY_TAMPERS[case]
    sealed = tmp_path / "sealed"
    _seal_dir(model, sealed, key)
    tamper(sealed, model, key)
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    for workers in ("1", "2"):
        argv = ["unseal", str(sealed), "-o", str(out / "m"), "--key", str(key)]
        assert run([*argv, "--workers", workers]) == 5
        assert list(out.iterdir()) == [], "no plaintext and no temporary directory"
    assert run(["verify", str(sealed), "--key", str(key)]) == 5
    err = capsys.readouterr().err
    assert err.count(name) >= 3, err
    assert "Traceback" not in err


def test_directory_wrong_key_names_manifest_only(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong key fails on the manifest, opaque about why (no bytes, no key material)."""
    _seal_dir(model, tmp_path / "sealed", key)
    other = tmp_path / "other.key"
    assert run(["keygen", "-o", str(other)]) == 0
    capsys.readouterr()
    assert run(["verify", str(tmp_path / "sealed"), "--key", str(other)]) == 5
    err = capsys.readouterr().err
    assert "modelseal-manifest.json.sealed: authentication failed" in err
    assert "wrong key, or the sealed data was modified" in err


def test_destination_overlapping_source_is_refused(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inside the source, the source itself, or (with --force) a parent that would be
    replaced, deleting the source: usage error 2, nothing written, source intact."""
    before = files_of(model)
    base = ["--key", str(key), "--key-id", "a/b/c", "--force"]
    for dst in (model / "sealed", model, tmp_path):
        assert run(["seal", str(model), "-o", str(dst), *base]) == 2
        assert files_of(model) == before
    assert "outside the source directory" in capsys.readouterr().err
    _seal_dir(model, tmp_path / "s", key)
    sealed_before = files_of(tmp_path / "s")
    argv = ["unseal", str(tmp_path / "s"), "-o", str(tmp_path / "s" / "plain"), "--key", str(key)]
    assert run(argv) == 2
    assert files_of(tmp_path / "s") == sealed_before


def test_source_edge_cases(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Empty files round-trip, empty directories are not recorded, symlinks to files are
    followed, symlinked directories and non-UTF-8 names are refused with a usage error."""
    (model / "emptydir").mkdir()
    (model / "link.json").symlink_to(model / "config.json")
    _seal_dir(model, tmp_path / "s", key)
    assert run(["unseal", str(tmp_path / "s"), "-o", str(tmp_path / "o"), "--key", str(key)]) == 0
    assert files_of(tmp_path / "o") == files_of(model)
    assert (tmp_path / "o" / "empty").read_bytes() == b""
    assert not (tmp_path / "o" / "emptydir").exists()
    assert not (tmp_path / "o" / "link.json").is_symlink()
    (model / "linkdir").symlink_to(model / "sub")
    argv = ["seal", str(model), "-o", str(tmp_path / "s2"), "--key", str(key), "--key-id", "a/b/c"]
    assert run(argv) == 2
    (model / "linkdir").unlink()
    bad = os.fsencode(str(model)) + b"/bad\xff.bin"
    with open(bad, "wb") as f:
        f.write(b"x")
    capsys.readouterr()
    assert run(argv) == 2
    assert "not valid UTF-8; rename it" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()


def test_fifo_and_devices_are_refused_without_blocking(
    tmp_path: Path, model: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO with no writer would block a plain open() forever; as SRC, sealed input or
    key file it is a usage error (exit 2) at once. A device is no model file either."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = str(tmp_path / "o")
    assert run(["seal", str(fifo), "-o", out, "--key", str(key), "--key-id", "a/b/c"]) == 2
    assert run(["unseal", str(fifo), "-o", out, "--key", str(key)]) == 2
    assert run(["verify", str(fifo), "--key", str(key)]) == 2
    assert run(["inspect", str(fifo)]) == 2
    assert run(["verify", str(model), "--key", str(fifo)]) == 2
    assert run(["seal", "/dev/zero", "-o", out, "--key", str(key), "--key-id", "a/b/c"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert not Path(out).exists()


def test_cnap_refuses_files_over_4_gib_before_reading(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CNAP layout's uint32 length: a (sparse) 4 GiB + 1 file is refused with a usage
    error that names the fix, before a byte is read or written."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate((4 << 30) + 1)
    out = tmp_path / "big.enc"
    assert run(["seal", str(big), "-o", str(out), "--key", str(key), "--format", "cnap"]) == 2
    assert "Use --format v1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin", "model.key"]
