"""Model-info wire models and the name/path validation every party relies on."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.errors import ConfigError
from modelseal.protocol.model_info import (
    FORMAT_CNAP,
    FORMAT_V1,
    KBS_TRUSTEE,
    FileRecord,
    ModelInfo,
    ModelRecord,
    ModelRegistration,
    blob_key,
    check_name,
    check_relpath,
)
from modelseal.protocol.wire import WireError, describe

SHA = "ab" * 32
DIGEST = "sha256:" + "cd" * 32


@pytest.mark.parametrize("name", ["a", "llama3-8b", "v1.2.3", "_x", "0", "A_b.c-d"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".hidden", "-opt", "a/b", "a b", "é", "a\x00", "x" * 256]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(ConfigError):
        check_name(name)


@pytest.mark.parametrize("path", ["a", "a/b.sealed", "tok/vocab.json", "/".join(["d"] * 32)])
def test_valid_paths(path: str) -> None:
    assert check_relpath(path) == path


@pytest.mark.parametrize(
    "path",
    ["", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a/./b", "a\\b", "/".join(["d"] * 33)],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(ConfigError):
        check_relpath(path)


@given(st.text(max_size=40))
def test_relpath_never_escapes(text: str) -> None:
    """Whatever passes validation stays strictly inside the directory it is joined to."""
    try:
        check_relpath(text)
    except ConfigError:
        return
    parts = text.split("/")
    assert all(p not in ("", ".", "..") and not p.startswith(("/", ".")) for p in parts)
    assert "\\" not in text
    assert "\x00" not in text


def test_blob_key() -> None:
    assert blob_key("m", "v1", "a/b.sealed") == "m/v1/a/b.sealed"
    with pytest.raises(ConfigError):
        blob_key("m", "..", "a")


def _registration(**over: object) -> ModelRegistration:
    data: dict[str, object] = {
        "format": FORMAT_V1,
        "framework": "safetensors",
        "kbs": KBS_TRUSTEE,
        "kbs_url": "http://127.0.0.1:8080",
        "key_id": "models/m/v1",
        "model_digest": DIGEST,
        "manifest": {
            "path": "modelseal-manifest.json",
            "blob": "modelseal-manifest.json.sealed",
            "sealed_size": 300,
            "sha256": SHA,
        },
        "files": [
            {
                "path": "w.safetensors",
                "blob": "w.safetensors.sealed",
                "sealed_size": 10,
                "sha256": SHA,
            }
        ],
    }
    data.update(over)
    return ModelRegistration.from_data(data)


def test_record_to_info_builds_cnap_fields_and_urls() -> None:
    record = ModelRecord(
        id="m", version="v1", registered_at=1.0, sequence=0, registration=_registration()
    )
    info = record.to_info("http://reg:8090/")
    doc = info.to_data()
    assert list(doc)[:11] == [
        "id", "framework", "target", "url", "name", "version", "dtype",
        "encrypted", "kbs", "kbs_url", "key_id",
    ]  # fmt: skip
    assert doc["encrypted"] is True
    assert doc["url"] == "http://reg:8090/blobs/m/v1/w.safetensors.sealed"
    assert doc["manifest_url"] == "http://reg:8090/blobs/m/v1/modelseal-manifest.json.sealed"
    assert doc["files"] == [
        {
            "path": "w.safetensors",
            "url": "http://reg:8090/blobs/m/v1/w.safetensors.sealed",
            "sealed_size": 10,
            "sha256": SHA,
        }
    ]
    assert doc["name"] == "m"
    assert ModelInfo.from_json(json.dumps(doc)) == info


def test_multi_file_url_is_model_root() -> None:
    files = [
        {"path": f"f{i}", "blob": f"f{i}.sealed", "sealed_size": 1, "sha256": SHA} for i in range(2)
    ]
    record = ModelRecord(
        id="m", version="v1", registered_at=1.0, sequence=0, registration=_registration(files=files)
    )
    assert record.to_info("http://r").url == "http://r/blobs/m/v1/"


def test_cnap_model_info_from_a_cnap_server_parses() -> None:
    """A plain CNAP model-info document (extra fields, no modelseal fields) is accepted."""
    doc = {
        "id": "2b4c6e3c-1111-4a5e-9a51-0d0a6a3f1f00",
        "framework": "tensorflow",
        "target": "object-detection",
        "url": "http://models/ssdmobilenet_v10.pb.enc",
        "name": "ssdmobilenet",
        "version": "1.0",
        "dtype": "int8",
        "encrypted": True,
        "kbs": "simple_kbs",
        "kbs_url": "https://kbs/kbs/v1/keys/x/transfer",
        "key_id": "2b4c6e3c-2222-4a5e-9a51-0d0a6a3f1f00",
        "uploaded_date": "2024-01-01",
    }
    info = ModelInfo.from_data(doc)
    assert info.format == FORMAT_CNAP
    assert info.files == []
    assert info.model_digest is None


def test_v1_info_requires_digest_manifest_files() -> None:
    with pytest.raises(WireError):
        ModelInfo.from_data({"id": "m", "url": "http://x", "format": FORMAT_V1})


def test_info_rejects_traversal_in_file_paths() -> None:
    with pytest.raises(WireError):
        ModelInfo.from_data(
            {"id": "m", "url": "u", "files": [{"path": "../etc/x", "url": "u", "sealed_size": 1}]}
        )


def test_info_rejects_duplicate_paths() -> None:
    f = {"path": "a", "url": "u", "sealed_size": 1}
    with pytest.raises(WireError):
        ModelInfo.from_data({"id": "m", "url": "u", "files": [f, f]})


@pytest.mark.parametrize(
    "over",
    [
        {"manifest": None},
        {"model_digest": None},
        {"model_digest": "sha256:xyz"},
        {"files": []},
        {"format": "cnap"},
        {"unknown": 1},
        {"files": [{"path": "a", "blob": "b", "sealed_size": -1, "sha256": SHA}]},
        {"files": [{"path": "a", "blob": "b", "sealed_size": 1, "sha256": "AB" * 32}]},
        {"files": [{"path": "a", "blob": "../b", "sealed_size": 1, "sha256": SHA}]},
        {
            "files": [
                {"path": "a", "blob": "x", "sealed_size": 1, "sha256": SHA},
                {"path": "b", "blob": "x", "sealed_size": 1, "sha256": SHA},
            ]
        },
    ],
)
def test_registration_rejects(over: dict[str, object]) -> None:
    with pytest.raises(WireError):
        _registration(**over)


def test_cnap_registration() -> None:
    reg = _registration(format="cnap", manifest=None, model_digest=None)
    assert reg.all_files() == [
        FileRecord(path="w.safetensors", blob="w.safetensors.sealed", sealed_size=10, sha256=SHA)
    ]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = ["format", "framework", "kbs", "kbs_url", "key_id", "model_digest", "manifest", "files"]


@settings(max_examples=60)
@given(st.sampled_from(_FIELDS), _JSON)
def test_registration_with_any_field_value_validates_or_is_a_validation_error(
    field: str, value: object
) -> None:
    """A hostile PUT body can only be a 422 (never an exception the app turns into a 500)."""
    try:
        reg = _registration(**{field: value})
    except WireError:
        return
    for f in reg.all_files():  # whatever validated is safe to turn into blob keys
        assert blob_key("m", "v1", f.blob).startswith("m/v1/")


@settings(max_examples=60)
@given(st.binary(max_size=200) | _JSON.map(lambda v: json.dumps(v).encode()))
def test_wire_models_parse_any_bytes_into_a_validation_error(body: bytes) -> None:
    for model in (ModelRegistration, ModelInfo):
        with pytest.raises(WireError):
            model.from_json(body)


@pytest.mark.parametrize(
    "doc",
    [
        {"id": "m", "url": "u", "format": "SECRET" * 1000},
        {"id": "m", "url": "u", "files": [{"path": "../SECRET", "url": "u", "sealed_size": 1}]},
        {"id": "m", "url": "u", "files": [{"path": "a", "url": "u", "sealed_size": 1,
                                           "sha256": "SECRET"}]},
    ],
)  # fmt: skip
def test_errors_name_the_field_never_the_value(doc: dict[str, object]) -> None:
    with pytest.raises(WireError) as info:
        ModelInfo.from_data(doc)
    text = describe(info.value)
    assert "SECRET" not in text
    assert "$." in text
    assert len(text) <= 300


def test_digest_patterns_are_anchored_at_both_ends() -> None:
    for bad in ["a" * 64 + "\n", "zz" + "a" * 64, "a" * 64 + "zz", "A" * 64]:
        with pytest.raises(WireError):
            ModelInfo.from_data(
                {"id": "m", "url": "u", "files": [{"path": "a", "url": "u", "sealed_size": 1,
                                                   "sha256": bad}]}
            )  # fmt: skip
