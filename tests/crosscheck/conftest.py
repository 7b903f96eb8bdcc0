"""Cross-checks against other implementations that cannot share this project's virtualenv.

They are collected only when configured (``make crosscheck`` sets it up), so a plain
``make test`` neither runs nor skips them."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("NV_LOCAL_VERIFIER_PYTHON") else ["test_*.py"]
