"""An ordinary inference process: it knows nothing about modelseal.

It reads a model directory with stock ``safetensors`` + ``numpy`` (exactly what an
unchanged inference server container does with the shared ``emptyDir``), classifies the
held-out digits and prints ``{"accuracy": ..., "samples": ...}`` as JSON. Run it as a
script: ``python infer_server.py MODEL_DIR TEST_DATA.npz``; or as a plain-HTTP server on
loopback, ``python infer_server.py MODEL_DIR --serve 127.0.0.1:PORT``, answering
``POST /classify`` (``{"x": [[64 pixel values], ...]}`` -> ``{"predicted": [...]}``) and
``GET /healthz`` (what the attested gateway puts TLS in front of).
"""

from __future__ import annotations

import http.server
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file


def wait_ready(model_dir: Path, timeout: float) -> None:
    """Block until the initContainer's ready marker exists (the Pod-level contract)."""
    deadline = time.monotonic() + timeout
    while not (model_dir / ".modelseal" / "ready").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{model_dir}: model not ready after {timeout}s")
        time.sleep(0.05)


def load_model(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's config and weights, read with stock tools once it is ready."""
    wait_ready(model_dir, timeout=30)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return config, load_file(str(model_dir / "model.safetensors"))


def classify(config: dict[str, Any], weights: dict[str, Any], pixels: Any) -> Any:
    """Predicted digits for rows of 64 pixel values."""
    x = np.asarray(pixels, dtype=np.float32) / float(config["scale"])
    hidden = np.maximum(x @ weights["fc1.weight"] + weights["fc1.bias"], 0)
    return (hidden @ weights["fc2.weight"] + weights["fc2.bias"]).argmax(axis=1)


#: Largest request body the HTTP mode reads (about 1000 digits as JSON).
MAX_BODY = 4 * 1024 * 1024


def serve(model_dir: Path, host: str, port: int) -> None:
    """Answer ``POST /classify`` and ``GET /healthz`` over plain HTTP on ``host:port``."""
    config, weights = load_model(model_dir)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, value: Any) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._reply(200 if self.path == "/healthz" else 404, {"ok": self.path == "/healthz"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if self.path != "/classify" or not 0 < length <= MAX_BODY:
                self._reply(400, {"error": "POST /classify with a JSON body"})
                return
            try:
                pixels = json.loads(self.rfile.read(length))["x"]
                predicted = classify(config, weights, pixels)
            except (ValueError, KeyError, TypeError):
                self._reply(400, {"error": 'expected {"x": [[64 numbers], ...]}'})
                return
            self._reply(200, {"predicted": [int(p) for p in predicted]})

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--serve":
        host, _, port = argv[2].rpartition(":")
        serve(Path(argv[0]), host, int(port))
        return 0
    if len(argv) != 2:
        print(
            "usage: infer_server.py MODEL_DIR (TEST_DATA.npz | --serve HOST:PORT)", file=sys.stderr
        )
        return 2
    model_dir, data_path = Path(argv[0]), Path(argv[1])
    config, weights = load_model(model_dir)
    data = np.load(data_path)
    predicted = classify(config, weights, data["x"])
    accuracy = float((predicted == data["y"]).mean())
    print(json.dumps({"accuracy": accuracy, "samples": len(predicted)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
