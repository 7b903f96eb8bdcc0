"""An ordinary inference process: it knows nothing about modelseal.

It reads a model directory with stock ``safetensors`` + ``numpy`` (exactly what an
unchanged inference server container does with the shared ``emptyDir``), classifies the
held-out digits and prints ``{"accuracy": ..., "samples": ...}`` as JSON. Run it as a
script: ``python infer_server.py MODEL_DIR TEST_DATA.npz``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def wait_ready(model_dir: Path, timeout: float) -> None:
    """Block until the initContainer's ready marker exists (the Pod-level contract)."""
    deadline = time.monotonic() + timeout
    while not (model_dir / ".modelseal" / "ready").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{model_dir}: model not ready after {timeout}s")
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: infer_server.py MODEL_DIR TEST_DATA.npz", file=sys.stderr)
        return 2
    model_dir, data_path = Path(argv[0]), Path(argv[1])
    wait_ready(model_dir, timeout=30)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    weights = load_file(str(model_dir / "model.safetensors"))
    data = np.load(data_path)
    x = data["x"].astype(np.float32) / float(config["scale"])
    hidden = np.maximum(x @ weights["fc1.weight"] + weights["fc1.bias"], 0)
    predicted = (hidden @ weights["fc2.weight"] + weights["fc2.bias"]).argmax(axis=1)
    accuracy = float((predicted == data["y"]).mean())
    print(json.dumps({"accuracy": accuracy, "samples": len(predicted)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
