"""The quickstart model trains from sklearn's shipped data and loads with stock tools."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from modelseal.quickstart import infer_server
from modelseal.quickstart.train import CONFIG_FILE, MODEL_FILE, load_digits, train


def test_digits_match_sklearn() -> None:
    from sklearn.datasets import load_digits as sk_load

    x, y = load_digits()
    sx, sy = sk_load(return_X_y=True)
    assert np.array_equal(x, sx)
    assert np.array_equal(y, sy)


def test_train_and_unchanged_inference(tmp_path: Path) -> None:
    trained = train(tmp_path / "model", tmp_path / "heldout.npz")
    weights = load_file(str(tmp_path / "model" / MODEL_FILE))
    assert weights["fc1.weight"].shape == (64, 64)
    assert weights["fc2.weight"].shape == (64, 10)
    assert json.loads((tmp_path / "model" / CONFIG_FILE).read_text())["scale"] == 16.0
    assert trained.test_samples == 450
    assert trained.train_accuracy > 0.95
    # the inference process waits for the ready marker, then classifies
    (tmp_path / "model" / ".modelseal").mkdir()
    (tmp_path / "model" / ".modelseal" / "ready").write_text("x\n")
    done = subprocess.run(
        [sys.executable, infer_server.__file__, str(tmp_path / "model"), str(trained.test_data)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["samples"] == 450
    assert result["accuracy"] > 0.9


def test_infer_server_is_independent_of_modelseal() -> None:
    source = Path(infer_server.__file__).read_text()
    assert "modelseal" not in "\n".join(
        line for line in source.splitlines() if line.startswith(("import", "from"))
    )


def test_infer_server_usage_and_timeout(tmp_path: Path) -> None:
    assert infer_server.main([]) == 2
    with pytest.raises(SystemExit, match="not ready"):
        infer_server.wait_ready(tmp_path, timeout=0.1)
