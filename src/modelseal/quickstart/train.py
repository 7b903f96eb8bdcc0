"""Train the quickstart's real (small) model: a two-layer MLP on scikit-learn's digits.

The digits data set ships inside scikit-learn (no download). Training is plain numpy
(full-batch Adam, fixed seed, ~1 s), and the weights are saved with the stock
``safetensors`` package, exactly as an owner would hand a model to ``modelseal publish``.
The held-out quarter of the data is saved separately for the inference process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelseal.errors import ConfigError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HIDDEN = 64
EPOCHS = 150
SEED = 7


@dataclass(frozen=True)
class TrainedModel:
    directory: Path
    test_data: Path
    train_accuracy: float
    test_samples: int
    bytes: int


def _softmax(z: Any) -> Any:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_digits() -> tuple[Any, Any]:
    """scikit-learn's digits (1797 8x8 images, labels), read from the file sklearn ships.

    Reading ``sklearn/datasets/data/digits.csv.gz`` directly is what
    ``sklearn.datasets.load_digits`` does, minus seconds of importing scikit-learn.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the quickstart needs scikit-learn (for its digits data set)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/digits.csv.gz"
    try:
        data = np.loadtxt(path, delimiter=",")
    except OSError as exc:
        raise ConfigError(f"scikit-learn's digits data is missing: {path}") from exc
    return data[:, :-1], data[:, -1].astype(np.int64)


def train(model_dir: Path, test_data: Path) -> TrainedModel:
    """Train on 75 % of the digits; write the model dir and the held-out set (npz)."""
    try:
        from safetensors.numpy import save_file
    except ImportError as exc:
        raise ConfigError("the quickstart needs safetensors: pip install 'modelseal[ml]'") from exc
    x_all, y_all = load_digits()
    try:  # tiny matrices: BLAS threads only add contention (20x slower on a busy 2-core VM)
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        return _train(x_all, y_all, save_file, model_dir, test_data)
    with threadpool_limits(1):
        return _train(x_all, y_all, save_file, model_dir, test_data)


def _train(
    x_all: Any, y_all: Any, save_file: Any, model_dir: Path, test_data: Path
) -> TrainedModel:
    x_all = (x_all / 16.0).astype(np.float32)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x_all))
    cut = len(order) * 3 // 4
    train_idx, test_idx = order[:cut], order[cut:]
    x, y = x_all[train_idx], y_all[train_idx]
    onehot = np.eye(10, dtype=np.float32)[y]

    params = {
        "fc1.weight": (rng.standard_normal((64, HIDDEN)) * np.sqrt(2 / 64)).astype(np.float32),
        "fc1.bias": np.zeros(HIDDEN, np.float32),
        "fc2.weight": (rng.standard_normal((HIDDEN, 10)) * np.sqrt(1 / HIDDEN)).astype(np.float32),
        "fc2.bias": np.zeros(10, np.float32),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    for step in range(1, EPOCHS + 1):
        h_pre = x @ params["fc1.weight"] + params["fc1.bias"]
        h = np.maximum(h_pre, 0)
        p = _softmax(h @ params["fc2.weight"] + params["fc2.bias"])
        d_out = (p - onehot) / len(x)
        d_h = (d_out @ params["fc2.weight"].T) * (h_pre > 0)
        grads = {
            "fc2.weight": h.T @ d_out,
            "fc2.bias": d_out.sum(axis=0),
            "fc1.weight": x.T @ d_h,
            "fc1.bias": d_h.sum(axis=0),
        }
        for k, g in grads.items():
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1**step)
            v_hat = v[k] / (1 - b2**step)
            params[k] = (params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
    h = np.maximum(x @ params["fc1.weight"] + params["fc1.bias"], 0)
    train_acc = float(((h @ params["fc2.weight"] + params["fc2.bias"]).argmax(1) == y).mean())

    model_dir.mkdir(parents=True, exist_ok=True)
    save_file(params, str(model_dir / MODEL_FILE), metadata={"arch": "mlp-64-64-10"})
    config = {
        "architecture": "mlp",
        "input": [8, 8],
        "scale": 16.0,
        "hidden": HIDDEN,
        "labels": list(range(10)),
    }
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    np.savez(test_data, x=x_all[test_idx] * 16.0, y=y_all[test_idx])
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    return TrainedModel(model_dir, test_data, train_acc, len(test_idx), size)


def main(argv: list[str]) -> int:
    """``python -m modelseal.quickstart.train DIR``: a real model to try the CLI on (the
    README tour); the held-out digits go next to DIR as ``DIR.heldout.npz``."""
    if len(argv) != 1:
        print("usage: python -m modelseal.quickstart.train MODEL_DIR", file=sys.stderr)
        return 2
    model_dir = Path(argv[0])
    model_dir.mkdir(parents=True, exist_ok=True)
    result = train(model_dir, model_dir.with_name(model_dir.name + ".heldout.npz"))
    print(
        f"trained {result.directory} ({result.bytes} bytes, {result.train_accuracy:.3f} accuracy)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
