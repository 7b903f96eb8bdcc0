"""A stand-in ``pynvml`` for a ``modelseal`` subprocess (this directory goes first on its
``PYTHONPATH``): the fake NVML of the unit tests, answering with reports of the test GPU
saved at ``$FAKE_NVML_GPU`` (:meth:`MockGpu.save`), with the measurement blocks of
``$FAKE_NVML_MEASUREMENTS`` (JSON: block index -> hex) changed.

The fake builds its report structures with the real bindings' ctypes types, so the real
``pynvml`` is loaded first, from the rest of the path; then this module replaces itself in
``sys.modules`` with the fake (the import system returns what ``sys.modules`` holds once
the module's code has run).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_rest = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.machinery.PathFinder.find_spec("pynvml", _rest)
if _spec is None or _spec.loader is None:
    raise ImportError("the real pynvml (nvidia-ml-py) is needed for its ctypes structures")
_real = importlib.util.module_from_spec(_spec)
sys.modules["pynvml"] = _real
_spec.loader.exec_module(_real)

from tests.unit.tee.nvidia.fakenvml import FakeNvml  # noqa: E402
from tests.unit.tee.nvidia.mockgpu import MockGpu  # noqa: E402

_changed = json.loads(os.environ.get("FAKE_NVML_MEASUREMENTS", "{}"))
sys.modules["pynvml"] = FakeNvml(  # type: ignore[assignment]
    [MockGpu.load(Path(os.environ["FAKE_NVML_GPU"]))],
    measurements={int(block): bytes.fromhex(value) for block, value in _changed.items()},
)
